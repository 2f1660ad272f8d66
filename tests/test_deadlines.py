"""deadlines.ReadTimer: one timer per connection gives every read its own limit, on real sockets."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable, Tuple

import pytest

from chatproxy.deadlines import ReadTimer

Pair = Tuple[asyncio.StreamReader, asyncio.StreamWriter]


def run(test: Callable[[Pair, asyncio.StreamWriter], Awaitable[Any]]) -> Any:
    """Run `test(our_side, peer_writer)` over a loopback TCP connection."""

    async def main() -> Any:
        accepted: asyncio.Future[asyncio.StreamWriter] = asyncio.get_running_loop().create_future()

        async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.set_result(writer)

        server = await asyncio.start_server(on_client, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        ours = await asyncio.open_connection("127.0.0.1", port)
        peer = await accepted
        try:
            return await test(ours, peer)
        finally:
            ours[1].close()
            peer.close()
            server.close()
            await server.wait_closed()

    return asyncio.run(main())


def test_bytes_that_arrive_in_time_are_read() -> None:
    async def test(ours: Pair, peer: asyncio.StreamWriter) -> bytes:
        timer = ReadTimer(asyncio.get_running_loop())
        asyncio.get_running_loop().call_later(0.05, peer.write, b"hello")
        data = await timer.read(ours[0], 100, 5.0)
        timer.close()
        return data

    assert run(test) == b"hello"


def test_a_silent_peer_gives_none_after_the_limit_and_the_task_is_not_left_cancelled() -> None:
    async def test(ours: Pair, peer: asyncio.StreamWriter) -> Tuple[Any, float, int]:
        timer = ReadTimer(asyncio.get_running_loop())
        started = time.monotonic()
        data = await timer.read(ours[0], 100, 0.2)
        took = time.monotonic() - started
        await asyncio.sleep(0)  # a cancellation left pending would be raised here
        task = asyncio.current_task()
        cancelling = task.cancelling() if task is not None and hasattr(task, "cancelling") else 0
        timer.close()
        return data, took, cancelling

    data, took, cancelling = run(test)
    assert data is None
    assert 0.15 <= took < 2.0
    assert cancelling == 0


def test_each_read_gets_its_own_limit_though_the_timer_was_armed_for_an_earlier_one() -> None:
    """Fast reads under a long limit, then a read under a short one: it must not wait out the long one."""

    async def test(ours: Pair, peer: asyncio.StreamWriter) -> Tuple[Any, float]:
        timer = ReadTimer(asyncio.get_running_loop())
        for _ in range(3):
            peer.write(b"x")
            assert await timer.read(ours[0], 100, 30.0) == b"x"
        started = time.monotonic()
        data = await timer.read(ours[0], 100, 0.2)
        timer.close()
        return data, time.monotonic() - started

    data, took = run(test)
    assert data is None and took < 2.0


def test_a_timer_that_fires_early_waits_for_the_later_limit() -> None:
    """A short limit armed the timer; the next read has a longer one, and its bytes come after the short one."""

    async def test(ours: Pair, peer: asyncio.StreamWriter) -> Any:
        timer = ReadTimer(asyncio.get_running_loop())
        peer.write(b"a")
        assert await timer.read(ours[0], 100, 0.1) == b"a"  # the timer now fires 0.1 s from here
        asyncio.get_running_loop().call_later(0.4, peer.write, b"b")
        data = await timer.read(ours[0], 100, 5.0)
        timer.close()
        return data

    assert run(test) == b"b"


def test_a_cancellation_from_outside_still_cancels() -> None:
    """Only the timer's own cancellation is taken back; a shutdown's goes through."""

    async def test(ours: Pair, peer: asyncio.StreamWriter) -> None:
        timer = ReadTimer(asyncio.get_running_loop())
        reading = asyncio.ensure_future(timer.read(ours[0], 100, 5.0))
        await asyncio.sleep(0.05)
        reading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reading
        timer.close()

    run(test)


def test_eof_is_empty_bytes_not_a_time_out() -> None:
    async def test(ours: Pair, peer: asyncio.StreamWriter) -> Any:
        timer = ReadTimer(asyncio.get_running_loop())
        peer.close()
        data = await timer.read(ours[0], 100, 5.0)
        timer.close()
        return data

    assert run(test) == b""


def test_a_closed_timer_leaves_nothing_scheduled() -> None:
    async def test(ours: Pair, peer: asyncio.StreamWriter) -> int:
        loop = asyncio.get_running_loop()
        timer = ReadTimer(loop)
        peer.write(b"x")
        await timer.read(ours[0], 100, 600.0)
        timer.close()
        return sum(1 for handle in getattr(loop, "_scheduled", []) if not handle.cancelled())

    assert run(test) == 0
