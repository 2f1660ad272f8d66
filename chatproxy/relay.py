"""One exchange: the client's request to the target, the target's response back, a copy to the recorder."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Callable, List, Optional, Protocol, Tuple

from chatproxy import headers as hdr
from chatproxy import tunnel
from chatproxy._h11 import Field, fields_of, h11
from chatproxy.apis import route
from chatproxy.config import Config
from chatproxy.errors import ProxyError, UpstreamClosed, UpstreamProtocolError
from chatproxy.recorder.capture import Exchange, ExchangeCapture
from chatproxy.upstream import UpstreamConnection, UpstreamPool

log = logging.getLogger("chatproxy.relay")

# A request body up to this size is kept so that a request that met a stale pooled connection can be
# sent again on a fresh one; larger bodies stream through without a copy (and without the retry).
RETRY_COPY_LIMIT = 1024 * 1024


class Downstream(Protocol):
    """The client side of an exchange, as the relay sees it (implemented by server.ClientConnection)."""

    @property
    def response_started(self) -> bool: ...

    async def receive_body(self) -> Optional[bytes]: ...  # None at the end of the body

    async def start_response(self, status: int, fields: List[Field], reason: bytes) -> None: ...

    async def send_data(self, data: bytes) -> None: ...

    async def end_response(self) -> None: ...

    def flush(self) -> None: ...

    async def switch_protocols(
        self, status: int, fields: List[Field], reason: bytes
    ) -> Tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
        """Send the 101; the client's raw streams, and the bytes of the new protocol it already sent."""
        ...


DEBUG_BODY_LIMIT = 16 * 1024  # --debug shows this much of each body: a chat, not a 64 MiB upload


class BodySample:
    """The start of a body, kept for --debug."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.size = 0

    def add(self, chunk: bytes) -> None:
        self.size += len(chunk)
        room = DEBUG_BODY_LIMIT - len(self.data)
        if room > 0:
            self.data += chunk[:room]

    def __str__(self) -> str:
        shown = self.data.decode("utf-8", "replace")
        rest = self.size - len(self.data)
        return f"({self.size} bytes) {shown}" + (f" ... ({rest} more bytes)" if rest else "")


class ClientGone(Exception):
    """The client stopped reading or closed its connection."""


class UpstreamFailedMidResponse(Exception):
    """The response already started, so the client can only be cut off, not answered."""


@dataclasses.dataclass
class Forwarding:
    """One exchange as the relay carries it: where it goes, who waits for it, and who keeps a copy."""

    method: bytes
    path: str  # as the client sent it
    upstream_target: bytes
    upstream_fields: List[Field]
    downstream: Downstream
    capture: Optional[ExchangeCapture]  # the recorder's copy, on recorded routes
    sent: Optional[BodySample] = None  # with --debug, the start of each body
    received: Optional[BodySample] = None

    def request_chunk(self, chunk: bytes) -> None:
        if self.capture is not None:
            self.capture.request_chunk(chunk)
        if self.sent is not None:
            self.sent.add(chunk)

    def response_chunk(self, chunk: bytes) -> None:
        if self.capture is not None:
            self.capture.response_chunk(chunk)
        if self.received is not None:
            self.received.add(chunk)


class Relay:
    """Shared by every connection: the pool, the recorder hand-off and the options."""

    def __init__(self, config: Config, pool: UpstreamPool, record: Optional[Callable[[Exchange], None]]) -> None:
        self.config = config
        self.pool = pool
        self.record = record  # never blocks: the recorder only enqueues
        self._host = hdr.host_field(config.target.authority)

    async def exchange(self, request: h11.Request, downstream: Downstream) -> None:
        """Relay one request. Raises ProxyError before the response starts (the caller answers it),
        UpstreamFailedMidResponse or ClientGone after."""
        path = request.target.decode("latin-1")
        fields = fields_of(request.headers)
        forwarding = Forwarding(
            method=request.method,
            path=path,
            upstream_target=self.config.target.url_path(path).encode("latin-1"),
            upstream_fields=hdr.upstream_fields(fields, self._host, hdr.is_chunked(fields)),
            downstream=downstream,
            capture=self._capture_for(request.method, path, fields),
        )
        if log.isEnabledFor(logging.DEBUG):
            # headers.masked() is the only way headers reach a log line: keys and cookies show as ***.
            target = hdr.masked_target(path)
            log.debug("-> %s %s %s", request.method.decode("latin-1"), target, hdr.masked(hdr.as_pairs(fields)))
            forwarding.sent, forwarding.received = BodySample(), BodySample()
        upgrade = hdr.upgrade_token(fields)
        if upgrade is not None:
            forwarding.upstream_fields = hdr.for_upgrade(forwarding.upstream_fields, upgrade)
            await self._tunnel(forwarding)
            return
        if forwarding.capture is not None:
            # The copy is read with zlib: br and zstd would be relayed but not recorded. The one header changed.
            forwarding.upstream_fields = hdr.decodable_codings(forwarding.upstream_fields)
        complete = False
        try:
            conn, response = await self._open_exchange(forwarding)
            complete = await self._relay_response(conn, response, forwarding)
        finally:
            if forwarding.sent is not None:
                log.debug("-> %s body %s", hdr.masked_target(path), forwarding.sent)
                log.debug("<- %s body %s", hdr.masked_target(path), forwarding.received)
            self._hand_over(forwarding.capture, complete)

    async def _tunnel(self, forwarding: Forwarding) -> None:
        """An upgrade request (WebSocket): relayed on a connection of its own; on a 101, raw bytes both
        ways until either side closes (tunnel.py). A backend that refuses answers as usual."""
        conn = await self.pool.acquire(fresh=True)
        try:
            await self._send_request(conn, forwarding)
            head = await conn.receive_head()
        except BaseException:
            self.pool.release(conn, clean=False)
            raise
        if isinstance(head, h11.Response):
            await self._relay_response(conn, head, forwarding)  # releases the connection
            return
        try:
            response_fields = fields_of(head.headers)
            upgrade = hdr.field(response_fields, b"upgrade") or b""
            client_reader, client_writer, client_early = await forwarding.downstream.switch_protocols(
                head.status_code, hdr.for_upgrade(hdr.client_fields(response_fields), upgrade), head.reason
            )
            upstream_reader, upstream_writer, upstream_early = conn.detach()
            if upstream_early:
                client_writer.write(upstream_early)
            if client_early:
                upstream_writer.write(client_early)
            log.debug("%s switched to %s", forwarding.path, upgrade.decode("latin-1"))
            await tunnel.splice(
                (client_reader, client_writer), (upstream_reader, upstream_writer), self.config.timeouts.upstream_read
            )
        finally:
            self.pool.release(conn, clean=False)  # never reused: it speaks another protocol now

    def _hand_over(self, capture: Optional[ExchangeCapture], complete: bool) -> None:
        """The recorder gets whole exchanges, and streams cut short (marked incomplete)."""
        if capture is not None and self.record is not None:
            finished = capture.finish(complete)
            if finished is not None and (complete or finished.stream):
                self.record(finished)

    def _capture_for(self, method: bytes, path: str, fields: List[Field]) -> Optional[ExchangeCapture]:
        if self.record is None:
            return None
        endpoint = route(method, path)
        if endpoint is None:
            return None
        if (hdr.field(fields, b"x-chatproxy-record") or b"").strip().lower() in (b"no", b"0", b"false", b"off"):
            return None
        return ExchangeCapture(endpoint, path, fields, self.config.max_body)

    async def _open_exchange(self, forwarding: Forwarding) -> Tuple[UpstreamConnection, h11.Response]:
        """Send the request and wait for the response head.

        A pooled connection the server closed while idle fails before any response byte; the
        request is then sent once more on a new connection, if its body was small enough to keep.
        """
        conn = await self.pool.acquire()
        reused = conn.requests > 0
        body: Optional[List[bytes]] = None
        try:
            body = await self._send_request(conn, forwarding)
            return conn, await conn.receive_response()
        except UpstreamClosed:
            self.pool.release(conn, clean=False)
            if not reused or body is None or conn.response_bytes:
                raise
        except BaseException:
            self.pool.release(conn, clean=False)
            raise
        log.debug("pooled upstream connection was stale; sending the request again on a new one")
        conn = await self.pool.acquire(fresh=True)
        try:
            await conn.send_request(forwarding.method, forwarding.upstream_target, forwarding.upstream_fields)
            for chunk in body:
                await conn.send_body(chunk)
            await conn.end_request()
            return conn, await conn.receive_response()
        except BaseException:
            self.pool.release(conn, clean=False)
            raise

    async def _send_request(self, conn: UpstreamConnection, forwarding: Forwarding) -> Optional[List[bytes]]:
        """Forward head and body as the body arrives; returns the body if it was small enough to keep."""
        copy: Optional[List[bytes]] = []
        copied = 0
        await conn.send_request(forwarding.method, forwarding.upstream_target, forwarding.upstream_fields)
        while True:
            chunk = await forwarding.downstream.receive_body()
            if chunk is None:
                break
            forwarding.request_chunk(chunk)
            if copy is not None:
                copied += len(chunk)
                if copied <= RETRY_COPY_LIMIT:
                    copy.append(chunk)
                else:
                    copy = None
            await conn.send_body(chunk)
        await conn.end_request()
        return copy

    async def _relay_response(self, conn: UpstreamConnection, response: h11.Response, forwarding: Forwarding) -> bool:
        downstream = forwarding.downstream
        clean = False
        try:
            response_fields = fields_of(response.headers)
            if log.isEnabledFor(logging.DEBUG):
                log.debug("<- %d %s", response.status_code, hdr.masked(hdr.as_pairs(response_fields)))
            if hdr.framing_conflict(response_fields):
                # h11 lets Transfer-Encoding win silently; relaying the Content-Length beside the
                # de-chunked body would frame the client's response wrongly (h11 refuses mid-send).
                raise UpstreamProtocolError("upstream response has both Content-Length and Transfer-Encoding")
            if forwarding.capture is not None:
                forwarding.capture.response_head(response.status_code, response_fields)
            await downstream.start_response(response.status_code, hdr.client_fields(response_fields), response.reason)
            try:
                async for chunk in conn.iter_body(before_wait=downstream.flush):
                    if forwarding.method != b"HEAD":
                        await downstream.send_data(chunk)
                    forwarding.response_chunk(chunk)
            except ProxyError as exc:
                raise UpstreamFailedMidResponse(str(exc)) from None
            await downstream.end_response()
            clean = True
            return True
        finally:
            self.pool.release(conn, clean=clean)
