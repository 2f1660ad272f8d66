"""The review journal: events appended and fsynced beside the session, folded into marks, repaired on open."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chatproxy.review import marks


def test_events_fold_into_the_latest_state() -> None:
    events = [
        marks.make_event("c1", "keep"),
        marks.make_event("c1", "rating", value=4),
        marks.make_event("c1", "tag", value="good"),
        marks.make_event("c1", "tag", value="tools"),
        marks.make_event("c1", "untag", value="tools"),
        marks.make_event("c1", "note", value="fine"),
        marks.make_event("c2", "discard"),
    ]
    folded = marks.fold(events)
    assert folded["c1"].status == "keep" and folded["c1"].rating == 4
    assert folded["c1"].tags == {"good"} and folded["c1"].note == "fine"
    assert folded["c2"].status == "discard"


def test_undo_takes_back_one_event() -> None:
    keep = marks.make_event("c1", "keep")
    discard = marks.make_event("c1", "discard")
    events = [keep, discard]
    assert marks.last_undoable(events, "c1") == discard["id"]
    events.append(marks.make_event("c1", "undo", target=discard["id"]))
    assert marks.fold(events)["c1"].status == "keep"
    assert marks.last_undoable(events, "c1") == keep["id"]
    events.append(marks.make_event("c1", "undo", target=keep["id"]))
    assert "c1" not in marks.fold(events)


def test_an_edit_keeps_the_original_and_a_stale_edit_is_not_applied() -> None:
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "old", "reasoning": "r"}]
    edit = marks.make_event("c1", "edit", turn=1, content="new", original="old")
    mark = marks.fold([edit])["c1"]
    edited, applied = marks.apply_edits(messages, mark)
    assert edited[1] == {"role": "assistant", "content": "new", "reasoning": "r"}
    assert messages[1]["content"] == "old" and [e.original for e in applied] == ["old"]
    stale = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "changed"}]
    assert marks.apply_edits(stale, mark) == (stale, [])


@pytest.mark.parametrize(
    ("op", "fields"),
    [
        ("rating", {"value": 9}),
        ("rating", {"value": True}),
        ("tag", {"value": "a,b"}),
        ("edit", {"turn": -1}),
        ("undo", {}),
        ("explode", {}),
    ],
)
def test_malformed_events_are_refused(op: str, fields: dict) -> None:  # type: ignore[type-arg]
    with pytest.raises(marks.MarkError):
        marks.make_event("c1", op, **fields)


def test_the_journal_is_appended_beside_the_session_and_read_back(tmp_path: Path) -> None:
    journal = marks.ReviewJournal(tmp_path, "week")
    journal.open()
    journal.append(marks.make_event("c1", "discard"))
    journal.close()
    path = tmp_path / "week.review.jsonl"
    assert path.stat().st_mode & 0o777 == 0o600
    lines = path.read_bytes().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["op"] == "discard"
    again = marks.ReviewJournal(tmp_path, "week")
    again.open()
    assert again.marks()["c1"].status == "discard"


def test_a_torn_last_line_is_set_aside_and_cut_off_on_open(tmp_path: Path) -> None:
    good = json.dumps(marks.make_event("c1", "keep")).encode() + b"\n"
    (tmp_path / "week.review.jsonl").write_bytes(good + b'{"v": 1, "id": "x", "conv": "c2", "op": "disc')
    journal = marks.ReviewJournal(tmp_path, "week")
    journal.open()
    assert journal.repaired is not None and journal.repaired.read_bytes().startswith(b'{"v": 1')
    assert (tmp_path / "week.review.jsonl").read_bytes() == good
    journal.append(marks.make_event("c2", "discard"))
    folded = marks.fold(marks.read_review(tmp_path, "week").events)
    assert folded["c1"].status == "keep" and folded["c2"].status == "discard"


def test_any_truncation_of_the_journal_keeps_every_complete_event(tmp_path: Path) -> None:
    data = b"".join(json.dumps(marks.make_event(f"c{i}", "keep")).encode() + b"\n" for i in range(4))
    for cut in range(len(data) + 1):
        contents = marks.parse_review(data[:cut])
        assert len(contents.events) == data[:cut].count(b"\n")
        assert contents.bad_lines == []


def test_a_damaged_middle_line_is_skipped(tmp_path: Path) -> None:
    data = b"garbage\n" + json.dumps(marks.make_event("c1", "keep")).encode() + b"\n"
    contents = marks.parse_review(data)
    assert [e["conv"] for e in contents.events] == ["c1"] and contents.bad_lines[0][0] == 1
