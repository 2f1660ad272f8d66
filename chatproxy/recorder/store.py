"""One session's files: the append-only journal, the live ShareGPT dataset, images, and the lock.

The live dataset, `SESSION.json`, is kept in shards of SHARD_CHATS chats (or SHARD_JOURNAL_BYTES of their
journal lines, for long chats), each chat in the shard it began in; a new chat goes to the newest shard.
While there is one shard, `SESSION.json` is that shard: one JSON array file. From the second on it is a
folder of the same name holding `000001.json`, `000002.json`, ...: LLaMA-Factory's `file_name` and Axolotl's
`path` take either. A shard is rewritten whole (temp, fsync, rename) only while its chats change, so the
upkeep follows what changed, not the session's size; and the folder reads as one dataset at every
instant: a chat never moves between shards, and temporary files are made outside the folder (trainers load
every file in it).

Which shards are up to date is noted in `.SESSION.json.index` (a digest of each shard's conversations):
resuming after a clean exit rewrites nothing, after a crash only the shards that differ.

Blocking by design: only the recorder's worker thread calls into a DatasetStore.
"""

from __future__ import annotations

import gc
import itertools
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Set, Tuple

from chatproxy.apis import RESPONSES
from chatproxy.chats.messages import encode_json, is_local_image, json_text, tool_call_problem
from chatproxy.chats.sharegpt import localise_images, to_sharegpt
from chatproxy.chats.tree import LinesInJournal, Node, Summary, ThreadIndex
from chatproxy.config import RecordOptions
from chatproxy.recorder import durable
from chatproxy.recorder.journal import (
    CACHE_MAGIC,
    JOURNAL_VERSION,
    CachedRecord,
    JournalScan,
    cache_entry,
    cache_path,
    encode_record,
    parse_line,
    read_cache,
)

try:
    from _blake2 import blake2b  # without the OpenSSL library `import hashlib` loads
except ImportError:  # other Python implementations
    from hashlib import blake2b

log = logging.getLogger("chatproxy.store")

SHARD_CHATS = 1000  # chats per shard of the live dataset, at most
SHARD_JOURNAL_BYTES = 2 << 20  # or fewer, once their journal lines reach this (long chats)
# A shard that changes write after write keeps its encoded entries, up to this much for all shards:
# the shard new chats go to, and the few where chats go on.
CACHE_BYTES = 8 << 20
META_TEXTS = 1 << 16  # placed records' meta texts kept for their entries, at most
SNAPSHOT_BYTES_PER_SECOND = 1 << 20  # large shards are rewritten less often: 20 MB at most every 20 s
FIRST_SHARD = "000001.json"
RENDERING = 1  # part of each shard's digest: a change to how entries are written rewrites every shard
IMAGE_SUFFIXES = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/jpg": ".jpg",
    "image/gif": ".gif",
    "image/webp": ".webp",
}


class Shard:
    """One file of the live dataset: the current conversations of the chats that began in it."""

    __slots__ = ("number", "leaves", "chats", "journal_bytes", "dirty", "cache", "on_disk", "size")

    def __init__(self, number: int) -> None:
        self.number = number
        self.leaves: Dict[str, Node] = {}  # in the order they became current, as the whole dataset was
        self.chats = 0
        self.journal_bytes = 0
        self.dirty = True
        self.cache: Optional[Dict[str, bytes]] = None  # node id -> its entry, while the shard keeps changing
        self.on_disk = ""  # the digest of what its file holds ("": no file)
        self.size = 0  # bytes of its file when last written (0: not written in this run)

    @property
    def file_name(self) -> str:
        return f"{self.number:06d}.json"


class DatasetStore:
    """One session's recording. With `part` (a rotation's name for it, e.g. "20261202T153640Z") the journal
    and the live dataset are the part's, `SESSION@PART.jsonl` and `SESSION@PART.json/`; the lock and the
    images folder stay the session's, so that rotating never lets go of the session and images are saved
    once across parts."""

    def __init__(
        self,
        folder: Path,
        session: str,
        options: RecordOptions,
        owner_pid: Optional[int] = None,
        part: Optional[str] = None,
    ) -> None:
        self.folder = folder
        self.session = session
        self.options = options
        # Record ids: a random prefix per run and a counter; uuid4 would cost a getrandom() call per record.
        self._id_prefix = os.urandom(5).hex()
        self._id_counter = itertools.count(1)
        self._lock = durable.SessionLock(folder / f"{session}.lock", owner_pid)
        self._start_part(part)

    def _start_part(self, part: Optional[str]) -> None:
        """Name the files after `part` and begin with nothing placed (the records are read by open())."""
        self.part = part
        self.name = self.session if part is None else f"{self.session}@{part}"
        self.journal_path = self.folder / f"{self.name}.jsonl"
        self.snapshot_path = self.folder / f"{self.name}.json"  # the live dataset's folder
        self.index_path = self.folder / f".{self.name}.json.index"
        self._log = durable.AppendLog(self.journal_path)
        self.index = ThreadIndex(LinesInJournal(self._log.read))
        self.cache_path = cache_path(self.journal_path)  # see journal.py, "the resume cache"
        self._cache: Optional[durable.AppendLog] = durable.AppendLog(self.cache_path, sync=False)
        # Responses API: a response's id -> the record that holds it, for requests that continue it.
        self._by_response: Dict[str, str] = {}
        self.pending: List[Tuple[Dict[str, Any], bytes, Node, bytes]] = []  # placed, not yet on disk
        self.saved = 0
        self.shards: List[Shard] = []
        self._strays: List[str] = []  # files in the live folder that no shard is written to
        self.dirty = False
        self._left_out: Dict[str, bool] = {}  # conversations not shown (said once in the log)
        # Records placed in this run, not rendered yet: node id -> their meta as JSON text, encoded once for
        # the journal line and the live dataset's entry.
        self._meta_texts: Dict[str, str] = {}
        self.last_snapshot = 0.0
        self.snapshot_cost = 0.0  # seconds per byte of the last rewrite
        self.snapshot_size = 0  # bytes of the shards the last rewrite wrote

    # -- opening -----------------------------------------------------------------------------

    def open(self) -> None:
        """Lock the session and read its journal back (repairing a line torn by a crash)."""
        durable.ensure_private_dir(self.folder)
        self._lock.acquire()
        try:
            self._read_back()
        except BaseException:
            self._lock.release()
            raise

    def _read_back(self) -> None:
        """Every record of the journal into the index and the shards: from the resume cache where it matches
        the journal's lines, decoded and hashed again where it does not (and then added to the cache)."""
        scan = JournalScan(self.journal_path)
        kept, cached = self._cached_records()  # the cache is good up to `kept` bytes
        entry = next(cached, None)
        fresh: List[bytes] = []
        # The index is one object per record, all kept: the collector would walk them all, again and again.
        collecting = gc.isenabled()
        gc.disable()
        try:
            for number, line in scan.lines():
                if entry is not None and entry.matches(line):
                    node = self.index.restore(entry.summary, line, self.options.keep_incomplete, scan.offset)
                    if entry.response_id is not None:
                        self._by_response[entry.response_id] = node.id
                    kept, entry = entry.end, next(cached, None)
                else:
                    record = parse_line(line[:-1], number, scan.bad_lines)
                    if record is None:
                        continue
                    entry = None  # the cache went its own way: the rest is read from the journal
                    node = self._restore(record, line, scan.offset, fresh)
                self._file(node, line)
                self.saved += 1
                if len(fresh) >= 4096:
                    kept = self._add_to_cache(kept, fresh)
            self.index.index_added()  # now, while resuming, rather than in the first exchange after it
        finally:
            if collecting:
                gc.enable()
        self._add_to_cache(kept, fresh)
        for number, reason in scan.bad_lines:
            log.warning("%s: skipped damaged line %d: %s", self.journal_path, number, reason)
        if scan.torn_tail:
            self._set_aside(scan.torn_tail, scan.good_size)
        self._remove_temporaries()
        self._compare_with_disk()

    def _restore(self, record: Dict[str, Any], line: bytes, offset: int, fresh: List[bytes]) -> Node:
        summary = Summary.of(record)
        node = self.index.restore(summary, line, self.options.keep_incomplete, offset)
        fresh.append(cache_entry(summary, line, self._note_response(node, record), node.chains))
        return node

    def _cached_records(self) -> Tuple[int, Iterator[CachedRecord]]:
        try:
            data = self.cache_path.read_bytes()
        except OSError:
            data = b""
        return (len(CACHE_MAGIC) if data.startswith(CACHE_MAGIC) else 0), read_cache(data)

    def _add_to_cache(self, kept: int, fresh: List[bytes]) -> int:
        """Cut the cache back to its good part (`kept` bytes) if it runs on, then add `fresh` entries.
        Returns its new length. A cache that cannot be written is left alone for this run."""
        if self._cache is None:
            return kept
        try:
            if self._cache.size != kept:
                self._cache.truncate(kept)
            if not kept:
                self._cache.append(CACHE_MAGIC)
            if fresh:
                self._cache.append(b"".join(fresh))
        except OSError as exc:
            self._drop_cache(exc)
            return kept
        fresh.clear()
        return self._cache.size

    def _drop_cache(self, exc: OSError) -> None:
        """Stop writing the resume cache: the next resume reads the journal from where the cache ends."""
        log.info("%s: not keeping the resume cache (%s); resuming will take longer", self.name, exc)
        if self._cache is not None:
            self._cache.close()
        self._cache = None

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

    def _compare_with_disk(self) -> None:
        """Mark the shards whose file is not what this journal makes of it (all of them after a crash that
        left no index, none after a clean exit), and note files in the live folder that no shard owns."""
        try:
            noted = json.loads(self.index_path.read_bytes())
            digests = noted["shards"] if noted.get("dataset") == self.snapshot_path.name else {}
        except (OSError, ValueError, AttributeError, KeyError, TypeError):
            digests = {}
        present = self._files_on_disk()
        in_folder = self.snapshot_path.is_dir()
        for shard in self.shards:
            digest = self._digest(self._conversations(shard), in_folder)
            if shard.file_name in present and digests.get(shard.file_name) == digest:
                shard.on_disk, shard.dirty = digest, False
        owned = {shard.file_name for shard in self.shards} or {FIRST_SHARD}  # an empty session's "[]"
        self._strays = sorted(present - owned)
        # A session with no conversation yet still shows its (empty) dataset.
        self.dirty = any(s.dirty for s in self.shards) or bool(self._strays) or not present

    def _files_on_disk(self) -> Set[str]:
        """The shards' files there are: the one file is the first shard's."""
        if self.snapshot_path.is_dir():
            return set(_listdir(self.snapshot_path))
        return {FIRST_SHARD} if self.snapshot_path.is_file() else set()

    def _remove_temporaries(self) -> None:
        """Temp files of rewrites a crash cut short: this session's own, as the lock is ours."""
        pattern = re.compile(re.escape(f".{self.name}.json") + r"(-\d+|\.index|\.shards)\.\d+\.[0-9a-f]{8}\.tmp")
        for name in _listdir(self.folder):
            if pattern.fullmatch(name):
                path = self.folder / name
                try:
                    if path.is_dir():
                        import shutil  # rarely needed: only after a crash in the middle of _become_folder

                        shutil.rmtree(path)
                    else:
                        os.unlink(path)
                except OSError:
                    pass  # gone meanwhile, or not ours to remove: harmless either way

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
        placement = self.index.place(history, reply, bool(meta.get("continued")))
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
        line, meta_text = _record_line(record)
        summary = Summary.of(record, placement.keys)
        # The live dataset renders the record soon: from the record itself where its line would decode to
        # the same objects (messages of strings only; its meta is only ever encoded again).
        decoded = record if _only_strings(placement.new) else None
        node = self.index.restore(summary, line, self.options.keep_incomplete, decoded=decoded)
        response_id = self._note_response(node, record)
        self._file(node, line)
        if meta_text is not None and node.id in self.index.leaves:
            if len(self._meta_texts) >= META_TEXTS:
                self._meta_texts.clear()  # leaves that are never rendered (older branches with --branches last)
            self._meta_texts[node.id] = meta_text
        self.pending.append((record, line, node, cache_entry(summary, line, response_id, node.chains)))
        return node

    def _file(self, node: Node, line: bytes) -> None:
        """Put the record in its chat's shard (a new chat: in the newest, or a new one when that is full)."""
        if node.root != node.id:
            shard: Shard = self.index.nodes[node.root].shard
        else:
            newest = self.shards[-1] if self.shards else None
            if newest is None or newest.chats >= SHARD_CHATS or newest.journal_bytes >= SHARD_JOURNAL_BYTES:
                newest = Shard(len(self.shards) + 1)
                self.shards.append(newest)
            newest.chats += 1
            shard = newest
        node.shard = shard
        shard.journal_bytes += len(line)
        dropped = self.index.dropped
        if dropped is not None:
            del dropped.shard.leaves[dropped.id]
            self._meta_texts.pop(dropped.id, None)
            self._changed(dropped.shard)
        if node.id in self.index.leaves:
            shard.leaves[node.id] = node
            self._changed(shard)

    def _changed(self, shard: Shard) -> None:
        shard.dirty = True
        self.dirty = True

    def _note_response(self, node: Node, record: Dict[str, Any]) -> Optional[str]:
        """Remember a Responses API reply's id (returned) for the requests that continue it."""
        meta = record.get("meta")
        if isinstance(meta, dict) and meta.get("api") == RESPONSES and isinstance(meta.get("response_id"), str):
            self._by_response[meta["response_id"]] = node.id
            return str(meta["response_id"])
        return None

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
        offset = self._log.append(b"".join(line for _, line, _, _ in self.pending))
        assert isinstance(self.index.lines, LinesInJournal)
        for _, line, node, _ in self.pending:
            self.index.lines.written(node.seq - 1, offset)  # read back from the journal from now on
            offset += len(line)
        if self._cache is not None:
            try:
                self._cache.append(b"".join(entry for _, _, _, entry in self.pending))
            except OSError as exc:
                self._drop_cache(exc)
        written = [record for record, _, _, _ in self.pending]
        self.pending = []
        self.saved += len(written)
        return written

    # -- the live ShareGPT dataset ------------------------------------------------------------

    def render(self, node: Node, meta_as_text: bool = False) -> Optional[bytes]:
        """A conversation's ShareGPT entry, encoded.

        The rules of `export --format sharegpt`, with image paths left relative to the datasets folder:
        an image that is not a saved file here (an http URL, a file gone) becomes "[image]" and is not
        listed, and a conversation whose tool call arguments are not a JSON object (a reply stopped
        mid-call) is left out, with one warning. Every entry has "tools" ("" when none) and "images"
        ([] when none), so one dataset_info.json entry naming both columns reads any session.

        `meta_as_text`: meta as one JSON string rather than an object, for a dataset of several files.
        Arrow gives each file its own types, and two files whose metas hold other fields (the usage of
        another API, a template) have types it cannot join; one string column joins any.
        """
        # Shared with the index's cache of decoded records: the rendering only reads them. A rewrite renders
        # each conversation once, so what it decodes is not kept.
        messages, record = node.shared_conversation(keep=False)
        meta_text = self._meta_texts.pop(node.id, None)
        problem = tool_call_problem(messages)
        item = None if problem else to_sharegpt(messages, node.tools, self.options.reasoning)
        if problem and node.id not in self._left_out:
            self._left_out[node.id] = True
            log.warning("%s: conversation %s is not in %s: %s", self.name, node.id, self.snapshot_path.name, problem)
        if item is None:
            return None
        localise_images(item, self._saved_image)
        item.setdefault("tools", "")
        item.setdefault("images", [])
        if meta_text is not None and "id" not in record["meta"]:
            # The placed meta's text with the id added last, as dict(meta, id=...) places it; the whole is
            # encoded as encode_json would, unless a lone surrogate sends it to the escaped form.
            # (The text has no lone surrogate: its journal line needed no escaping.)
            meta_text = meta_text[:-1] + ',"id":' + json_text(node.id) + "}"
            if meta_as_text:
                item["meta"] = meta_text
                return encode_json({key: item[key] for key in ("conversations", "tools", "images", "meta")})
            try:
                parts = ('{"conversations":', json_text(item["conversations"]), ',"tools":', json_text(item["tools"]))
                return "".join(parts + (',"images":', json_text(item["images"]), ',"meta":', meta_text, "}")).encode(
                    "utf-8"
                )
            except UnicodeEncodeError:
                pass
        meta = dict(record.get("meta", {}), id=node.id)
        item["meta"] = encode_json(meta).decode("utf-8", "surrogatepass") if meta_as_text else meta
        return encode_json({key: item[key] for key in ("conversations", "tools", "images", "meta")})

    def _saved_image(self, entry: str) -> str:
        return entry if is_local_image(entry) and (self.folder / entry).is_file() else ""

    def _conversations(self, shard: Shard) -> List[Node]:
        """A shard's entries: every current conversation of its chats, or the newest of each (--branches last)."""
        leaves = list(shard.leaves.values())
        if self.options.branches != "last":
            return leaves
        newest: Dict[str, Node] = {}
        for node in leaves:
            newest[node.root] = node
        return sorted(newest.values(), key=lambda n: n.seq)

    def _digest(self, nodes: List[Node], in_folder: bool) -> str:
        """What a shard's file holds, in short: how entries are rendered, and which conversations."""
        options = f"{RENDERING} {in_folder} {self.options.reasoning} {self.options.branches}"
        material = options + "\n" + "\n".join(n.id for n in nodes)
        return blake2b(material.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()

    def write_snapshot(self) -> None:
        """Rewrite the shards that changed (and the index that says they are up to date).

        Only records on disk are shown: with records still pending (the journal refused them), nothing
        is rewritten, so the live dataset never holds a conversation the journal does not."""
        if self.pending:
            return
        started = time.monotonic()
        if self.snapshot_path.is_file() and len(self.shards) > 1:
            written = self._become_folder()
        else:
            written = self._write_shards(self.snapshot_path.is_dir() or len(self.shards) > 1)
        self._write_index()
        self.dirty = False
        self.last_snapshot = time.monotonic()
        self.snapshot_cost = (self.last_snapshot - started) / max(written, 1)
        self.snapshot_size = written

    def _write_shards(self, as_folder: bool, folder: Optional[Path] = None) -> int:
        """Write the changed shards into the live folder (or `folder`), or the one shard as the live file.
        Returns the bytes written."""
        if as_folder:
            folder = folder or self.snapshot_path
            durable.ensure_private_dir(folder)
        cached = written = 0
        # The newest shard first: under load it changes every time, so it is the one worth a cache.
        for shard in sorted((s for s in self.shards if s.dirty), key=lambda s: -s.number):
            path = folder / shard.file_name if folder is not None else self.snapshot_path
            body, keep = self._write_shard(shard, path, cached <= CACHE_BYTES)
            written += len(body)
            cached += keep
        for shard in self.shards:
            if not shard.dirty and shard.cache is not None:
                shard.cache = None  # it stopped changing: its entries are read back when it changes again
            shard.dirty = False
        if folder is not None:
            for name in self._strays:
                _unlink(folder / name)
        self._strays = []
        if not any(shard.on_disk for shard in self.shards):
            # No conversation yet (or none that can be shown): an empty dataset rather than none.
            empty = folder / FIRST_SHARD if folder is not None else self.snapshot_path
            durable.atomic_write(empty, b"[]\n", self._temporary("-1"))
        return written

    def _write_shard(self, shard: Shard, path: Path, may_cache: bool) -> Tuple[bytes, int]:
        """Render and replace one shard's file (removed when it has no entry). Returns its body and how
        many bytes of entries it keeps cached."""
        nodes = self._conversations(shard)
        as_text = path != self.snapshot_path  # one of several files (see render)
        old = shard.cache or {}
        entries: Dict[str, bytes] = {}
        for node in nodes:
            entry = old.get(node.id)
            entries[node.id] = entry if entry is not None else (self.render(node, as_text) or b"")
        body = b",\n".join(entry for entry in entries.values() if entry)
        if body:
            durable.atomic_write(path, b"[\n" + body + b"\n]\n", self._temporary(f"-{shard.number}"))
        elif path != self.snapshot_path:
            _unlink(path)
        shard.on_disk = self._digest(nodes, as_text) if body else ""
        shard.size = len(body)
        shard.cache = entries if may_cache else None
        return body, len(body) if may_cache else 0

    def _become_folder(self) -> int:
        """The one file becomes a folder of shards, now that a second shard has begun: every shard is written
        into a new folder beside it, which then takes the file's place (the live dataset is missing for the
        instant between the two steps; a crash there leaves it to the next resume to write again)."""
        building = self._temporary(f".shards.{os.getpid()}.{os.urandom(4).hex()}.tmp")
        for shard in self.shards:
            shard.dirty, shard.cache = True, None  # entries in a folder are written another way (see render)
        written = self._write_shards(True, building)
        durable.atomic_write(self.index_path, b"{}\n", self._temporary(".index"))  # nothing is up to date
        os.unlink(self.snapshot_path)
        os.rename(building, self.snapshot_path)
        durable.fsync_directory(self.folder)
        log.info("%s: %s is now a folder, one file per %d chats", self.name, self.snapshot_path.name, SHARD_CHATS)
        return written

    def _write_index(self) -> None:
        shards = {shard.file_name: shard.on_disk for shard in self.shards if shard.on_disk}
        data = json.dumps({"v": 1, "dataset": self.snapshot_path.name, "shards": shards}, indent=0).encode()
        durable.atomic_write(self.index_path, data + b"\n", self._temporary(".index"))

    def _temporary(self, suffix: str) -> Path:
        """Where a rewrite's temp file goes: in the datasets folder, beside the live dataset, never in it."""
        return self.folder / f".{self.name}.json{suffix}"

    def snapshot_due(self, now: float, interval: float) -> float:
        """Seconds until the live dataset should be rewritten (<= 0: now). Large shards are rewritten less often."""
        if not self.dirty:
            return float("inf")
        # What the next rewrite will write: the changed shards, as large as they were (a new one: small).
        size = sum(shard.size for shard in self.shards if shard.dirty)
        # The kernel's share of a rewrite (page cache, write-back) lands on every core, not only on
        # the time measured here: hence the cap on bytes per second as well.
        spacing = max(interval, 20 * self.snapshot_cost * size, size / SNAPSHOT_BYTES_PER_SECOND)
        return self.last_snapshot + spacing - now

    # -- rotation ------------------------------------------------------------------------------

    def rotate(self, part: str) -> None:
        """Go on in a new part: commit what is pending, write this part's live dataset a final time, and
        start the next with an empty index (memory is bounded by one part). The lock is held throughout.

        Raises OSError, still on the old part with nothing lost, when the commit or the final write fails.
        A chat continued after this becomes a new record of the new part, its whole history with it.
        """
        if part == self.part:
            raise ValueError(f"{self.name} is already the current part")
        self.flush()
        self.write_snapshot()
        self._log.close()
        if self._cache is not None:
            self._cache.close()
        self._start_part(part)
        self._read_back()  # a part that already holds records (a restart within it) is resumed, not overwritten

    def close(self) -> None:
        self._log.close()
        if self._cache is not None:
            self._cache.close()
        self._lock.release()


def _record_line(record: Dict[str, Any]) -> Tuple[bytes, Optional[str]]:
    """A new record's journal line (encode_record's bytes), and its meta as JSON text (None: not reusable, the
    line having needed the escaped form, or the meta being empty). Its keys end with "meta", then "tools"
    if it has some, as place() builds it."""
    meta = record["meta"]
    if not isinstance(meta, dict) or not meta:
        return encode_record(record), None
    head = {key: value for key, value in record.items() if key != "meta" and key != "tools"}
    meta_text = json_text(meta)
    parts = [json_text(head)[:-1], ',"meta":', meta_text]
    if "tools" in record:
        parts += [',"tools":', json_text(record["tools"])]
    parts.append("}\n")
    try:
        return "".join(parts).encode("utf-8"), meta_text
    except UnicodeEncodeError:  # a lone surrogate: the whole line is escaped
        return encode_record(record), None


def _only_strings(messages: List[Dict[str, Any]]) -> bool:
    for message in messages:  # loops, not all() over generators: asked for every new record
        if type(message) is not dict:
            return False
        for value in message.values():
            if type(value) is not str:
                return False
    return True


def _listdir(folder: Path) -> List[str]:
    try:
        return os.listdir(folder)
    except OSError:
        return []


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
