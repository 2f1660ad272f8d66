"""The review page's view of recorded sessions: one summary row per conversation, filters, marks.

Journals are read as `export` reads them (no lock taken: a proxy may be recording) and read again when
they change, so a live session's new conversations appear on the next request. The page may be served
by the running proxy, which never loads chatproxy.commands; the few lines that rebuild a session's
threads are therefore here rather than borrowed from commands/sessions.py.

Blocking (file reads, fsynced appends): the page runs these methods in a worker thread, under one lock.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
import os
import re
import threading
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from chatproxy.chats.tree import Node, ThreadIndex
from chatproxy.config import ConfigError, check_session_id
from chatproxy.recorder.journal import read_journal
from chatproxy.review import marks

JOURNAL_SUFFIX = ".jsonl"
FIRST_CHARS = 200  # of the first user message, shown in the list
MAX_PER_PAGE = 200
BULK_OPS = ("keep", "discard", "unmark", "tag", "untag")
HISTOGRAM_BINS = 12
IMAGE_NAME = re.compile(r"[0-9a-f]{64}\.(png|jpe?g|gif|webp)")  # what the recorder names images (store.py)


@dataclasses.dataclass
class Row:
    session: str
    node: Node
    first: str
    model: str
    api: str
    turns: int
    chars: int
    tags: List[str]  # recorded (X-Chatproxy-Tags)
    time: str
    tools: bool
    reasoning: bool
    images: bool
    complete: bool
    text: str  # every turn, lower-cased, for search
    branches: int = 1
    _digest: Optional[bytes] = None

    @property
    def id(self) -> str:
        return self.node.id

    @property
    def digest(self) -> bytes:
        """The conversation's messages and tools, hashed: equal digests are duplicates (export drops them)."""
        if self._digest is None:
            data = json.dumps([list(self.node.iter_messages()), self.node.tools], sort_keys=True, default=str)
            self._digest = hashlib.blake2b(data.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        return self._digest


@dataclasses.dataclass
class SessionView:
    name: str
    stamp: Tuple[int, int]  # (size, mtime_ns) of the journal when read
    rows: List[Row]
    review: marks.ReviewJournal
    review_stamp: Tuple[int, int] = (-1, -1)
    folded: Dict[str, marks.Marks] = dataclasses.field(default_factory=dict)

    def marks_of(self, row: Row) -> marks.Marks:
        return marks.marks_for(self.folded, marks.contained_ids(row.node))


class NotFound(Exception):
    """No such session, conversation or image."""


class Catalogue:
    """Every conversation of the chosen sessions (`names`, or every session in `folder` when None)."""

    def __init__(self, folder: Path, names: Optional[List[str]] = None) -> None:
        self.folder = folder
        self.names = names
        self._views: Dict[str, SessionView] = {}
        self._lock = threading.Lock()

    # -- reading -------------------------------------------------------------------------------

    def session_names(self) -> List[str]:
        if self.names is not None:
            return list(self.names)
        found = []
        for path in self.folder.glob("*" + JOURNAL_SUFFIX):
            name = path.name[: -len(JOURNAL_SUFFIX)]
            try:
                check_session_id(name)
            except ConfigError:
                continue  # SESSION.review.jsonl, or a file the proxy did not write
            found.append(name)
        return sorted(found)

    def refresh(self) -> List[SessionView]:
        views = []
        for name in self.session_names():
            path = self.folder / (name + JOURNAL_SUFFIX)
            try:
                info = path.stat()
            except OSError:
                continue  # not recorded (yet)
            stamp = (info.st_size, info.st_mtime_ns)
            view = self._views.get(name)
            if view is None or view.stamp != stamp:
                view = self._read(name, stamp, view)
                self._views[name] = view
            self._refresh_marks(view)
            views.append(view)
        return views

    def _read(self, name: str, stamp: Tuple[int, int], old: Optional[SessionView]) -> SessionView:
        index = ThreadIndex()
        for record in read_journal(self.folder / (name + JOURNAL_SUFFIX)).records:
            index.add(record, keep_incomplete=True)
        leaves = index.current("all")
        per_root: Dict[str, int] = {}
        for node in leaves:
            per_root[node.root] = per_root.get(node.root, 0) + 1
        rows = [_row(name, node) for node in leaves]
        for row in rows:
            row.branches = per_root[row.node.root]
        review = old.review if old is not None else marks.ReviewJournal(self.folder, name)
        return SessionView(name, stamp, rows, review)

    def _refresh_marks(self, view: SessionView) -> None:
        try:
            info = view.review.path.stat()
            stamp = (info.st_size, info.st_mtime_ns)
        except FileNotFoundError:
            stamp = (0, 0)
        if stamp != view.review_stamp:
            view.review.refresh()
            view.folded = view.review.marks()
            view.review_stamp = stamp

    def _view(self, session: str) -> SessionView:
        for view in self.refresh():
            if view.name == session:
                return view
        raise NotFound(f"no session {session!r}")

    # -- the API -------------------------------------------------------------------------------

    def query(self, params: Mapping[str, str]) -> Dict[str, Any]:
        """One page of the conversations matching `params` (the page's query string), newest first."""
        matching = self.selection(params)
        per = min(max(_int(params.get("per"), 50), 1), MAX_PER_PAGE)
        page = max(_int(params.get("page"), 0), 0)
        shown = matching[page * per : (page + 1) * per]
        return {
            "total": len(matching),
            "page": page,
            "per": per,
            "rows": [_row_json(row, mark) for row, mark in shown],
        }

    def selection(self, params: Mapping[str, str]) -> List[Tuple[Row, marks.Marks]]:
        """Every conversation matching `params`, with its marks, newest first."""
        with self._lock:
            views = self.refresh()
            matching = [(row, view.marks_of(row)) for view in views for row in view.rows if _matches(row, view, params)]
        matching.sort(key=lambda item: (item[0].time, item[0].node.seq), reverse=True)
        return matching

    def stats(self, params: Mapping[str, str]) -> Dict[str, Any]:
        """The dashboard of the selection: counts per day / model / API, histograms, shares, duplicates."""
        rows = [row for row, _ in self.selection(params)]
        per_day: Dict[str, int] = {}
        per_model: Dict[str, int] = {}
        per_api: Dict[str, int] = {}
        tokens: List[int] = []
        digests = set()
        for row in rows:
            day = row.time[:10] or "?"
            per_day[day] = per_day.get(day, 0) + 1
            per_model[row.model or "?"] = per_model.get(row.model or "?", 0) + 1
            per_api[row.api or "?"] = per_api.get(row.api or "?", 0) + 1
            used = _tokens(row.node.meta.get("usage"))
            if used is not None:
                tokens.append(used)
            digests.add(row.digest)
        total = len(rows)
        return {
            "total": total,
            "per_day": sorted(per_day.items()),
            "per_model": sorted(per_model.items(), key=lambda item: (-item[1], item[0])),
            "per_api": sorted(per_api.items(), key=lambda item: (-item[1], item[0])),
            "turns": histogram([row.turns for row in rows]),
            "chars": histogram([row.chars for row in rows]),
            "tokens": histogram(tokens) if tokens else None,
            "with_usage": len(tokens),
            "share": {
                name: (sum(1 for row in rows if getattr(row, name)) / total if total else 0.0)
                for name in ("tools", "reasoning", "images")
            },
            "duplicates": total - len(digests),
            "unique": len(digests),
        }

    def bulk(self, params: Mapping[str, str], op: str, fields: Mapping[str, Any]) -> Dict[str, Any]:
        """One mark on every conversation matching `params`, as one batch that `undo_bulk` takes back."""
        if op not in BULK_OPS:
            raise marks.MarkError(f"{op!r} cannot be applied in bulk (only {', '.join(BULK_OPS)})")
        batch = os.urandom(6).hex()
        chosen = self.selection(params)
        with self._lock:
            per_session: Dict[str, List[Dict[str, Any]]] = {}
            for row, _ in chosen:
                event = marks.make_event(row.id, op, **fields)
                event["batch"] = batch
                per_session.setdefault(row.session, []).append(event)
            for view in self.refresh():
                if view.name in per_session:
                    view.review.refresh()
                    view.review.append_many(per_session[view.name])
                    view.folded = view.review.marks()
        return {"batch": batch, "count": len(chosen), "op": op}

    def undo_bulk(self, batch: str) -> Dict[str, Any]:
        """Take back every event of a bulk action that still counts."""
        if not batch:
            raise marks.MarkError("undo names the batch it takes back")
        count = 0
        with self._lock:
            for view in self.refresh():
                view.review.refresh()
                undone = {e.get("target") for e in view.review.events if e.get("op") == "undo"}
                events = [
                    marks.make_event(e["conv"], "undo", target=str(e["id"]))
                    for e in view.review.events
                    if e.get("batch") == batch and e.get("op") != "undo" and e.get("id") not in undone
                ]
                if events:
                    view.review.append_many(events)
                    view.folded = view.review.marks()
                    count += len(events)
        if not count:
            raise marks.MarkError("nothing to undo in that batch")
        return {"batch": batch, "count": count, "op": "undo"}

    def facets(self) -> Dict[str, Any]:
        with self._lock:
            views = self.refresh()
        rows = [row for view in views for row in view.rows]
        review_tags = {tag for view in views for mark in view.folded.values() for tag in mark.tags}
        return {
            "sessions": [view.name for view in views],
            "models": sorted({row.model for row in rows if row.model}),
            "apis": sorted({row.api for row in rows if row.api}),
            "tags": sorted({tag for row in rows for tag in row.tags} | review_tags),
        }

    def conversation(self, session: str, conv: str) -> Dict[str, Any]:
        with self._lock:
            view = self._view(session)
            row = _find(view, conv)
            mark = view.marks_of(row)
            siblings = [other for other in view.rows if other.node.root == row.node.root]
        messages = list(row.node.iter_messages())
        siblings.sort(key=lambda other: other.node.seq)
        branches = []
        for other in siblings:
            differs = _first_difference(messages, list(other.node.iter_messages()))
            branches.append({"id": other.id, "differs_at": differs, "current": other.id == row.id})
        return {
            "session": session,
            "id": row.id,
            "messages": [_message_json(session, message) for message in messages],
            "tools": row.node.tools,
            "meta": row.node.meta,
            "marks": mark.to_json(),
            "branches": branches,
            "first": row.first,
        }

    def mark(self, session: str, conv: str, op: str, fields: Mapping[str, Any]) -> Dict[str, Any]:
        """Append one event to the session's review journal; the conversation's marks after it."""
        with self._lock:
            view = self._view(session)
            row = _find(view, conv)
            if op == "undo" and "target" not in fields:
                ids = marks.contained_ids(row.node)
                target = next((t for t in map(lambda i: marks.last_undoable(view.review.events, i), ids) if t), None)
                if target is None:
                    raise marks.MarkError("nothing to undo")
                fields = {"target": target}
            if op == "edit":
                turn = fields.get("turn")
                message = row.node.message_at(turn) if isinstance(turn, int) and 0 <= turn < row.node.length else {}
                if message.get("role") != "assistant" or not isinstance(message.get("content"), str):
                    raise marks.MarkError("only an assistant reply can be edited")
                fields = {"turn": turn, "content": fields.get("content"), "original": message["content"]}
            event = marks.make_event(row.id, op, **fields)
            view.review.refresh()  # another writer (the mark command, another tab) may have appended
            view.review.append(event)
            view.folded = view.review.marks()
            return view.marks_of(row).to_json()

    def image_path(self, session: str, name: str) -> Path:
        """An image of a session's images folder, by its file name only."""
        if session not in self.session_names() or not IMAGE_NAME.fullmatch(name):
            raise NotFound("no such image")
        folder = (self.folder / session / "images").resolve()
        path = (folder / name).resolve()
        if path.parent != folder or not path.is_file():
            raise NotFound("no such image")
        return path

    def close(self) -> None:
        for view in self._views.values():
            view.review.close()


# ---------------------------------------------------------------------------------------------------------
# Rows and filters
# ---------------------------------------------------------------------------------------------------------


def _row(session: str, node: Node) -> Row:
    messages = list(node.iter_messages())
    meta = node.meta
    first = next((_text(m) for m in messages if m.get("role") == "user"), "")
    texts = [_text(m) for m in messages] + [
        m.get("reasoning") or "" for m in messages if isinstance(m.get("reasoning"), str)
    ]
    for message in messages:
        for call in message.get("tool_calls") or ():
            if isinstance(call, dict):
                texts.append(f"{call.get('name', '')} {call.get('arguments', '')}")
    tags = meta.get("tags")
    return Row(
        session=session,
        node=node,
        first=first[:FIRST_CHARS],
        model=_str(meta, "model"),
        api=_str(meta, "endpoint"),
        turns=sum(1 for m in messages if m.get("role") != "system"),
        chars=sum(len(text) for text in texts),
        tags=sorted({t for t in tags if isinstance(t, str)}) if isinstance(tags, list) else [],
        time=_str(meta, "time"),
        tools=any(m.get("tool_calls") or m.get("role") == "tool" for m in messages),
        reasoning=any(isinstance(m.get("reasoning"), str) and m["reasoning"] for m in messages),
        images=any(m.get("images") for m in messages),
        complete=node.complete,
        text="\n".join(texts).lower(),
    )


def histogram(values: List[int], bins: int = HISTOGRAM_BINS) -> Dict[str, Any]:
    """Counts of `values` in equal-width bins from their least to their greatest (whole-number edges)."""
    if not values:
        return {"edges": [], "counts": [], "min": 0, "max": 0}
    low, high = min(values), max(values)
    width = max(1, -(-(high - low + 1) // bins))
    count = -(-(high - low + 1) // width)
    counts = [0] * count
    for value in values:
        counts[(value - low) // width] += 1
    return {"edges": [low + i * width for i in range(count + 1)], "counts": counts, "min": low, "max": high}


def _tokens(usage: Any) -> Optional[int]:
    """Total tokens from a recorded `usage` (OpenAI's total_tokens, or input + output as Anthropic's)."""
    if not isinstance(usage, dict):
        return None
    total = usage.get("total_tokens")
    if isinstance(total, int) and not isinstance(total, bool):
        return total
    parts = [usage.get(key) for key in ("prompt_tokens", "completion_tokens", "input_tokens", "output_tokens")]
    found = [part for part in parts if isinstance(part, int) and not isinstance(part, bool)]
    return sum(found) if found else None


def _str(meta: Dict[str, Any], key: str) -> str:
    value = meta.get(key)
    return value if isinstance(value, str) else ""


def _text(message: Dict[str, Any]) -> str:
    content = message.get("content")
    return content if isinstance(content, str) else ""


def _int(value: Optional[str], default: int) -> int:
    try:
        return int(value) if value not in (None, "") else default
    except ValueError:
        return default


def _flag(params: Mapping[str, str], name: str, value: bool) -> bool:
    wanted = params.get(name, "")
    return wanted == "" or (wanted == "1") == value


def _matches(row: Row, view: SessionView, params: Mapping[str, str]) -> bool:
    if params.get("session") and row.session != params["session"]:
        return False
    if params.get("model") and not fnmatch.fnmatchcase(row.model.lower(), params["model"].lower()):
        return False
    if params.get("api") and row.api != params["api"]:
        return False
    if params.get("since") and row.time < params["since"]:
        return False
    if params.get("until") and row.time[: len(params["until"])] > params["until"]:
        return False
    if not all(_flag(params, name, getattr(row, name)) for name in ("tools", "reasoning", "images", "complete")):
        return False
    if not _int(params.get("min_turns"), 0) <= row.turns <= _int(params.get("max_turns"), 1 << 30):
        return False
    if not _int(params.get("min_chars"), 0) <= row.chars <= _int(params.get("max_chars"), 1 << 60):
        return False
    mark = view.marks_of(row)
    status = params.get("status")
    if status and {"kept": "keep", "discarded": "discard", "unmarked": None}.get(status, "?") != mark.status:
        return False
    if params.get("min_rating") and (mark.rating or 0) < _int(params["min_rating"], 0):
        return False
    if params.get("tag") and params["tag"] not in row.tags and params["tag"] not in mark.tags:
        return False
    words = params.get("q", "").lower().split()
    return all(word in row.text for word in words)


def _row_json(row: Row, mark: marks.Marks) -> Dict[str, Any]:
    return {
        "session": row.session,
        "id": row.id,
        "first": row.first,
        "model": row.model,
        "api": row.api,
        "turns": row.turns,
        "chars": row.chars,
        "tags": sorted(set(row.tags) | mark.tags),
        "time": row.time,
        "tools": row.tools,
        "reasoning": row.reasoning,
        "images": row.images,
        "incomplete": not row.complete,
        "branches": row.branches,
        "status": mark.status,
        "rating": mark.rating,
        "edited": bool(mark.edits),
    }


def _message_json(session: str, message: Dict[str, Any]) -> Dict[str, Any]:
    shown: Dict[str, Any] = {"role": str(message.get("role", "?")), "content": _text(message)}
    if isinstance(message.get("reasoning"), str):
        shown["reasoning"] = message["reasoning"]
    if message.get("tool_calls"):
        shown["tool_calls"] = message["tool_calls"]
    if message.get("tool_call_id"):
        shown["tool_call_id"] = message["tool_call_id"]
    images = []
    for entry in message.get("images") or ():
        name = os.path.basename(entry) if isinstance(entry, str) and entry.startswith(f"{session}/images/") else ""
        images.append({"name": name, "source": entry if isinstance(entry, str) and not name else ""})
    if images:
        shown["images"] = images
    return shown


def _find(view: SessionView, conv: str) -> Row:
    for row in view.rows:
        if row.id == conv:
            return row
    raise NotFound(f"no conversation {conv!r} in session {view.name}")


def _first_difference(a: List[Dict[str, Any]], b: List[Dict[str, Any]]) -> Optional[int]:
    for turn, (left, right) in enumerate(zip(a, b)):
        if left != right:
            return turn
    return None if len(a) == len(b) else min(len(a), len(b))
