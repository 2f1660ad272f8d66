"""Threads, not copies: recognise which recorded chat a request continues.

Every request replays its chat's history. Storing each exchange whole would write a 200-turn chat's
beginning 200 times, so a record stores only what is new relative to a `parent` record:

    full(record) = full(parent)[:base] + record.messages

Matching a request's history to what was recorded uses two indexes, both growing with new messages only:

- prefix: a chained hash of the first k messages -> the newest record holding that prefix. The longest hit
  tells whether the request extends a record (k == its length: the old record is superseded), branches from
  it (a regenerated reply or an edited message: both kept), or repeats it exactly (nothing new to store).
- window: each message's hash -> where it was recorded. Frontends that trim old turns to fit the context
  (keeping the system prompt) send a window of a recorded chat: when the window after the system prompt
  matches a recorded chat up to its end, the request continues that chat and the record keeps the full
  history seen so far.

A shared prefix only makes two requests the same chat if it contains a user message: chats that share
just a system prompt and a greeting are different chats (they still share storage of that prefix).
"""

from __future__ import annotations

import array
import json
import struct
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

from chatproxy.chats.messages import encode_json

try:
    # hashlib's own blake2b, without the OpenSSL library `import hashlib` loads (4 MB of memory).
    from _blake2 import blake2b
except ImportError:  # other Python implementations
    from hashlib import blake2b

Message = Dict[str, Any]

WINDOW_CANDIDATES = 16  # recent records a message was seen in, checked for a trimmed-context match
MIN_WINDOW_OVERLAP = 2
KEY_BYTES = 16  # a message's key: what says two turns are the same, compared in full
CHAIN_BYTES = 8  # a chained prefix hash: a lookup key only, every hit is checked against the full keys


def message_key(message: Message) -> bytes:
    """What makes two messages the same turn when a frontend sends history back.

    Frontends drop reasoning, re-number tool call ids and rewrite whitespace, so those do not count:
    SillyTavern trims replies, re-renders "Seraphina:Hello" as "Seraphina: Hello" and joins a continued
    message with a separator of its own choosing (a space, a newline or nothing). So the key is taken over
    the text without any whitespace: two turns that differ only in spacing are the same turn.
    """
    role, content = message.get("role"), message.get("content", "")
    if type(role) is str and type(content) is str and "tool_calls" not in message and "images" not in message:
        return _PLAIN_KEYS.key(role, content)
    return _message_key(message)


def _message_key(message: Message) -> bytes:
    parts = [str(message.get("role")), _squeezed(message.get("content", ""))]
    for call in message.get("tool_calls", ()):
        parts.append(f"{call.get('name', '')}\x1f{_squeezed(call.get('arguments', ''))}")
    parts.extend(message.get("images", ()))
    material = "\x1e".join(parts).encode("utf-8", "surrogatepass")
    return blake2b(material, digest_size=KEY_BYTES).digest()


def _squeezed(text: Any) -> str:
    return "".join(text.split()) if isinstance(text, str) else ""


# The characters str.split() takes for whitespace among the first 128.
_ASCII_SPACE = bytes(i for i in range(128) if chr(i).isspace())


class PlainKeys:
    """The keys of messages that are only a role and a text, remembered by that text: every request
    sends its chat's whole history again, and each of those turns would be hashed again with it. Forgotten
    all at once past LIMIT characters of text, so the memory stays bounded."""

    LIMIT = 1 << 20

    def __init__(self) -> None:
        self._keys: Dict[Tuple[str, str], bytes] = {}
        self._chars = 0

    def key(self, role: str, content: str) -> bytes:
        """message_key({"role": role, "content": content})."""
        key = self._keys.get((role, content))
        if key is None:
            if content.isascii():
                squeezed = content.encode("ascii").translate(None, _ASCII_SPACE)
            else:
                squeezed = "".join(content.split()).encode("utf-8", "surrogatepass")
            material = role.encode("utf-8", "surrogatepass") + b"\x1e" + squeezed
            key = blake2b(material, digest_size=KEY_BYTES).digest()
            if self._chars + len(content) > self.LIMIT:
                self._keys.clear()
                self._chars = 0
            self._keys[(role, content)] = key
            self._chars += len(content)
        return key


_PLAIN_KEYS = PlainKeys()


def _continues(reply: Message, earlier: Message) -> bool:
    """The reply is the earlier message with more text after it (whitespace aside)."""
    before = _squeezed(earlier.get("content", ""))
    if not before or reply.get("role") != earlier.get("role"):
        return False
    return _squeezed(reply.get("content", "")).startswith(before)


def _chain(previous: bytes, key: bytes) -> bytes:
    return blake2b(previous + key, digest_size=CHAIN_BYTES).digest()


def _slot(digest: bytes) -> int:
    """A dict key for a digest: 60 of its bits as an int, which Python stores in 32 bytes (8 bytes more
    for all 64, 16 more as a bytes object). Hits are verified, so a shorter key only costs a lookup."""
    return int(_FIRST_8.unpack_from(digest)[0]) >> 4


_FIRST_8 = struct.Struct("<Q")


# -- where records' journal lines are kept ---------------------------------------------------------------


class LinesInMemory:
    """Every record's line held as bytes: for reading a journal once (export, stats, the review page)."""

    def __init__(self) -> None:
        self._lines: List[bytes] = []
        self._tools = ToolsCache()
        self._records = RecordsCache()

    def keep(self, line: bytes, offset: Optional[int] = None) -> int:
        self._lines.append(line)
        return len(self._lines) - 1

    def get(self, handle: int) -> bytes:
        return self._lines[handle]

    def tools(self, handle: int) -> Optional[List[Any]]:
        return self._tools.get(handle, self.get)

    def record(self, handle: int, keep: bool = True) -> Dict[str, Any]:
        return self._records.get(handle, self.get, keep)

    def known(self, handle: int, record: Dict[str, Any]) -> None:
        """`record` is what the line of `handle` decodes to: kept as if decoded (see RecordsCache)."""
        self._records.put(handle, record, len(self.get(handle)))


class ToolsCache:
    """The tool lists of the records last asked for, decoded from their lines: a chat's records all ask for
    the same one. Not kept per record: an agent's tool list is tens of kilobytes as Python objects."""

    SIZE = 64

    def __init__(self) -> None:
        self._decoded: Dict[int, Optional[List[Any]]] = {}

    def get(self, handle: int, line: Callable[[int], bytes]) -> Optional[List[Any]]:
        if handle not in self._decoded:
            if len(self._decoded) >= self.SIZE:
                self._decoded.clear()
            self._decoded[handle] = json.loads(line(handle)).get("tools")
        return self._decoded[handle]


class RecordsCache:
    """The records last decoded from their lines (or known without decoding), for the readers that only read
    them: placing an exchange compares a turn of the record it continues, and the live dataset renders each
    new conversation, mostly from records placed since its last rewrite. The oldest go first past LIMIT
    bytes of lines."""

    LIMIT = 2 << 20

    def __init__(self) -> None:
        self._decoded: Dict[int, Tuple[Dict[str, Any], int]] = {}  # handle -> (record, bytes of its line)
        self._bytes = 0

    def get(self, handle: int, line: Callable[[int], bytes], keep: bool = True) -> Dict[str, Any]:
        """The record of `handle`; `keep`: remember it if it had to be decoded. A reader going through more
        records than the cache holds (a rewrite after a burst) keeps none, or each would push out the next."""
        known = self._decoded.get(handle)
        if known is not None:
            return known[0]
        data = line(handle)
        record: Dict[str, Any] = json.loads(data)
        if keep:
            self.put(handle, record, len(data))
        return record

    def put(self, handle: int, record: Dict[str, Any], size: int) -> None:
        decoded = self._decoded
        while decoded and self._bytes + size > self.LIMIT:
            self._bytes -= decoded.pop(next(iter(decoded)))[1]
        decoded[handle] = (record, size)
        self._bytes += size


class LinesInJournal:
    """Records' lines left in the journal they were read from or written to: 12 bytes per record in
    memory (where the line starts, and its length), read back with `read(offset, length)` when a record
    is decoded. A line not yet written (its record is pending) is kept as bytes until `written`."""

    def __init__(self, read: Callable[[int, int], bytes]) -> None:
        self._read = read
        self._offsets = array.array("q")
        self._lengths = array.array("L")
        self._unwritten: Dict[int, bytes] = {}
        self._tools = ToolsCache()
        self._records = RecordsCache()

    def keep(self, line: bytes, offset: Optional[int] = None) -> int:
        handle = len(self._offsets)
        self._offsets.append(-1 if offset is None else offset)
        self._lengths.append(len(line))
        if offset is None:
            self._unwritten[handle] = line
        return handle

    def written(self, handle: int, offset: int) -> None:
        """The line of `handle` is now in the journal at `offset`."""
        self._offsets[handle] = offset
        del self._unwritten[handle]

    def get(self, handle: int) -> bytes:
        line = self._unwritten.get(handle)
        if line is not None:
            return line
        length, offset = self._lengths[handle], self._offsets[handle]
        line = self._read(offset, length)
        if len(line) != length or not line.endswith(b"\n"):
            raise OSError(f"the journal no longer holds the record written at byte {offset} ({length} bytes)")
        return line

    def tools(self, handle: int) -> Optional[List[Any]]:
        return self._tools.get(handle, self.get)

    def record(self, handle: int, keep: bool = True) -> Dict[str, Any]:
        return self._records.get(handle, self.get, keep)

    def known(self, handle: int, record: Dict[str, Any]) -> None:
        """`record` is what the line of `handle` decodes to: kept as if decoded (see RecordsCache)."""
        self._records.put(handle, record, len(self.get(handle)))


Lines = Union[LinesInMemory, LinesInJournal]


class Summary:
    """What placing a record needs of it: from the record itself, or read back from a resume cache
    (recorder/store.py) without decoding the record's JSON or hashing its messages again."""

    __slots__ = (
        "id",
        "parent",
        "base",
        "keys",
        "own_user",
        "complete",
        "own_tools",
        "side_request",
        "continued",
        "chains",
    )

    def __init__(
        self,
        record_id: str,
        parent: Optional[str],
        base: int,
        keys: bytes,
        own_user: Optional[int],
        complete: bool,
        own_tools: bool,
        side_request: bool,
        continued: bool,
        chains: Optional[bytes] = None,
    ) -> None:
        self.id = record_id
        self.parent = parent
        self.base = base
        self.keys = keys  # the message keys, end to end
        self.own_user = own_user  # the index of the record's first user message
        self.complete = complete
        self.own_tools = own_tools  # the record says which tools (else: as its parent)
        self.side_request = side_request
        self.continued = continued
        self.chains = chains  # the chained hashes, when known (computed from the parent's otherwise)

    @classmethod
    def of(cls, record: Dict[str, Any], keys: Optional[bytes] = None) -> Summary:
        """`keys`: the messages' keys end to end, when the caller has them already (see Placement)."""
        messages: List[Message] = record["messages"]
        meta = record.get("meta") or {}
        return cls(
            record["id"],
            record.get("parent") or None,
            record.get("base", 0),
            b"".join(message_key(m) for m in messages) if keys is None else keys,
            next((i for i, m in enumerate(messages) if m.get("role") == "user"), None),
            bool(meta.get("complete", True)),
            "tools" in record,
            bool(meta.get("side_request")),
            bool(meta.get("continued")),
        )


class Node:
    """One record in memory: its hashes and links. Its messages stay in its journal line, which `lines`
    keeps (in memory, or as a place in the journal) and which is decoded when asked for: held as Python
    objects they would take ten times the memory, for every record of a long session.

    `keys` holds the record's message keys end to end (KEY_BYTES each), `chains` the chained hash of the
    conversation up to each of them (CHAIN_BYTES each): one bytes object each, not one per message.
    """

    __slots__ = (
        "id",
        "parent",
        "base",
        "keys",
        "chains",
        "root",
        "complete",
        "tools_at",
        "first_user",
        "seq",
        "lines",
        "shard",
    )

    def __init__(self, summary: Summary, parent: Optional[Node], seq: int, lines: Lines) -> None:
        self.id: str = summary.id
        self.parent = parent
        self.base: int = summary.base if parent else 0
        self.lines = lines
        self.seq = seq  # the order records were added in, from 1; `lines` keeps this one's line as seq - 1
        self.complete = summary.complete
        # The record whose line names this conversation's tools (None: no tools).
        self.tools_at: Optional[Node] = self if summary.own_tools else (parent.tools_at if parent else None)
        self.keys = summary.keys
        # Hashes read back hold while the record's parent is the one they were computed under (not lost).
        known = summary.chains is not None and (parent is not None or not summary.parent or not summary.base)
        if known and len(summary.chains or b"") * KEY_BYTES == len(self.keys) * CHAIN_BYTES:
            self.chains = summary.chains or b""
        else:
            previous = parent.chain_at(self.base) if parent and self.base else b""
            chains = []
            for offset in range(0, len(self.keys), KEY_BYTES):
                previous = _chain(previous, self.keys[offset : offset + KEY_BYTES])
                chains.append(previous)
            self.chains = summary.chains = b"".join(chains)
        inherited = parent.first_user if parent is not None else None
        shares_user_turn = inherited is not None and inherited < self.base
        own_user = summary.own_user
        self.first_user: Optional[int] = (
            inherited if shares_user_turn else (None if own_user is None else self.base + own_user)
        )
        self.root: str = parent.root if (parent and shares_user_turn) else self.id
        self.shard: Any = None  # for the index's owner: the file of the live dataset that shows this record

    @property
    def tools(self) -> Optional[List[Any]]:
        """The tools the conversation was offered (decoded from the record that names them)."""
        return None if self.tools_at is None else self.tools_at.lines.tools(self.tools_at.seq - 1)

    @property
    def line(self) -> bytes:
        """The record's journal line (or, for a record added without one, its messages and meta)."""
        return self.lines.get(self.seq - 1)

    @property
    def length(self) -> int:
        """Messages in the full conversation up to and including this record's."""
        return self.base + len(self.keys) // KEY_BYTES

    @property
    def messages(self) -> List[Message]:
        messages: List[Message] = json.loads(self.line)["messages"]
        return messages

    @property
    def meta(self) -> Dict[str, Any]:
        meta: Dict[str, Any] = json.loads(self.line).get("meta", {})
        return meta

    def shared_record(self, keep: bool = True) -> Dict[str, Any]:
        """The record decoded from its line, shared through a cache with other readers: never to be changed
        (see RecordsCache for `keep`)."""
        return self.lines.record(self.seq - 1, keep)

    def shared_conversation(self, keep: bool = True) -> Tuple[List[Message], Dict[str, Any]]:
        """The full conversation as iter_messages gives it, and this record (see shared_record), its line
        decoded once for both: shared through the cache of decoded records, for readers that never change them."""
        messages: List[Message] = []
        own: Optional[Dict[str, Any]] = None
        for node, count in self._segments(self.length):
            record = node.shared_record(keep)
            messages += record["messages"][:count]
            own = record if node is self else None
        return messages, own if own is not None else self.shared_record(keep)

    def shared_message_at(self, position: int) -> Message:
        """message_at, the message shared (see shared_record)."""
        node: Node = self
        while position < node.base:
            assert node.parent is not None
            node = node.parent
        message: Message = node.shared_record()["messages"][position - node.base]
        return message

    @property
    def chars(self) -> int:
        """Characters of the whole conversation's texts (decodes every record it is made of)."""
        return sum(len(m.get("content", "")) for m in self.iter_messages())

    def key(self, index: int) -> bytes:
        """This record's own message `index`'s key (negative counts from the end)."""
        if index < 0:
            index += len(self.keys) // KEY_BYTES
        return self.keys[index * KEY_BYTES : (index + 1) * KEY_BYTES]

    def chain_at(self, position: int) -> bytes:
        """The chained hash of the first `position` (>= 1) messages of the full conversation."""
        node: Node = self
        while position <= node.base:
            assert node.parent is not None
            node = node.parent
        offset = (position - node.base - 1) * CHAIN_BYTES
        return node.chains[offset : offset + CHAIN_BYTES]

    def _segments(self, upto: int) -> List[Tuple[Node, int]]:
        segments = []
        node: Optional[Node] = self
        while node is not None and upto > 0:
            if upto > node.base:
                segments.append((node, upto - node.base))
                upto = node.base
            node = node.parent
        segments.reverse()
        return segments

    def message_at(self, position: int) -> Message:
        """The full conversation's message at `position` (0-based), decoding only the record holding it."""
        node: Node = self
        while position < node.base:
            assert node.parent is not None
            node = node.parent
        return node.messages[position - node.base]

    def iter_messages(self, upto: Optional[int] = None) -> Iterator[Message]:
        for node, count in self._segments(self.length if upto is None else upto):
            yield from node.messages[:count]

    def full_keys(self, upto: Optional[int] = None) -> bytes:
        """The keys of the full conversation's first `upto` messages (all by default), end to end."""
        segments = self._segments(self.length if upto is None else upto)
        return b"".join(node.keys[: count * KEY_BYTES] for node, count in segments)


def _ending_at(node: Optional[Node], length: int) -> Optional[Node]:
    """The record among `node` and its ancestors whose whole conversation is `node`'s first `length`
    messages, if there is one (a side request recorded with --record-all can stand between them)."""
    while node is not None and node.length != length and length <= node.base:
        node = node.parent
    return node if node is not None and node.length == length else None


def _superseded(node: Node, continued: bool) -> Optional[Node]:
    """The record this one replaces: the chat it extends (its history is all of that record), or the same
    chat whose last turn it re-sends with other whitespace or continues (Continue, a prefill)."""
    whole = _ending_at(node.parent, node.base)
    if whole is not None and whole.root == node.root:
        return whole
    last = _ending_at(node.parent, node.base + 1)
    if last is None or last.root != node.root or not node.keys:
        return None
    own = len(node.keys) // KEY_BYTES
    if node.key(0) == last.key(-1) and own > 1:
        return last
    if continued and own == 1 and _continues(node.messages[0], last.messages[-1]):
        return last
    return None


class Placement:
    """Where a new exchange goes: stored as `parent[:base] + new`, or nothing new at all."""

    def __init__(
        self,
        parent: Optional[Node],
        base: int,
        new: List[Message],
        duplicate: bool = False,
        keys: Optional[bytes] = None,
    ) -> None:
        self.parent = parent
        self.base = base
        self.new = new
        self.duplicate = duplicate
        self.keys = keys  # the message keys of `new`, end to end (for Summary.of), when known


class ThreadIndex:
    """All records of one session, the indexes that place new ones, and the current leaves.

    `lines` keeps the records' journal lines: in memory by default, or LinesInJournal (the recorder, whose
    sessions run for months) to leave them in the journal. Both indexes are dicts keyed by 60-bit ints:
    prefix (a chained hash -> the newest record holding that prefix) and window (a message key -> the
    record it was last seen in, or a list of the last WINDOW_CANDIDATES such records when there are several).
    """

    def __init__(self, lines: Optional[Lines] = None) -> None:
        self.lines: Lines = lines if lines is not None else LinesInMemory()
        self.nodes: Dict[str, Node] = {}
        self.leaves: Dict[str, Node] = {}  # insertion order = order in the live dataset
        self.dropped: Optional[Node] = None  # the leaf the last add() replaced, if any
        self._prefix: Dict[int, Node] = {}
        self._seen: Dict[int, Union[Node, List[Node]]] = {}
        # Complete records added since the last place(), indexed when the next one comes: reading a session
        # back that nothing is placed into (the review page, `show`) never builds the indexes at all.
        self._unindexed: List[Node] = []

    def place(self, history: List[Message], reply: Message, continued: bool = False) -> Placement:
        """Where the exchange goes; `continued`: the reply goes on with the message the frontend dropped
        from the history (Continue), which lets a one-message window find its chat."""
        self.index_added()
        keys = [message_key(m) for m in history]
        parent, matched = self._extend(None, 0, keys)
        new_from = matched
        if parent is None or not any(m.get("role") == "user" for m in history[:matched]):
            window = self._window(history, keys, reply if continued else None)
            if window is not None:
                parent, matched, new_from = window
        if parent is not None and matched and new_from:
            # The same turn re-sent with other whitespace (a trimmed reply, a continued message joined
            # with the frontend's separator): the record takes the text as the frontend now shows it.
            recorded, sent = parent.shared_message_at(matched - 1), history[new_from - 1]
            before, now = recorded.get("content"), sent.get("content")
            if isinstance(before, str) and isinstance(now, str) and before != now:
                matched, new_from = matched - 1, new_from - 1
                retold = dict(recorded, content=now)
                history = history[:new_from] + [retold] + history[new_from + 1 :]
                keys = keys[:new_from] + [message_key(retold)] + keys[new_from + 1 :]
        new_keys = b"".join(keys[new_from:]) + message_key(reply)
        new = history[new_from:] + [reply]
        if parent is not None and matched + len(new) <= parent.length:
            if parent.full_keys(matched + len(new))[matched * KEY_BYTES :] == new_keys:
                return Placement(parent, matched, new, duplicate=True)
        return Placement(parent, matched, new, keys=new_keys)

    def _extend(self, node: Optional[Node], position: int, keys: List[bytes]) -> Tuple[Optional[Node], int]:
        """Follow `keys` on from `node`'s first `position` messages: the newest record holding the
        longest such prefix, and that prefix's length."""
        previous = node.chain_at(position) if node is not None and position else b""
        hits: List[Node] = []
        for key in keys:
            previous = _chain(previous, key)
            hit = self._prefix.get(_slot(previous))
            if hit is None:
                break
            hits.append(hit)
        if not hits:
            return None, 0
        # A hit is a short hash of the prefix: it counts once the record's own keys say the same.
        expected = (node.full_keys(position) if node is not None else b"") + b"".join(keys[: len(hits)])
        while hits:
            matched = position + len(hits)
            if hits[-1].full_keys(matched) == expected[: matched * KEY_BYTES]:
                return hits[-1], matched
            hits.pop()
        return None, 0

    def _window(
        self, history: List[Message], keys: List[bytes], reply: Optional[Message] = None
    ) -> Optional[Tuple[Node, int, int]]:
        """A trimmed context: history = system prompt(s) + a window from the middle of a recorded chat.

        Returns (record, messages of it matched, index in history where the new messages start).
        """
        start = 0
        while start < len(history) and history[start].get("role") == "system":
            start += 1
        # From the first user message: the system block before it (and the greeting) may differ from
        # request to request (World Info, a summary, the examples that fit, a group's speaker's card).
        first_user = next((i for i in range(start, len(history)) if history[i].get("role") == "user"), start)
        if first_user < len(history) - 1:
            start = first_user
        elif first_user == len(history) - 1 and reply is not None:
            continued = self._continued_first_reply(keys[first_user], first_user, reply)
            if continued is not None:
                return continued
        window = keys[start:]
        best: Optional[Tuple[Node, int, int]] = None
        best_overlap = MIN_WINDOW_OVERLAP - 1
        for node, position in self._places(window[0]) if window else ():
            hit, matched = self._extend(node, position, window)
            overlap = matched - position
            if hit is not None and overlap > best_overlap:
                best, best_overlap = (hit, matched, start + overlap), overlap
        return best

    def _continued_first_reply(self, key: bytes, at: int, reply: Message) -> Optional[Tuple[Node, int, int]]:
        """Continue on a chat's first reply after its system block changed: the window is one user
        message, too little to tell chats apart, unless the reply goes on with the recorded answer to it."""
        for node, position in self._places(key):
            hit, matched = self._extend(node, position, [key])
            if hit is not None and matched == position + 1 and hit.length > matched:
                if _continues(reply, hit.shared_message_at(matched)):
                    return hit, matched, at + 1
        return None

    def _places(self, key: bytes) -> Iterator[Tuple[Node, int]]:
        """Where a message with `key` was recorded at or after its chat's first user message, newest first."""
        seen = self._seen.get(_slot(key))
        for node in reversed(seen) if isinstance(seen, list) else (seen,) if seen is not None else ():
            found = []
            at = node.keys.find(key)
            while at >= 0:
                if at % KEY_BYTES == 0:
                    found.append(node.base + at // KEY_BYTES)
                at = node.keys.find(key, at + 1)
            for position in reversed(found):
                if node.first_user is not None and position >= node.first_user:
                    yield node, position

    def add(
        self,
        record: Dict[str, Any],
        keep_incomplete: bool = False,
        line: Optional[bytes] = None,
        offset: Optional[int] = None,
    ) -> Node:
        """Insert a record (new, or read back from the journal) and update leaves and indexes.

        `line` is the record's journal line when the caller has it, to keep instead of re-encoding; `offset`
        is where it starts in the journal, when it is there already (see LinesInJournal)."""
        if line is None:
            kept = {key: record[key] for key in ("messages", "meta", "tools") if key in record}
            line = encode_json(kept)
        return self.restore(Summary.of(record), line, keep_incomplete, offset)

    def restore(
        self,
        summary: Summary,
        line: bytes,
        keep_incomplete: bool = False,
        offset: Optional[int] = None,
        decoded: Optional[Dict[str, Any]] = None,
    ) -> Node:
        """Insert a record known by its summary (see add); `decoded`: what `line` decodes to, when the caller
        has it (the record it encoded the line from), to save decoding it again."""
        parent = self.nodes.get(summary.parent or "")
        handle = self.lines.keep(line, offset)
        if decoded is not None:
            self.lines.known(handle, decoded)
        node = Node(summary, parent, handle + 1, self.lines)
        self.nodes[node.id] = node
        self.dropped = None
        if node.complete:
            self._unindexed.append(node)
            superseded = None if summary.side_request else _superseded(node, summary.continued)
            if superseded is not None and self.leaves.pop(superseded.id, None) is not None:
                self.dropped = superseded
        if node.complete or keep_incomplete:
            self.leaves[node.id] = node
        return node

    def index_added(self) -> None:
        """Index the records added since the last place(), in the order they came (newer ones win): the
        next place() does so itself; a caller that will place exchanges soon may do it beforehand."""
        for node in self._unindexed:
            self._index(node)
        self._unindexed.clear()

    def _index(self, node: Node) -> None:
        prefix, seen_at = self._prefix, self._seen
        for (chain,) in struct.iter_unpack("<Q", node.chains):
            prefix[chain >> 4] = node  # as _slot()
        # A window never starts before its chat's first user message (see _window).
        start = None if node.first_user is None else max(node.first_user - node.base, 0)
        if start is None:
            return
        for key, _ in struct.iter_unpack("<QQ", node.keys[start * KEY_BYTES :]):
            slot = key >> 4
            seen = seen_at.get(slot)
            if seen is None:
                seen_at[slot] = node
            elif isinstance(seen, list):
                if seen[-1] is not node:
                    seen.append(node)
                    if len(seen) > WINDOW_CANDIDATES:
                        del seen[0]
            elif seen is not node:
                seen_at[slot] = [seen, node]

    def current(self, branches: str = "all") -> List[Node]:
        """The live dataset's conversations: every leaf, or the newest leaf of each chat."""
        leaves = list(self.leaves.values())
        if branches != "last":
            return leaves
        newest: Dict[str, Node] = {}
        for node in leaves:
            newest[node.root] = node
        return sorted(newest.values(), key=lambda n: n.seq)
