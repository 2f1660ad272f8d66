"""The review page's reading of the chosen sessions: one collection, read a slice at a time, kept up to date.

The sessions are one collection exactly as `export` reads them (commands/sessions.Collection): taken oldest
first, the first one's thread index used as it is and every record of each later one placed into it, so a
chat continued in another session is one conversation, the longest. Here the journals are read in slices
(`read_slice`), so the page can answer while a long session is still being read, and afterwards only what
was appended since is read: the records of a slice of a later session are placed as the collection places
a session of its own (Collection.add of a session holding just those records), and a slice of the first
one is added to its index, as its recorder added them.

Each record is decoded once while reading, and what the list needs first is taken from it then: the head
of its summary (time, model, API, tags: selection.Head), which orders the rows and fills the filters'
choices. What the search and the other filters test (the messages' part of the summary) is made after
the whole journal is read (`summarize_some`, by the loader) or when first asked for, from the journal
lines, extending the summary of the record a conversation continues.

Nothing here locks: the catalogue calls it from one loader thread, under its own lock.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, Iterator, List, NamedTuple, Optional, Set, Tuple

from chatproxy.chats import tree
from chatproxy.chats.tree import Node, ThreadIndex
from chatproxy.recorder.journal import (
    CachedRecord,
    JournalContents,
    cache_path,
    metas_of,
    parse_line,
    read_cache_file,
)
from chatproxy.review import selection
from chatproxy.review.selection import Head, Summary

if TYPE_CHECKING:
    from chatproxy.commands.sessions import Collection, Conversation, Session

JOURNAL_SUFFIX = ".jsonl"
TAIL_BYTES = 63  # of the last line read, checked before reading on (with its newline)
SLICE_BYTES = 256 * 1024  # of journal per slice: a few thousand records, tens of milliseconds of work


class Read(NamedTuple):
    """A record as read from a journal: what placing it needs, its meta (the list's first need) and its line."""

    summary: tree.Summary
    meta: Dict[str, Any]
    line: bytes


class Changed(Exception):
    """A journal was replaced or shortened, or a session appeared that began before others: read again."""


@dataclasses.dataclass
class Journal:
    """One session's journal as read so far."""

    name: str
    path: Path
    index: ThreadIndex  # the session's own thread index (the first session's is the collection's)
    orphans: Set[str]  # records whose parent was lost to a damaged line
    inode: int = 0
    offset: int = 0  # bytes read: up to the end of the last complete line
    lines: int = 0
    records: int = 0
    tail: bytes = b""  # the last bytes read: a journal rewritten rather than appended to differs there
    bad_lines: List[Tuple[int, str]] = dataclasses.field(default_factory=list)
    cached: Optional[Iterator[CachedRecord]] = None  # the recorder's resume cache, read from its start
    entry: Optional[CachedRecord] = None  # its entry for the next line, while the journal agrees with it

    def size(self) -> int:
        """The journal's length now; raises Changed if it is not the file read so far, or is shorter."""
        try:
            info = self.path.stat()
        except FileNotFoundError:
            raise Changed(f"{self.path} is gone") from None
        if (self.inode and info.st_ino != self.inode) or info.st_size < self.offset:
            raise Changed(f"{self.path} was replaced")
        if self.tail and info.st_size > self.offset:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset - len(self.tail))
                if handle.read(len(self.tail)) != self.tail:
                    raise Changed(f"{self.path} was rewritten")
        self.inode = info.st_ino
        return info.st_size

    def session(self, records: int, index: Optional[ThreadIndex] = None) -> Session:
        """This journal as a Session of `records` records (counted: their records are in `index`)."""
        from chatproxy.commands.sessions import RecordsOfParts, Session

        contents = JournalContents(RecordsOfParts([], records), [], b"", 0)  # type: ignore[arg-type]
        return Session(self.name, self.path, contents, index or self.index, self.orphans)


class Reader:
    """The conversations of the sessions `names` (in the order they began), as one collection."""

    def __init__(self, folder: Path, names: List[str]) -> None:
        from chatproxy.commands.sessions import Collection

        self.folder = folder
        self.collection: Collection = Collection(keep_incomplete=True)
        self.journals: List[Journal] = []
        self.version = 0  # changes whenever the conversations do
        self._first_placed = False
        self._heads: Dict[Node, Head] = {}
        self._summaries: Dict[Node, Summary] = {}
        for name in names:
            self.add_session(name)

    def add_session(self, name: str) -> Journal:
        """Read the session `name`: each of its journals (one, or the parts of a rotated session, each an
        index of its own, joined by the collection as export joins them)."""
        from chatproxy.commands.sessions import journals

        paths = journals(self.folder, name) or [self.folder / (name + JOURNAL_SUFFIX)]
        added = [self._add_journal(name, path) for path in paths]
        return added[-1]

    def _add_journal(self, name: str, path: Path) -> Journal:
        journal = Journal(name, path, ThreadIndex(), set())
        self.journals.append(journal)
        return journal

    def _new_parts(self) -> None:
        """Parts a running proxy began since the last look (--rotate), read after the ones known."""
        from chatproxy.commands.sessions import journals

        known = {journal.path for journal in self.journals}
        for name in dict.fromkeys(journal.name for journal in self.journals):
            for path in journals(self.folder, name):
                if path not in known:
                    self._add_journal(name, path)

    def unread(self) -> int:
        """Bytes appended to the journals and not read yet."""
        self._new_parts()
        return sum(max(0, journal.size() - journal.offset) for journal in self.journals)

    # -- reading -------------------------------------------------------------------------------------

    def read_slice(self, journal: Journal, limit: int = SLICE_BYTES) -> Tuple[List[Read], int]:
        """The next complete lines of `journal` (about `limit` bytes), read, and where they end. Reads only:
        `add_slice` takes them in (the caller may read outside its lock, and add inside)."""
        size = journal.size()
        if size <= journal.offset:
            return [], journal.offset
        if journal.offset == 0 and journal.cached is None:
            journal.cached = read_cache_file(cache_path(journal.path))
            journal.entry = next(journal.cached, None)
        with open(journal.path, "rb") as handle:
            handle.seek(journal.offset)
            data = handle.read(min(limit, size - journal.offset))
            while b"\n" not in data and journal.offset + len(data) < size:
                data += handle.read(limit)  # one line longer than a slice
        end = data.rfind(b"\n") + 1  # a last line without its newline is still being written
        lines = data[:end].split(b"\n")[:-1]
        read, used = _from_cache(journal, lines)
        if used < len(lines):
            found = _decoded(lines[used:], journal.lines + used, journal.bad_lines)
            read.extend(Read(tree.Summary.of(record), _meta(record), line) for record, line in found)
        journal.lines += len(lines)
        return read, journal.offset + end

    def add_slice(self, journal: Journal, read: List[Read], end: int) -> None:
        journal.offset = end
        if read:
            journal.tail = read[-1].line[-TAIL_BYTES:] + b"\n"
        if not read:
            return
        journal.records += len(read)
        first = journal is self.journals[0]
        added = []
        for summary, meta, line in read:
            if summary.parent and summary.parent not in journal.index.nodes:
                journal.orphans.add(summary.id)
            node = journal.index.restore(summary, line, True)
            if first:
                self._heads[node] = self._head(node, meta)
            added.append(node)
        if not first:
            self._place(journal, len(read), added)
        self.version += 1
        self._prune()

    def _place(self, journal: Journal, count: int, added: List[Node]) -> None:
        """A later session's `count` new records into the collection, as Collection.add places a session."""
        if not self._first_placed:
            self.collection.add(self.journals[0].session(0))
            self._first_placed = True
        just_these = ThreadIndex()
        just_these.nodes = {node.id: node for node in added}
        leaves = journal.index.leaves
        just_these.leaves = {node.id: node for node in added if leaves.get(node.id) is node}
        placed = self.collection.index.nodes
        before = len(placed)
        self.collection.add(journal.session(count, just_these))
        for node in reversed(list(itertools.islice(reversed(placed.values()), len(placed) - before))):
            self.head(node)  # now, while the record it continues still has its head

    # -- conversations -------------------------------------------------------------------------------

    def current(self) -> Tuple[Iterable[Node], Callable[[Node], Conversation], List[Conversation]]:
        """The conversations as Collection.conversations("all") gives them, in three parts, so that a caller
        keeping a row per node makes new ones only for new nodes: the leaf nodes in order, how to make a
        leaf's Conversation, and then the damaged conversations of later sessions (their beginning is lost,
        so they stand apart: the current leaves of their own sessions)."""
        from chatproxy.commands.sessions import Conversation

        if not self.journals:
            return (), lambda node: Conversation("", node, False), []
        first = self.journals[0]
        own = first.session(0)
        if not self._first_placed:
            return first.index.leaves.values(), lambda node: Conversation(first.name, node, own.damaged(node)), []
        collection = self.collection
        apart = [
            Conversation(journal.name, node, True)
            for journal in self.journals[1:]
            if journal.orphans
            for node in journal.index.leaves.values()
            if journal.session(0).damaged(node)
        ]
        return (
            collection.index.leaves.values(),
            lambda node: Conversation(collection.session_of(node), node, own.damaged(node)),
            apart,
        )

    def conversations(self) -> Iterator[Conversation]:
        """Every conversation (branches all), as Collection.conversations gives them."""
        nodes, make, apart = self.current()
        for node in nodes:
            yield make(node)
        yield from apart

    def head(self, node: Node) -> Head:
        """The head of `node`'s summary (made on reading, or from the journal lines of its records)."""
        found = self._heads.get(node)
        if found is not None:
            return found
        chain = []
        current: Optional[Node] = node
        while current is not None and current not in self._heads:
            chain.append(current)
            current = current.parent
        for missing in reversed(chain):
            self._heads[missing] = self._head(missing, missing.meta)
        return self._heads[node]

    def _head(self, node: Node, meta: Dict[str, Any]) -> Head:
        """From its own record's meta, and the tags of the records before it (every record's count)."""
        tags = selection.own_tags(meta)
        if node.parent is not None:
            before = self.head(node.parent).tags
            tags = before | tags if tags else before
        return selection.head(meta, tags, node.complete)

    def summary(self, node: Node) -> Summary:
        """The summary of `node`'s whole conversation, made from the journal lines of its records."""
        found = self._summaries.get(node)
        if found is not None:
            return found
        chain = []
        current: Optional[Node] = node
        while current is not None and current not in self._summaries:
            chain.append(current)
            current = current.parent
        for missing in reversed(chain):
            self._summaries[missing] = self._derive(missing, json.loads(missing.line))
        return self._summaries[node]

    def unsummarized(self) -> List[Node]:
        """The conversations whose summary is still to be made."""
        nodes, _, apart = self.current()
        return [node for node in itertools.chain(nodes, (c.node for c in apart)) if node not in self._summaries]

    def _derive(self, node: Node, record: Dict[str, Any]) -> Summary:
        """`node`'s summary from its own (decoded) record and the summary of the record it continues."""
        own = selection.part_of(record["messages"])
        parent = node.parent
        if parent is not None:
            before = self.summary(parent).part if node.base == parent.length else None
            prefix = before if before is not None else selection.part_of(parent.iter_messages(node.base))
            own = selection.joined(prefix, own)
        return Summary(own, *self.head(node))

    def _prune(self) -> None:
        """Summaries only of conversations as they are now: a record continued is summarised no more."""
        leaves = len(self.collection.index.leaves) + sum(len(journal.index.leaves) for journal in self.journals)
        if len(self._summaries) + len(self._heads) < 4 * leaves + 2000:
            return
        keep = {conversation.node for conversation in self.conversations()}
        keep.update(node for journal in self.journals for node in journal.index.leaves.values())
        self._summaries = {node: found for node, found in self._summaries.items() if node in keep}
        self._heads = {node: found for node, found in self._heads.items() if node in keep}


def _from_cache(journal: Journal, lines: List[bytes]) -> Tuple[List[Read], int]:
    """The records on the first of `lines` that the recorder's resume cache summarises (journal.py: each
    entry is checked against its line), and how many lines that took. Only their meta is decoded: the
    cache holds what placing them needs, without decoding their messages or hashing them again. The first
    record that differs from its entry ends the cache's use, as it does when the recorder resumes; a
    damaged line is noted and skipped, the entry kept for the next."""
    matched: List[Tuple[tree.Summary, bytes]] = []
    parted: List[Read] = []  # the record the journal parts from the cache at, if it does here
    at = 0
    while journal.entry is not None and at < len(lines):
        line = lines[at]
        if journal.entry.matches_unterminated(line):
            matched.append((journal.entry.summary, line))
            journal.entry = next(journal.cached or iter(()), None)
        else:
            record = parse_line(line, journal.lines + at + 1, journal.bad_lines)
            if record is not None:
                journal.entry, journal.cached = None, iter(())  # the cache's bytes are let go
                parted.append(Read(tree.Summary.of(record), _meta(record), line))
        at += 1
    metas = metas_of([line for _, line in matched])
    return [Read(summary, meta, line) for (summary, line), meta in zip(matched, metas)] + parted, at


def _meta(record: Dict[str, Any]) -> Dict[str, Any]:
    meta = record.get("meta")
    return meta if isinstance(meta, dict) else {}


def _decoded(lines: List[bytes], before: int, bad_lines: List[Tuple[int, str]]) -> List[Tuple[Dict[str, Any], bytes]]:
    """The records on `lines` (numbered from before + 1), with their lines. One JSON array decoded at once
    is twice as fast as the lines one by one; a slice with a damaged or blank line is read line by line
    (journal.parse_line: damage noted, the rest kept)."""
    try:
        records = json.loads(b"[" + b",".join(lines) + b"]")
    except (ValueError, RecursionError):
        records = None
    if isinstance(records, list) and len(records) == len(lines) and all(map(_is_record, records)):
        return list(zip(records, lines))
    decoded = []
    for number, line in enumerate(lines, start=before + 1):
        record = parse_line(line, number, bad_lines)
        if record is not None:
            decoded.append((record, line))
    return decoded


def _is_record(record: Any) -> bool:
    """What journal.parse_line accepts as a record."""
    if not isinstance(record, dict) or not isinstance(record.get("id"), str):
        return False
    messages = record.get("messages")
    return isinstance(messages, list) and all(isinstance(message, dict) for message in messages)


def first_line_time(path: Path) -> Optional[str]:
    """The time of a journal's first record, "" when it cannot be read, None when it has no complete line yet."""
    try:
        with open(path, "rb") as handle:
            line = handle.readline()
    except OSError:
        return None
    if not line.endswith(b"\n"):
        return None
    try:
        meta = json.loads(line).get("meta")
    except (ValueError, AttributeError):
        return ""
    when = meta.get("time") if isinstance(meta, dict) else None
    return when if isinstance(when, str) else ""


def journal_names(folder: Path, known: Iterable[str] = ()) -> List[str]:
    """The folder's sessions that have recorded something (a complete first line); `known` ones are not
    looked into again."""
    from chatproxy.commands.sessions import journals, session_names

    skip = set(known)
    return [
        name
        for name in session_names(folder)
        if name in skip or any(first_line_time(path) is not None for path in journals(folder, name))
    ]
