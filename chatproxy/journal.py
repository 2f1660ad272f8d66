"""Reading a session journal back: one JSON record per line, damage reported, never fatal.

A journal line (`SESSION.jsonl`) is one record, compact JSON, UTF-8:

    {"v": 1, "id": "<16 hex>", "parent": "<id>" | null, "base": <int>,
     "messages": [<canonical message>, ...], "meta": {...}, "tools": [...]   # "tools" only when changed}

The record's whole conversation is `full(parent)[:base] + messages` (see threads.py): a record stores
only what its exchange added to the chat it continues. The last message is the assistant's reply.
`meta` holds time, model, endpoint, stream, finish_reason, usage, tags, complete, choice, response_id,
and for text completions the template the prompt was parsed with. Canonical messages are described in
normalize.py.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Dict, List, Tuple

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
    records: List[Dict[str, Any]] = []
    bad: List[Tuple[int, str]] = []
    for number, line in enumerate(data[:end].split(b"\n")[:-1], start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError) as exc:
            bad.append((number, f"not JSON ({exc})"))
            continue
        problem = _record_problem(record)
        if problem:
            bad.append((number, problem))
            continue
        records.append(record)
    return JournalContents(records, bad, data[end:], end)


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


def encode_json(value: Any) -> bytes:
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate (from a "\\ud800" escape in the request) has no UTF-8 form: escape it.
        return json.dumps(value, separators=(",", ":")).encode("ascii")
