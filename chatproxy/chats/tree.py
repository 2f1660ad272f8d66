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

import json
from typing import Any, Dict, Iterator, List, Optional, Tuple

from chatproxy.chats.messages import encode_json

try:
    # hashlib's own blake2b, without the OpenSSL library `import hashlib` loads (4 MB of memory).
    from _blake2 import blake2b
except ImportError:  # other Python implementations
    from hashlib import blake2b

Message = Dict[str, Any]

WINDOW_CANDIDATES = 16  # recent places a message was seen, checked for a trimmed-context match
MIN_WINDOW_OVERLAP = 2


def message_key(message: Message) -> bytes:
    """What makes two messages the same turn when a frontend sends history back.

    Frontends drop reasoning, re-number tool call ids and rewrite whitespace, so those do not count:
    SillyTavern trims replies, re-renders "Seraphina:Hello" as "Seraphina: Hello" and joins a continued
    message with a separator of its own choosing (a space, a newline or nothing). So the key is taken over
    the text without any whitespace: two turns that differ only in spacing are the same turn.
    """
    parts = [str(message.get("role")), _squeezed(message.get("content", ""))]
    for call in message.get("tool_calls", ()):
        parts.append(f"{call.get('name', '')}\x1f{_squeezed(call.get('arguments', ''))}")
    parts.extend(message.get("images", ()))
    material = "\x1e".join(parts).encode("utf-8", "surrogatepass")
    return blake2b(material, digest_size=16).digest()


def _squeezed(text: Any) -> str:
    return "".join(text.split()) if isinstance(text, str) else ""


def _continues(reply: Message, earlier: Message) -> bool:
    """The reply is the earlier message with more text after it (whitespace aside)."""
    before = _squeezed(earlier.get("content", ""))
    if not before or reply.get("role") != earlier.get("role"):
        return False
    return _squeezed(reply.get("content", "")).startswith(before)


def _chain(previous: bytes, key: bytes) -> bytes:
    return blake2b(previous + key, digest_size=16).digest()


class Node:
    """One record in memory: its hashes and links, and its messages kept as the compact journal line.

    Messages and meta are decoded from that line when asked for (rendering a leaf, an export): held
    as Python objects they would take ten times the memory, for every record of a long session.
    """

    __slots__ = (
        "id",
        "parent",
        "base",
        "line",
        "keys",
        "chains",
        "length",
        "root",
        "complete",
        "tools",
        "encoded",
        "seq",
        "chars",
        "first_user",
    )

    def __init__(self, record: Dict[str, Any], parent: Optional[Node], seq: int, line: Optional[bytes] = None) -> None:
        messages: List[Message] = record["messages"]
        self.id: str = record["id"]
        self.parent = parent
        self.base: int = record.get("base", 0) if parent else 0
        self.line = line if line is not None else encode_json({"messages": messages, "meta": record.get("meta", {})})
        self.length = self.base + len(messages)
        self.complete: bool = bool(record.get("meta", {}).get("complete", True))
        self.tools: Optional[List[Any]] = record["tools"] if "tools" in record else (parent.tools if parent else None)
        self.keys = [message_key(m) for m in messages]
        previous = parent.chain_at(self.base) if parent and self.base else b""
        self.chains: List[bytes] = []
        for key in self.keys:
            previous = _chain(previous, key)
            self.chains.append(previous)
        inherited = parent.first_user if parent is not None else None
        shares_user_turn = inherited is not None and inherited < self.base
        own_user = next((i for i, m in enumerate(messages) if m.get("role") == "user"), None)
        self.first_user: Optional[int] = (
            inherited if shares_user_turn else (None if own_user is None else self.base + own_user)
        )
        self.root: str = parent.root if (parent and shares_user_turn) else self.id
        self.chars: int = _chars_before(parent, self.base) + sum(len(m.get("content", "")) for m in messages)
        self.encoded: Optional[bytes] = None  # the ShareGPT object, cached while this is a leaf
        self.seq = seq

    @property
    def messages(self) -> List[Message]:
        messages: List[Message] = json.loads(self.line)["messages"]
        return messages

    @property
    def meta(self) -> Dict[str, Any]:
        meta: Dict[str, Any] = json.loads(self.line).get("meta", {})
        return meta

    def chain_at(self, position: int) -> bytes:
        """The chained hash of the first `position` (>= 1) messages of the full conversation."""
        node: Node = self
        while position <= node.base:
            assert node.parent is not None
            node = node.parent
        return node.chains[position - node.base - 1]

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

    def full_keys(self) -> List[bytes]:
        keys: List[bytes] = []
        for node, count in self._segments(self.length):
            keys.extend(node.keys[:count])
        return keys


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
    if node.keys[0] == last.keys[-1] and len(node.keys) > 1:
        return last
    if continued and len(node.keys) == 1 and _continues(node.messages[0], last.messages[-1]):
        return last
    return None


def _chars_before(parent: Optional[Node], base: int) -> int:
    """Characters of the first `base` messages, cheaply when the whole parent is continued."""
    if parent is None or base == 0:
        return 0
    if base == parent.length:
        return parent.chars
    return sum(len(m.get("content", "")) for m in parent.iter_messages(base))


class Placement:
    """Where a new exchange goes: stored as `parent[:base] + new`, or nothing new at all."""

    def __init__(self, parent: Optional[Node], base: int, new: List[Message], duplicate: bool = False) -> None:
        self.parent = parent
        self.base = base
        self.new = new
        self.duplicate = duplicate


class ThreadIndex:
    """All records of one session, the indexes that place new ones, and the current leaves."""

    def __init__(self) -> None:
        self.nodes: Dict[str, Node] = {}
        self.leaves: Dict[str, Node] = {}  # insertion order = order in the live dataset
        self._prefix: Dict[bytes, Node] = {}
        self._seen: Dict[bytes, List[Tuple[Node, int]]] = {}
        self._seq = 0

    def place(self, history: List[Message], reply: Message) -> Placement:
        keys = [message_key(m) for m in history]
        parent, matched = self._extend(None, 0, keys)
        new_from = matched
        if parent is None or not any(m.get("role") == "user" for m in history[:matched]):
            window = self._window(history, keys)
            if window is not None:
                parent, matched, new_from = window
        if parent is not None and matched and new_from:
            # The same turn re-sent with other whitespace (a trimmed reply, a continued message joined
            # with the frontend's separator): the record takes the text as the frontend now shows it.
            recorded, sent = parent.message_at(matched - 1), history[new_from - 1]
            before, now = recorded.get("content"), sent.get("content")
            if isinstance(before, str) and isinstance(now, str) and before != now:
                matched, new_from = matched - 1, new_from - 1
                history = history[:new_from] + [dict(recorded, content=now)] + history[new_from + 1 :]
        new_keys = keys[new_from:] + [message_key(reply)]
        new = history[new_from:] + [reply]
        if parent is not None and matched + len(new_keys) <= parent.length:
            if parent.full_keys()[matched : matched + len(new_keys)] == new_keys:
                return Placement(parent, matched, new, duplicate=True)
        return Placement(parent, matched, new)

    def _extend(self, node: Optional[Node], position: int, keys: List[bytes]) -> Tuple[Optional[Node], int]:
        """Follow `keys` on from `node`'s first `position` messages: the newest record holding the
        longest such prefix, and that prefix's length."""
        previous = node.chain_at(position) if node is not None and position else b""
        best: Tuple[Optional[Node], int] = (None, 0)
        for offset, key in enumerate(keys):
            previous = _chain(previous, key)
            hit = self._prefix.get(previous)
            if hit is None:
                break
            best = (hit, position + offset + 1)
        return best

    def _window(self, history: List[Message], keys: List[bytes]) -> Optional[Tuple[Node, int, int]]:
        """A trimmed context: history = system prompt(s) + a window from the middle of a recorded chat.

        Returns (record, messages of it matched, index in history where the new messages start).
        """
        start = 0
        while start < len(history) and history[start].get("role") == "system":
            start += 1
        window = keys[start:]
        best: Optional[Tuple[Node, int, int]] = None
        best_overlap = MIN_WINDOW_OVERLAP - 1
        for node, position in reversed(self._seen.get(window[0], ()) if window else ()):
            if node.first_user is None or position < node.first_user:
                # The window starts before that chat's first user message (with the greeting): nothing was
                # trimmed, only the system prompt differs. Another chat with the same character.
                continue
            hit, matched = self._extend(node, position, window)
            overlap = matched - position
            if hit is not None and overlap > best_overlap:
                best, best_overlap = (hit, matched, start + overlap), overlap
        return best

    def add(self, record: Dict[str, Any], keep_incomplete: bool = False, line: Optional[bytes] = None) -> Node:
        """Insert a record (new, or read back from the journal) and update leaves and indexes.

        `line` is the record's journal line when the caller has it, to keep instead of re-encoding."""
        parent = self.nodes.get(record.get("parent") or "")
        self._seq += 1
        node = Node(record, parent, self._seq, line)
        self.nodes[node.id] = node
        if node.complete:
            self._index(node)
            meta = record.get("meta") or {}
            superseded = _superseded(node, bool(meta.get("continued"))) if not meta.get("side_request") else None
            if superseded is not None:
                self.leaves.pop(superseded.id, None)
                superseded.encoded = None
        if node.complete or keep_incomplete:
            self.leaves[node.id] = node
        return node

    def _index(self, node: Node) -> None:
        for offset, (key, chain) in enumerate(zip(node.keys, node.chains)):
            position = node.base + offset
            self._prefix[chain] = node
            places = self._seen.setdefault(key, [])
            places.append((node, position))
            if len(places) > WINDOW_CANDIDATES:
                del places[0]

    def current(self, branches: str = "all") -> List[Node]:
        """The live dataset's conversations: every leaf, or the newest leaf of each chat."""
        leaves = list(self.leaves.values())
        if branches != "last":
            return leaves
        newest: Dict[str, Node] = {}
        for node in leaves:
            newest[node.root] = node
        return sorted(newest.values(), key=lambda n: n.seq)
