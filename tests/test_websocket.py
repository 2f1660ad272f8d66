"""WebSocket upgrades (the Realtime API, Codex's WebSocket mode) through the proxy: the 101 is
relayed, then raw bytes both ways until either side closes; nothing is recorded. Driven with the
real `websockets` client and server on loopback."""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any, Iterator, List

import pytest
import websockets
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from fake_upstream import Json


class EchoServer:
    """A real WebSocket server on its own loop: echoes every message, records the request paths."""

    def __init__(self) -> None:
        self.paths: List[str] = []
        self.headers: List[Any] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Future[None] | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = self._loop.create_future()
        async with serve(self._echo, "127.0.0.1", 0, max_size=2**24) as server:
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            await self._stop

    async def _echo(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        self.paths.append(ws.request.path)
        self.headers.append(ws.request.headers)
        async for message in ws:
            await ws.send(message)

    def __enter__(self) -> EchoServer:
        self._thread.start()
        assert self._ready.wait(5)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._loop.call_soon_threadsafe(lambda: self._stop is not None and self._stop.set_result(None))
        self._thread.join(5)
        self._loop.close()


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    with EchoServer() as server:
        yield server


def test_messages_cross_both_ways_and_nothing_is_recorded(echo, make_proxy):
    proxy = make_proxy(f"http://127.0.0.1:{echo.port}/v1")

    async def talk() -> List[Any]:
        async with connect(
            f"ws://127.0.0.1:{proxy.port}/v1/realtime?model=gpt-realtime",
            additional_headers={"Authorization": "Bearer sk-realtime-secret", "OpenAI-Beta": "realtime=v1"},
            max_size=2**24,
        ) as ws:
            replies = []
            for message in ["hello", b"\x00\x01binary", "x" * 300_000]:
                await ws.send(message)
                replies.append(await ws.recv())
            return replies

    replies = asyncio.run(talk())
    assert replies == ["hello", b"\x00\x01binary", "x" * 300_000]
    assert echo.paths == ["/v1/realtime?model=gpt-realtime"]
    assert echo.headers[0]["Authorization"] == "Bearer sk-realtime-secret"
    assert echo.headers[0]["OpenAI-Beta"] == "realtime=v1"
    proxy.flush()
    assert proxy.dataset() == []
    # The tunnel's upstream connection is closed with it, never pooled.
    deadline = asyncio.run(asyncio.sleep(0.1, result=0))
    assert deadline == 0 and proxy.upstream_connections() == 0


def test_a_refused_upgrade_is_an_ordinary_response(upstream, proxy):
    upstream.push(Json({"error": "no websockets here"}, status=426))
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(
            b"GET /v1/realtime HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        answer = b""
        while b"no websockets here" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 426 ")
    assert b"no websockets here" in answer
    seen = upstream.requests[-1]
    assert seen.header("upgrade") == "websocket" and seen.header("connection") == "Upgrade"


def test_the_client_leaving_closes_the_upstream_side(echo, make_proxy):
    proxy = make_proxy(f"http://127.0.0.1:{echo.port}")

    async def open_and_drop() -> None:
        ws = await connect(f"ws://127.0.0.1:{proxy.port}/ws")
        await ws.send("one")
        assert await ws.recv() == "one"
        ws.transport.abort()  # gone without a close frame

    asyncio.run(open_and_drop())
    for _ in range(100):
        if proxy.client_connections() == 0 and proxy.upstream_connections() == 0:
            break
        asyncio.run(asyncio.sleep(0.02))
    assert proxy.client_connections() == 0 and proxy.upstream_connections() == 0


def test_an_upgrade_to_a_backend_that_is_down_gets_a_502(make_proxy):
    with socket.socket() as spare:
        spare.bind(("127.0.0.1", 0))
        port = spare.getsockname()[1]
    proxy = make_proxy(f"http://127.0.0.1:{port}")

    async def attempt() -> None:
        await connect(f"ws://127.0.0.1:{proxy.port}/v1/realtime", open_timeout=5)

    with pytest.raises(websockets.exceptions.InvalidStatus) as raised:
        asyncio.run(attempt())
    assert raised.value.response.status_code == 502
