"""The least relay built the way chatproxy is, for scripts/bench.py: what h11 and asyncio cost alone.

    python scripts/bench_floor.py --target http://127.0.0.1:PORT [--port 0]

Prints `listening PORT` once the port accepts, then relays until killed. Same shape as chatproxy:
`asyncio.start_server`, a coroutine and a StreamReader per client connection, h11 in the server role
there and in the client role on kept-alive upstream connections (an idle list, most recent first),
the request head forwarded with hop-by-hop fields dropped and Host rewritten, the body relayed as it
arrives, each read of the response one write to the client. Nothing else: no checks, time-outs,
retries, error answers, logging or recording. chatproxy's own figures over this one's, in one run,
say what chatproxy adds to the price of pure-Python HTTP/1.1; this one's over nginx's, what that
price is. Picks the compiled h11 when installed, as chatproxy does (chatproxy/_h11.py).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import List, Tuple
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


def _chunked(request: h11.Request) -> bool:
    return any(k.lower() == b"transfer-encoding" for k, _ in request.headers.raw_items())


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    target = urlsplit(args.target)
    floor = Floor(target.hostname or "127.0.0.1", target.port or 80)

    server = await asyncio.start_server(floor.serve, "127.0.0.1", args.port)
    print(f"listening {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
