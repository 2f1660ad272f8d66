"""Recorded sessions read back for export, stats and show: journals in, conversations out.

Reading never takes the session lock: a proxy may be recording the session right now, and its journal is
append-only, so every complete line is final. A line still being written is the journal's torn tail and is
left out; a damaged line is reported and skipped, and a conversation whose beginning was on it is marked
as such rather than silently exported without its start.

Several sessions are read as one collection (`Collection`): a chat recorded in one session and continued in
another (a rotation, a restart with a new --session, another instance behind a load balancer) is one
conversation, the longest, exactly as if one recorder had seen every request. Sessions are taken oldest
first (by their first record's time); the first one's thread index is used as it is, and every record of
each later one is placed into it by the recorder's own rules (ThreadIndex.place): a continuation extends
and supersedes the shorter copy, a regenerated reply or an edited message is a branch, a context-trimmed
continuation merges by the window match, and an exact copy adds nothing.

A session recorded with --rotate is its parts (SESSION@PART.jsonl, PART the part's start time), read as one
session the same way: `load` joins them, oldest first (an unrotated SESSION.jsonl recorded before the
session was rotated comes first), and listings name the session once.
"""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import json
import os
import re
import typing
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Set, Tuple

from chatproxy.chats.tree import Node, Placement, ThreadIndex
from chatproxy.config import PART_SEPARATOR, ConfigError, check_session_id, part_time
from chatproxy.recorder.journal import JournalContents, parse_record_time, read_journal

JOURNAL_SUFFIX = ".jsonl"
DATASETS_ENV = "CHATPROXY_DATASETS"  # the proxy's own --datasets environment default


def default_datasets() -> str:
    return os.environ.get(DATASETS_ENV) or "datasets"


@dataclasses.dataclass
class Conversation:
    """One leaf of a session's thread index: a whole chat as the dataset would hold it."""

    session: str
    node: Node
    damaged: bool  # its beginning was on a journal line that could not be read

    @property
    def id(self) -> str:
        return self.node.id

    @property
    def messages(self) -> List[Dict[str, Any]]:
        return list(self.node.iter_messages())

    @property
    def tools(self) -> Optional[List[Any]]:
        return self.node.tools

    @property
    def meta(self) -> Dict[str, Any]:
        return self.node.meta

    @property
    def model(self) -> str:
        model = self.node.meta.get("model")
        return model if isinstance(model, str) else ""

    @property
    def time(self) -> Optional[datetime.datetime]:
        """When its last reply was requested (the leaf record's time), timezone-aware."""
        return parse_record_time(self.node.meta.get("time"))

    def tags(self) -> Set[str]:
        """Tags of every exchange the chat went through: a frontend may tag only some requests."""
        found: Set[str] = set()
        node: Optional[Node] = self.node
        while node is not None:
            tags = node.meta.get("tags")
            if isinstance(tags, list):
                found.update(tag for tag in tags if isinstance(tag, str))
            node = node.parent
        return found


@dataclasses.dataclass
class Session:
    """A session's records and conversations: one journal's, or (`parts`) those of a rotated session's
    journals joined by a Collection, so that a chat continued in a later part is one conversation."""

    name: str
    journal: Path  # the newest journal
    contents: JournalContents  # with parts: their damaged lines only (records: see `records`)
    index: ThreadIndex
    orphans: Set[str]  # records whose parent was lost to a damaged line
    parts: List[Path] = dataclasses.field(default_factory=list)  # a rotated session's journals, oldest first
    joined: Optional[Collection] = None  # what joined the parts
    part_warnings: List[str] = dataclasses.field(default_factory=list)
    part_records: int = 0

    @property
    def records(self) -> typing.Collection[Dict[str, Any]]:
        """Every record, as journaled; a rotated session's are read again from its parts when iterated."""
        return RecordsOfParts(self.parts, self.part_records) if self.parts else self.contents.records

    def conversations(self, branches: str = "all") -> Iterator[Conversation]:
        if self.joined is not None:
            yield from self.joined.conversations(branches)
            return
        for node in self.index.current(branches):
            yield Conversation(self.name, node, self.damaged(node))

    def damaged(self, node: Node) -> bool:
        current: Optional[Node] = node
        while current is not None:
            if current.id in self.orphans:
                return True
            current = current.parent
        return False

    def warnings(self) -> List[str]:
        """What the reader had to leave out, one line each, for the user to see."""
        if self.parts:
            return self.part_warnings
        lines = [
            f"{self.journal}: skipped damaged line {number}: {reason}" for number, reason in self.contents.bad_lines
        ]
        if self.contents.torn_tail:
            lines.append(
                f"{self.journal}: left out the unfinished last line ({len(self.contents.torn_tail)} bytes: "
                "still being written, or cut short by a crash)"
            )
        return lines


class RecordsOfParts:
    """The records of a rotated session's parts, read part by part when iterated: a month of parts held
    as decoded records would take gigabytes, while its conversations are in the session's index already."""

    def __init__(self, parts: List[Path], count: int) -> None:
        self.parts = parts
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        # As many as were read: a part being recorded may have grown since (appended at its end).
        every = (record for part in self.parts for record in read_journal(part).records)
        return itertools.islice(every, self.count)

    def __contains__(self, record: object) -> bool:
        return any(record == mine for mine in self)


def journal_of(path: Path) -> Optional[Tuple[str, Optional[str]]]:
    """(session, part) for a journal the proxy writes (part None: not rotated), None for any other file."""
    if not path.name.endswith(JOURNAL_SUFFIX):
        return None
    name, separator, part = path.name[: -len(JOURNAL_SUFFIX)].partition(PART_SEPARATOR)
    if separator and part_time(part) is None:
        return None
    try:
        check_session_id(name)
    except ConfigError:
        return None  # SESSION.review.jsonl, or a file the proxy did not write
    return name, part if separator else None


def session_names(folder: Path) -> List[str]:
    """Every session in the datasets folder, by name: a rotated session once, however many parts it has."""
    names = set()
    for path in folder.glob("*" + JOURNAL_SUFFIX):
        found = journal_of(path)
        if found is not None and path.is_file():
            names.add(found[0])
    return sorted(names)


def journals(folder: Path, name: str) -> List[Path]:
    """A session's journals, oldest first: SESSION.jsonl (recorded without --rotate), then its parts in the
    order of their names, which is the order they began in."""
    plain = folder / (name + JOURNAL_SUFFIX)
    parts = [path for path in folder.glob(f"{name}{PART_SEPARATOR}*{JOURNAL_SUFFIX}") if journal_of(path)]
    return [path for path in [plain, *sorted(parts)] if path.is_file()]


def resolve(folder: Path, requested: List[str], every: bool) -> List[str]:
    """The sessions a command should read; raises ConfigError (one line) for anything unusable."""
    if not folder.is_dir():
        raise ConfigError(f"no datasets folder {folder} (use --datasets DIR)")
    if requested and every:
        raise ConfigError("name sessions or use --all, not both")
    if every:
        names = session_names(folder)
        if not names:
            raise ConfigError(f"no recorded sessions in {folder}")
        return names
    if not requested:
        raise ConfigError(f"name a session or use --all (sessions in {folder}: {_listing(folder)})")
    names = []
    for raw in requested:
        name = _strip_suffix(raw)
        session, separator, part = name.partition(PART_SEPARATOR)
        if separator and part_time(part) is not None:
            raise ConfigError(f"{raw!r} is a part of session {session!r}: name the session, all its parts are read")
        check_session_id(name)
        if not journals(folder, name):
            raise ConfigError(
                f"unknown session {raw!r}: no {name}{JOURNAL_SUFFIX} or {name}{PART_SEPARATOR}PART{JOURNAL_SUFFIX} "
                f"in {folder} (sessions: {_listing(folder)})"
            )
        if name not in names:
            names.append(name)
    return names


def _strip_suffix(name: str) -> str:
    # Tab completion hands over the file name; the session is what it names.
    for suffix in (JOURNAL_SUFFIX, ".json"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _listing(folder: Path, limit: int = 8) -> str:
    names = session_names(folder)
    if not names:
        return "none"
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def load(folder: Path, name: str, keep_incomplete: bool = False) -> Session:
    """Read one session's journal, or every part of a rotated one, and rebuild its conversations."""
    found = journals(folder, name)
    if len(found) > 1:
        return _joined(name, found, keep_incomplete)
    return load_journal(name, found[0] if found else folder / (name + JOURNAL_SUFFIX), keep_incomplete)


def _joined(name: str, parts: List[Path], keep_incomplete: bool) -> Session:
    """The parts placed one after the other into one collection: each part's own index is let go once it
    is placed (but the first's, which becomes the session's)."""
    joined = Collection(keep_incomplete)
    contents = JournalContents([], [], b"", 0)
    orphans: Set[str] = set()
    warnings: List[str] = []
    records = 0
    for journal in parts:
        part = load_journal(name, journal, keep_incomplete)
        joined.add(part)
        records += len(part.records)
        part.contents.records = []  # the index holds them now (RecordsOfParts reads them again if asked)
        contents.bad_lines.extend(part.contents.bad_lines)  # numbered within their part, as the warnings say
        orphans.update(part.orphans)
        warnings.extend(part.warnings())
    return Session(name, parts[-1], contents, joined.index, orphans, parts, joined, warnings, records)


def load_journal(name: str, journal: Path, keep_incomplete: bool = False) -> Session:
    """One journal (a session's, or one part of it) and the conversations it holds on its own."""
    contents = read_journal(journal)
    index = ThreadIndex()
    orphans: Set[str] = set()
    for record in contents.records:
        parent = record.get("parent")
        if parent and parent not in index.nodes:
            orphans.add(record["id"])
        index.add(record, keep_incomplete)
    return Session(name, journal, contents, index, orphans)


def first_time(folder: Path, name: str) -> str:
    """The time of a session's first record as journaled ("" when it has none or it cannot be read)."""
    found = journals(folder, name)
    if not found:
        return ""
    try:
        with open(found[0], "rb") as journal:
            line = journal.readline()
        meta = json.loads(line).get("meta") if line.endswith(b"\n") else None
    except (OSError, ValueError, AttributeError):
        return ""
    when = meta.get("time") if isinstance(meta, dict) else None
    return when if isinstance(when, str) else ""


def oldest_first(folder: Path, names: List[str]) -> List[str]:
    """The sessions in the order they began (by their first record), the order they were named in on a tie;
    a session whose time cannot be read goes first: it cannot continue anything placed before it."""
    order = {name: position for position, name in enumerate(names)}
    times = {name: parse_record_time(first_time(folder, name)) for name in names}
    epoch = datetime.datetime.min.replace(tzinfo=datetime.timezone.utc)
    return sorted(names, key=lambda name: (times[name] or epoch, order[name]))


SESSION_IMAGE = re.compile(r"[^/\\]+/images/([^/\\]+)")  # "SESSION/images/<sha256>.png", as the recorder saves


class Collection:
    """The conversations of several sessions as one: see the module's docstring.

    Memory is one thread index over all of them (a session's own index is let go once it is placed), and
    the message lists of the records of the session being placed whose continuations are still to come.
    """

    def __init__(self, keep_incomplete: bool = False) -> None:
        self.keep_incomplete = keep_incomplete
        self.index = ThreadIndex()
        self.names: List[str] = []
        self.records = 0
        self._first: Optional[Session] = None  # the session whose own index is the collection's
        self._origin: Dict[str, str] = {}  # id of a record placed from a later session -> that session
        self._aliases: Dict[str, List[str]] = {}  # id -> ids of exact copies of it recorded elsewhere
        self._damaged: Dict[str, List[Conversation]] = {"all": [], "last": []}  # later sessions' damaged chats
        self._images: Dict[str, str] = {}  # image file name -> the first path recorded for it
        self._leaves: Dict[str, str] = {}  # each session's own conversations -> its record here ("": a copy)
        self._joined_copies = 0  # duplicates() and merged() among the parts of rotated sessions added
        self._joined_merged = 0

    def add(self, session: Session) -> None:
        """Place every record of `session` (to be added oldest session first)."""
        self.names.append(session.name)
        self.records += len(session.records)
        if session.joined is not None:
            self._absorb(session.joined)
        if self._first is None:
            self._first = session
            self.index = session.index
            for node in session.index.nodes.values():
                if b'"images"' in node.line:  # decoded only where there are images to note
                    self._note_images(json.loads(node.line)["messages"])
            for node in session.index.leaves.values():
                self._leaves[node.id] = node.id
            if session.joined is not None:  # its later parts' damaged conversations are not in its index
                for damaged in ("all", "last"):
                    self._damaged[damaged].extend(session.joined._damaged[damaged])
            return
        for damaged in ("all", "last"):
            self._damaged[damaged].extend(c for c in session.conversations(damaged) if c.damaged)
        leaves = session.index.leaves
        copies: Dict[str, Node] = {}  # a record of this session -> the record placed here from it
        for node in session.index.nodes.values():
            if session.damaged(node):
                continue  # its beginning is lost: kept apart, as a damaged conversation of its session
            decoded = json.loads(node.line)
            own = self._same_images(decoded["messages"])
            parent = node.parent
            copy = copies.get(parent.id) if parent is not None else None
            if parent is not None and copy is not None and node.base == parent.length and copy.first_user is not None:
                # It extends the whole of its parent, and the parent is placed: what place() would find,
                # without hashing the history again (the session's recorder found nothing longer to follow,
                # and nothing but this session's records has been placed since the parent).
                placement = Placement(copy, copy.length, own)
            else:
                history = [self._same_message_images(m) for m in parent.iter_messages(node.base)] if parent else []
                messages = history + own
                if not messages:
                    continue
                placement = self.index.place(messages[:-1], messages[-1])
            # The journal line as read, when the record stores just what it stored there: not encoded again.
            line = node.line if placement.new is own and own is decoded["messages"] else None
            placed = self._add(session.name, node, placement, decoded.get("meta", {}), line)
            if placed is not None:
                copies[node.id] = placed
            if node.id in leaves:
                self._leaves[f"{session.name}/{node.id}"] = placed.id if placed is not None else ""

    def _absorb(self, joined: Collection) -> None:
        """What joining a rotated session's parts found (copies, continuations, images), counted here as if
        this collection had placed the parts itself."""
        for record_id, copies in joined._aliases.items():
            self._aliases.setdefault(record_id, []).extend(copies)
        self._images.update((name, path) for name, path in joined._images.items() if name not in self._images)
        self._joined_copies += joined.duplicates()
        self._joined_merged += joined.merged()

    def _add(
        self, name: str, node: Node, placement: Placement, meta: Dict[str, Any], line: Optional[bytes]
    ) -> Optional[Node]:
        """The record placed from `node` (None: an exact copy of what is here already)."""
        if placement.duplicate:
            assert placement.parent is not None
            self._aliases.setdefault(placement.parent.id, []).append(node.id)
            return None
        record_id = node.id if node.id not in self.index.nodes else f"{name}/{node.id}"
        record: Dict[str, Any] = {
            "id": record_id,
            "parent": placement.parent.id if placement.parent else None,
            "base": placement.base,
            "messages": placement.new,
            "meta": meta,
        }
        if node.tools != (placement.parent.tools if placement.parent else None):
            record["tools"] = node.tools
        self._origin[record_id] = name
        return self.index.add(record, self.keep_incomplete, line)

    def _same_images(self, messages: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
        """Messages with each saved image named as first recorded: images are saved by their hash in each
        session's own folder, so the same image re-sent to another session has another path (and so the
        turn another key) though it is the same file."""
        same = [self._same_message_images(message) for message in messages]
        return messages if all(a is b for a, b in zip(same, messages)) else same

    def _same_message_images(self, message: Dict[str, Any]) -> Dict[str, Any]:
        images = message.get("images")
        if not isinstance(images, list) or not images:
            return message
        same = [self._first_path(image) if isinstance(image, str) else image for image in images]
        return message if same == images else dict(message, images=same)

    def _first_path(self, image: str) -> str:
        match = SESSION_IMAGE.fullmatch(image)
        return self._images.setdefault(match.group(1), image) if match else image

    def _note_images(self, messages: Iterable[Dict[str, Any]]) -> None:
        for message in messages:
            for image in message.get("images") or ():
                if isinstance(image, str):
                    self._first_path(image)

    def session_of(self, node: Node) -> str:
        return self._origin.get(node.id) or (self._first.name if self._first else "")

    def conversations(self, branches: str = "all") -> Iterator[Conversation]:
        """Every conversation of the collection (newest per chat with "last"), then the damaged ones of
        sessions after the first (they cannot be placed: their beginning is lost)."""
        first = self._first
        for node in self.index.current(branches):
            damaged = first is not None and first.damaged(node)
            yield Conversation(self.session_of(node), node, damaged)
        yield from self._damaged["last" if branches == "last" else "all"]

    def with_copies(self, ids: List[str]) -> List[str]:
        """`ids` (a conversation's own id, then those of the records it holds whole: review marks are
        made under them) with the ids of exact copies of each recorded in other sessions after it."""
        return [alias for record_id in ids for alias in (record_id, *self._aliases.get(record_id, ()))]

    def duplicates(self) -> int:
        """The sessions' own conversations that an earlier-placed session already held exactly."""
        return self._joined_copies + sum(1 for where in self._leaves.values() if not where)

    def merged(self) -> int:
        """The sessions' own conversations now held by a longer one (continued in another session)."""
        leaves = self.index.leaves
        return self._joined_merged + sum(1 for where in self._leaves.values() if where and where not in leaves)

    def sessions(self) -> int:
        return len(self.names)
