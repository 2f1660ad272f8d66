"""Upstream connections: h11 in the client role over plain or TLS streams, and their keep-alive pool."""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import ssl
import time
from typing import AsyncIterator, Callable, Deque, List, Optional, Tuple, Union, cast

from chatproxy import _h11
from chatproxy._h11 import Field, h11
from chatproxy.config import Target, Timeouts
from chatproxy.deadlines import ReadTimer
from chatproxy.errors import UpstreamClosed, UpstreamConnectError, UpstreamProtocolError, UpstreamTimeout

log = logging.getLogger("chatproxy.upstream")

READ_SIZE = 64 * 1024  # matches StreamReader's default limit
# Real servers send large heads (long cookies, tracing headers); httpcore allows 100 KiB too.
MAX_RESPONSE_HEAD = 100 * 1024
# As many idle connections as a busy frontend keeps in flight; fewer would churn TCP connections.
MAX_IDLE_CONNECTIONS = 1024
WRITE_HIGH_WATER = 64 * 1024  # asyncio's default: drain() only waits above it, so skip the call below


def make_ssl_context(insecure: bool = False, ca_file: Optional[str] = None) -> ssl.SSLContext:
    """The system trust store (OpenSSL honours SSL_CERT_FILE / SSL_CERT_DIR), or none with --insecure."""
    context = ssl.create_default_context(cafile=ca_file)
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["http/1.1"])
    return context


class UpstreamConnection:
    """One HTTP/1.1 connection to the target; lives in the pool between requests."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeouts: Timeouts) -> None:
        self._reader = reader
        self._writer = writer
        self._timeouts = timeouts
        self._h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_RESPONSE_HEAD)
        self.requests = 0
        self.idle_since = time.monotonic()
        self.closed = False
        self.response_bytes = 0  # any response byte seen makes a retry unsafe
        self._held = b""
        self._timer = ReadTimer(asyncio.get_running_loop())

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{self._h11.our_state}/{self._h11.their_state}"
        return f"<UpstreamConnection {state} requests={self.requests}>"

    # -- sending ---------------------------------------------------------------------------

    async def _send(self, event: h11._events.Event, hold: bool = False) -> None:
        """Send an event; with `hold`, keep its bytes to go out with the next event's, in one write."""
        data = self._held + (self._h11.send(event) or b"")  # None only for ConnectionClosed, never sent here
        if hold or not data:
            self._held = data
            return
        self._held = b""
        try:
            self._writer.write(data)
            if self._writer.transport.get_write_buffer_size() > WRITE_HIGH_WATER:
                await self._writer.drain()
            elif self._writer.transport.is_closing():
                raise ConnectionResetError("connection closed")
        except (OSError, RuntimeError) as exc:
            self._h11.send_failed()
            raise UpstreamClosed(f"connection lost while sending the request: {exc}") from None
        except BaseException:
            self._h11.send_failed()
            raise

    async def send_request(self, method: bytes, target: bytes, fields: List[Field]) -> None:
        """The head waits for the first body bytes (or the end), so a small request is one write."""
        self.requests += 1
        self.response_bytes = 0
        await self._send(_h11.request(method, target, fields), hold=True)

    async def send_body(self, data: bytes) -> None:
        await self._send(h11.Data(data=data))

    async def end_request(self) -> None:
        await self._send(h11.EndOfMessage())

    # -- receiving -------------------------------------------------------------------------

    async def _read(self) -> bytes:
        try:
            data = await self._timer.read(self._reader, READ_SIZE, self._timeouts.upstream_read)
        except (OSError, ssl.SSLError):
            data = b""  # a reset is an EOF to h11, which knows whether the message was complete
        if data is None:
            raise UpstreamTimeout(f"no data from upstream for {self._timeouts.upstream_read:g} s")
        self.response_bytes += len(data)
        return data

    async def _next_event(self) -> h11._events.Event:
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                raise UpstreamProtocolError(f"invalid HTTP from upstream: {exc}") from None
            if event is not h11.NEED_DATA:
                return cast(h11._events.Event, event)  # PAUSED is a client's state only
            data = await self._read()
            if not data and self._h11.their_state is h11.SEND_RESPONSE and self.response_bytes == 0:
                # httpcore's wording: h11's own state-machine message means nothing to users.
                raise UpstreamClosed("upstream closed the connection without a response")
            self._h11.receive_data(data)

    async def receive_response(self) -> h11.Response:
        """Wait for the final response head; 1xx (100 Continue, 103 Early Hints) are skipped."""
        head = await self.receive_head()
        if type(head) is not h11.Response:
            raise UpstreamProtocolError("upstream switched protocols without being asked to")
        return head

    async def receive_head(self) -> Union[h11.Response, h11.InformationalResponse]:
        """The final response head, or the 101 that switches an upgrade request's protocol."""
        while True:
            event = await self._next_event()
            if type(event) is h11.Response:
                return event
            if type(event) is h11.InformationalResponse:
                if event.status_code == 101 and self._h11.their_state is h11.SWITCHED_PROTOCOL:
                    return event
                continue
            raise UpstreamProtocolError(f"unexpected {type(event).__name__} before the response head")

    def detach(self) -> Tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
        """After a 101: the raw streams, and the bytes of the new protocol that arrived with the head."""
        leftover, _ = self._h11.trailing_data
        return self._reader, self._writer, bytes(leftover)

    async def iter_body(self, before_wait: Optional[Callable[[], None]] = None) -> AsyncIterator[bytes]:
        """Body bytes as they arrive: everything one read brought is one chunk (one write onwards).

        `before_wait` runs before each wait for the network, so the caller can flush what it holds.
        """
        pending: List[bytes] = []
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                raise UpstreamProtocolError(f"invalid HTTP from upstream: {exc}") from None
            kind = type(event)  # h11's events are ABCs: isinstance() is slower than this test
            if kind is h11.Data:
                pending.append(cast(h11.Data, event).data)
            elif event is h11.NEED_DATA:
                if pending:
                    yield b"".join(pending)
                    pending = []
                if before_wait is not None:
                    before_wait()
                self._h11.receive_data(await self._read())
            elif kind is h11.EndOfMessage:
                if pending:
                    yield b"".join(pending)
                return
            else:  # PAUSED or ConnectionClosed
                raise UpstreamClosed("upstream connection ended in the middle of the response")

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def is_reusable(self) -> bool:
        # A close-delimited response ends at EOF yet h11 leaves both sides DONE: the socket is
        # dead, so pooling it would only hold a file descriptor until the next acquire drops it.
        return (
            not self.closed
            and not self._reader.at_eof()
            and self._h11.our_state is h11.DONE
            and self._h11.their_state is h11.DONE
        )

    def is_expired(self, now: float) -> bool:
        """Idle too long, or the server already sent FIN (a stale keep-alive socket)."""
        return (
            self.closed
            or self._reader.at_eof()
            or self._writer.is_closing()
            or now - self.idle_since > self._timeouts.pool_idle
        )

    def recycle(self) -> None:
        self._h11.start_next_cycle()
        self.idle_since = time.monotonic()

    def close(self) -> None:
        """Abort rather than close politely: a half-read response must not be drained."""
        if not self.closed:
            self.closed = True
            self._timer.close()
            self._writer.transport.abort()


async def open_connection(
    target: Target, ssl_context: Optional[ssl.SSLContext], timeouts: Timeouts
) -> UpstreamConnection:
    tls = ssl_context if target.is_tls else None
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                target.host,
                target.port,
                ssl=tls,
                server_hostname=target.host if tls else None,
                limit=READ_SIZE,
            ),
            timeouts.connect,
        )
    except asyncio.TimeoutError:
        raise UpstreamTimeout(f"connecting to {target.url} timed out after {timeouts.connect:g} s") from None
    except ssl.SSLCertVerificationError as exc:
        raise UpstreamConnectError(
            f"TLS certificate of {target.url} not trusted ({exc.verify_message}); set SSL_CERT_FILE or use --insecure"
        ) from None
    except (OSError, ssl.SSLError) as exc:
        # asyncio's strerror is "Connect call failed (host, port)", which hides the reason (refused,
        # unreachable, ...); the errno's own text says it.
        reason = (os.strerror(exc.errno) if exc.errno else exc.strerror) or str(exc) or type(exc).__name__
        raise UpstreamConnectError(f"cannot connect to {target.url}: {reason}") from None
    return UpstreamConnection(reader, writer, timeouts)


class UpstreamPool:
    """Keep-alive connections to the one target, reused most-recent first.

    Idle connections are kept oldest first, so the ones past their idle time are at the front:
    a timer closes them even when no request comes, so a burst does not leave sockets open.
    """

    def __init__(self, target: Target, timeouts: Timeouts, ssl_context: Optional[ssl.SSLContext] = None) -> None:
        self.target = target
        self._timeouts = timeouts
        self._ssl_context = ssl_context if ssl_context is not None else (make_ssl_context() if target.is_tls else None)
        self._idle: Deque[UpstreamConnection] = collections.deque()
        self._in_use = 0
        self._sweeper: Optional[asyncio.TimerHandle] = None

    @property
    def in_use(self) -> int:
        """Connections handed out and not yet released."""
        return self._in_use

    @property
    def open_count(self) -> int:
        """Connections in use plus idle ones: what the tests watch for leaks."""
        return self._in_use + len(self._idle)

    async def acquire(self, fresh: bool = False) -> UpstreamConnection:
        now = time.monotonic()
        while self._idle and not fresh:
            conn = self._idle.pop()
            if conn.is_expired(now):
                conn.close()
                continue
            self._in_use += 1
            return conn
        conn = await open_connection(self.target, self._ssl_context, self._timeouts)
        self._in_use += 1
        return conn

    def release(self, conn: UpstreamConnection, clean: bool) -> None:
        """Back to the pool only after a complete, uneventful exchange; anything else closes it.

        Synchronous on purpose: it cannot be interrupted by a cancellation half-way.
        """
        self._in_use -= 1
        if clean and conn.is_reusable and len(self._idle) < MAX_IDLE_CONNECTIONS:
            try:
                conn.recycle()
            except h11.LocalProtocolError:
                conn.close()
                return
            self._idle.append(conn)
            if self._sweeper is None:
                self._sweeper = asyncio.get_running_loop().call_later(self._timeouts.pool_idle, self._sweep)
        else:
            conn.close()

    def _sweep(self) -> None:
        self._sweeper = None
        now = time.monotonic()
        while self._idle and self._idle[0].is_expired(now):
            self._idle.popleft().close()
        if self._idle:
            wait = self._idle[0].idle_since + self._timeouts.pool_idle - now
            self._sweeper = asyncio.get_running_loop().call_later(max(wait, 0.05), self._sweep)

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        while self._idle:
            self._idle.pop().close()
