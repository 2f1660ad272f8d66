"""Recorded sessions read back for export, stats and show: journals in, conversations out.

Reading never takes the session lock: a proxy may be recording the session right now, and its journal is
append-only, so every complete line is final. A line still being written is the journal's torn tail and is
left out; a damaged line is reported and skipped, and a conversation whose beginning was on it is marked
as such rather than silently exported without its start.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Set

from chatproxy.chats.tree import Node, ThreadIndex
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
            yield Conversation(self.name, node, self._damaged(node))

    def _damaged(self, node: Node) -> bool:
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
