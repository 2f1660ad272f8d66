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
import datetime
import json
import struct
import zlib
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

from chatproxy.chats.messages import encode_json
from chatproxy.chats.tree import Summary

JOURNAL_VERSION = 1


@dataclasses.dataclass
class JournalContents:
    records: List[Dict[str, Any]]
    bad_lines: List[Tuple[int, str]]  # (line number, reason): skipped, every other line kept
    torn_tail: bytes  # bytes after the last newline: a line cut by a crash
    good_size: int  # length of the file up to and including the last newline


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
    """Reads a journal line by line, so that resuming a large session never holds it whole.

    Yields each record with its line (newline included); `offset` is where that line starts. `lines()`
    yields every complete line without parsing it, for a caller that parses only some (see ResumeCache).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.bad_lines: List[Tuple[int, str]] = []
        self.torn_tail = b""  # bytes after the last newline: a line cut by a crash
        self.good_size = 0
        self.offset = 0

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
                self.offset = self.good_size
                self.good_size += len(line)
                record = parse_line(line[:-1], number, self.bad_lines)
                if record is not None:
                    yield record, line

    def lines(self) -> Iterator[Tuple[int, bytes]]:
        """(line number, line) for every complete line; a torn last line is kept in torn_tail."""
        try:
            handle = open(self.path, "rb")
        except FileNotFoundError:
            return
        with handle:
            for number, line in enumerate(handle, start=1):
                if not line.endswith(b"\n"):
                    self.torn_tail = line
                    return
                self.offset = self.good_size
                self.good_size += len(line)
                yield number, line


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


# -- the resume cache -----------------------------------------------------------------------------------
#
# Beside each journal the recorder keeps `.SESSION.jsonl.cache`: for each record line, in journal order,
# what placing it needs (chats/tree.py Summary), so that resuming a session of months does not decode and
# hash every record again. A cache, never the record: each entry names its line's length and CRC-32, and
# an entry that does not match the journal's line (or none) sends resume back to the line itself. Written
# after the journal, without fsync: a crash can only leave it short, and a short cache costs time, not data.

CACHE_MAGIC = b"chatproxy resume cache 2\n"
CACHE_SUFFIX = ".cache"
# line length, line CRC, base, own user, id / parent / keys lengths, flags; then id, parent, keys, chains
_ENTRY = struct.Struct("<IIIhHHHB")
_KEYS_PER_CHAIN = 2  # KEY_BYTES / CHAIN_BYTES (chats/tree.py)
_COMPLETE, _OWN_TOOLS, _SIDE_REQUEST, _CONTINUED, _RESPONSE = 1, 2, 4, 8, 16


def cache_path(journal: Path) -> Path:
    """Where the resume cache of `journal` is kept: `.NAME.jsonl.cache` beside it."""
    return journal.with_name(f".{journal.name}{CACHE_SUFFIX}")


def cache_entry(summary: Summary, line: bytes, response_id: Optional[str], chains: bytes) -> bytes:
    """One record's entry (see above); `response_id`: a Responses API reply's id, for previous_response_id;
    `chains`: the record's chained hashes (its node's), which resuming then need not compute."""
    flags = (
        (_COMPLETE if summary.complete else 0)
        | (_OWN_TOOLS if summary.own_tools else 0)
        | (_SIDE_REQUEST if summary.side_request else 0)
        | (_CONTINUED if summary.continued else 0)
        | (_RESPONSE if response_id is not None else 0)
    )
    record_id, parent = (
        summary.id.encode("utf-8", "surrogatepass"),
        (summary.parent or "").encode("utf-8", "surrogatepass"),
    )
    own_user = -1 if summary.own_user is None else summary.own_user
    head = _ENTRY.pack(
        len(line), zlib.crc32(line), summary.base, own_user, len(record_id), len(parent), len(summary.keys), flags
    )
    tail = b""
    if response_id is not None:
        encoded = response_id.encode("utf-8", "surrogatepass")
        tail = struct.pack("<H", len(encoded)) + encoded
    return head + record_id + parent + summary.keys + chains + tail


class CachedRecord:
    __slots__ = ("summary", "length", "crc", "response_id", "end")

    def __init__(self, summary: Summary, length: int, crc: int, response_id: Optional[str], end: int) -> None:
        self.summary = summary
        self.length = length
        self.crc = crc
        self.response_id = response_id
        self.end = end  # where the entry ends in the cache file

    def matches(self, line: bytes) -> bool:
        return len(line) == self.length and zlib.crc32(line) == self.crc

    def matches_unterminated(self, line: bytes) -> bool:
        """As matches(), for the line without its newline."""
        return len(line) + 1 == self.length and zlib.crc32(b"\n", zlib.crc32(line)) == self.crc


def read_cache_file(path: Path) -> Iterator[CachedRecord]:
    """The entries of the cache at `path` (none when it is missing or unreadable)."""
    try:
        data = path.read_bytes()
    except OSError:
        return iter(())
    return read_cache(data)


_META_KEY = b',"meta":'
_DECODER = json.JSONDecoder()


def meta_of(line: bytes) -> Dict[str, Any]:
    """A journal line's `meta`, decoding only that part of the line when it is the record's last key (as
    the recorder writes records without tools): what the review page's list needs first of every record.

    The last `,"meta":` of the line is the record's own key when the line ends right after its value: a
    quote cannot stand unescaped inside a JSON string, and a key nested deeper is followed by more than
    one closing bracket. Anything else decodes the whole line."""
    at = line.rfind(_META_KEY)
    if at > 0:
        text = line[at + len(_META_KEY) :].decode("utf-8", "surrogatepass")
        try:
            meta, end = _DECODER.raw_decode(text)
        except (ValueError, RecursionError):
            meta, end = None, -1
        if text[end:] == "}" and isinstance(meta, dict):
            return meta
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):
        return {}
    meta = record.get("meta") if isinstance(record, dict) else None
    return meta if isinstance(meta, dict) else {}


def metas_of(lines: List[bytes]) -> List[Dict[str, Any]]:
    """meta_of() of each line, decoded as one JSON array when every line's meta is its last key (one
    decode is about twice as fast as one per line). A meta key found nested deeper leaves closing brackets
    over, which no JSON array admits, and a meta followed by more keys adds elements: either way the lines
    are taken one by one."""
    parts = []
    for line in lines:
        at = line.rfind(_META_KEY)
        if at <= 0 or not line.endswith(b"}"):
            break
        parts.append(line[at + len(_META_KEY) : -1])
    else:
        try:
            metas = json.loads(b"[" + b",".join(parts) + b"]")
        except (ValueError, RecursionError):
            metas = None
        if isinstance(metas, list) and len(metas) == len(lines) and all(isinstance(m, dict) for m in metas):
            return metas
    return [meta_of(line) for line in lines]


def read_cache(data: bytes) -> Iterator[CachedRecord]:
    """The entries of a cache file's contents, up to the first that is cut short or damaged."""
    if not data.startswith(CACHE_MAGIC):
        return
    at, size = len(CACHE_MAGIC), len(data)
    while at + _ENTRY.size <= size:
        length, crc, base, own_user, id_size, parent_size, keys_size, flags = _ENTRY.unpack_from(data, at)
        start = at + _ENTRY.size
        end = start + id_size + parent_size + keys_size + keys_size // _KEYS_PER_CHAIN
        response_id = None
        if flags & _RESPONSE:
            if end + 2 > size:
                return
            (response_size,) = struct.unpack_from("<H", data, end)
            response_id = data[end + 2 : end + 2 + response_size].decode("utf-8", "surrogatepass")
            end += 2 + response_size
        if end > size:
            return
        keys_at = start + id_size + parent_size
        summary = Summary(
            data[start : start + id_size].decode("utf-8", "surrogatepass"),
            data[start + id_size : keys_at].decode("utf-8", "surrogatepass") or None,
            base,
            data[keys_at : keys_at + keys_size],
            None if own_user < 0 else own_user,
            bool(flags & _COMPLETE),
            bool(flags & _OWN_TOOLS),
            bool(flags & _SIDE_REQUEST),
            bool(flags & _CONTINUED),
            data[keys_at + keys_size : keys_at + keys_size + keys_size // _KEYS_PER_CHAIN],
        )
        yield CachedRecord(summary, length, crc, response_id, end)
        at = end
