"""Reading a session journal back: one JSON record per line, damage reported, never fatal.

A journal line (`SESSION.jsonl`) is one record, compact JSON, UTF-8:

    {"v": 1, "id": "<16 hex>", "parent": "<id>" | null, "base": <int>,
     "messages": [<canonical message>, ...], "meta": {...}, "tools": [...]   # "tools" only when changed}

The record's whole conversation is `full(parent)[:base] + messages` (see chats/tree.py): a record stores
only what its exchange added to the chat it continues. The last message is the assistant's reply.
`meta` holds time, model, endpoint, stream, finish_reason, usage, tags, complete, choice, response_id,
and for text completions the template the prompt was parsed with. Canonical messages are described in
apis/openai_completions.py.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

from chatproxy.chats.messages import encode_json

JOURNAL_VERSION = 1


@dataclasses.dataclass
class JournalContents:
    records: List[Dict[str, Any]]
    bad_lines: List[Tuple[int, str]]  # (line number, reason): skipped, every other line kept
    torn_tail: bytes  # bytes after the last newline: a line cut by a crash
    good_size: int  # length of the file up to and including the last newline


def parse_journal(data: bytes) -> JournalContents:
    """Every complete line that holds a record; the partial last line is returned, not parsed."""
    end = data.rfind(b"\n") + 1
    contents = JournalContents([], [], data[end:], end)
    for number, line in enumerate(data[:end].split(b"\n")[:-1], start=1):
        record = parse_line(line, number, contents.bad_lines)
        if record is not None:
            contents.records.append(record)
    return contents


def parse_line(line: bytes, number: int, bad_lines: List[Tuple[int, str]]) -> Optional[Dict[str, Any]]:
    """The record on one line (without its newline), or None: blank, or damaged (noted in bad_lines)."""
    if not line.strip():
        return None
    try:
        record = json.loads(line)
    except (ValueError, RecursionError) as exc:
        bad_lines.append((number, f"not JSON ({exc})"))
        return None
    problem = _record_problem(record)
    if problem:
        bad_lines.append((number, problem))
        return None
    return record  # type: ignore[no-any-return]  # _record_problem checked it is an object


class JournalScan:
    """Reads a journal line by line, so that resuming a large session never holds it whole."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.bad_lines: List[Tuple[int, str]] = []
        self.torn_tail = b""  # bytes after the last newline: a line cut by a crash
        self.good_size = 0

    def __iter__(self) -> Iterator[Tuple[Dict[str, Any], bytes]]:
        try:
            handle = open(self.path, "rb")
        except FileNotFoundError:
            return  # a new session: nothing to read back
        with handle:
            for number, line in enumerate(handle, start=1):
                if not line.endswith(b"\n"):
                    self.torn_tail = line
                    return
                self.good_size += len(line)
                record = parse_line(line[:-1], number, self.bad_lines)
                if record is not None:
                    yield record, line[:-1]


def _record_problem(record: Any) -> str:
    if not isinstance(record, dict):
        return "not a JSON object"
    if not isinstance(record.get("id"), str) or not isinstance(record.get("messages"), list):
        return "not a chatproxy record (no id or messages)"
    if not all(isinstance(m, dict) for m in record["messages"]):
        return "messages are not objects"
    return ""


def read_journal(path: Path) -> JournalContents:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        data = b""
    return parse_journal(data)


def encode_record(record: Dict[str, Any]) -> bytes:
    """One journal line: compact JSON, non-ASCII kept as UTF-8 (half the bytes of \\u escapes)."""
    return encode_json(record) + b"\n"
