"""ThreadIndex tolerance (issue 13): whitespace a frontend rewrites, continued messages, side branches."""

from __future__ import annotations

import uuid
from typing import Any, Dict, List

from chatproxy.chats.tree import ThreadIndex

SYSTEM = {"role": "system", "content": "You are Seraphina."}
GREETING = {"role": "assistant", "content": "Welcome, traveller."}


def user(text: str) -> Dict[str, Any]:
    return {"role": "user", "content": text}


def bot(text: str) -> Dict[str, Any]:
    return {"role": "assistant", "content": text}


def record(index: ThreadIndex, history: List[Dict[str, Any]], reply: Dict[str, Any], **meta: Any) -> None:
    placement = index.place(history, reply)
    assert not placement.duplicate
    parent = placement.parent.id if placement.parent else None
    rec = {"id": uuid.uuid4().hex, "parent": parent, "base": placement.base, "messages": placement.new, "meta": meta}
    index.add(rec)


def leaves(index: ThreadIndex) -> List[List[Dict[str, Any]]]:
    return [list(node.iter_messages()) for node in index.current()]


def test_a_reply_re_sent_with_other_whitespace_continues_the_chat_and_takes_the_sent_text() -> None:
    """ "Seraphina:Hello" re-rendered as "Seraphina: Hello", a reply trimmed: one chat, as the frontend shows it."""
    index = ThreadIndex()
    record(index, [SYSTEM, user("Hi.")], bot("Seraphina:Hello there.\n"))
    record(index, [SYSTEM, user("Hi."), bot("Seraphina: Hello there."), user("Who are you?")], bot("Seraphina."))
    assert leaves(index) == [
        [SYSTEM, user("Hi."), bot("Seraphina: Hello there."), user("Who are you?"), bot("Seraphina.")]
    ]


def test_a_continued_message_replaces_the_record_it_continues() -> None:
    index = ThreadIndex()
    record(index, [SYSTEM, user("Hi.")], bot("Hello there."))
    record(index, [SYSTEM, user("Hi.")], bot("Hello there. How are you?"), continued="nudge")
    assert leaves(index) == [[SYSTEM, user("Hi."), bot("Hello there. How are you?")]]


def test_the_next_request_sets_the_join_of_a_continued_message() -> None:
    index = ThreadIndex()
    record(index, [SYSTEM, user("Hi.")], bot("Hello there."))
    record(index, [SYSTEM, user("Hi.")], bot("Hello there. How are you?"), continued="nudge")
    record(index, [SYSTEM, user("Hi."), bot("Hello there.\nHow are you?"), user("Fine.")], bot("Good."))
    assert leaves(index) == [[SYSTEM, user("Hi."), bot("Hello there.\nHow are you?"), user("Fine."), bot("Good.")]]


def test_a_regeneration_that_happens_to_extend_the_old_reply_is_still_a_branch() -> None:
    """Only a request that continued the message (meta.continued) replaces it."""
    index = ThreadIndex()
    record(index, [SYSTEM, user("Hi.")], bot("Yes."))
    record(index, [SYSTEM, user("Hi.")], bot("Yes. And more."))
    assert len(leaves(index)) == 2


def test_a_side_request_recorded_beside_the_chat_leaves_its_record_and_the_chat_goes_on() -> None:
    index = ThreadIndex()
    chat = [SYSTEM, user("Hi."), bot("Hello there.")]
    record(index, chat[:-1], chat[-1])
    record(index, chat + [user("[Write your next reply as Alex.]")], bot("Alex waves."), side_request="impersonate")
    assert len(leaves(index)) == 2
    record(index, chat + [user("Alex waves.")], bot("Seraphina smiles."))
    assert leaves(index)[0][-1] == bot("Alex waves.")
    assert leaves(index)[1] == chat + [user("Alex waves."), bot("Seraphina smiles.")]
    assert len(leaves(index)) == 2


def test_same_greeting_and_first_message_under_another_system_prompt_is_another_chat() -> None:
    """Not a trimmed window: the window would start at the greeting, so nothing was trimmed."""
    index = ThreadIndex()
    record(index, [SYSTEM, {"role": "system", "content": "[Start a new Chat]"}, GREETING, user("Hi.")], bot("Hello."))
    record(index, [{"role": "system", "content": "Story string."}, GREETING, user("Hi.")], bot("Hey."))
    assert len(leaves(index)) == 2
