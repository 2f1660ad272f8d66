"""Helpers shared by the fault-injection suites: a byte-exact h11 client, canned bodies, and checks.

`H11Client` talks to the proxy over a real loopback socket and parses what comes back with a real
`h11.Connection(CLIENT)` (hypercorn's test_sanity idea), so a test sees exactly which events arrived
and whether the message ended properly or the connection was cut.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import h11

Headers = Sequence[Tuple[str, str]]


# -- request and response bodies ------------------------------------------------------------


def chat_body(text: str, stream: bool = False, model: str = "fake-model") -> bytes:
    body: Dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": text}]}
    if stream:
        body["stream"] = True
    return json.dumps(body).encode()


def chunk_payload(piece: Optional[str], finish: Optional[str] = None) -> bytes:
    """One chat.completion.chunk, as an upstream would stream it."""
    delta = {} if piece is None else {"content": piece}
    chunk = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return json.dumps(chunk).encode()


def sse_event(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"


def http_chunk(data: bytes) -> bytes:
    """One chunk of a chunked body, as it goes on the wire."""
    return b"%x\r\n%s\r\n" % (len(data), data)


SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def json_head(length: int, status: bytes = b"200 OK") -> bytes:
    return b"HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (status, length)


# -- a byte-exact client --------------------------------------------------------------------


@dataclasses.dataclass
class Reply:
    status: int
    headers: List[Tuple[bytes, bytes]]
    body: bytes
    complete: bool  # EndOfMessage arrived; False when the proxy cut the connection mid-body
    informational: List[int]

    def header(self, name: str) -> Optional[bytes]:
        wanted = name.lower().encode()
        return next((v for k, v in self.headers if k.lower() == wanted), None)

    def json(self) -> Any:
        return json.loads(self.body)


class H11Client:
    """One client connection to the proxy, driven through h11 so every byte is accounted for."""

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.conn = h11.Connection(h11.CLIENT)

    def __enter__(self) -> H11Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, *events: Any) -> None:
        for event in events:
            data = self.conn.send(event)
            if data:
                self.sock.sendall(data)

    def request(self, method: str, target: str, body: bytes = b"", headers: Headers = ()) -> Reply:
        self.send_request(method, target, body, headers)
        return self.read_reply()

    def send_request(self, method: str, target: str, body: bytes = b"", headers: Headers = ()) -> None:
        has_host = any(k.lower() == "host" for k, _ in headers)
        all_headers = [*([] if has_host else [("Host", "proxy.test")]), *headers]
        if body and not any(k.lower() in ("content-length", "transfer-encoding") for k, _ in headers):
            all_headers.append(("Content-Length", str(len(body))))
        self.send(h11.Request(method=method, target=target, headers=all_headers))
        if body:
            self.send(h11.Data(data=body))
        self.send(h11.EndOfMessage())

    def _recv(self) -> bytes:
        try:
            return self.sock.recv(65536)
        except ConnectionResetError:
            return b""

    def next_event(self) -> Any:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            self.conn.receive_data(self._recv())

    def read_reply(self) -> Reply:
        """The next response; body bytes as they came, and whether it ended properly."""
        informational: List[int] = []
        while True:
            event = self.next_event()
            if isinstance(event, h11.InformationalResponse):
                informational.append(event.status_code)
                continue
            assert isinstance(event, h11.Response), event
            break
        body = bytearray()
        complete = False
        while True:
            try:
                part = self.next_event()
            except h11.RemoteProtocolError:
                break  # the connection ended mid-body: the proxy cut it off
            if isinstance(part, h11.Data):
                body += part.data
            elif isinstance(part, h11.EndOfMessage):
                complete = True
                break
            else:
                break
        return Reply(event.status_code, list(event.headers.raw_items()), bytes(body), complete, informational)

    def next_cycle(self) -> None:
        self.conn.start_next_cycle()

    def at_eof(self, timeout: float = 3.0) -> bool:
        """True once the proxy closes the connection (reads and discards anything else)."""
        self.sock.settimeout(timeout)
        try:
            while self.sock.recv(65536):
                pass
        except ConnectionResetError:
            pass
        except socket.timeout:
            return False
        return True


def request(port: int, method: str, target: str, body: bytes = b"", headers: Headers = ()) -> Reply:
    with H11Client(port) as client:
        return client.request(method, target, body, headers)


def post_chat(port: int, text: str, stream: bool = False, headers: Headers = ()) -> Reply:
    return request(
        port, "POST", "/v1/chat/completions", chat_body(text, stream), [("Content-Type", "application/json"), *headers]
    )


def streamed_text(body: bytes) -> str:
    """The text of a chat completion stream, as a client would join it."""
    text = []
    for line in body.split(b"\n"):
        if line.startswith(b"data: ") and line[6:] != b"[DONE]":
            for choice in json.loads(line[6:]).get("choices", []):
                text.append(choice.get("delta", {}).get("content") or "")
    return "".join(text)


# -- checks on a running proxy --------------------------------------------------------------


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 3.0) -> None:
    """For proxy state that has no event to wait on (counters read through its own loop)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def journal(proxy: Any) -> List[Dict[str, Any]]:
    path = proxy.datasets / f"{proxy.session}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def replies(records: List[Dict[str, Any]]) -> List[str]:
    return [r["messages"][-1].get("content", "") for r in records]


def assert_serves_next(proxy: Any, text: str = "still alive?") -> None:
    """The proxy answers a normal chat after the fault (on a new client connection)."""
    reply = post_chat(proxy.port, text)
    assert reply.status == 200 and reply.complete, reply
    assert reply.json()["choices"][0]["message"]["content"] == "echo: " + text


def assert_no_leaks(proxy: Any, upstream: Any) -> None:
    """No client connection is left open, and every upstream socket the proxy still counts is one
    the fake backend still sees (idle keep-alive ones); none is half-dead or forgotten."""
    wait_until(lambda: proxy.client_connections() == 0, "client connections to close")
    wait_until(lambda: proxy.run(lambda: proxy.proxy.pool._in_use) == 0, "upstream connections to be released")
    upstream.wait_for_open_connections(proxy.upstream_connections(), timeout=3)
