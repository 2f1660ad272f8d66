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
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import re
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Set

from chatproxy.chats.tree import Node, Placement, ThreadIndex
from chatproxy.config import ConfigError, check_session_id
from chatproxy.recorder.journal import JournalContents, read_journal

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
    name: str
    journal: Path
    contents: JournalContents
    index: ThreadIndex
    orphans: Set[str]  # records whose parent was lost to a damaged line

    @property
    def records(self) -> List[Dict[str, Any]]:
        return self.contents.records

    def conversations(self, branches: str = "all") -> Iterator[Conversation]:
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
        lines = [
            f"{self.journal}: skipped damaged line {number}: {reason}" for number, reason in self.contents.bad_lines
        ]
        if self.contents.torn_tail:
            lines.append(
                f"{self.journal}: left out the unfinished last line ({len(self.contents.torn_tail)} bytes: "
                "still being written, or cut short by a crash)"
            )
        return lines


def session_names(folder: Path) -> List[str]:
    """Every session in the datasets folder, by name."""
    names = []
    for path in folder.glob("*" + JOURNAL_SUFFIX):
        name = path.name[: -len(JOURNAL_SUFFIX)]
        try:
            check_session_id(name)
        except ConfigError:
            continue  # not a file the proxy wrote
        if path.is_file():
            names.append(name)
    return sorted(names)


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
        check_session_id(name)
        if not (folder / (name + JOURNAL_SUFFIX)).is_file():
            raise ConfigError(
                f"unknown session {raw!r}: no {name}{JOURNAL_SUFFIX} in {folder} (sessions: {_listing(folder)})"
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
    """Read one session's journal and rebuild its conversations."""
    journal = folder / (name + JOURNAL_SUFFIX)
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
    try:
        with open(folder / (name + JOURNAL_SUFFIX), "rb") as journal:
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

    def add(self, session: Session) -> None:
        """Place every record of `session` (to be added oldest session first)."""
        self.names.append(session.name)
        self.records += len(session.records)
        if self._first is None:
            self._first = session
            self.index = session.index
            for node in session.index.leaves.values():
                self._note_images(node.iter_messages())
                self._leaves[node.id] = node.id
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
        return sum(1 for where in self._leaves.values() if not where)

    def merged(self) -> int:
        """The sessions' own conversations now held by a longer one (continued in another session)."""
        leaves = self.index.leaves
        return sum(1 for where in self._leaves.values() if where and where not in leaves)

    def sessions(self) -> int:
        return len(self.names)


def parse_record_time(value: Any) -> Optional[datetime.datetime]:
    """A journal `meta.time` ("2024-05-01T12:00:03.123Z") as an aware datetime, or None."""
    if not isinstance(value, str) or not value:
        return None
    text = value[:-1] + "+00:00" if value.endswith("Z") else value
    try:
        parsed = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.timezone.utc)
