"""Reads with a time limit, and a StreamReader that reports the end of its peer.

`asyncio.wait_for` wraps every read in a new Task (before Python 3.12), which on the relay's hot
path costs more than the read itself; even one timer handle per read (what `asyncio.timeout` does)
is an allocation, a heap push and a cancelled entry for the loop to sweep. Under load a read takes
microseconds against limits of seconds, so each connection keeps one timer and moves its due time:
the timer is re-armed only when it fires early, which at most happens once per limit's length.
"""

from __future__ import annotations

import asyncio
from typing import Callable, Optional


class ReadTimer:
    """Time limits for the reads of one connection (or one direction of a tunnel), one read at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop  # passed in: looking the running loop up costs a getpid() call on Python 3.11
        self._handle: Optional[asyncio.TimerHandle] = None
        self._due = 0.0
        self._reading: Optional[asyncio.Task[object]] = None
        self._expired = False

    async def read(self, reader: asyncio.StreamReader, size: int, timeout: float) -> Optional[bytes]:
        """Up to `size` bytes (b"" at EOF), or None if nothing arrived within `timeout` seconds."""
        loop = self._loop
        due = self._due = loop.time() + max(timeout, 0.0)
        handle = self._handle
        if handle is None or handle.when() > due:  # none armed, or armed too late for this limit
            if handle is not None:
                handle.cancel()
            self._handle = loop.call_at(due, self._fire)
        task = self._reading = asyncio.current_task(loop)
        self._expired = False
        try:
            return await reader.read(size)
        except asyncio.CancelledError:
            if not self._expired:
                raise
            # Our own cancellation: take it back, unless someone else asked to cancel too (3.11+).
            uncancel = getattr(task, "uncancel", None)
            if uncancel is not None and uncancel() > 0:
                raise
            return None
        finally:
            self._reading = None

    def _fire(self) -> None:
        self._handle = None
        task = self._reading
        if task is None:
            return  # between reads: the next read arms it again
        if self._loop.time() < self._due:
            self._handle = self._loop.call_at(self._due, self._fire)
            return
        self._expired = True
        task.cancel()

    def close(self) -> None:
        """Drop the timer, so a closed connection is not kept alive until its last limit passes."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class WatchedReader(asyncio.StreamReader):
    """Calls `on_end` when the peer closes or resets its side, even when nobody is reading.

    This is how the server notices a client that leaves while it waits for the backend, without a
    task per request reading the socket.
    """

    on_end: Optional[Callable[[], None]] = None

    def feed_eof(self) -> None:
        super().feed_eof()
        self._notify()

    def set_exception(self, exc: Exception) -> None:
        super().set_exception(exc)
        self._notify()

    def _notify(self) -> None:
        callback, self.on_end = self.on_end, None
        if callback is not None:
            callback()
