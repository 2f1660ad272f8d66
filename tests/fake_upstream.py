"""A scriptable fake OpenAI-compatible backend for loopback tests.

``FakeUpstream`` serves HTTP/1.1 (h11, keep-alive) on 127.0.0.1, port 0, from its own event
loop in a background thread, so synchronous clients - the openai SDK, http.client, raw
sockets - talk to it exactly as they would to a real backend. Every request it receives
is recorded; each one is answered by the next pushed ``Behaviour``, or, when none is
queued, by ``Default``, which is OpenAI-like enough for the real SDK (models, chat and
text completions, streamed or not, embeddings, 404 otherwise).

Behaviours that break HTTP on purpose (``Raw``, ``Reset``, ``Stall``, ``Close``) write raw
bytes past h11 and then close the connection, so the client sees exactly those bytes.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import http
import itertools
import json
import logging
import socket
import ssl
import struct
import threading
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Optional, Sequence, Tuple, Union

import h11

log = logging.getLogger("fake_upstream")

READ_SIZE = 64 * 1024
DEFAULT_MODEL = "fake-model"
CREATED = 1_700_000_000  # fixed, so replies are reproducible byte for byte
MODELS = {
    "object": "list",
    "data": [{"id": DEFAULT_MODEL, "object": "model", "created": 0, "owned_by": "test"}],
}
# How long closing one connection may take before it is aborted (TLS close_notify waits).
CLOSE_TIMEOUT = 1.0

HeaderPairs = Sequence[Tuple[str, str]]
Payload = Union[str, bytes]


@dataclass
class SeenRequest:
    """One request as the fake received it."""

    method: str
    target: str
    headers: list[tuple[str, str]]  # original case, in order
    body: bytes

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    def header(self, name: str) -> str | None:
        """First value of ``name``, compared case-insensitively."""
        wanted = name.lower()
        return next((v for k, v in self.headers if k.lower() == wanted), None)

    def json(self) -> Any:
        return json.loads(self.body)


# -- the exchange a behaviour answers ------------------------------------------------------


class Exchange:
    """One request being answered: the h11 connection and the raw stream under it.

    A behaviour either answers through h11 (``respond``, ``start``/``send_data``/``end``)
    or writes raw bytes and sets ``keep_alive`` False (the connection closes afterwards)
    or ``bypassed_h11`` True (the next request gets a fresh h11 state machine).
    """

    def __init__(
        self, request: SeenRequest, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.request = request
        self.conn = conn
        self.reader = reader
        self.writer = writer
        self.keep_alive = True
        self.bypassed_h11 = False

    async def send(self, event: Any) -> None:
        data = self.conn.send(event)
        try:
            if data:
                self.writer.write(data)
            await self.writer.drain()
        except BaseException:
            self.conn.send_failed()
            raise

    async def respond(
        self,
        status: int,
        body: bytes,
        *,
        content_type: str = "application/json",
        headers: HeaderPairs = (),
        chunked: bool = False,
    ) -> None:
        framing = ("transfer-encoding", "chunked") if chunked else ("content-length", str(len(body)))
        await self.send(self._head(status, content_type, [framing], headers))
        if body and self.request.method != "HEAD":
            await self.send(h11.Data(data=body))
        await self.send(h11.EndOfMessage())

    async def start(self, status: int, content_type: str, headers: HeaderPairs = ()) -> None:
        """Send a chunked response head; the body follows through ``send_data``."""
        await self.send(self._head(status, content_type, [("transfer-encoding", "chunked")], headers))

    async def send_data(self, data: bytes) -> None:
        await self.send(h11.Data(data=data))

    async def end(self) -> None:
        await self.send(h11.EndOfMessage())

    async def write_raw(self, data: bytes) -> None:
        if data:
            self.writer.write(data)
        await self.writer.drain()

    async def flush(self) -> None:
        """Wait until every written byte has left asyncio's buffer for the kernel."""
        transport = self.writer.transport
        for _ in range(400):
            if transport.is_closing() or transport.get_write_buffer_size() == 0:
                return
            await asyncio.sleep(0.005)

    def reset(self) -> None:
        """Abort the connection so the peer gets an RST instead of a FIN."""
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()
        self.keep_alive = False

    def _head(self, status: int, content_type: str, framing: list[tuple[str, str]], extra: HeaderPairs) -> h11.Response:
        ours = [("content-type", content_type), *framing, ("x-fake-upstream", "1")]
        echo = self.request.header("x-echo")
        if echo is not None:
            ours.append(("x-echo", echo))
        # A header the behaviour names replaces ours, so tests can override any of them.
        theirs = {name.lower() for name, _ in extra}
        headers = [(k, v) for k, v in ours if k not in theirs] + list(extra)
        return h11.Response(status_code=status, headers=headers, reason=_reason(status))


def _reason(status: int) -> bytes:
    try:
        return http.HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


# -- behaviours ---------------------------------------------------------------------------


class Behaviour:
    """How the fake answers one request."""

    async def run(self, ex: Exchange) -> None:
        raise NotImplementedError


@dataclass
class Json(Behaviour):
    """A JSON body (``bytes`` are sent as they are) with Content-Length, or chunked."""

    obj: Any
    status: int = 200
    headers: HeaderPairs = ()
    chunked: bool = False

    async def run(self, ex: Exchange) -> None:
        body = self.obj if isinstance(self.obj, bytes) else json.dumps(self.obj).encode()
        await ex.respond(self.status, body, headers=self.headers, chunked=self.chunked)


@dataclass
class Raw(Behaviour):
    """Exactly these bytes, then close (or, with ``close=False``, carry on with the next request)."""

    data: bytes
    close: bool = True

    async def run(self, ex: Exchange) -> None:
        await ex.write_raw(self.data)
        if self.close:
            ex.keep_alive = False
        else:
            ex.bypassed_h11 = True


@dataclass
class SSE(Behaviour):
    """A chunked ``text/event-stream``: each payload written as ``data: …`` plus a blank line.

    Each event is its own write (``split=k``: its own k-byte writes), ``gap`` seconds apart.
    ``raw=True`` writes the payloads verbatim, for hand-made framing (CRLF, comments, fields).
    """

    payloads: Sequence[Payload]
    gap: float = 0.0
    split: Optional[int] = None
    headers: HeaderPairs = ()
    status: int = 200
    raw: bool = False

    async def run(self, ex: Exchange) -> None:
        await ex.start(self.status, "text/event-stream", self.headers)
        for i, payload in enumerate(self.payloads):
            if i and self.gap:
                await asyncio.sleep(self.gap)
            event = _bytes(payload) if self.raw else b"data: " + _bytes(payload) + b"\n\n"
            for piece in _pieces(event, self.split or len(event)):
                await ex.send_data(piece)
        await ex.end()


@dataclass
class Reset(Behaviour):
    """Write ``after`` (say a head and part of a body), then abort with an RST."""

    after: bytes = b""

    async def run(self, ex: Exchange) -> None:
        await ex.write_raw(self.after)
        await ex.flush()
        ex.reset()


@dataclass
class Stall(Behaviour):
    """Write ``after``, go quiet for ``seconds`` (less if the client leaves), then close."""

    seconds: float
    after: bytes = b""

    async def run(self, ex: Exchange) -> None:
        await ex.write_raw(self.after)
        try:
            await asyncio.wait_for(_until_eof(ex.reader), self.seconds)
        except asyncio.TimeoutError:
            pass
        ex.keep_alive = False


@dataclass
class Close(Behaviour):
    """Close the connection without answering."""

    async def run(self, ex: Exchange) -> None:
        ex.keep_alive = False


@dataclass
class Chat(Behaviour):
    """A canned chat completion; streamed when the request asks for it, unless ``stream`` is set.

    ``reasoning`` arrives as ``reasoning_content`` deltas before the text; ``tool_calls``
    (dicts with ``id``, ``name``, ``arguments``) stream as index-keyed fragments - id and
    name first, then the arguments in ``chunk_size`` pieces - with parallel calls
    interleaved. With ``n`` > 1, choice i > 0 gets the text plus ``" #i"``.
    """

    text: str
    reasoning: Optional[str] = None
    tool_calls: Optional[Sequence[dict]] = None
    stream: Optional[bool] = None
    finish_reason: str = "stop"
    chunk_size: int = 3
    usage: bool = True
    gap: float = 0.0

    async def run(self, ex: Exchange) -> None:
        body = _json_object(ex.request) or {}
        model = body.get("model") or DEFAULT_MODEL
        texts = _numbered(self.text, body.get("n"))
        usage = _usage(_prompt_words(body), sum(_words(t) for t in texts)) if self.usage else None
        stream = self.stream if self.stream is not None else bool(body.get("stream"))
        if not stream:
            choices = [self._choice(i, text) for i, text in enumerate(texts)]
            await ex.respond(200, _dumps(_completion("chat.completion", model, choices, usage)))
            return
        include_usage = usage if _wants_usage(body) else None
        chunks = self._chunks(model, texts, include_usage)
        await _stream_json(ex, chunks, self.gap)

    def _choice(self, index: int, text: str) -> dict:
        message: dict[str, Any] = {"role": "assistant", "content": text if text or not self.tool_calls else None}
        if self.reasoning is not None:
            message["reasoning_content"] = self.reasoning
        if self.tool_calls:
            message["tool_calls"] = [
                {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
                for c in self.tool_calls
            ]
        return {"index": index, "message": message, "logprobs": None, "finish_reason": self.finish_reason}

    def _chunks(self, model: str, texts: list[str], usage: dict | None) -> Iterator[dict]:
        per_choice = [list(self._deltas(text)) for text in texts]
        for index, delta, finish in _round_robin(per_choice):
            choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
            yield _chunk("chat.completion.chunk", model, [choice], usage)
        if usage is not None:
            yield _completion("chat.completion.chunk", model, [], usage)

    def _deltas(self, text: str) -> Iterator[tuple[dict, str | None]]:
        yield {"role": "assistant", "content": ""}, None
        for piece in _pieces(self.reasoning or "", self.chunk_size):
            yield {"reasoning_content": piece}, None
        for piece in _pieces(text, self.chunk_size):
            yield {"content": piece}, None
        for fragment in _tool_fragments(self.tool_calls or (), self.chunk_size):
            yield {"tool_calls": [fragment]}, None
        yield {}, self.finish_reason


@dataclass
class Completion(Behaviour):
    """A canned text completion (``text_completion``), streamed when the request asks for it."""

    text: str
    stream: Optional[bool] = None
    finish_reason: str = "stop"
    chunk_size: int = 3
    usage: bool = True

    async def run(self, ex: Exchange) -> None:
        body = _json_object(ex.request) or {}
        model = body.get("model") or DEFAULT_MODEL
        texts = _numbered(self.text, body.get("n"))
        usage = _usage(_words(_prompt_text(body)), sum(_words(t) for t in texts)) if self.usage else None
        stream = self.stream if self.stream is not None else bool(body.get("stream"))
        if not stream:
            choices = [self._choice(i, text, self.finish_reason) for i, text in enumerate(texts)]
            await ex.respond(200, _dumps(_completion("text_completion", model, choices, usage)))
            return
        per_choice = [[(p, None) for p in _pieces(t, self.chunk_size)] + [("", self.finish_reason)] for t in texts]
        chunks: list[dict] = [
            _chunk("text_completion", model, [self._choice(i, piece, finish)], None)
            for i, piece, finish in _round_robin(per_choice)
        ]
        if usage is not None and _wants_usage(body):
            chunks.append(_completion("text_completion", model, [], usage))
        await _stream_json(ex, chunks, 0.0)

    @staticmethod
    def _choice(index: int, text: str, finish: str | None) -> dict:
        return {"text": text, "index": index, "logprobs": None, "finish_reason": finish}


@dataclass
class Default(Behaviour):
    """The OpenAI-like answer used when no behaviour is queued."""

    async def run(self, ex: Exchange) -> None:
        method, path = ex.request.method, ex.request.path
        if method == "GET" and path.endswith("/models"):
            await Json(MODELS).run(ex)
        elif method == "POST" and path.endswith(("/chat/completions", "/completions", "/embeddings")):
            body = _json_object(ex.request)
            if body is None:
                await _error(ex, 400, "We could not parse the JSON body of your request.")
            elif path.endswith("/chat/completions"):
                await Chat("echo: " + _last_user_text(body)).run(ex)
            elif path.endswith("/completions"):
                await Completion("echo: " + _prompt_text(body)[-20:]).run(ex)
            else:
                await _embeddings(ex, body)
        else:
            await _error(ex, 404, f"Invalid URL ({method} {path})")


# -- helpers for the canned OpenAI replies ------------------------------------------------


def _bytes(payload: Payload) -> bytes:
    return payload.encode() if isinstance(payload, str) else payload


def _pieces(seq: Any, size: int) -> list[Any]:
    return [seq[i : i + size] for i in range(0, len(seq), max(size, 1))]


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def _json_object(request: SeenRequest) -> dict | None:
    try:
        body = request.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _numbered(text: str, n: Any) -> list[str]:
    count = n if isinstance(n, int) and n > 1 else 1
    return [text] + [f"{text} #{i}" for i in range(1, count)]


def _text_of(content: Any) -> str:
    """A message's text: string content, or its text parts joined with newlines."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def _last_user_text(body: dict) -> str:
    messages = body.get("messages") or []
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    return _text_of(users[-1].get("content")) if users else ""


def _prompt_text(body: dict) -> str:
    prompt = body.get("prompt", "")
    if isinstance(prompt, list):
        strings = [p for p in prompt if isinstance(p, str)]
        return strings[-1] if strings else ""
    return prompt if isinstance(prompt, str) else ""


def _words(text: str) -> int:
    return len(text.split())


def _prompt_words(body: dict) -> int:
    messages = body.get("messages") or []
    return sum(_words(_text_of(m.get("content"))) for m in messages if isinstance(m, dict))


def _usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _wants_usage(body: dict) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))


def _completion(obj: str, model: str, choices: list, usage: dict | None) -> dict:
    reply = {"id": "fake-1", "object": obj, "created": CREATED, "model": model, "choices": choices}
    if usage is not None:
        reply["usage"] = usage
    return reply


def _chunk(obj: str, model: str, choices: list, usage: dict | None) -> dict:
    chunk = _completion(obj, model, choices, None)
    if usage is not None:
        chunk["usage"] = None  # OpenAI sends "usage": null on every chunk but the last
    return chunk


def _round_robin(per_choice: list[list[tuple[Any, str | None]]]) -> Iterator[tuple[int, Any, str | None]]:
    """Interleave the choices' chunks: step k of choice 0, of choice 1, … then step k+1."""
    for step in itertools.zip_longest(*per_choice):
        for index, item in enumerate(step):
            if item is not None:
                yield (index, *item)


def _tool_fragments(calls: Iterable[dict], size: int) -> Iterator[dict]:
    per_call = []
    for index, call in enumerate(calls):
        function = {"name": call["name"], "arguments": ""}
        first = {"index": index, "id": call["id"], "type": "function", "function": function}
        rest = [{"index": index, "function": {"arguments": p}} for p in _pieces(call["arguments"], size)]
        per_call.append([first, *rest])
    for step in itertools.zip_longest(*per_call):
        yield from (fragment for fragment in step if fragment is not None)


async def _stream_json(ex: Exchange, chunks: Iterable[dict], gap: float) -> None:
    await ex.start(200, "text/event-stream")
    for i, chunk in enumerate(chunks):
        if i and gap:
            await asyncio.sleep(gap)
        await ex.send_data(b"data: " + _dumps(chunk) + b"\n\n")
    await ex.send_data(b"data: [DONE]\n\n")
    await ex.end()


async def _embeddings(ex: Exchange, body: dict) -> None:
    raw = body.get("input", "")
    inputs = raw if isinstance(raw, list) and raw and not isinstance(raw[0], int) else [raw]
    data = []
    for index, item in enumerate(inputs):
        vector = [float(len(item)), 0.5, -0.25]
        embedding: Any = vector
        if body.get("encoding_format") == "base64":
            embedding = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    tokens = sum(len(i) if isinstance(i, list) else _words(str(i)) for i in inputs)
    reply = {
        "object": "list",
        "data": data,
        "model": body.get("model") or DEFAULT_MODEL,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    await ex.respond(200, _dumps(reply))


async def _error(ex: Exchange, status: int, message: str) -> None:
    error = {"message": message, "type": "invalid_request_error", "param": None, "code": None}
    await Json({"error": error}, status=status).run(ex)


# -- the server ---------------------------------------------------------------------------


class FakeUpstream:
    """The fake backend. Use as a context manager, or ``start()`` / ``stop()``.

    Leaving the ``with`` block raises if a behaviour crashed (see ``errors``).
    """

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self.ssl_context = ssl_context
        self.url = ""
        self.port = 0
        self.requests: list[SeenRequest] = []
        self.connections_opened = 0
        self.open_connections = 0
        # Unexpected exceptions raised while answering (a bug in a behaviour, not a client leaving).
        self.errors: list[BaseException] = []
        self._queue: collections.deque[Behaviour] = collections.deque()
        self._changed = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, exc_type: object, *exc_info: object) -> None:
        self.stop()
        # A behaviour that crashed (say a LocalProtocolError from headers h11 refuses) is a
        # broken test, not a client-visible fault: fail loudly unless the test already did.
        if exc_type is None and self.errors:
            raise AssertionError(f"fake upstream failed while answering: {self.errors!r}")

    def start(self) -> FakeUpstream:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-upstream", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(timeout=10)
        scheme = "https" if self.ssl_context is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        return self

    def stop(self) -> None:
        """Stop listening, drop every open connection, and end the thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            loop.close()
            self._loop = self._thread = None

    def push(self, *behaviours: Behaviour) -> None:
        """Queue behaviours; each answers one request, in order, before ``Default`` resumes."""
        with self._changed:
            self._queue.extend(behaviours)

    def wait_for_requests(self, n: int, timeout: float = 5) -> None:
        """Block until at least ``n`` requests have been received."""
        self._wait_until(lambda: len(self.requests) >= n, timeout, f"{n} requests")

    def wait_for_open_connections(self, n: int, timeout: float = 5) -> None:
        """Block until exactly ``n`` connections are open (0: every client has gone)."""
        self._wait_until(lambda: self.open_connections == n, timeout, f"{n} open connections")

    def _wait_until(self, predicate: Any, timeout: float, what: str) -> None:
        with self._changed:
            if not self._changed.wait_for(predicate, timeout):
                raise AssertionError(
                    f"fake upstream: waited {timeout}s for {what}; have {len(self.requests)} requests, "
                    f"{self.open_connections} open connections"
                )

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.ssl_context)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        await asyncio.sleep(0)  # let just-accepted connections reach their handler's cleanup
        me = asyncio.current_task()
        while True:
            tasks = [t for t in asyncio.all_tasks() if t is not me]
            if not tasks:
                break
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()

    def _next_behaviour(self) -> Behaviour:
        with self._changed:
            return self._queue.popleft() if self._queue else Default()

    def _record(self, request: SeenRequest) -> None:
        with self._changed:
            self.requests.append(request)
            self._changed.notify_all()

    def _count_connection(self, delta: int) -> None:
        with self._changed:
            self.open_connections += delta
            self.connections_opened += max(delta, 0)
            self._changed.notify_all()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._count_connection(+1)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, h11.RemoteProtocolError) as exc:
            log.debug("fake upstream: connection ended: %r", exc)
        except Exception as exc:
            log.exception("fake upstream: answering failed")
            self.errors.append(exc)
        finally:
            await _close(writer)
            self._count_connection(-1)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        while True:
            request = await _read_request(conn, reader)
            if request is None:
                return
            self._record(request)
            ex = Exchange(request, conn, reader, writer)
            await self._next_behaviour().run(ex)
            if not ex.keep_alive:
                return
            if ex.bypassed_h11:
                conn = _fresh_connection(conn)
            elif conn.our_state is h11.MUST_CLOSE:
                return
            else:
                conn.start_next_cycle()


async def _read(reader: asyncio.StreamReader) -> bytes:
    try:
        return await reader.read(READ_SIZE)
    except (ConnectionError, OSError):
        return b""  # h11 decides whether the end was clean


async def _until_eof(reader: asyncio.StreamReader) -> None:
    while await _read(reader):
        pass


async def _read_request(conn: h11.Connection, reader: asyncio.StreamReader) -> SeenRequest | None:
    """The next whole request on ``conn``, or None when the client closed between requests."""
    head: h11.Request | None = None
    body: list[bytes] = []
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await _read(reader))
        elif isinstance(event, h11.Request):
            head = event
        elif isinstance(event, h11.Data):
            body.append(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage):
            assert head is not None
            return SeenRequest(
                method=head.method.decode("ascii"),
                target=head.target.decode("latin-1"),
                headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in head.headers.raw_items()],
                body=b"".join(body),
            )
        else:  # ConnectionClosed
            return None


def _fresh_connection(old: h11.Connection) -> h11.Connection:
    """A new server state machine after a raw answer, keeping bytes already received."""
    new = h11.Connection(h11.SERVER)
    data, closed = old.trailing_data
    if data:
        new.receive_data(data)
    if closed:
        new.receive_data(b"")  # h11's EOF marker, hence the guard above
    return new


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), CLOSE_TIMEOUT)
    except (OSError, asyncio.TimeoutError):
        writer.transport.abort()
