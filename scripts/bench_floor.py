"""The least relay built the way chatproxy is, for scripts/bench.py: what h11 and asyncio cost alone.

    python scripts/bench_floor.py --target http://127.0.0.1:PORT [--port 0] [--callbacks]

Prints `listening PORT` once the port accepts, then relays until killed. Same shape as chatproxy:
`asyncio.start_server`, a coroutine and a StreamReader per client connection, h11 in the server role
there and in the client role on kept-alive upstream connections (an idle list, most recent first),
the request head forwarded with hop-by-hop fields dropped and Host rewritten, the body relayed as it
arrives, each read of the response one write to the client. Nothing else: no checks, time-outs,
retries, error answers, logging or recording. chatproxy's own figures over this one's, in one run,
say what chatproxy adds to the price of pure-Python HTTP/1.1; this one's over nginx's, what that
price is. Picks the compiled h11 when installed, as chatproxy does (chatproxy/_h11.py).

`--callbacks` relays the same way with no coroutine at all: asyncio `Protocol`s on both sides whose
data_received() drives h11 and writes straight to the other side's transport. Not how a relay with
time-outs, back-pressure and error answers can be written, but the least the event loop and h11
cost: what is left of the price once every await is gone.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import List, Optional, Tuple
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chatproxy._h11 import h11  # noqa: E402

HOP_BY_HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"te", b"upgrade", b"host"}
READ_SIZE = 64 * 1024


class Upstream:
    """One kept-alive connection to the target."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.conn = h11.Connection(h11.CLIENT)

    async def next_event(self) -> object:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            self.conn.receive_data(await self.reader.read(READ_SIZE))


class Floor:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.authority = f"{host}:{port}".encode()
        self.idle: List[Upstream] = []

    async def acquire(self) -> Upstream:
        if self.idle:
            return self.idle.pop()
        return Upstream(*await asyncio.open_connection(self.host, self.port))

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await reader.read(READ_SIZE))
                    continue
                if not isinstance(event, h11.Request):
                    return
                await self.relay(conn, event, reader, writer)
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (OSError, h11.ProtocolError):
            pass
        finally:
            writer.close()

    async def relay(
        self, conn: h11.Connection, request: h11.Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        upstream = await self.acquire()
        headers: List[Tuple[bytes, bytes]] = [(b"Host", self.authority)]
        headers += [(k, v) for k, v in request.headers.raw_items() if k.lower() not in HOP_BY_HOP]
        if _chunked(request):
            headers.append((b"Transfer-Encoding", b"chunked"))
        out = upstream.conn.send(h11.Request(method=request.method, target=request.target, headers=headers))
        while True:  # the request body, as it arrives
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(READ_SIZE))
                continue
            if isinstance(event, h11.Data):
                out += upstream.conn.send(event)
                continue
            out += upstream.conn.send(h11.EndOfMessage())
            break
        upstream.writer.write(out)
        response = await upstream.next_event()
        assert isinstance(response, h11.Response)
        kept = [(k, v) for k, v in response.headers.raw_items() if k.lower() not in HOP_BY_HOP]
        held = conn.send(h11.Response(status_code=response.status_code, headers=kept, reason=response.reason))
        while True:
            event = upstream.conn.next_event()
            if isinstance(event, h11.Data):
                held += conn.send(h11.Data(data=event.data))
            elif event is h11.NEED_DATA:
                if held:
                    writer.write(held)
                    held = b""
                upstream.conn.receive_data(await upstream.reader.read(READ_SIZE))
            else:
                writer.write(held + conn.send(h11.EndOfMessage()))
                break
        if upstream.conn.our_state is h11.DONE and upstream.conn.their_state is h11.DONE:
            upstream.conn.start_next_cycle()
            self.idle.append(upstream)
        else:
            upstream.writer.close()


class CallbackClient(asyncio.Protocol):
    """The client side of --callbacks: each request goes to an idle upstream as its events are parsed."""

    def __init__(self, relay: CallbackRelay) -> None:
        self.relay = relay
        self.conn = h11.Connection(h11.SERVER)
        self.upstream: Optional[CallbackUpstream] = None
        self.transport: Optional[asyncio.Transport] = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.conn.receive_data(data)
        self.pump()

    def pump(self) -> None:
        """Forward the events of the request being read (none while a response is under way)."""
        out = b""
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                break
            if isinstance(event, h11.Request):
                self.upstream = self.relay.acquire(self)
                headers: List[Tuple[bytes, bytes]] = [(b"Host", self.relay.authority)]
                headers += [(k, v) for k, v in event.headers.raw_items() if k.lower() not in HOP_BY_HOP]
                if _chunked(event):
                    headers.append((b"Transfer-Encoding", b"chunked"))
                out = self.upstream.conn.send(h11.Request(method=event.method, target=event.target, headers=headers))
            elif isinstance(event, h11.Data) and self.upstream is not None:
                out += self.upstream.conn.send(event) or b""
            elif isinstance(event, h11.EndOfMessage) and self.upstream is not None:
                self.upstream.write(out + (self.upstream.conn.send(h11.EndOfMessage()) or b""))
                return
            else:
                self.close()
                return
        if out and self.upstream is not None:
            self.upstream.write(out)

    def response_done(self) -> None:
        self.upstream = None
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
            self.pump()  # a pipelined request may already be here
        else:
            self.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.transport = None


class CallbackUpstream(asyncio.Protocol):
    """The upstream side of --callbacks: response events go straight to the client's transport."""

    def __init__(self, relay: CallbackRelay) -> None:
        self.relay = relay
        self.conn = h11.Connection(h11.CLIENT)
        self.client: Optional[CallbackClient] = None
        self.transport: Optional[asyncio.Transport] = None
        self.waiting: List[bytes] = []  # written before the connection was made

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        for data in self.waiting:
            transport.write(data)
        self.waiting = []

    def write(self, data: bytes) -> None:
        if self.transport is None:
            self.waiting.append(data)
        else:
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        client = self.client
        if client is None:
            return
        self.conn.receive_data(data)
        out = b""
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                break
            if isinstance(event, h11.Response):
                kept = [(k, v) for k, v in event.headers.raw_items() if k.lower() not in HOP_BY_HOP]
                response = h11.Response(status_code=event.status_code, headers=kept, reason=event.reason)
                out += client.conn.send(response) or b""
            elif isinstance(event, h11.Data):
                out += client.conn.send(h11.Data(data=event.data)) or b""
            elif isinstance(event, h11.EndOfMessage):
                out += client.conn.send(h11.EndOfMessage()) or b""
                if client.transport is not None:
                    client.transport.write(out)
                self.conn.start_next_cycle()
                self.client = None
                self.relay.idle.append(self)
                client.response_done()
                return
            else:
                break
        if out and client.transport is not None:
            client.transport.write(out)


class CallbackRelay:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.authority = f"{host}:{port}".encode()
        self.idle: List[CallbackUpstream] = []

    def acquire(self, client: CallbackClient) -> CallbackUpstream:
        upstream = self.idle.pop() if self.idle else self._connect()
        upstream.client = client
        return upstream

    def _connect(self) -> CallbackUpstream:
        upstream = CallbackUpstream(self)
        loop = asyncio.get_running_loop()
        asyncio.ensure_future(loop.create_connection(lambda: upstream, self.host, self.port))
        return upstream


def _chunked(request: h11.Request) -> bool:
    return any(k.lower() == b"transfer-encoding" for k, _ in request.headers.raw_items())


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--callbacks", action="store_true", help="Protocols and callbacks, no coroutine")
    args = parser.parse_args()
    target = urlsplit(args.target)
    host, port = target.hostname or "127.0.0.1", target.port or 80
    if args.callbacks:
        relay = CallbackRelay(host, port)
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: CallbackClient(relay), "127.0.0.1", args.port)
    else:
        server = await asyncio.start_server(Floor(host, port).serve, "127.0.0.1", args.port)
    print(f"listening {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
