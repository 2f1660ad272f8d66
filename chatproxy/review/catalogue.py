"""The review page's view of recorded sessions: one row per conversation, filters, marks.

The chosen sessions are read as one collection, as `export` reads them (reading.py): a chat continued in
another session is one row, the longest. Journals are read without the session lock (a proxy may be
recording: a journal only grows, and every complete line is final) by a loader thread that starts with the
catalogue. Answers given while it is still reading carry `loading` (bytes read of bytes to read), which the
page shows; once read, each request first lets the loader take in what was appended since (reading only
that), so a live session's new conversations appear on the next request.

Rows are filtered by selection.py, the definition `export` uses too. Marks are folded from every chosen
session's review journal and looked up as export looks them up (on the conversation's own id, the earlier
records it contains, and their copies in other sessions).

Blocking (file reads, fsynced appends): the page runs these methods in worker threads; one lock guards what
the loader changes. The page may be served by the running proxy, which loads chatproxy.commands (the
collection, export) only when the page is used.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import logging
import operator
import os
import re
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Tuple

from chatproxy.chats.tree import Node
from chatproxy.recorder.journal import parse_record_time
from chatproxy.review import marks, reading, selection
from chatproxy.review.selection import Head, Selection, Summary

if TYPE_CHECKING:
    from chatproxy.commands.sessions import Conversation

log = logging.getLogger("chatproxy.review")

MAX_PER_PAGE = 200
BULK_OPS = ("keep", "discard", "unmark", "tag", "untag")
HISTOGRAM_BINS = 12
SESSION_IMAGE = re.compile(r"([^/\\]+)/images/([^/\\]+)")  # "SESSION/images/<sha256>.png", as the recorder saves
IMAGE_NAME = re.compile(r"[0-9a-f]{64}\.(png|jpe?g|gif|webp)")  # what the recorder names images (store.py)
FRESH_WAIT = 5.0  # seconds a request waits at most for the loader to take in a small append (a big one: `loading`)
READ_WAIT = 300.0  # seconds an export or a bulk mark waits for the sessions to be read whole
SUMMARY_SLICE = 500  # summaries made per hold of the lock
LOADING_WAIT = 0.25  # seconds a list request with wait=1 waits at most for the sessions to be read whole
REBUILD_WHILE_READING = 0.5  # seconds between rebuilds of the rows while the sessions are read
ORDER = operator.attrgetter("order")
# Appended bytes read with `loading` shown, as on start (a fraction of a second of reading): a live session
# recording a thousand chats a second appends a few MB between two of the page's polls, read within the request.
BIG_APPEND = 32 * reading.SLICE_BYTES


class NotFound(Exception):
    """No such session, conversation or image."""


class Closed(Exception):
    """The catalogue was closed while its loader was reading."""


@dataclasses.dataclass(eq=False)
class Row:
    conversation: Conversation
    head: Head
    made: Optional[Summary] = None  # the whole summary, once made (Catalogue._summarized)
    branches: int = 1
    order: Tuple[str, int] = ("", 0)  # newest last: the time of its last reply, then the order recorded
    group: Tuple[bool, str] = (False, "")  # rows of one chat (its branches) share this
    mark: marks.Marks = dataclasses.field(default_factory=marks.Marks)
    mark_version: Tuple[int, int] = (-1, -1)
    ids: Optional[List[str]] = None  # its own id and those of the records it holds whole (marks.contained_ids)
    digest: Optional[bytes] = None

    @property
    def session(self) -> str:
        return self.conversation.session

    @property
    def node(self) -> Node:
        return self.conversation.node

    @property
    def id(self) -> str:
        return self.conversation.node.id

    def __post_init__(self) -> None:
        node = self.conversation.node
        self.order = (self.head.time, node.seq)
        self.group = (self.conversation.damaged, node.root)

    @property
    def summary(self) -> Summary:
        assert self.made is not None, "summarise the rows first (Catalogue._summarized)"
        return self.made


@dataclasses.dataclass
class Snapshot:
    """What `export` would read, taken from the catalogue (exporting.py)."""

    marked: List[Tuple[Conversation, marks.Marks]]  # in the collection's order, as export writes them
    sessions: int
    records: int
    duplicates: int
    merged: int
    version: Tuple[int, int]


class Catalogue:
    """Every conversation of the chosen sessions (`names`, or every session in `folder` when None)."""

    def __init__(self, folder: Path, names: Optional[List[str]] = None) -> None:
        self.folder = folder
        self.names = names
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._reader: Optional[reading.Reader] = None
        self._loading: Optional[Dict[str, int]] = {"read": 0, "size": 0}
        self._asked = 0  # requests that asked the loader to look for new records
        self._served = 0  # ... of them it has looked for
        self._closed = False
        self._thread: Optional[threading.Thread] = None
        self._failure = ""
        self._rows: List[Row] = []  # newest first
        self._in_order: List[Row] = []  # as the collection gives them (export's order)
        self._by_node: Dict[Node, Row] = {}
        self._groups: Dict[Tuple[bool, str], List[Row]] = {}  # the rows of each chat (its branches)
        self._rows_reader: Optional[reading.Reader] = None  # whose nodes the rows are
        self._by_key: Optional[Dict[Tuple[str, str], Row]] = None  # made when a conversation is looked up
        self._rows_version = -1
        self._rebuilt = 0.0
        self._stats: Optional[Tuple[Any, Dict[str, Any]]] = None
        self._reviews: Dict[str, marks.ReviewJournal] = {}
        self._review_stamps: Dict[str, Tuple[int, int]] = {}
        self._folded: Dict[str, Dict[str, marks.Marks]] = {}
        self._marks: Dict[str, marks.Marks] = {}
        self._marks_version = 0

    # -- the loader ----------------------------------------------------------------------------------

    def start(self) -> None:
        """Start reading (the `review` command does so before it listens; otherwise the first request)."""
        with self._lock:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name="chatproxy-review-reader", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                reader = self._read_all()
                while True:
                    with self._wake:
                        asked = self._asked
                    self._catch_up(reader)
                    self._answered(asked)
                    self._summarize(reader)
                    self._wait_for_a_request()
            except reading.Changed as exc:
                log.info("review: %s; reading the sessions again", exc)
            except Closed:
                return
            except (OSError, ValueError, KeyError) as exc:
                # Not fatal for the page: the failure is shown, and the next request tries again.
                log.warning("review: cannot read the sessions: %s", exc)
                with self._wake:
                    self._failure = f"cannot read the sessions: {exc}"
                    self._loading = None
                    asked = self._asked
                self._answered(asked)
                try:
                    self._wait_for_a_request()
                except Closed:
                    return

    def _read_all(self) -> reading.Reader:
        from chatproxy.commands.sessions import oldest_first

        names = self.names if self.names is not None else reading.journal_names(self.folder)
        reader = reading.Reader(self.folder, oldest_first(self.folder, names))
        total = sum(_size(journal.path) for journal in reader.journals)
        with self._wake:
            self._reader = reader
            self._loading = {"read": 0, "size": total}
            self._failure = ""
            self._rows_version = -1
        # Reading makes an object or two per record, all kept: the collector would walk them again and again.
        collecting = gc.isenabled()
        gc.disable()
        try:
            for journal in reader.journals:
                self._read_journal(reader, journal)
            with self._wake:
                self._loading = None
                self._current(reader)  # the rows, before the first request for the whole list comes
                self._wake.notify_all()
        finally:
            if collecting:
                gc.enable()
        return reader

    def _read_journal(self, reader: reading.Reader, journal: reading.Journal) -> None:
        while True:
            if self._closed:
                raise Closed
            started = journal.offset
            decoded, end = reader.read_slice(journal)  # outside the lock: requests are answered meanwhile
            if end == started:
                return
            with self._lock:
                reader.add_slice(journal, decoded, end)
                if self._loading is not None:
                    self._loading["read"] += end - started
            time.sleep(0)  # the event loop (the proxy's, when it serves the page) takes the interpreter first

    def _summarize(self, reader: reading.Reader) -> None:
        """Make the summaries the search and the filters test, a slice at a time: the first page is answered
        before this (rows are ordered by their heads), a search meanwhile makes those still missing, and a
        request meanwhile has what was appended since taken in first, as ever."""
        with self._lock:
            todo = reader.unsummarized()
        for start in range(0, len(todo), SUMMARY_SLICE):
            if self._closed:
                raise Closed
            with self._wake:
                asked = self._asked
            if asked > self._served:
                self._catch_up(reader)
                self._answered(asked)
            with self._lock:
                for node in todo[start : start + SUMMARY_SLICE]:
                    reader.summary(node)
            time.sleep(0)

    def _catch_up(self, reader: reading.Reader) -> None:
        """Take in what was appended since, and sessions begun since (every session in the folder)."""
        if self.names is None:
            known = {journal.name for journal in reader.journals}
            begun = [name for name in reading.journal_names(self.folder, known) if name not in known]
            if begun:
                self._add_sessions(reader, begun)
        unread = reader.unread()
        if not unread:
            return
        if unread > BIG_APPEND:
            with self._wake:
                self._loading = {"read": 0, "size": unread}
                self._wake.notify_all()  # the requests waiting for it answer now, saying so
        for journal in reader.journals:
            self._read_journal(reader, journal)
        with self._wake:
            self._loading = None
            self._wake.notify_all()

    def _add_sessions(self, reader: reading.Reader, names: List[str]) -> None:
        from chatproxy.commands.sessions import journals, oldest_first

        began_at = [parse_record_time(reading.first_line_time(journal.path)) for journal in reader.journals]
        latest = max((when for when in began_at if when is not None), default=None)
        for name in oldest_first(self.folder, names):
            paths = journals(self.folder, name) or [self.folder / (name + reading.JOURNAL_SUFFIX)]
            began = parse_record_time(reading.first_line_time(paths[0]))
            if latest is not None and (began is None or began < latest):
                raise reading.Changed(f"session {name} began before others")
            with self._lock:
                reader.add_session(name)
                self._rows_version = -1

    def _answered(self, asked: int) -> None:
        """The requests up to the `asked`-th have what was appended before they asked."""
        with self._wake:
            self._served = max(self._served, asked)
            self._wake.notify_all()

    def _wait_for_a_request(self) -> None:
        with self._wake:
            self._wake.wait_for(lambda: self._asked > self._served or self._closed)
            if self._closed:
                raise Closed

    def _fresh(self) -> reading.Reader:
        """Let the loader take in what was appended since the last request (briefly: an answer with
        `loading` is better than a late one); the caller then takes the lock."""
        self.start()
        with self._wake:
            self._asked += 1
            asked = self._asked
            self._wake.notify_all()
            self._wake.wait_for(
                lambda: self._served >= asked or self._loading is not None or self._closed or self._reader is None,
                timeout=FRESH_WAIT,
            )
        return self._reader_now()

    def wait_until_read(self, timeout: float = READ_WAIT) -> reading.Reader:
        """The reader once every session has been read whole (an export, a bulk mark: never of a part)."""
        self._fresh()
        with self._wake:
            if not self._wake.wait_for(lambda: self._loading is None or self._closed, timeout=timeout):
                raise NotFound("the sessions are still being read: try again in a moment")
        return self._reader_now()

    def _reader_now(self) -> reading.Reader:
        deadline = time.monotonic() + FRESH_WAIT
        while self._reader is None and time.monotonic() < deadline and not self._failure:
            time.sleep(0.005)  # the loader is listing the sessions
        if self._reader is None:
            raise NotFound(self._failure or "the sessions are still being listed")
        return self._reader

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify_all()
            reviews = list(self._reviews.values())
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(10)
        for review in reviews:
            review.close()

    # -- rows and marks (under the lock) -------------------------------------------------------------

    def _current(self, reader: reading.Reader) -> List[Row]:
        """The rows newest first, rebuilt when the conversations changed (while the sessions are still being
        read, at most every REBUILD_WHILE_READING seconds: the answers say they are not whole anyway)."""
        self._refresh_marks(reader)
        if self._rows_version == reader.version:
            return self._rows
        now = time.monotonic()
        if self._loading is not None and self._rows and now - self._rebuilt < REBUILD_WHILE_READING:
            return self._rows
        if self._rows_reader is not reader:  # read again from the start: none of the old rows holds
            self._by_node, self._groups, self._rows_reader = {}, {}, reader
        by_node, groups = self._by_node, self._groups
        nodes, make, apart = reader.current()
        leaves = list(nodes)
        present = set(leaves)
        present.update(conversation.node for conversation in apart)
        touched = set()
        for node in by_node.keys() - present:  # continued, or superseded: no longer a conversation
            row = by_node.pop(node)
            groups[row.group].remove(row)
            touched.add(row.group)
        made = [Row(make(node), reader.head(node)) for node in leaves if node not in by_node]
        made += [Row(c, reader.head(c.node)) for c in apart if c.node not in by_node]
        for row in made:
            by_node[row.node] = row
            groups.setdefault(row.group, []).append(row)
            touched.add(row.group)
        for group in touched:
            siblings = groups.get(group, [])
            if not siblings:
                groups.pop(group, None)
            for row in siblings:
                row.branches = len(siblings)
        self._in_order = [by_node[node] for node in leaves] + [by_node[c.node] for c in apart]
        self._rows = sorted(self._in_order, key=ORDER, reverse=True)
        self._by_key = None
        self._rows_version = reader.version
        self._rebuilt = now
        return self._rows

    def _refresh_marks(self, reader: reading.Reader) -> None:
        changed = False
        for journal in reader.journals:
            path = marks.review_path(self.folder, journal.name)
            try:
                info = path.stat()
                stamp = (info.st_size, info.st_mtime_ns)
            except FileNotFoundError:
                stamp = (0, 0)
            if self._review_stamps.get(journal.name) != stamp:
                contents = marks.read_review(self.folder, journal.name)
                if contents.torn_tail and journal.name not in self._review_stamps:
                    stamp = self._repair_review(journal.name)
                self._folded[journal.name] = marks.fold(contents.events)
                self._review_stamps[journal.name] = stamp
                changed = True
        if changed:
            merged: Dict[str, marks.Marks] = {}
            for journal in reader.journals:
                merged.update(self._folded.get(journal.name, {}))  # keyed by record ids, which no two sessions share
            self._marks = merged
            self._marks_version += 1

    def _repair_review(self, session: str) -> Tuple[int, int]:
        """A review journal found with a line torn by a crash when the page starts: set aside and cut off
        now, as the recorder repairs its journal on start (later, a part line may be another writer's
        write still landing: readers leave it out). Returns the journal's stamp after the repair."""
        try:
            review = self._review(session)
        except OSError as exc:
            log.warning("review: cannot repair %s: %s", marks.review_path(self.folder, session), exc)
            return (0, 0)
        if review.repaired is not None:
            log.warning("review: %s: a line torn by a crash was set aside in %s", review.path, review.repaired.name)
        info = review.path.stat()
        return (info.st_size, info.st_mtime_ns)

    def _mark_of(self, reader: reading.Reader, row: Row) -> marks.Marks:
        version = (self._marks_version, reader.version)
        if row.mark_version != version:
            if row.ids is None:
                row.ids = marks.contained_ids(row.node)
            row.mark = marks.marks_for(self._marks, reader.collection.with_copies(row.ids))
            row.mark_version = version
        return row.mark

    def _matching(self, reader: reading.Reader, chosen: Selection) -> List[Row]:
        rows = self._current(reader)
        if chosen == Selection():
            return rows
        self._summarized(reader, rows)
        found = [row for row in rows if chosen.recorded(row.session, row.summary)]
        if chosen.uses_marks:
            found = [row for row in found if chosen.marked(row.summary, self._mark_of(reader, row))]
        return found

    def _summarized(self, reader: reading.Reader, rows: List[Row]) -> List[Row]:
        """`rows`, each with its whole summary (made now for those the loader has not come to yet)."""
        for row in rows:
            if row.made is None:
                row.made = reader.summary(row.node)
        return rows

    def _row(self, session: str, conv: str) -> Row:
        if self._by_key is None:
            self._by_key = {(row.session, row.id): row for row in self._in_order}
        row = self._by_key.get((session, conv))
        if row is None:
            raise NotFound(f"no conversation {conv!r} in session {session}")
        return row

    # -- the API -------------------------------------------------------------------------------------

    def query(self, params: Mapping[str, str]) -> Dict[str, Any]:
        """One page of the conversations matching `params` (the page's query string), newest first."""
        chosen = selection.from_params(params)
        per = min(max(_int(params.get("per"), 50), 1), MAX_PER_PAGE)
        page = max(_int(params.get("page"), 0), 0)
        reader = self._fresh()
        if params.get("wait") == "1":  # the page asking again while the sessions are read: answer as they are done
            with self._wake:
                self._wake.wait_for(lambda: self._loading is None or self._closed, timeout=LOADING_WAIT)
            reader = self._reader_now()
        with self._lock:
            matching = self._matching(reader, chosen)
            page_rows = self._summarized(reader, matching[page * per : (page + 1) * per])
            shown = [(row, self._mark_of(reader, row)) for row in page_rows]
            loading = dict(self._loading) if self._loading is not None else None
            total = len(matching)
        return {
            "total": total,
            "page": page,
            "per": per,
            "rows": [_row_json(row, mark) for row, mark in shown],
            "loading": loading,
            "failure": self._failure or None,
        }

    def matching(self, params: Mapping[str, str], whole: bool = False) -> List[Tuple[Row, marks.Marks]]:
        """Every conversation matching `params`, with its marks, newest first (`whole`: once all is read)."""
        chosen = selection.from_params(params)
        reader = self.wait_until_read() if whole else self._fresh()
        with self._lock:
            rows = self._summarized(reader, self._matching(reader, chosen))
            return [(row, self._mark_of(reader, row)) for row in rows]

    def stats(self, params: Mapping[str, str]) -> Dict[str, Any]:
        """The dashboard of the selection: counts per day / model / API, histograms, shares, duplicates."""
        key = (tuple(sorted(params.items())), self.version())
        kept = self._stats
        if kept is not None and kept[0] == key:
            return kept[1]
        result = self._dashboard([row for row, _ in self.matching(params, whole=True)])
        self._stats = (key, result)
        return result

    def version(self) -> Tuple[int, int]:
        """Changes when the conversations or the marks do (once every session has been read)."""
        reader = self.wait_until_read()
        with self._lock:
            self._refresh_marks(reader)
            return reader.version, self._marks_version

    def _dashboard(self, rows: List[Row]) -> Dict[str, Any]:
        per_day: Dict[str, int] = {}
        per_model: Dict[str, int] = {}
        per_api: Dict[str, int] = {}
        tokens: List[int] = []
        digests = set()
        for row in rows:
            found = row.summary
            day = found.time[:10] or "?"
            per_day[day] = per_day.get(day, 0) + 1
            per_model[found.model or "?"] = per_model.get(found.model or "?", 0) + 1
            per_api[found.api or "?"] = per_api.get(found.api or "?", 0) + 1
            if found.tokens is not None:
                tokens.append(found.tokens)
            digests.add(_digest(row))
        total = len(rows)
        return {
            "total": total,
            "per_day": sorted(per_day.items()),
            "per_model": sorted(per_model.items(), key=lambda item: (-item[1], item[0])),
            "per_api": sorted(per_api.items(), key=lambda item: (-item[1], item[0])),
            "turns": histogram([row.summary.part.turns for row in rows]),
            "chars": histogram([row.summary.part.chars for row in rows]),
            "tokens": histogram(tokens) if tokens else None,
            "with_usage": len(tokens),
            "share": {
                name: (sum(1 for row in rows if getattr(row.summary.part, name)) / total if total else 0.0)
                for name in selection.FEATURES
            },
            "duplicates": total - len(digests),
            "unique": len(digests),
        }

    def facets(self) -> Dict[str, Any]:
        reader = self._fresh()
        with self._lock:
            rows = self._current(reader)
            sessions = [journal.name for journal in reader.journals]
            review_tags = {tag for mark in self._marks.values() for tag in mark.tags}
            loading = self._loading is not None
        return {
            "sessions": sessions,
            "models": sorted({row.head.model for row in rows if row.head.model}),
            "apis": sorted({row.head.api for row in rows if row.head.api}),
            "tags": sorted({tag for row in rows for tag in row.head.tags} | review_tags),
            "loading": loading,
        }

    def conversation(self, session: str, conv: str) -> Dict[str, Any]:
        """One conversation, and every branch of its chat (regenerations, edits, n > 1) beside it."""
        reader = self._fresh()
        with self._lock:
            self._current(reader)
            row = self._row(session, conv)
            mark = self._mark_of(reader, row)
            siblings = sorted(self._groups.get(row.group, [row]), key=lambda other: other.node.seq)
            self._summarized(reader, [row, *siblings])
            sibling_marks = [self._mark_of(reader, other) for other in siblings]
        messages = list(row.node.iter_messages())
        shown = [_message_json(message) for message in messages]
        branches = []
        for other, other_mark in zip(siblings, sibling_marks):
            theirs = messages if other is row else list(other.node.iter_messages())
            branches.append((other, other_mark, theirs, _first_difference(messages, theirs)))
        shared = min(
            (_common_prefix(messages, theirs) for other, _, theirs, _ in branches if other is not row),
            default=len(messages),
        )
        return {
            "session": session,
            "id": row.id,
            "messages": shown,
            "tools": row.node.tools,
            "meta": row.node.meta,
            "marks": mark.to_json(),
            "first": row.summary.part.first or "",
            "shared": shared,
            "branches": [
                {
                    "session": other.session,
                    "id": other.id,
                    "current": other is row,
                    "differs_at": differs,
                    "turns": len(theirs),
                    "time": other.summary.time,
                    "model": other.summary.model,
                    "status": other_mark.status,
                    "rating": other_mark.rating,
                    "from": shared,
                    "messages": [_message_json(message) for message in theirs[shared:]]
                    if other is not row
                    else shown[shared:],
                }
                for other, other_mark, theirs, differs in branches
            ],
        }

    def mark(self, session: str, conv: str, op: str, fields: Mapping[str, Any]) -> Dict[str, Any]:
        """Append one event to the review journal of the conversation's session; its marks after it."""
        reader = self._fresh()
        with self._lock:
            self._current(reader)
            row = self._row(session, conv)
            ids = reader.collection.with_copies(row.ids or marks.contained_ids(row.node))
            where = session
            if op == "undo" and "target" not in fields:
                where, target = self._last_undoable(reader, session, ids)
                fields = {"target": target}
            if op == "edit":
                turn = fields.get("turn")
                node = row.node
                message = node.message_at(turn) if isinstance(turn, int) and 0 <= turn < node.length else {}
                if message.get("role") != "assistant" or not isinstance(message.get("content"), str):
                    raise marks.MarkError("only an assistant reply can be edited")
                fields = {"turn": turn, "content": fields.get("content"), "original": message["content"]}
            event = marks.make_event(row.id, op, **fields)
            self._review(where).append(event)
            self._review_stamps.pop(where, None)
            self._refresh_marks(reader)
            return self._mark_of(reader, row).to_json()

    def _last_undoable(self, reader: reading.Reader, session: str, ids: List[str]) -> Tuple[str, str]:
        """The session whose review journal holds the conversation's newest mark, and that mark's id."""
        newest: Optional[Tuple[str, str, str]] = None
        for name in [session] + [journal.name for journal in reader.journals if journal.name != session]:
            events = marks.read_review(self.folder, name).events
            for conv in ids:
                target = marks.last_undoable(events, conv)
                if target is not None:
                    when = next(str(e.get("time", "")) for e in events if e.get("id") == target)
                    if newest is None or when > newest[0]:
                        newest = (when, name, target)
                    break
        if newest is None:
            raise marks.MarkError("nothing to undo")
        return newest[1], newest[2]

    def _review(self, session: str) -> marks.ReviewJournal:
        """The session's review journal, opened for appending (a line torn by a crash set aside first)."""
        journal = self._reviews.get(session)
        if journal is None:
            journal = marks.ReviewJournal(self.folder, session)
            journal.open()
            self._reviews[session] = journal
        return journal

    def bulk(self, params: Mapping[str, str], op: str, fields: Mapping[str, Any]) -> Dict[str, Any]:
        """One mark on every conversation matching `params`, as one batch that `undo_bulk` takes back."""
        if op not in BULK_OPS:
            raise marks.MarkError(f"{op!r} cannot be applied in bulk (only {', '.join(BULK_OPS)})")
        batch = os.urandom(6).hex()
        chosen = self.matching(params, whole=True)
        per_session: Dict[str, List[Dict[str, Any]]] = {}
        for row, _ in chosen:
            event = marks.make_event(row.id, op, **fields)
            event["batch"] = batch
            per_session.setdefault(row.session, []).append(event)
        with self._lock:
            for name, events in per_session.items():
                self._review(name).append_many(events)  # one write and one fsync per session
                self._review_stamps.pop(name, None)
        return {"batch": batch, "count": len(chosen), "op": op}

    def undo_bulk(self, batch: str) -> Dict[str, Any]:
        """Take back every event of a bulk action that still counts."""
        if not batch:
            raise marks.MarkError("undo names the batch it takes back")
        reader = self._fresh()
        count = 0
        with self._lock:
            for journal in reader.journals:
                events = marks.read_review(self.folder, journal.name).events
                undone = {e.get("target") for e in events if e.get("op") == "undo"}
                undos = [
                    marks.make_event(e["conv"], "undo", target=str(e["id"]))
                    for e in events
                    if e.get("batch") == batch and e.get("op") != "undo" and e.get("id") not in undone
                ]
                if undos:
                    self._review(journal.name).append_many(undos)
                    self._review_stamps.pop(journal.name, None)
                    count += len(undos)
        if not count:
            raise marks.MarkError("nothing to undo in that batch")
        return {"batch": batch, "count": count, "op": "undo"}

    def image_path(self, session: str, name: str) -> Path:
        """An image of a session's images folder, by its file name only."""
        self.start()
        reader = self._reader_now()
        if session not in {journal.name for journal in reader.journals} or not IMAGE_NAME.fullmatch(name):
            raise NotFound("no such image")
        folder = (self.folder / session / "images").resolve()
        path = (folder / name).resolve()
        if path.parent != folder or not path.is_file():
            raise NotFound("no such image")
        return path

    def snapshot(self) -> Snapshot:
        """The conversations and marks `export` would read, as the list shows them now."""
        reader = self.wait_until_read()
        with self._lock:
            self._current(reader)
            marked = [(row.conversation, self._mark_of(reader, row)) for row in self._in_order]
            collection = reader.collection
            return Snapshot(
                marked,
                len(reader.journals),
                sum(journal.records for journal in reader.journals),
                collection.duplicates(),
                collection.merged(),
                (reader.version, self._marks_version),
            )

    @property
    def loading(self) -> Optional[Dict[str, int]]:
        with self._lock:
            return dict(self._loading) if self._loading is not None else None


# ---------------------------------------------------------------------------------------------------------
# Rows in JSON
# ---------------------------------------------------------------------------------------------------------


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


def _digest(row: Row) -> bytes:
    """The conversation's messages (by their keys, as threads compare them) and tools: equal are duplicates."""
    if row.digest is None:
        node = row.node
        tools = json.dumps(node.tools, sort_keys=True, default=str).encode() if node.tools else b""
        row.digest = hashlib.blake2b(node.chain_at(node.length) + tools, digest_size=16).digest()
    return row.digest


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _int(value: Optional[str], default: int) -> int:
    try:
        return int(value) if value not in (None, "") else default
    except ValueError:
        return default


def _row_json(row: Row, mark: marks.Marks) -> Dict[str, Any]:
    found = row.summary
    part = found.part
    return {
        "session": row.session,
        "id": row.id,
        "first": part.first or "",
        "model": found.model,
        "api": found.api,
        "turns": part.turns,
        "chars": part.chars,
        "tags": sorted(found.tags | mark.tags),
        "time": found.time,
        "tools": part.tools,
        "reasoning": part.reasoning,
        "images": part.images,
        "incomplete": not found.complete,
        "damaged": row.conversation.damaged,
        "branches": row.branches,
        "status": mark.status,
        "rating": mark.rating,
        "edited": bool(mark.edits),
    }


def _message_json(message: Dict[str, Any]) -> Dict[str, Any]:
    content = message.get("content")
    shown: Dict[str, Any] = {
        "role": str(message.get("role", "?")),
        "content": content if isinstance(content, str) else "",
    }
    if isinstance(message.get("reasoning"), str):
        shown["reasoning"] = message["reasoning"]
    if message.get("tool_calls"):
        shown["tool_calls"] = message["tool_calls"]
    if message.get("tool_call_id"):
        shown["tool_call_id"] = message["tool_call_id"]
    images = []
    for entry in message.get("images") or ():
        saved = SESSION_IMAGE.fullmatch(entry) if isinstance(entry, str) else None
        if saved:  # a file of a session's images folder (the session that first recorded it)
            images.append({"session": saved.group(1), "name": saved.group(2), "source": ""})
        else:
            images.append({"session": "", "name": "", "source": entry if isinstance(entry, str) else ""})
    if images:
        shown["images"] = images
    return shown


def _first_difference(a: List[Dict[str, Any]], b: List[Dict[str, Any]]) -> Optional[int]:
    for turn, (left, right) in enumerate(zip(a, b)):
        if left != right:
            return turn
    return None if len(a) == len(b) else min(len(a), len(b))


def _common_prefix(a: List[Dict[str, Any]], b: List[Dict[str, Any]]) -> int:
    differs = _first_difference(a, b)
    return min(len(a), len(b)) if differs is None else differs
