"""What the recorder keeps per record, and the resume cache that spares decoding every record again.

Memory per conversation is a benchmark figure (scripts/bench.py, the growth rows); here: a record's
journal line and its tool list are not held once the record is written, and resuming from the cache
builds the same index as resuming from the journal alone, whatever state the cache is in."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Tuple

from chatproxy.apis import RESPONSES
from chatproxy.chats.tree import LinesInJournal, Node
from chatproxy.config import RecordOptions
from chatproxy.recorder.journal import encode_record, meta_of, metas_of
from chatproxy.recorder.store import DatasetStore

SYSTEM = {"role": "system", "content": "You are terse."}
TOOLS = [{"name": "lookup", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}]


def open_store(folder: Path, **options: Any) -> DatasetStore:
    store = DatasetStore(folder, "s", RecordOptions(**options))
    store.open()
    return store


def record_some(store: DatasetStore) -> None:
    """Chats that go on, a branch, a chat with tools, Responses API replies, an incomplete reply."""
    for chat in range(4):
        history: List[Dict[str, Any]] = [SYSTEM]
        for turn in range(3):
            history.append({"role": "user", "content": f"chat {chat} turn {turn}"})
            reply = {"role": "assistant", "content": f"reply {chat}.{turn}"}
            store.place(list(history), reply, TOOLS if chat == 1 else None, {"complete": True})
            history.append(reply)
    store.place([SYSTEM, {"role": "user", "content": "chat 0 turn 0"}], {"role": "assistant", "content": "b"}, None, {})
    meta = {"complete": True, "api": RESPONSES, "response_id": "resp_1"}
    store.place([{"role": "user", "content": "responses"}], {"role": "assistant", "content": "r"}, None, meta)
    store.place(
        [{"role": "user", "content": "cut"}], {"role": "assistant", "content": "par"}, None, {"complete": False}
    )
    store.flush()
    store.write_snapshot()


def picture(store: DatasetStore) -> Tuple[Any, ...]:
    """Everything resuming rebuilds: records, their links and keys, leaves, shards, Responses ids."""
    nodes = [
        (n.id, n.parent.id if n.parent else None, n.base, n.keys, n.chains, n.root, n.first_user, n.complete)
        for n in store.index.nodes.values()
    ]
    tools = [(n.id, n.tools) for n in store.index.nodes.values()]
    shards = [(s.number, list(s.leaves), s.chats) for s in store.shards]
    return nodes, tools, list(store.index.leaves), shards, store.recall("resp_1"), store.saved


def test_a_written_record_keeps_no_line_and_no_tool_list_in_memory(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    record_some(store)
    lines = store.index.lines
    assert isinstance(lines, LinesInJournal) and not lines._unwritten  # every line is read back from the journal
    some = next(iter(store.index.nodes.values()))
    assert not hasattr(some, "__dict__") and "line" not in Node.__slots__ and "tools" not in Node.__slots__
    with_tools = [n for n in store.index.nodes.values() if n.tools_at is not None]
    assert with_tools and all(n.tools == TOOLS for n in with_tools)
    leaf = next(n for n in store.index.leaves.values() if n.length == 7)
    assert [m["content"] for m in leaf.iter_messages()][-1] == "reply 0.2"  # decoded from the journal
    store.close()


def test_resuming_from_the_cache_builds_what_the_journal_alone_builds(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    record_some(store)
    store.close()
    cache = tmp_path / ".s.jsonl.cache"
    assert cache.stat().st_size > 100
    cached = open_store(tmp_path)
    from_cache = picture(cached)
    cached.close()
    cache.unlink()
    fresh = open_store(tmp_path)
    assert picture(fresh) == from_cache
    fresh.close()
    assert cache.exists()  # written again by the resume that had none


def test_a_cache_cut_short_or_disagreeing_with_the_journal_is_not_believed(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    record_some(store)
    store.close()
    expected_store = open_store(tmp_path)
    expected = picture(expected_store)
    expected_store.close()
    cache = tmp_path / ".s.jsonl.cache"
    whole = cache.read_bytes()
    cache.write_bytes(whole[: len(whole) // 2 + 3])  # cut in the middle of an entry, as a crash can
    resumed = open_store(tmp_path)
    assert picture(resumed) == expected
    resumed.close()
    assert cache.read_bytes() == whole  # the missing part is written again
    # The journal changed under the cache (an edited line of the same length): that line is read again.
    journal = tmp_path / "s.jsonl"
    lines = journal.read_bytes().splitlines(keepends=True)
    edited = json.loads(lines[0])
    edited["messages"][1]["content"] = edited["messages"][1]["content"].replace("chat 0", "chat X")
    lines[0] = json.dumps(edited, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
    journal.write_bytes(b"".join(lines))
    cache.write_bytes(whole)
    resumed = open_store(tmp_path)
    from_cache = picture(resumed)
    assert resumed.index.nodes[edited["id"]].messages[1]["content"] == "chat X turn 0"
    resumed.close()
    cache.unlink()
    fresh = open_store(tmp_path)
    assert picture(fresh) == from_cache
    fresh.close()


def test_a_cache_of_another_file_is_ignored(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    record_some(store)
    store.close()
    expected_store = open_store(tmp_path)
    expected = picture(expected_store)
    expected_store.close()
    (tmp_path / ".s.jsonl.cache").write_bytes(b"not a cache at all\n" * 50)
    resumed = open_store(tmp_path)
    assert picture(resumed) == expected
    resumed.close()
    assert (tmp_path / ".s.jsonl.cache").read_bytes().startswith(b"chatproxy resume cache")


def test_meta_of_a_line_is_the_records_own_whatever_its_texts_hold() -> None:
    """The review page decodes only a line's meta (journal.meta_of); every line gives what decoding it
    whole gives: texts that spell out a meta key, a meta holding one, tools written after it, damage."""
    meta = {"time": "2026-05-01T10:00:00.000Z", "model": "m", "tags": ["a"], "usage": {"total_tokens": 3}}
    hostile = 'x","meta":{"model":"forged"}} ,"meta":{"model":"forged"}'
    records = [
        {"v": 1, "id": "1", "messages": [{"role": "user", "content": hostile}], "meta": meta},
        {"v": 1, "id": "2", "messages": [], "meta": dict(meta, extra={"a": 1, "meta": {"model": "inner"}})},
        {"v": 1, "id": "3", "messages": [], "meta": meta, "tools": [{"name": "t", "meta": {"model": "tool"}}]},
        {"v": 1, "id": "4", "messages": [], "meta": dict(meta, note=',"meta":')},
        {"v": 1, "id": "5", "messages": []},
    ]
    lines = [encode_record(record)[:-1] for record in records]
    for record, line in zip(records, lines):
        assert meta_of(line) == record.get("meta", {}), line
        assert metas_of([line, line]) == [record.get("meta", {})] * 2, line
    assert metas_of(lines) == [record.get("meta", {}) for record in records]
    plain = [encode_record(dict(records[0], id=str(n)))[:-1] for n in range(3)]
    assert metas_of(plain) == [meta] * 3
    assert meta_of(b'{"v":1,"id":"6","meta":{"model":"m"') == {}  # torn: no meta rather than a wrong one
    assert meta_of(b'{"v":1,"id":"7","messages":[],"meta":[1,2]}') == {}
