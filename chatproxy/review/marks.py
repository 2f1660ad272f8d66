"""Curation marks, kept beside each session in its own append-only journal, `SESSION.review.jsonl`.

The recorded journal and the live dataset are never rewritten: a mark is an event appended (one `write`
on an O_APPEND descriptor, then `fsync`, durable.AppendLog) to the review journal, and the marks of a
conversation are what its events fold into. Losing the review file loses marks, never records. A line
torn by a crash is set aside (`SESSION.review.jsonl.torn-TIME`) and cut off when the review page starts
and when the journal is opened for writing, as the recorder does with the recorded journal on start;
readers just leave it out.

One event per line, compact JSON:

    {"v": 1, "id": "<12 hex>", "time": "...Z", "conv": "<conversation id>", "op": OP, ...}

    op        fields        effect
    keep      -             status "keep"
    discard   -             status "discard"
    unmark    -             no status
    rating    value: int    rating 1..5 (0 clears it)
    tag       value: str    adds a review tag
    untag     value: str    removes it
    note      value: str    the note ("" clears it)
    edit      turn: int, content: str, original: str
                            the assistant message at `turn` (0-based, in the conversation's full message
                            list) reads `content` instead; `original` is the recorded text, kept so the
                            edit is recognised as stale if the turn changes and so DPO can pair them
    undo      target: id    the event `target` no longer counts

An event written by a bulk action (the page's "apply to all matching") also carries `"batch": "<12 hex>"`,
shared by every event of that action, so the action can be undone as one (an undo per event).

A conversation that a later record extends (the chat went on) keeps its marks: they are looked up on
the conversation's own id and on every earlier record it contains whole (see `marks_for`).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple

from chatproxy.recorder import durable

REVIEW_SUFFIX = ".review.jsonl"
EVENT_VERSION = 1
STATUSES = ("keep", "discard")
OPS = ("keep", "discard", "unmark", "rating", "tag", "untag", "note", "edit", "undo")
MAX_RATING = 5
MAX_TEXT = 1 << 20  # characters in a note or an edited turn: a pasted answer fits, a runaway client does not


class MarkError(ValueError):
    """An event that cannot be recorded; str(exc) is one line for the user."""


@dataclasses.dataclass(frozen=True)
class Edit:
    turn: int
    content: str
    original: str


@dataclasses.dataclass
class Marks:
    """What one conversation's events fold into."""

    status: Optional[str] = None  # "keep", "discard" or None (unmarked)
    rating: Optional[int] = None
    tags: Set[str] = dataclasses.field(default_factory=set)
    note: str = ""
    edits: Dict[int, Edit] = dataclasses.field(default_factory=dict)
    events: List[Dict[str, Any]] = dataclasses.field(default_factory=list)  # those that count, oldest first

    def is_empty(self) -> bool:
        return self.status is None and self.rating is None and not self.tags and not self.note and not self.edits

    def to_json(self) -> Dict[str, Any]:
        return {
            "status": self.status,
            "rating": self.rating,
            "tags": sorted(self.tags),
            "note": self.note,
            "edits": [dataclasses.asdict(edit) for _, edit in sorted(self.edits.items())],
            "last_event": self.events[-1]["id"] if self.events else None,
        }


def review_path(folder: Path, session: str) -> Path:
    return folder / (session + REVIEW_SUFFIX)


def make_event(conv: str, op: str, **fields: Any) -> Dict[str, Any]:
    """A checked event, ready to append; raises MarkError for anything that would not fold."""
    if op not in OPS:
        raise MarkError(f"unknown mark {op!r}")
    if not isinstance(conv, str) or not conv or len(conv) > 64:
        raise MarkError("no conversation id")
    event: Dict[str, Any] = {"v": EVENT_VERSION, "id": os.urandom(6).hex(), "time": _now(), "conv": conv, "op": op}
    if op == "rating":
        value = fields.get("value")
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_RATING:
            raise MarkError(f"a rating is a whole number from 1 to {MAX_RATING} (0 clears it)")
        event["value"] = value
    elif op in ("tag", "untag"):
        value = fields.get("value")
        if not isinstance(value, str) or not value.strip() or len(value) > 100 or "," in value:
            raise MarkError("a tag is a short text without commas")
        event["value"] = value.strip()
    elif op == "note":
        value = fields.get("value")
        if not isinstance(value, str) or len(value) > MAX_TEXT:
            raise MarkError("a note is a text")
        event["value"] = value
    elif op == "edit":
        turn, content, original = fields.get("turn"), fields.get("content"), fields.get("original")
        if isinstance(turn, bool) or not isinstance(turn, int) or turn < 0:
            raise MarkError("an edit names the turn it replaces")
        if not isinstance(content, str) or not isinstance(original, str) or len(content) > MAX_TEXT:
            raise MarkError("an edit holds the new text and the original")
        event.update(turn=turn, content=content, original=original)
    elif op == "undo":
        target = fields.get("target")
        if not isinstance(target, str) or not target:
            raise MarkError("undo names the event it takes back")
        event["target"] = target
    return event


def _now() -> str:
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


# ---------------------------------------------------------------------------------------------------------
# Reading and folding
# ---------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ReviewContents:
    events: List[Dict[str, Any]]
    bad_lines: List[Tuple[int, str]]
    torn_tail: bytes
    good_size: int


def parse_review(data: bytes) -> ReviewContents:
    """Every complete line holding an event; the partial last line is returned, not parsed."""
    end = data.rfind(b"\n") + 1
    contents = ReviewContents([], [], data[end:], end)
    for number, line in enumerate(data[:end].split(b"\n")[:-1], start=1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except (ValueError, RecursionError) as exc:
            contents.bad_lines.append((number, f"not JSON ({exc})"))
            continue
        if not isinstance(event, dict) or event.get("op") not in OPS or not isinstance(event.get("conv"), str):
            contents.bad_lines.append((number, "not a review event"))
            continue
        contents.events.append(event)
    return contents


def read_review(folder: Path, session: str) -> ReviewContents:
    try:
        data = review_path(folder, session).read_bytes()
    except FileNotFoundError:
        data = b""
    return parse_review(data)


def fold(events: Iterable[Dict[str, Any]]) -> Dict[str, Marks]:
    """Conversation id -> its marks; undone events (and malformed ones) do not count."""
    events = list(events)
    undone = {e.get("target") for e in events if e.get("op") == "undo"}
    marks: Dict[str, Marks] = {}
    for event in events:
        if event.get("op") == "undo" or event.get("id") in undone:
            continue
        _apply(marks.setdefault(event["conv"], Marks()), event)
    return {conv: mark for conv, mark in marks.items() if mark.events}


def _apply(mark: Marks, event: Dict[str, Any]) -> None:
    op, value = event["op"], event.get("value")
    if op in STATUSES:
        mark.status = op
    elif op == "unmark":
        mark.status = None
    elif op == "rating" and isinstance(value, int):
        mark.rating = value or None
    elif op == "tag" and isinstance(value, str):
        mark.tags.add(value)
    elif op == "untag" and isinstance(value, str):
        mark.tags.discard(value)
    elif op == "note" and isinstance(value, str):
        mark.note = value
    elif op == "edit":
        turn, content, original = event.get("turn"), event.get("content"), event.get("original")
        if not (isinstance(turn, int) and isinstance(content, str) and isinstance(original, str)):
            return
        if content == original:
            mark.edits.pop(turn, None)  # edited back to what was recorded
        else:
            mark.edits[turn] = Edit(turn, content, original)
    else:
        return
    mark.events.append(event)


def last_undoable(events: Iterable[Dict[str, Any]], conv: str) -> Optional[str]:
    """The id of the newest event of `conv` that still counts, for `undo`."""
    events = list(events)
    undone = {e.get("target") for e in events if e.get("op") == "undo"}
    for event in reversed(events):
        if event.get("conv") == conv and event.get("op") != "undo" and event.get("id") not in undone:
            return str(event.get("id"))
    return None


def marks_for(marks: Dict[str, Marks], chain: List[str]) -> Marks:
    """The marks of a conversation: `chain` is its own id, then the ids of the earlier records it contains
    whole (newest first). The newest record holding marks gives them; a chat marked and then continued
    keeps the mark until the longer conversation is marked itself."""
    for conv in chain:
        found = marks.get(conv)
        if found is not None:
            return found
    return Marks()


def apply_edits(messages: List[Dict[str, Any]], mark: Marks) -> Tuple[List[Dict[str, Any]], List[Edit]]:
    """The conversation with its edited assistant turns in place, and the edits that applied. An edit
    whose turn no longer holds the original text (or is no assistant turn) is stale and left out."""
    if not mark.edits:
        return messages, []
    edited = list(messages)
    applied = []
    for turn, edit in sorted(mark.edits.items()):
        if turn < len(edited) and _is_assistant_text(edited[turn], edit.original):
            edited[turn] = dict(edited[turn], content=edit.content)
            applied.append(edit)
    return edited, applied


def _is_assistant_text(message: Dict[str, Any], original: str) -> bool:
    return message.get("role") == "assistant" and message.get("content") == original


# ---------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------


class ReviewJournal:
    """The review journal of one session, opened for appending. Blocking: run it off the event loop."""

    def __init__(self, folder: Path, session: str) -> None:
        self.folder = folder
        self.session = session
        self.path = review_path(folder, session)
        self._log = durable.AppendLog(self.path)
        self.events: List[Dict[str, Any]] = []
        self.repaired: Optional[Path] = None  # where a torn last line was set aside, if one was

    def open(self) -> None:
        """Read the events back, setting aside a last line torn by a crash."""
        contents = read_review(self.folder, self.session)
        if contents.torn_tail:
            self._set_aside(contents.torn_tail, contents.good_size)
        self.events = contents.events

    def _set_aside(self, torn: bytes, good_size: int) -> None:
        aside = self.path.with_name(f"{self.path.name}.torn-{int(time.time())}")
        durable.atomic_write(aside, torn)
        with open(self.path, "r+b") as journal:
            # A writer that appended since the read made the tail whole: nothing to cut then.
            if os.fstat(journal.fileno()).st_size == good_size + len(torn):
                journal.truncate(good_size)
                journal.flush()
                os.fsync(journal.fileno())
        self.repaired = aside

    def refresh(self) -> None:
        """Take in what another writer (the `mark` command, another page) appended meanwhile."""
        self.events = read_review(self.folder, self.session).events

    def append(self, event: Dict[str, Any]) -> None:
        line = json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"
        self._log.append(line)
        self.events.append(event)

    def append_many(self, events: List[Dict[str, Any]]) -> None:
        """Several events in one write and one fsync (a bulk action): all of them land, or none."""
        lines = [
            json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n" for event in events
        ]
        self._log.append(b"".join(lines))
        self.events.extend(events)

    def marks(self) -> Dict[str, Marks]:
        return fold(self.events)

    def close(self) -> None:
        self._log.close()


def contained_ids(node: Any) -> List[str]:
    """A conversation's id (a chats.tree.Node leaf), then the ids of the earlier records it holds whole,
    newest first: the ids a mark on this chat may have been made under before it went on."""
    ids = [node.id]
    ancestor = node.parent
    while ancestor is not None:
        if (
            ancestor.length
            and ancestor.chains
            and ancestor.length <= node.length
            and node.chain_at(ancestor.length) == ancestor.chain_at(ancestor.length)
        ):
            ids.append(ancestor.id)
        ancestor = ancestor.parent
    return ids
