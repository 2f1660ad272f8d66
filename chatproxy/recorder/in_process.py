"""The in-process recorder: takes finished exchanges from the relay and gets them onto disk, off the event loop.

`submit()` only enqueues. One writer task takes everything queued, does the file work in a worker
thread, and commits all records of a batch with one fsync per journal (group commit). A failed write
keeps its records in memory and is retried, loudly, until it succeeds. The recorder process
(recorder/process.py) is the default; this one serves where a second process cannot be started.

It falls behind only as far as the disk does (parsing runs on the proxy's own loop and thread), so its
backlog is reported but not bounded: a spool on the same slow or full disk would not help. What a
recorder process left in the session's spool (spool.py) is recorded at start all the same.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Set, Union

from chatproxy.config import RecordOptions
from chatproxy.recorder.capture import Exchange
from chatproxy.recorder.core import CLOSING_ATTEMPTS, RecordBook
from chatproxy.recorder.interface import backlog_fields
from chatproxy.recorder.spool import recover, spool_path

INLINE_LIMIT = 32 * 1024  # bytes of an exchange parsed on the event loop; larger ones in the worker thread
COMMIT_SPACING = 0.005  # seconds between journal commits while records keep coming


class _Sync:
    """A marker in the queue: resolved once everything queued before it is on disk."""

    def __init__(self, snapshot: bool) -> None:
        self.snapshot = snapshot
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()


class InProcessRecorder:
    """The fallback Recorder (interface.py): a writer task on the proxy's loop and a worker thread."""

    def __init__(self, folder: Path, session: str, options: RecordOptions) -> None:
        self.book = RecordBook(folder, session, options)
        self.session = session
        self.spool = spool_path(folder, session)
        self._queued_bytes = 0  # of the exchanges in the queue
        # Made here, so an InProcessRecorder must be built inside the running loop (Python 3.9 binds queues
        # and events to the loop current at construction).
        self._queue: asyncio.Queue[Union[Exchange, _Sync, None]] = asyncio.Queue()
        self._closing = asyncio.Event()
        self._task: Optional[asyncio.Task[None]] = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the running session (raises SessionLocked or OSError) and start the writer."""
        await asyncio.get_running_loop().run_in_executor(None, self._open)
        self._task = asyncio.ensure_future(self._run())

    def _open(self) -> None:
        self.book.open_session(self.session)
        recover(self.book, self.spool)

    def submit(self, exchange: Exchange) -> None:
        self._queued_bytes += _size(exchange)
        self._queue.put_nowait(exchange)

    async def sync(self, snapshot: bool = False) -> None:
        """Until everything submitted so far is on disk (and, with `snapshot`, in the live files)."""
        marker = _Sync(snapshot)
        self._queue.put_nowait(marker)
        await marker.done

    @property
    def counts(self) -> Dict[str, int]:
        return self.book.counts

    @property
    def pending(self) -> int:
        return self._queue.qsize() + self.book.pending

    @property
    def tasks(self) -> Set[asyncio.Task[Any]]:
        return {self._task} if self._task is not None else set()

    async def close(self) -> None:
        """Write what is queued, the final snapshots, and release the session locks."""
        if self._task is not None:
            self._closing.set()
            self._queue.put_nowait(None)
            await self._task
            self._task = None
        await asyncio.get_running_loop().run_in_executor(None, self.book.close)

    def status(self) -> Dict[str, Any]:
        held = self._queued_bytes + sum(_size(e) for e in self.book.unplaced)
        held += sum(len(entry[1]) for store in list(self.book.stores.values()) for entry in store.pending)  # its line
        backlog = backlog_fields(in_memory=self.pending, in_memory_bytes=held)
        return dict(self.book.status(), pending_records=self.pending, **backlog)

    # -- the writer task ---------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        closing = False
        while True:
            batch = await self._next_batch(closing)
            closing = closing or None in batch
            syncs = [item for item in batch if isinstance(item, _Sync)]
            await self._place_batch([item for item in batch if isinstance(item, Exchange)], loop)
            # Placed (or kept for retry): drop them now, not when the next batch arrives; an idle
            # proxy would otherwise hold a whole batch of request bodies.
            del batch
            started = time.monotonic()
            snapshot = any(s.snapshot for s in syncs)
            ok = await loop.run_in_executor(None, self.book.write, closing, snapshot)
            for marker in syncs:
                if ok and not marker.done.done():
                    marker.done.set_result(None)
                elif not ok:
                    self._queue.put_nowait(marker)  # answered once a write succeeds
            if not closing and not self._queue.empty():
                # Under load, let a few milliseconds of records gather for the next write: one
                # thread hop and one fsync per batch instead of one per record or two.
                await asyncio.sleep(max(0.0, COMMIT_SPACING - (time.monotonic() - started)))
            if closing and (ok or self.book.failures >= CLOSING_ATTEMPTS):
                return
            if not ok and not closing:
                await self._pause(self.book.retry_delay())

    async def _pause(self, seconds: float) -> None:
        """Wait before retrying a failed write, but wake at once for close()."""
        try:
            await asyncio.wait_for(self._closing.wait(), seconds)
        except asyncio.TimeoutError:
            pass  # the pause is over: time to retry

    async def _next_batch(self, closing: bool) -> List[Union[Exchange, _Sync, None]]:
        if closing:
            return []
        timeout = 0.0 if self.book.failures else self.book.write_due(time.monotonic())
        try:
            if timeout == float("inf"):
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
            return []  # nothing new, but a write (live file, summary line) is due
        batch = [first]
        while not self._queue.empty():
            batch.append(self._queue.get_nowait())
        self._queued_bytes -= sum(_size(item) for item in batch if isinstance(item, Exchange))
        return batch

    async def _place_batch(self, exchanges: List[Exchange], loop: asyncio.AbstractEventLoop) -> None:
        """Turn exchanges into records, in order.

        A small exchange for an open session is parsed here on the loop: it takes less time than a
        hop to the worker thread and back (and the thread would hold the GIL for it all the same).
        From the first large one on (long histories, images to save, a session to open) the rest go
        to the worker thread, so that no parse of a big request or any disk work stalls the loop.
        """
        if self.book.unplaced:
            await loop.run_in_executor(None, self.book.place_all, exchanges)
            return
        for index, exchange in enumerate(exchanges):
            if not self._is_light(exchange):
                await loop.run_in_executor(None, self.book.place_all, exchanges[index:])
                return
            self.book.place(exchange)

    def _is_light(self, exchange: Exchange) -> bool:
        return _size(exchange) <= INLINE_LIMIT and self.book.can_place_without_disk(exchange)


def _size(exchange: Exchange) -> int:
    return len(exchange.request_body) + len(exchange.response_body) + sum(len(e) for e in exchange.events)
