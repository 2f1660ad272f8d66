"""One session's files: the append-only journal, the live ShareGPT snapshot, images, and the lock.

Blocking by design: only the recorder's worker thread calls into a DatasetStore.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from chatproxy.apis import RESPONSES
from chatproxy.chats.messages import encode_json, is_local_image, tool_call_problem
from chatproxy.chats.sharegpt import localise_images, to_sharegpt
from chatproxy.chats.tree import Node, ThreadIndex
from chatproxy.config import RecordOptions
from chatproxy.recorder import durable
from chatproxy.recorder.journal import JOURNAL_VERSION, JournalScan, encode_record

log = logging.getLogger("chatproxy.store")

SNAPSHOT_BYTES_PER_SECOND = 1 << 20  # a large live file is rewritten less often: 20 MB at most every 20 s
IMAGE_SUFFIXES = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/jpg": ".jpg",
    "image/gif": ".gif",
    "image/webp": ".webp",
}


class DatasetStore:
    def __init__(self, folder: Path, session: str, options: RecordOptions, owner_pid: Optional[int] = None) -> None:
        self.folder = folder
        self.session = session
        self.options = options
        self.journal_path = folder / f"{session}.jsonl"
        self.snapshot_path = folder / f"{session}.json"
        self.index = ThreadIndex()
        # Responses API: a response's id -> the record that holds it, for requests that continue it.
        self._by_response: Dict[str, str] = {}
        self.pending: List[Tuple[Dict[str, Any], bytes]] = []  # placed, not yet on disk
        self.saved = 0
        self.dirty = False
        self.last_snapshot = 0.0
        self.snapshot_cost = 0.0
        self.snapshot_size = 0
        # Record ids: a random prefix per run and a counter; uuid4 would cost a getrandom() call per record.
        self._id_prefix = os.urandom(5).hex()
        self._id_counter = itertools.count(1)
        self._log = durable.AppendLog(self.journal_path)
        self._lock = durable.SessionLock(folder / f"{session}.lock", owner_pid)

    # -- opening -----------------------------------------------------------------------------

    def open(self) -> None:
        """Lock the session and read its journal back (repairing a line torn by a crash)."""
        durable.ensure_private_dir(self.folder)
        self._lock.acquire()
        try:
            scan = JournalScan(self.journal_path)
            for record, line in scan:
                self._note_response(self.index.add(record, self.options.keep_incomplete, line), record)
                self.saved += 1
            for number, reason in scan.bad_lines:
                log.warning("%s: skipped damaged line %d: %s", self.journal_path, number, reason)
            if scan.torn_tail:
                self._set_aside(scan.torn_tail, scan.good_size)
            if self.saved or not self.snapshot_path.exists():
                self.dirty = True
        except BaseException:
            self._lock.release()
            raise

    def _set_aside(self, torn: bytes, good_size: int) -> None:
        aside = self.journal_path.with_name(f"{self.journal_path.name}.torn-{int(time.time())}")
        durable.atomic_write(aside, torn)
        with open(self.journal_path, "r+b") as journal:
            journal.truncate(good_size)
            journal.flush()
        log.warning(
            "%s: the last line was cut short by a crash (%d bytes); set aside in %s",
            self.journal_path,
            len(torn),
            aside.name,
        )

    # -- recording ---------------------------------------------------------------------------

    def save_image(self, data: bytes, mime: str) -> str:
        """Content-addressed: the same image is stored once. Returns the path relative to the datasets folder."""
        import hashlib  # here: most sessions hold no image, and hashlib loads OpenSSL

        name = hashlib.sha256(data).hexdigest() + IMAGE_SUFFIXES.get(mime.lower(), ".bin")
        folder = self.folder / self.session / "images"
        durable.ensure_private_dir(folder)
        durable.write_new_file(folder / name, data)
        return f"{self.session}/images/{name}"

    def _next_id(self) -> str:
        return f"{self._id_prefix}{next(self._id_counter):06x}"

    def place(
        self, history: List[Dict[str, Any]], reply: Dict[str, Any], tools: Optional[List[Any]], meta: Dict[str, Any]
    ) -> Optional[Node]:
        """Add one exchange to the session: stored as what it adds to the chat it continues.

        Returns the new node, or None when the exchange repeats a recorded chat exactly.
        """
        placement = self.index.place(history, reply)
        if placement.duplicate:
            return None
        record: Dict[str, Any] = {
            "v": JOURNAL_VERSION,
            "id": self._next_id(),
            "parent": placement.parent.id if placement.parent else None,
            "base": placement.base,
            "messages": placement.new,
            "meta": meta,
        }
        inherited = placement.parent.tools if placement.parent else None
        if tools != inherited:
            record["tools"] = tools
        line = encode_record(record)
        node = self.index.add(record, self.options.keep_incomplete, line)
        self._note_response(node, record)
        self.pending.append((record, line))
        self.dirty = True
        return node

    def _note_response(self, node: Node, record: Dict[str, Any]) -> None:
        meta = record.get("meta")
        if isinstance(meta, dict) and meta.get("api") == RESPONSES and isinstance(meta.get("response_id"), str):
            self._by_response[meta["response_id"]] = node.id

    def recall(self, response_id: str) -> Optional[List[Dict[str, Any]]]:
        """The conversation as far as the response `response_id`, reply included (None: not recorded here)."""
        node_id = self._by_response.get(response_id)
        node = self.index.nodes.get(node_id) if node_id is not None else None
        return list(node.iter_messages()) if node is not None else None

    def flush(self) -> List[Dict[str, Any]]:
        """Write every pending record with one write and one fsync (group commit).

        Returns the records now safely on disk; raises OSError with all of them still pending.
        """
        if not self.pending:
            return []
        self._log.append(b"".join(line for _, line in self.pending))
        written = [record for record, _ in self.pending]
        self.pending = []
        self.saved += len(written)
        return written

    # -- the live ShareGPT file ------------------------------------------------------------

    def render(self, node: Node) -> Optional[bytes]:
        """A leaf's ShareGPT object, encoded once and cached while it stays a leaf.

        The rules of `export --format sharegpt`, with image paths left relative to the datasets folder:
        an image that is not a saved file here (an http URL, a file gone) becomes "[image]" and is not
        listed, and a conversation whose tool call arguments are not a JSON object (a reply stopped
        mid-call) is left out, with one warning. Every entry has "tools" ("" when none) and "images"
        ([] when none), so one dataset_info.json entry naming both columns reads any session.
        """
        if node.encoded is None:
            messages = list(node.iter_messages())
            problem = tool_call_problem(messages)
            item = None if problem else to_sharegpt(messages, node.tools, self.options.reasoning)
            if problem:
                log.warning(
                    "%s: conversation %s is not in %s: %s", self.session, node.id, self.snapshot_path.name, problem
                )
            if item is None:
                node.encoded = b""
            else:
                localise_images(item, self._saved_image)
                item.setdefault("tools", "")
                item.setdefault("images", [])
                item["meta"] = dict(node.meta, id=node.id)
                node.encoded = encode_json({key: item[key] for key in ("conversations", "tools", "images", "meta")})
        return node.encoded or None

    def _saved_image(self, entry: str) -> str:
        return entry if is_local_image(entry) and (self.folder / entry).is_file() else ""

    def write_snapshot(self) -> None:
        started = time.monotonic()
        items = [self.render(node) for node in self.index.current(self.options.branches)]
        body = b",\n".join(item for item in items if item)
        durable.atomic_write(self.snapshot_path, b"[\n" + body + b"\n]\n" if body else b"[]\n")
        self.dirty = False
        self.last_snapshot = time.monotonic()
        self.snapshot_cost = self.last_snapshot - started
        self.snapshot_size = len(body)

    def snapshot_due(self, now: float, interval: float) -> float:
        """Seconds until the snapshot should be written (<= 0: now). Large datasets are rewritten less often."""
        if not self.dirty:
            return float("inf")
        # The kernel's share of a rewrite (page cache, write-back) lands on every core, not only on
        # the time measured here: hence the cap on bytes per second as well.
        spacing = max(interval, 20 * self.snapshot_cost, self.snapshot_size / SNAPSHOT_BYTES_PER_SECOND)
        return self.last_snapshot + spacing - now

    def close(self) -> None:
        self._log.close()
        self._lock.release()
