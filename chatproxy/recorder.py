"""The recorder: takes finished exchanges from the relay and gets them onto disk, off the event loop.

`submit()` only enqueues. One writer task takes everything queued, does the file work in a worker
thread, and commits all records of a batch with one fsync per journal (group commit). A failed write
keeps its records in memory and is retried, loudly, until it succeeds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from chatproxy.capture import Exchange
from chatproxy.config import ConfigError, RecordOptions, check_session_id
from chatproxy.extract import NotRecordable, extract
from chatproxy.store import DatasetStore
from chatproxy.threads import Node

log = logging.getLogger("chatproxy.recorder")

RETRY_DELAYS = (0.5, 1, 2, 5, 10, 30)  # seconds between attempts to write records the disk refused
INLINE_LIMIT = 32 * 1024  # bytes of an exchange parsed on the event loop; larger ones in the worker thread
COMMIT_SPACING = 0.005  # seconds between journal commits while records keep coming
CLOSING_ATTEMPTS = 3  # on shutdown, give a failing disk this many more tries, then say what was lost


class Recorder:
    def __init__(self, folder: Path, session: str, options: RecordOptions) -> None:
        self.folder = folder
        self.session = session
        self.options = options
        self.stores: Dict[str, DatasetStore] = {}
        self.counts = {"recorded": 0, "skipped": 0, "unrecordable": 0, "write_errors": 0}
        self.last_error: Optional[str] = None
        # Made here, so a Recorder must be built inside the running loop (Python 3.9 binds queues
        # and events to the loop current at construction).
        self._queue: "asyncio.Queue[Optional[Exchange]]" = asyncio.Queue()
        self._closing = asyncio.Event()
        self._task: Optional[asyncio.Task] = None
        self._failures = 0
        # Exchanges whose session could not be opened (folder read-only, disk full): retried with
        # the next batch rather than dropped. Only the worker thread touches the list.
        self._unplaced: List[Exchange] = []

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> DatasetStore:
        """Open the running session (raises SessionLocked or OSError) and start the writer."""
        store = await asyncio.get_running_loop().run_in_executor(None, self._open_store, self.session)
        self._task = asyncio.ensure_future(self._run())
        return store

    def submit(self, exchange: Exchange) -> None:
        self._queue.put_nowait(exchange)

    @property
    def pending(self) -> int:
        stores = list(self.stores.values())  # the worker thread may add a store meanwhile
        return self._queue.qsize() + len(self._unplaced) + sum(len(s.pending) for s in stores)

    async def close(self) -> None:
        """Write what is queued, the final snapshots, and release the session locks."""
        if self._task is not None:
            self._closing.set()
            self._queue.put_nowait(None)
            await self._task
            self._task = None
        await asyncio.get_running_loop().run_in_executor(None, self._close_stores)

    def status(self) -> Dict[str, Any]:
        store = self.stores.get(self.session)
        return {
            "recorded": self.counts["recorded"],
            "skipped_housekeeping": self.counts["skipped"],
            "not_recordable": self.counts["unrecordable"],
            "write_errors": self.counts["write_errors"],
            "pending_records": self.pending,
            "dataset": str(store.snapshot_path) if store else None,
            "journal": str(store.journal_path) if store else None,
        }

    # -- the writer task ---------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        closing = False
        while True:
            batch = await self._next_batch(closing)
            if None in batch:
                closing = True
            exchanges = [e for e in batch if e is not None]
            await self._place_batch(exchanges, loop)
            # Placed (or kept for retry): drop them now, not when the next batch arrives; an idle
            # proxy would otherwise hold a whole batch of request bodies.
            del batch, exchanges
            started = time.monotonic()
            ok = await loop.run_in_executor(None, self._write_batch, closing)
            if not closing and not self._queue.empty():
                # Under load, let a few milliseconds of records gather for the next write: one
                # thread hop and one fsync per batch instead of one per record or two.
                await asyncio.sleep(max(0.0, COMMIT_SPACING - (time.monotonic() - started)))
            if closing and (ok or self._failures >= CLOSING_ATTEMPTS):
                return
            if not ok and not closing:
                await self._pause(RETRY_DELAYS[min(self._failures, len(RETRY_DELAYS)) - 1])

    async def _pause(self, seconds: float) -> None:
        """Wait before retrying a failed write, but wake at once for close()."""
        try:
            await asyncio.wait_for(self._closing.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    async def _next_batch(self, closing: bool) -> List[Optional[Exchange]]:
        if closing:
            return []
        timeout = min((s.snapshot_due(time.monotonic(), self.options.snapshot_interval) for s in self.stores.values()), default=None)
        if self._failures:
            timeout = 0
        try:
            if timeout is None or timeout == float("inf"):
                first = await self._queue.get()
            elif timeout <= 0:
                # Not wait_for(get(), 0): it gives up before get() has run, even with items queued,
                # so a writer retrying a failed write would never see new exchanges or close().
                if self._queue.empty():
                    return []
                first = self._queue.get_nowait()
            else:
                first = await asyncio.wait_for(self._queue.get(), timeout)
        except asyncio.TimeoutError:
            return []
        batch = [first]
        while not self._queue.empty():
            batch.append(self._queue.get_nowait())
        return batch

    async def _place_batch(self, exchanges: List[Exchange], loop: asyncio.AbstractEventLoop) -> None:
        """Turn exchanges into records, in order.

        A small exchange for an open session is parsed here on the loop: it takes less time than a
        hop to the worker thread and back (and the thread would hold the GIL for it all the same).
        From the first large one on (long histories, images to save, a session to open) the rest go
        to the worker thread, so that no parse of a big request or any disk work stalls the loop.
        """
        pending = self._unplaced + exchanges
        self._unplaced = []
        for index, exchange in enumerate(pending):
            if not self._is_light(exchange):
                await loop.run_in_executor(None, self._place_all, pending[index:])
                return
            self._place(exchange)

    def _is_light(self, exchange: Exchange) -> bool:
        size = len(exchange.request_body) + len(exchange.response_body) + sum(len(e) for e in exchange.events)
        return (
            size <= INLINE_LIMIT
            and (exchange.session or self.session) in self.stores
            and b"data:" not in exchange.request_body  # an inline image: saving it is disk work
        )

    # -- in the worker thread ----------------------------------------------------------------

    def _place_all(self, exchanges: List[Exchange]) -> None:
        for exchange in exchanges:
            self._place(exchange)

    def _write_batch(self, final: bool) -> bool:
        """Commit and snapshot; False if some write failed (records stay pending)."""
        ok = not self._unplaced
        for store in self.stores.values():
            ok = self._commit(store) and ok
        now = time.monotonic()
        for store in self.stores.values():
            if store.dirty and (final or store.snapshot_due(now, self.options.snapshot_interval) <= 0):
                ok = self._snapshot(store) and ok
        self._failures = 0 if ok else self._failures + 1
        return ok

    def _place(self, exchange: Exchange) -> List[Node]:
        try:
            store = self._store_for(exchange.session)
            extracted = extract(exchange, store.save_image)
        except (NotRecordable, ConfigError) as exc:
            self.counts["unrecordable"] += 1
            log.warning("not recording %s: %s", exchange.path, exc)
            return []
        except OSError as exc:
            self._fail(f"cannot open dataset for {exchange.session or self.session}: {exc}; kept in memory, retrying")
            self._unplaced.append(exchange)
            return []
        if extracted.housekeeping and not self.options.record_all:
            self.counts["skipped"] += 1
            log.debug("not recording a %s request (frontend housekeeping)", extracted.housekeeping)
            return []
        nodes = []
        for reply in extracted.replies:
            node = store.place(extracted.history, reply.message, extracted.tools, reply.meta)
            if node is not None:
                nodes.append(node)
        return nodes

    def _commit(self, store: DatasetStore) -> bool:
        try:
            records = store.flush()
        except OSError as exc:
            self.counts["write_errors"] += 1
            self._fail(f"could not write {len(store.pending)} record(s) to {store.journal_path}: {exc}; kept in memory, retrying")
            return False
        for record in records:
            self.counts["recorded"] += 1
            node = store.index.nodes[record["id"]]
            model = record["meta"].get("model") or "?"
            fields = {"event": "recorded", "session": store.session, "model": model,
                      "turns": node.length, "complete": node.complete}
            log.info("%s", _saved_line(store.session, model, node), extra=fields)
        return True

    def _snapshot(self, store: DatasetStore) -> bool:
        try:
            store.write_snapshot()
        except OSError as exc:
            self.counts["write_errors"] += 1
            self._fail(f"could not write {store.snapshot_path}: {exc}; will retry")
            return False
        return True

    def _fail(self, message: str) -> None:
        self.last_error = message
        log.error("%s", message)

    def _store_for(self, session: Optional[str]) -> DatasetStore:
        name = self.session if session is None else check_session_id(session)
        store = self.stores.get(name)
        return store if store is not None else self._open_store(name)

    def _open_store(self, name: str) -> DatasetStore:
        store = DatasetStore(self.folder, name, self.options)
        store.open()
        self.stores[name] = store
        return store

    def _close_stores(self) -> None:
        if self._unplaced:
            log.error("%d exchange(s) could not be recorded before exit: their dataset could not be opened", len(self._unplaced))
        for store in self.stores.values():
            if store.pending:
                log.error("%s: %d record(s) could not be written before exit", store.journal_path, len(store.pending))
            store.close()


def _saved_line(session: str, model: str, node: Node) -> str:
    chars = node.chars
    state = "" if node.complete else " (incomplete)"
    return f"recorded {session}: {model}, {node.length} turns, {chars} chars{state}"
