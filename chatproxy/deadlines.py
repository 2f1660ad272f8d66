"""Reads with a time limit, and a StreamReader that reports the end of its peer.

`asyncio.wait_for` wraps every read in a new Task (before Python 3.12), which on the relay's hot
path costs more than the read itself. A timer that cancels the reading task, as `asyncio.timeout`
does on 3.11+, gives the same behaviour for the price of one timer handle, on every Python >= 3.9.
"""

from __future__ import annotations

import asyncio
from typing import Callable, List, Optional


async def read_within(
    reader: asyncio.StreamReader, size: int, timeout: float, loop: asyncio.AbstractEventLoop
) -> Optional[bytes]:
    """Up to `size` bytes (b"" at EOF), or None if nothing arrived within `timeout` seconds.

    `loop` is the running loop, passed in: looking it up costs a getpid() call on Python 3.11.
    """
    task = asyncio.current_task(loop)
    assert task is not None
    expired: List[bool] = []

    def expire() -> None:
        expired.append(True)
        task.cancel()

    timer = loop.call_later(max(timeout, 0.0), expire)
    try:
        return await reader.read(size)
    except asyncio.CancelledError:
        if not expired:
            raise
        # Our own cancellation: take it back, unless someone else asked to cancel too (3.11+).
        uncancel = getattr(task, "uncancel", None)
        if uncancel is not None and uncancel() > 0:
            raise
        return None
    finally:
        timer.cancel()


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
