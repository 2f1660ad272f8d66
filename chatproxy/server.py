"""The listening side: one ClientConnection per socket, driving h11 in the server role."""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import logging
import time
from typing import Any, Callable, Dict, List, Optional, Set, Tuple, cast

from chatproxy import __version__, _h11
from chatproxy import headers as hdr
from chatproxy._h11 import Field, fields_of, h11
from chatproxy.config import Config
from chatproxy.deadlines import ReadTimer, WatchedReader
from chatproxy.errors import ProxyError, RequestRejected, openai_error_body
from chatproxy.relay import ClientGone, Relay, UpstreamFailedMidResponse

log = logging.getLogger("chatproxy.server")

READ_SIZE = 64 * 1024  # matches StreamReader's default limit
# h11's default head limit. h11 enforces it only while a head is incomplete, so a head that arrives
# whole in one 64 KiB read slips past it; _check measures the parsed head against the same limit.
MAX_REQUEST_HEAD = 16 * 1024
STATUS_PATH = b"/_chatproxy/status"
CONNECTION_CLOSE: Field = (b"Connection", b"connection", b"close")
REVIEW_PATH = b"/_chatproxy/review"
REVIEW_PREFIX = REVIEW_PATH + b"/"


@dataclasses.dataclass
class Cycle:
    """The state of one request/response cycle on a connection; a new one for every request."""

    response_started: bool = False
    body_bytes: int = 0  # of the request body so far, for --max-body on chunked bodies
    client_gone: bool = False  # the client's EOF arrived once the request was in


class ClientConnection:
    """Serves requests on one client connection until it closes, relaying each to the target.

    It is the relay's Downstream: the relay reads the request body and writes the response through it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: ProxyServer) -> None:
        self._reader = reader
        self._writer = writer
        self._server = server
        self._config = server.config
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD)
        peer = writer.get_extra_info("peername") or ("?", 0)
        self.label = f"{peer[0]}:{peer[1]}"
        self.busy = False
        self.cycle = Cycle()
        self._task: Optional[asyncio.Task[None]] = None
        self._timer = ReadTimer(asyncio.get_running_loop())
        self._held = b""  # bytes sent to h11 but not yet written: one write for head and body
        _, self._high_water = writer.transport.get_write_buffer_limits()

    @property
    def response_started(self) -> bool:
        return self.cycle.response_started

    def close_if_idle(self) -> None:
        """On shutdown: a connection waiting for its next request is closed now, a busy one finishes."""
        if not self.busy and self._task is not None:
            self._task.cancel()

    # -- the request/response cycle ----------------------------------------------------------

    async def run(self) -> None:
        self._task = asyncio.current_task()
        try:
            while not self._server.stopping:
                request = await self._read_request()
                if request is None:
                    return
                self.busy = True
                await self._handle(request)
                self.busy = False
                if self._h11.our_state is not h11.DONE or self._h11.their_state is not h11.DONE:
                    return  # MUST_CLOSE, an error, or a body the client still owes us
                self._h11.start_next_cycle()  # the loop's test ends a connection the shutdown wants closed
        finally:
            await self._close()

    async def _read_request(self) -> Optional[h11.Request]:
        """The next request head, or None when the client is done or too slow (408 sent)."""
        deadline = None
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                await self._send_error(exc.error_status_hint, f"malformed HTTP request: {exc}", "bad_request")
                return None
            if type(event) is h11.Request:  # h11's events are ABCs: isinstance() is slower than this test
                return event
            if event is not h11.NEED_DATA:
                return None  # ConnectionClosed
            if deadline is None:
                timeout = self._config.timeouts.client_idle
            else:
                timeout = deadline - time.monotonic()
            data = await self._read(timeout)
            if data is None:
                if deadline is not None:
                    await self._send_error(408, "request head not received in time", "request_timeout")
                return None
            if deadline is None:
                deadline = time.monotonic() + self._config.timeouts.client_header
            self._h11.receive_data(data)

    async def _read(self, timeout: float) -> Optional[bytes]:
        """Bytes from the client; b"" at EOF or reset; None on time-out."""
        try:
            return await self._timer.read(self._reader, READ_SIZE, timeout)
        except OSError:
            return b""  # a reset is the client leaving: h11 then decides if that was clean (h11's own rule)

    async def _handle(self, request: h11.Request) -> None:
        self.cycle = Cycle()
        self._server.count_request()
        try:
            path = request.target.split(b"?", 1)[0]
            if path == REVIEW_PATH or path.startswith(REVIEW_PREFIX):
                await self._answer_review(request)  # the page checks the key itself: browsers send no header
                return
            request = self._check(request)
            if path == STATUS_PATH:
                await self._answer_status()
                return
            await self._server.relay.exchange(request, self)
        except ProxyError as exc:
            if exc.status >= 500:
                self._server.note_error(str(exc))  # counted as an error when the answer is sent
            log.warning(
                "%s - %s %s -> %d %s",
                self.label,
                request.method.decode(),
                request.target.decode("latin-1"),
                exc.status,
                exc,
            )
            await self._send_error(exc.status, str(exc), exc.code)
        except UpstreamFailedMidResponse as exc:
            self._server.count_error(str(exc))
            log.warning("%s - upstream failed mid-response, cutting the client off: %s", self.label, exc)
            self._abort()
        except ClientGone:
            log.info("%s - client went away before the response was complete", self.label)
            self._abort()
        except asyncio.CancelledError:
            if not self.cycle.client_gone:
                raise
            task = asyncio.current_task()
            if task is not None and hasattr(task, "uncancel"):
                task.uncancel()  # the cancellation was ours, not a shutdown's
            log.info("%s - client went away while waiting for the response", self.label)
            self._abort()
        finally:
            self._stop_watching()

    def _check(self, request: h11.Request) -> h11.Request:
        """Refuse what a transparent gateway to one target must not relay; returns what to relay."""
        fields = fields_of(request.headers)
        head_size = len(request.method) + len(request.target) + sum([len(k) + len(v) + 4 for k, _, v in fields])
        if head_size > MAX_REQUEST_HEAD:
            raise RequestRejected(431, f"request head larger than {MAX_REQUEST_HEAD // 1024} KiB")
        if not request.target.startswith(b"/"):
            # Absolute-form targets would make this an open proxy; only --target is ever contacted.
            raise RequestRejected(400, "request target must be a path; this proxy only forwards to its --target")
        if request.method == b"CONNECT":
            raise RequestRejected(405, "CONNECT is not supported")
        if hdr.framing_conflict(fields):
            raise RequestRejected(400, "request has both Content-Length and Transfer-Encoding")
        if self._config.proxy_key is not None:
            request = self._with_proxy_key_checked(request, fields)
        length = hdr.field(fields, b"content-length")
        if length is not None and int(length) > self._config.max_body:
            raise RequestRejected(413, f"request body larger than --max-body ({self._config.max_body} bytes)")
        return request

    def _with_proxy_key_checked(self, request: h11.Request, fields: List[Field]) -> h11.Request:
        """401 without the proxy key. Sent as X-Chatproxy-Key (removed before forwarding), the
        frontend's own Authorization passes through. Sent as `Authorization: Bearer KEY`, that
        header carried our key, not an upstream one: it is dropped, or the backend would see it."""
        assert self._config.proxy_key is not None
        expected = self._config.proxy_key.encode()
        given = hdr.field(fields, hdr.PROXY_KEY_HEADER)
        if given is not None:
            if hmac.compare_digest(given.strip(), expected):
                return request
        else:
            auth = hdr.field(fields, b"authorization") or b""
            if auth[:7].lower() == b"bearer " and hmac.compare_digest(auth[7:].strip(), expected):
                headers = [(raw, value) for raw, low, value in fields if low != b"authorization"]
                return h11.Request(
                    method=request.method, target=request.target, headers=headers, http_version=request.http_version
                )
        raise RequestRejected(401, "missing or wrong proxy key (X-Chatproxy-Key or Authorization: Bearer)")

    # -- Downstream: what the relay calls ------------------------------------------------------

    async def receive_body(self) -> Optional[bytes]:
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                raise RequestRejected(exc.error_status_hint, f"malformed request body: {exc}") from None
            kind = type(event)
            if kind is h11.Data:
                chunk = cast(h11.Data, event).data  # type() narrows nothing: h11's events are ABCs
                self.cycle.body_bytes += len(chunk)
                if self.cycle.body_bytes > self._config.max_body:
                    raise RequestRejected(413, f"request body larger than --max-body ({self._config.max_body} bytes)")
                return bytes(chunk)
            if kind is h11.EndOfMessage:
                self._watch_for_departure()
                return None
            if event is not h11.NEED_DATA:
                raise ClientGone()
            if self._h11.they_are_waiting_for_100_continue:
                await self._send(h11.InformationalResponse(status_code=100, headers=[]))
            data = await self._read(self._config.timeouts.client_body)
            if data is None:
                raise RequestRejected(408, "request body not received in time")
            self._h11.receive_data(data)

    async def start_response(self, status: int, fields: List[Field], reason: bytes) -> None:
        self.cycle.response_started = True
        if self._server.stopping:
            fields = fields + [CONNECTION_CLOSE]
        # The head goes out with the first body bytes, or by flush() before the relay waits for them.
        await self._send(_h11.response(status, fields, reason), hold=True)

    async def send_data(self, data: bytes) -> None:
        await self._send(h11.Data(data=data))

    async def end_response(self) -> None:
        await self._send(h11.EndOfMessage())

    async def switch_protocols(
        self, status: int, fields: List[Field], reason: bytes
    ) -> Tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
        # From here the client's EOF ends the tunnel, not the exchange: no more watching for it.
        self._stop_watching()
        self.cycle.response_started = True
        await self._send(h11.InformationalResponse(status_code=status, headers=hdr.as_pairs(fields), reason=reason))
        early, _ = self._h11.trailing_data
        return self._reader, self._writer, bytes(early)

    def flush(self) -> None:
        """Write what is held back (a response head) now, before waiting on the backend."""
        if self._held and not self._writer.transport.is_closing():
            data, self._held = self._held, b""
            self._writer.write(data)

    async def _send(self, event: Any, hold: bool = False) -> None:
        data = self._held + (self._h11.send(event) or b"")  # None only for ConnectionClosed, never sent here
        if hold or not data:  # the end of a Content-Length body is no bytes at all
            self._held = data
            return
        self._held = b""
        transport = self._writer.transport
        if transport.is_closing():
            self._h11.send_failed()
            raise ClientGone()
        try:
            self._writer.write(data)
            # drain() only waits when the buffer is over its high-water mark; skip the call otherwise.
            if transport.get_write_buffer_size() > self._high_water:
                await asyncio.wait_for(self._writer.drain(), self._config.timeouts.client_write)
        except (OSError, RuntimeError, asyncio.TimeoutError):
            self._h11.send_failed()
            raise ClientGone() from None
        except BaseException:
            self._h11.send_failed()
            raise

    async def _send_error(self, status: int, message: str, code: str) -> None:
        """An OpenAI-style error answer, then the connection closes; only if no response started."""
        if self._h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE) or self.cycle.response_started:
            self._abort()
            return
        self._server.count_error()
        body = openai_error_body(status, message, code)
        headers = [
            (b"Content-Type", b"application/json"),
            (b"Content-Length", str(len(body)).encode()),
            (b"Connection", b"close"),
        ]
        try:
            await self._send(h11.Response(status_code=status, headers=headers))
            await self._send(h11.Data(data=body))
            await self._send(h11.EndOfMessage())
        except (ClientGone, h11.LocalProtocolError):
            self._abort()

    async def _answer_status(self) -> None:
        body = json.dumps(self._server.status(), indent=2).encode() + b"\n"
        headers = [(b"Content-Type", b"application/json"), (b"Content-Length", str(len(body)).encode())]
        while await self.receive_body() is not None:
            pass
        self.cycle.response_started = True
        await self._send(h11.Response(status_code=200, headers=headers))
        await self._send(h11.Data(data=body))
        await self._send(h11.EndOfMessage())

    async def _answer_review(self, request: h11.Request) -> None:
        from chatproxy.review.app import answer_in_proxy  # loaded on the page's first request, never before

        body = b""
        while True:
            chunk = await self.receive_body()
            if chunk is None:
                break
            body += chunk
        status, headers, data = await answer_in_proxy(self._server, request, body)
        self.cycle.response_started = True
        await self._send(h11.Response(status_code=status, headers=headers + [(b"Content-Length", b"%d" % len(data))]))
        if data and request.method != b"HEAD":
            await self._send(h11.Data(data=data))
        await self._send(h11.EndOfMessage())

    # -- client-gone detection -----------------------------------------------------------------

    def _watch_for_departure(self) -> None:
        """Once the request is in, the client's EOF means it left (mitmproxy's rule): cancel the
        exchange, which closes its upstream connection instead of waiting for a reply nobody reads."""
        reader = self._reader
        if reader.at_eof() or reader.exception() is not None:
            self._client_left()
        elif isinstance(reader, WatchedReader):
            reader.on_end = self._client_left

    def _client_left(self) -> None:
        self.cycle.client_gone = True
        if self._task is not None:
            self._task.cancel()

    def _stop_watching(self) -> None:
        if isinstance(self._reader, WatchedReader):
            self._reader.on_end = None

    # -- closing ---------------------------------------------------------------------------------

    def _abort(self) -> None:
        self._writer.transport.abort()

    async def _close(self) -> None:
        self._stop_watching()
        self._timer.close()
        transport = self._writer.transport
        if not transport.is_closing():
            try:
                if self._writer.can_write_eof():
                    self._writer.write_eof()
            except (OSError, RuntimeError):
                pass  # the peer is already gone: close() below is all that is left to do
            self._writer.close()
        try:
            await asyncio.wait_for(self._writer.wait_closed(), 1.0)
        except (OSError, asyncio.TimeoutError, asyncio.CancelledError):
            transport.abort()


class ProxyServer:
    """The listener, its live connections, counters, and a graceful shutdown."""

    def __init__(
        self, config: Config, relay: Relay, status_extra: Optional[Callable[[], Dict[str, Any]]] = None
    ) -> None:
        self.config = config
        self.relay = relay
        self.stopping = False
        self.connections: Set[ClientConnection] = set()
        self.accepted = 0  # client connections since start: requests / accepted tells how well keep-alive works
        self.counts: Dict[str, int] = {"requests": 0, "errors": 0}
        self.last_error: Optional[str] = None
        self.started = time.time()
        self._status_extra = status_extra
        self.review: Any = None  # the review page (review/app.py), built on its first request
        self._server: Optional[asyncio.AbstractServer] = None
        self._tasks: Set[asyncio.Task[None]] = set()

    async def start(self) -> Tuple[str, int]:
        loop = asyncio.get_running_loop()

        def protocol() -> asyncio.StreamReaderProtocol:
            # What asyncio.start_server builds, with a reader that reports the client leaving.
            return asyncio.StreamReaderProtocol(WatchedReader(limit=READ_SIZE), self._handle_client)

        self._server = await loop.create_server(protocol, self.config.host, self.config.port, reuse_address=True)
        host, port = self._server.sockets[0].getsockname()[:2]
        return host, port

    async def _handle_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = ClientConnection(reader, writer, self)
        self.connections.add(conn)
        self.accepted += 1
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await conn.run()
        except asyncio.CancelledError:
            pass  # shutdown cut this connection off: nothing to report
        except Exception:  # one broken connection must never take the proxy down
            log.exception("%s - connection handler crashed", conn.label)
        finally:
            self.connections.discard(conn)
            if task is not None:
                self._tasks.discard(task)

    def count_request(self) -> None:
        self.counts["requests"] += 1

    def count_error(self, message: Optional[str] = None) -> None:
        self.counts["errors"] += 1
        if message is not None:
            self.note_error(message)

    def note_error(self, message: str) -> None:
        """The last failure, for /_chatproxy/status."""
        self.last_error = message

    def status(self) -> Dict[str, Any]:
        info: Dict[str, Any] = {
            "version": __version__,
            "uptime": round(time.time() - self.started, 1),
            "target": self.config.target.url,
            "session": self.config.session,
            "requests": self.counts["requests"],
            "errors": self.counts["errors"],
            "open_connections": len(self.connections),
            "accepted_connections": self.accepted,
            "upstream_connections": self.relay.pool.open_count,
            "last_error": self.last_error,
        }
        if self._status_extra is not None:
            info.update(self._status_extra())
        return info

    async def shutdown(self) -> None:
        """Stop listening; idle connections close now, busy ones get a grace period, then are cut."""
        self.stopping = True
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.close_if_idle()
        deadline = time.monotonic() + self.config.timeouts.shutdown_grace
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2)
        if self._server is not None:
            await self._server.wait_closed()
        if self.review is not None:  # the review page's own process, if it started one
            await self.review.close()
