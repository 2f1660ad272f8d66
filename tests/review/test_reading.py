"""How the page reads sessions: one collection, answers while a long journal is still being read, then only
what is appended (a journal rewritten or shortened is read again), sessions begun since added."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest
from review_sessions import bot, make_week, record, user, write_session

from chatproxy.chats import tree
from chatproxy.config import RecordOptions
from chatproxy.recorder.journal import cache_path
from chatproxy.recorder.store import DatasetStore
from chatproxy.review import marks
from chatproxy.review.catalogue import LOADING_WAIT, Catalogue


def append(folder: Path, name: str, records: List[Dict[str, Any]]) -> None:
    with open(folder / f"{name}.jsonl", "ab") as journal:
        journal.write(b"".join(json.dumps(r).encode() + b"\n" for r in records))


def firsts(catalogue: Catalogue, query: str = "") -> List[str]:
    params = dict(part.split("=", 1) for part in query.split("&") if part)
    return [row["first"] for row in catalogue.query({"per": "200", **params})["rows"]]


@pytest.fixture
def catalogue(tmp_path: Path) -> Any:
    opened: List[Catalogue] = []

    def make(folder: Path, names: Any = None) -> Catalogue:
        opened.append(Catalogue(folder, names))
        return opened[-1]

    yield make
    for each in opened:
        each.close()


def test_answers_come_while_a_long_session_is_read(tmp_path: Path, catalogue: Any) -> None:
    folder = tmp_path / "datasets"
    padding = "lorem ipsum dolor sit amet " * 40
    chats = [
        record(
            f"{n:016x}", [user(f"question {n} {padding}"), bot(f"answer {n}")], f"2026-05-01T{n % 24:02d}:00:00.000Z"
        )
        for n in range(6000)
    ]
    write_session(folder, "long", chats)
    found = catalogue(folder)
    found.start()
    first = found.query({})
    assert first["loading"] is not None and first["total"] < 6000
    assert 0 <= first["loading"]["read"] < first["loading"]["size"] == (folder / "long.jsonl").stat().st_size
    # Asked again with wait=1 (as the page does while loading): answered when the reading is done, or after
    # LOADING_WAIT if it is not done by then, never at once with `loading` still set.
    while True:
        started = time.monotonic()
        again = found.query({"wait": "1"})
        if again["loading"] is None:
            break
        assert time.monotonic() - started >= LOADING_WAIT * 0.9
    assert again["total"] == 6000
    found.wait_until_read()
    done = found.query({"q": "question 5999"})
    assert done["loading"] is None and done["total"] == 1
    assert found.query({})["total"] == 6000


def test_appended_records_are_taken_in_without_reading_the_journal_again(tmp_path: Path, catalogue: Any) -> None:
    folder = make_week(tmp_path)
    found = catalogue(folder, ["week"])
    found.wait_until_read()
    assert found.query({})["total"] == 5
    # The hello chat goes on (its record is superseded), and a new chat begins.
    append(
        folder,
        "week",
        [
            record(
                "a000000000000006", [user("and again"), bot("Yes.")], "2026-05-03T10:00:00.000Z", "a000000000000001", 3
            ),
            record("a000000000000007", [user("brand new"), bot("Hello.")], "2026-05-03T11:00:00.000Z"),
        ],
    )
    rows = found.query({})["rows"]
    assert [row["first"] for row in rows[:2]] == ["brand new", "hello there"] and len(rows) == 6
    assert rows[1]["turns"] == 4 and rows[1]["id"] == "a000000000000006"
    assert found.query({"q": "again"})["total"] == 1
    assert found._reader is not None and found._reader.journals[0].records == 7  # each line read once


def test_a_line_still_being_written_waits_until_it_is_whole(tmp_path: Path, catalogue: Any) -> None:
    folder = make_week(tmp_path)
    found = catalogue(folder)
    found.wait_until_read()
    line = json.dumps(record("a000000000000008", [user("half"), bot("way")], "2026-05-04T10:00:00.000Z")).encode()
    with open(folder / "week.jsonl", "ab") as journal:
        journal.write(line[:40])
    assert "half" not in firsts(found)
    with open(folder / "week.jsonl", "ab") as journal:
        journal.write(line[40:] + b"\n")
    assert firsts(found)[0] == "half"


def test_a_journal_rewritten_or_shortened_is_read_again(tmp_path: Path, catalogue: Any) -> None:
    folder = make_week(tmp_path)
    found = catalogue(folder)
    found.wait_until_read()
    write_session(
        folder, "week", [record("f000000000000001", [user("only this"), bot("ok")], "2026-05-05T10:00:00.000Z")]
    )
    deadline = time.monotonic() + 10
    while firsts(found) != ["only this"] and time.monotonic() < deadline:
        time.sleep(0.05)  # the first request after the change starts the new reading; the next ones see it
    assert firsts(found) == ["only this"]
    # Rewritten longer, with other first lines (not an append): read again too.
    longer = [
        record(f"f00000000000010{n}", [user(f"other {n}"), bot("ok")], "2026-05-05T11:00:00.000Z") for n in range(5)
    ]
    write_session(folder, "week", longer)
    while len(firsts(found)) != 5 and time.monotonic() < deadline + 10:
        time.sleep(0.05)
    assert sorted(firsts(found)) == [f"other {n}" for n in range(5)]


def test_a_chat_continued_in_another_session_is_one_row_the_longest(tmp_path: Path, catalogue: Any) -> None:
    """The collection export reads: the restart recorded the whole history again into a new session."""
    folder = make_week(tmp_path)
    found = catalogue(folder)
    found.wait_until_read()
    assert found.mark("week", "a000000000000001", "keep", {})["status"] == "keep"
    history = [{"role": "system", "content": "You are terse."}, user("hello there"), bot("Hi.")]
    later = [
        record("b000000000000001", history + [user("still there?"), bot("Yes.")], "2026-05-06T10:00:00.000Z"),
        record("b000000000000002", [user("a new one"), bot("Sure.")], "2026-05-06T11:00:00.000Z"),
    ]
    write_session(folder, "zz-later", later)
    rows = found.query({"per": "200"})["rows"]
    hello = [row for row in rows if row["first"] == "hello there"]
    assert len(rows) == 6 and len(hello) == 1
    assert (hello[0]["session"], hello[0]["turns"], hello[0]["id"]) == ("zz-later", 4, "b000000000000001")
    assert hello[0]["status"] == "keep"  # marked before it went on, in the other session
    assert found.query({"session": "week", "q": "hello"})["total"] == 0
    assert found.facets()["sessions"] == ["week", "zz-later"]
    # The conversation opens whole, from both sessions' records.
    opened = found.conversation("zz-later", "b000000000000001")
    assert [m["content"] for m in opened["messages"]][1:] == ["hello there", "Hi.", "still there?", "Yes."]


def test_a_damaged_line_is_skipped_and_what_it_began_is_marked(tmp_path: Path, catalogue: Any) -> None:
    folder = tmp_path / "datasets"
    lines = [
        json.dumps(record("g000000000000001", [user("first chat"), bot("ok")], "2026-05-01T10:00:00.000Z")),
        '{"v": 1, "id": "g000000000000002", "messages": [ not json',
        json.dumps(
            record(
                "g000000000000003", [user("and then?"), bot("more")], "2026-05-01T10:02:00.000Z", "g000000000000002", 2
            )
        ),
        json.dumps(record("g000000000000004", [user("last chat"), bot("ok")], "2026-05-01T10:03:00.000Z")),
    ]
    folder.mkdir()
    (folder / "damaged.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    found = catalogue(folder)
    found.wait_until_read()
    rows = {row["first"] or row["id"]: row for row in found.query({})["rows"]}
    assert set(rows) == {"first chat", "last chat", "and then?"}
    assert rows["and then?"]["damaged"] and not rows["first chat"]["damaged"]
    assert found._reader is not None and found._reader.journals[0].bad_lines[0][0] == 2


def test_a_journal_that_cannot_be_read_is_reported_and_read_again_once_it_can(tmp_path: Path, catalogue: Any) -> None:
    folder = make_week(tmp_path)
    found = catalogue(folder, ["week"])
    found.wait_until_read()
    journal = folder / "week.jsonl"
    kept = journal.read_bytes()
    journal.unlink()
    journal.mkdir()  # a real read error (IsADirectoryError), also as root
    deadline = time.monotonic() + 10
    while not found.query({})["failure"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "cannot read the sessions" in found.query({})["failure"]
    journal.rmdir()
    journal.write_bytes(kept)
    while (found.query({})["failure"] or found.query({})["total"] != 5) and time.monotonic() < deadline + 10:
        time.sleep(0.05)
    answer = found.query({})
    assert answer["failure"] is None and answer["total"] == 5


# -- the recorder's resume cache ---------------------------------------------------------------------------


def resumed(folder: Path, name: str) -> Path:
    """Open and close the session as the recorder does on resuming it: it leaves the resume cache beside
    the journal, as every recorded session has one."""
    store = DatasetStore(folder, name, RecordOptions())
    store.open()
    store.close()
    return cache_path(folder / f"{name}.jsonl")


def everything(catalogue: Catalogue) -> List[Dict[str, Any]]:
    """Every row as the page gets it, and each conversation opened."""
    rows = catalogue.query({"per": "200"})["rows"]
    return [dict(row, opened=catalogue.conversation(row["session"], row["id"])) for row in rows]


@pytest.fixture
def summaries_made(monkeypatch: pytest.MonkeyPatch) -> List[str]:
    """The ids of the records summarised from their decoded JSON (not taken from a resume cache)."""
    made: List[str] = []
    original = tree.Summary.of

    def counted(record: Dict[str, Any]) -> tree.Summary:
        made.append(record["id"])
        return original(record)

    monkeypatch.setattr(tree.Summary, "of", staticmethod(counted))
    return made


def test_a_session_with_its_resume_cache_reads_as_its_journal_alone(
    tmp_path: Path, catalogue: Any, summaries_made: List[str]
) -> None:
    folder = make_week(tmp_path)
    alone = tmp_path / "alone"
    shutil.copytree(folder, alone)
    summaries_made.clear()
    assert resumed(folder, "week").stat().st_size > 0
    summaries_made.clear()
    with_cache = catalogue(folder, ["week"])
    with_cache.wait_until_read()
    assert summaries_made == []  # every record from the cache, none decoded and hashed again
    without = catalogue(alone, ["week"])
    without.wait_until_read()
    assert len(summaries_made) == 5
    assert everything(with_cache) == everything(without) and len(everything(without)) == 5
    # A search and a filter test the same summaries, made from the lines.
    for query in ({"q": "hello"}, {"tools": "1"}, {"model": "gpt*"}, {"tag": "vision"}):
        assert with_cache.query(query)["total"] == without.query(query)["total"]


def test_a_cache_that_disagrees_with_its_journal_is_used_up_to_where_it_does(
    tmp_path: Path, catalogue: Any, summaries_made: List[str]
) -> None:
    folder = make_week(tmp_path)
    cache = resumed(folder, "week")
    journal = folder / "week.jsonl"
    lines = journal.read_bytes().split(b"\n")[:-1]
    # The fourth line edited by hand (same length, other text): from there on the journal is read.
    edited = lines[3].replace(b'"2026-05-02T09', b'"2026-05-02T08', 1)
    assert edited != lines[3] and len(edited) == len(lines[3])
    journal.write_bytes(b"\n".join(lines[:3] + [edited] + lines[4:]) + b"\n")
    alone = tmp_path / "alone"
    shutil.copytree(folder, alone)
    cache_path(alone / "week.jsonl").unlink()
    summaries_made.clear()
    found = catalogue(folder, ["week"])
    found.wait_until_read()
    assert len(summaries_made) == len(lines) - 3
    reference = catalogue(alone, ["week"])
    reference.wait_until_read()
    assert everything(found) == everything(reference)
    # Another session's cache put in its place: used for nothing, and nothing read wrong.
    other = tmp_path / "other"
    write_session(other, "week", [record("c000000000000001", [user("unrelated"), bot("ok")], "2026-05-01T10:00:00Z")])
    shutil.copy(resumed(other, "week"), cache)
    summaries_made.clear()
    again = catalogue(folder, ["week"])
    again.wait_until_read()
    assert len(summaries_made) == len(lines) and everything(again) == everything(reference)


def test_a_damaged_line_is_skipped_while_the_cache_is_read(tmp_path: Path, catalogue: Any) -> None:
    folder = make_week(tmp_path)
    journal = folder / "week.jsonl"
    lines = journal.read_bytes().split(b"\n")[:-1]
    journal.write_bytes(b"\n".join(lines[:2] + [b'{"v": 1, "id": "torn", "messages": [ not json'] + lines[2:]) + b"\n")
    resumed(folder, "week")  # the recorder skips it too: the cache has no entry for it
    alone = tmp_path / "alone"
    shutil.copytree(folder, alone)
    cache_path(alone / "week.jsonl").unlink()
    found, reference = catalogue(folder, ["week"]), catalogue(alone, ["week"])
    found.wait_until_read()
    reference.wait_until_read()
    assert everything(found) == everything(reference) and len(everything(found)) == 5
    assert found._reader is not None and [n for n, _ in found._reader.journals[0].bad_lines] == [3]


def test_a_review_journal_torn_by_a_crash_is_repaired_when_the_page_starts(
    tmp_path: Path, catalogue: Any, caplog: pytest.LogCaptureFixture
) -> None:
    folder = make_week(tmp_path)
    good = json.dumps(marks.make_event("a000000000000001", "keep")).encode() + b"\n"
    review = folder / "week.review.jsonl"
    review.write_bytes(good + b'{"v": 1, "id": "x", "conv": "a000000000000004", "op": "disc')
    found = catalogue(folder, ["week"])
    with caplog.at_level("WARNING", logger="chatproxy"):
        found.wait_until_read()
        rows = {row["id"]: row for row in found.query({})["rows"]}
    # Repaired before any mark is written: the torn line set aside, the journal cut back to its last whole line.
    assert review.read_bytes() == good
    aside = list(folder.glob("week.review.jsonl.torn-*"))
    assert len(aside) == 1 and aside[0].read_bytes().endswith(b'"op": "disc')
    assert any("torn by a crash" in record.getMessage() for record in caplog.records)
    assert rows["a000000000000001"]["status"] == "keep" and rows["a000000000000004"]["status"] is None
    # The next mark lands on a whole line.
    found.mark("week", "a000000000000004", "discard", {})
    assert [json.loads(line)["op"] for line in review.read_bytes().splitlines()] == ["keep", "discard"]
