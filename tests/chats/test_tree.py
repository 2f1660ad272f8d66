"""ThreadIndex: continuations supersede, regenerations and edits branch, trimmed windows still match."""

from __future__ import annotations

import uuid
from typing import Any, Dict, List, Optional

from chatproxy.chats.tree import ThreadIndex
from chatproxy.recorder.journal import encode_record

SYSTEM = {"role": "system", "content": "You are Seraphina."}
GREETING = {"role": "assistant", "content": "*waves* Hello, traveller."}


def user(i: int) -> Dict[str, Any]:
    return {"role": "user", "content": f"user message {i}"}


def bot(i: int, variant: str = "") -> Dict[str, Any]:
    return {"role": "assistant", "content": f"bot reply {i}{variant}"}


def record(
    index: ThreadIndex, history: List[Dict[str, Any]], reply: Dict[str, Any], complete: bool = True
) -> Optional[Dict[str, Any]]:
    placement = index.place(history, reply)
    if placement.duplicate:
        return None
    rec = {
        "v": 1,
        "id": uuid.uuid4().hex[:16],
        "parent": placement.parent.id if placement.parent else None,
        "base": placement.base,
        "messages": placement.new,
        "meta": {"complete": complete},
    }
    index.add(rec)
    return rec


def chat(turns: int) -> List[Dict[str, Any]]:
    """system, then user/bot pairs 0..turns-1 (the last bot reply not included)."""
    history = [SYSTEM]
    for i in range(turns):
        history.append(user(i))
        if i < turns - 1:
            history.append(bot(i))
    return history


def full(index: ThreadIndex, node_id: str) -> List[Dict[str, Any]]:
    return list(index.nodes[node_id].iter_messages())


def test_continuation_supersedes_the_shorter_record():
    index = ThreadIndex()
    for turns in range(1, 6):
        record(index, chat(turns), bot(turns - 1))
    leaves = index.current()
    assert len(leaves) == 1
    assert list(leaves[0].iter_messages()) == chat(5) + [bot(4)]


def test_journal_grows_with_new_text_not_history():
    """A 200-turn chat writes each turn about once, not 200 copies of its beginning."""
    index = ThreadIndex()
    sentence = " and then the story went on for a while" * 5
    history = [SYSTEM]
    written = 0
    for i in range(100):
        history.append({"role": "user", "content": f"question {i}{sentence}"})
        reply = {"role": "assistant", "content": f"answer {i}{sentence}"}
        written += len(encode_record(record(index, list(history), reply)))
        history.append(reply)
    text = sum(len(m["content"]) for m in history)
    assert written < 1.5 * text
    assert len(index.current()) == 1


def test_regenerated_reply_makes_a_branch_and_last_keeps_newest():
    index = ThreadIndex()
    record(index, chat(1), bot(0))
    record(index, chat(2), bot(1))
    record(index, chat(2), bot(1, " (regenerated)"))
    assert len(index.current("all")) == 2
    (newest,) = index.current("last")
    assert list(newest.iter_messages())[-1] == bot(1, " (regenerated)")


def test_identical_exchange_is_not_stored_twice():
    index = ThreadIndex()
    assert record(index, chat(2), bot(1)) is not None
    assert record(index, chat(2), bot(1)) is None
    assert len(index.current()) == 1


def test_edited_earlier_message_branches_from_the_edit():
    index = ThreadIndex()
    for turns in range(1, 4):
        record(index, chat(turns), bot(turns - 1))
    edited = chat(2)[:-1] + [{"role": "user", "content": "an edited question"}]
    rec = record(index, edited, bot(9))
    assert rec["base"] == 3 and rec["messages"][0]["content"] == "an edited question"
    assert len(index.current("all")) == 2
    assert len(index.current("last")) == 1


def test_continuing_a_branch_extends_that_branch():
    index = ThreadIndex()
    record(index, chat(1), bot(0))
    record(index, chat(2), bot(1, "a"))
    record(index, chat(2), bot(1, "b"))
    history = chat(2) + [bot(1, "a"), user(2)]
    record(index, history, bot(2))
    contents = sorted(list(leaf.iter_messages())[-1]["content"] for leaf in index.current())
    assert contents == ["bot reply 1b", "bot reply 2"]


def test_chats_sharing_only_a_system_prompt_and_greeting_are_different_chats():
    index = ThreadIndex()
    record(index, [SYSTEM, GREETING, {"role": "user", "content": "hi, I am Ann"}], bot(0))
    record(index, [SYSTEM, GREETING, {"role": "user", "content": "hi, I am Bob"}], bot(1))
    assert len(index.current("last")) == 2


def test_trimmed_context_window_continues_the_full_chat():
    """60 turns, each request carrying the system prompt and only the last 10 messages."""
    index = ThreadIndex()
    history = [SYSTEM]
    for i in range(60):
        history.append(user(i))
        window = [SYSTEM] + history[1:][-10:]
        record(index, window, bot(i))
        history.append(bot(i))
    leaves = index.current()
    assert len(leaves) == 1
    assert list(leaves[0].iter_messages()) == history


def test_trimmed_window_regenerate_branches_inside_the_chat():
    index = ThreadIndex()
    history = [SYSTEM]
    for i in range(20):
        history.append(user(i))
        record(index, [SYSTEM] + history[1:][-6:], bot(i))
        history.append(bot(i))
    window = [SYSTEM] + history[1:-1][-5:]  # the last user turn again, without its reply
    record(index, window, bot(19, " again"))
    assert len(index.current("all")) == 2
    (newest,) = index.current("last")
    assert list(newest.iter_messages()) == history[:-1] + [bot(19, " again")]


def test_incomplete_record_is_kept_out_of_leaves_and_matching():
    index = ThreadIndex()
    record(index, chat(1), bot(0))
    record(index, chat(2), {"role": "assistant", "content": "half a rep"}, complete=False)
    assert len(index.current()) == 1
    record(index, chat(2), bot(1))
    (leaf,) = index.current()
    assert list(leaf.iter_messages())[-1] == bot(1)


def test_history_without_reasoning_matches_a_reply_recorded_with_it():
    index = ThreadIndex()
    record(index, chat(1), {"role": "assistant", "content": " bot reply 0", "reasoning": "hmm"})
    record(index, chat(2), bot(1))
    (leaf,) = index.current()
    messages = list(leaf.iter_messages())
    assert messages[2]["reasoning"] == "hmm" and len(messages) == 5


def test_replay_from_records_rebuilds_the_same_leaves():
    index = ThreadIndex()
    records = [record(index, chat(t), bot(t - 1)) for t in range(1, 5)]
    records.append(record(index, chat(3), bot(2, "x")))
    replay = ThreadIndex()
    for rec in records:
        replay.add(rec)
    assert [n.id for n in replay.current()] == [n.id for n in index.current()]
