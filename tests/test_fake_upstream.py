"""The fake backend itself: the real openai SDK works against it, and each behaviour does what it says."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
from typing import Iterator

import openai
import pytest
import trustme

from fake_upstream import SSE, Chat, Close, FakeUpstream, Json, Raw, Reset, Stall

REQUEST = b"GET /v1/models HTTP/1.1\r\nHost: upstream\r\n\r\n"


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture
def client(upstream: FakeUpstream) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=upstream.url + "/v1", api_key="sk-test", max_retries=0) as sdk:
        yield sdk


def read_until_closed(sock: socket.socket) -> tuple[bytes, bool]:
    """Everything the peer sent, and whether it ended with a reset rather than a FIN."""
    received = b""
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            return received, True
        if not data:
            return received, False
        received += data


def test_sdk_chat_non_stream(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="m1", messages=[{"role": "user", "content": "hello there"}])
    assert reply.model == "m1"
    assert reply.choices[0].message.content == "echo: hello there"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and reply.usage.completion_tokens == 3
    assert upstream.requests[0].path == "/v1/chat/completions"
    assert upstream.requests[0].json()["messages"][0]["content"] == "hello there"


def test_sdk_chat_stream_with_usage_and_n(client: openai.OpenAI) -> None:
    parts = [{"type": "text", "text": "hello"}, {"type": "text", "text": "world"}]
    stream = client.chat.completions.create(
        model="m1",
        messages=[{"role": "user", "content": parts}],
        n=2,
        stream=True,
        stream_options={"include_usage": True},
    )
    texts = {0: "", 1: ""}
    chunks = list(stream)
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    assert texts == {0: "echo: hello\nworld", 1: "echo: hello\nworld #1"}
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert sum(1 for c in chunks for ch in c.choices if ch.index == 0 and ch.delta.content) == 6  # 17 chars / 3


def test_sdk_models_completions_embeddings(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["fake-model"]
    completion = client.completions.create(model="m2", prompt="x" * 30 + "the end")
    assert completion.choices[0].text == "echo: " + ("x" * 30 + "the end")[-20:]
    vectors = client.embeddings.create(model="e", input=["ab", "abcd"])
    assert [d.embedding for d in vectors.data] == [[2.0, 0.5, -0.25], [4.0, 0.5, -0.25]]


def test_chat_streams_reasoning_and_interleaved_tool_calls(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    calls = [
        {"id": "call_a", "name": "weather", "arguments": '{"city": "Paris"}'},
        {"id": "call_b", "name": "time", "arguments": '{"tz": "UTC"}'},
    ]
    upstream.push(Chat("", reasoning="thinking hard", tool_calls=calls, finish_reason="tool_calls"))
    stream = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "q"}], stream=True)
    reasoning, order, got = "", [], {}
    for chunk in stream:
        delta = chunk.choices[0].delta
        reasoning += (delta.model_extra or {}).get("reasoning_content") or ""
        for fragment in delta.tool_calls or []:
            order.append(fragment.index)
            entry = got.setdefault(fragment.index, {"id": None, "name": "", "arguments": ""})
            entry["id"] = entry["id"] or fragment.id
            entry["name"] += fragment.function.name or ""
            entry["arguments"] += fragment.function.arguments or ""
    assert reasoning == "thinking hard"
    assert [got[0], got[1]] == calls
    assert order[:4] == [0, 1, 0, 1]  # parallel calls interleave


def test_default_headers_and_unknown_route(upstream: FakeUpstream) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", upstream.port, timeout=5)
    try:
        conn.request("POST", "/v1/nowhere", body=b"{}", headers={"X-Echo": "ping"})
        response = conn.getresponse()
        assert response.status == 404
        assert response.getheader("x-fake-upstream") == "1"
        assert response.getheader("x-echo") == "ping"
        assert json.loads(response.read())["error"]["message"] == "Invalid URL (POST /v1/nowhere)"
        assert upstream.requests[0].header("x-ECHO") == "ping"
        assert ("X-Echo", "ping") in upstream.requests[0].headers  # original case kept
    finally:
        conn.close()


def test_keep_alive_then_counters_return_to_zero(upstream: FakeUpstream) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", upstream.port, timeout=5)
    upstream.push(
        Json({"a": 1}, status=429, headers=[("Retry-After", "1")]),
        Raw(b"HTTP/1.1 204 No Content\r\n\r\n", close=False),
    )
    try:
        for expected in (429, 204, 200):
            conn.request("GET", "/v1/models")
            response = conn.getresponse()
            response.read()
            assert response.status == expected
        assert response.getheader("content-type") == "application/json"
        assert upstream.open_connections == 1
    finally:
        conn.close()
    upstream.wait_for_open_connections(0)
    assert upstream.connections_opened == 1
    assert len(upstream.requests) == 3


def test_raw_close_delimited_body(upstream: FakeUpstream) -> None:
    upstream.push(Raw(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil close"))
    with socket.create_connection(("127.0.0.1", upstream.port), timeout=5) as sock:
        sock.sendall(REQUEST)
        assert read_until_closed(sock) == (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil close", False)


def test_sse_behaviour_writes_the_events(upstream: FakeUpstream) -> None:
    upstream.push(SSE(["one", b"two", "[DONE]"], split=2, headers=[("X-Extra", "y")]))
    conn = http.client.HTTPConnection("127.0.0.1", upstream.port, timeout=5)
    try:
        conn.request("POST", "/v1/chat/completions", body=b"{}")
        response = conn.getresponse()
        assert response.getheader("content-type") == "text/event-stream"
        assert response.getheader("transfer-encoding") == "chunked"
        assert response.getheader("x-extra") == "y"
        assert response.read() == b"data: one\n\ndata: two\n\ndata: [DONE]\n\n"
    finally:
        conn.close()


def test_reset_sends_bytes_then_rst(upstream: FakeUpstream) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial"
    upstream.push(Reset(head))
    with socket.create_connection(("127.0.0.1", upstream.port), timeout=5) as sock:
        sock.sendall(REQUEST)
        assert read_until_closed(sock) == (head, True)
    upstream.wait_for_open_connections(0)


def test_stall_then_close(upstream: FakeUpstream) -> None:
    upstream.push(Stall(0.2, b"HTTP/1.1 200 OK\r\n"))
    with socket.create_connection(("127.0.0.1", upstream.port), timeout=5) as sock:
        sock.sendall(REQUEST)
        assert read_until_closed(sock) == (b"HTTP/1.1 200 OK\r\n", False)


def test_stall_ends_when_the_client_leaves(upstream: FakeUpstream) -> None:
    upstream.push(Stall(30))
    with socket.create_connection(("127.0.0.1", upstream.port), timeout=5) as sock:
        sock.sendall(REQUEST)
        upstream.wait_for_requests(1)
    upstream.wait_for_open_connections(0, timeout=2)


def test_close_without_answer(upstream: FakeUpstream) -> None:
    upstream.push(Close())
    conn = http.client.HTTPConnection("127.0.0.1", upstream.port, timeout=5)
    try:
        conn.request("GET", "/v1/models")
        with pytest.raises(http.client.RemoteDisconnected):
            conn.getresponse()
    finally:
        conn.close()


def test_stop_drops_open_connections() -> None:
    fake = FakeUpstream().start()
    fake.push(Stall(30))
    with (
        socket.create_connection(("127.0.0.1", fake.port), timeout=5) as idle,
        socket.create_connection(("127.0.0.1", fake.port), timeout=5) as stalled,
    ):
        stalled.sendall(REQUEST)
        fake.wait_for_requests(1)
        fake.stop()
        assert fake.open_connections == 0
        assert idle.recv(10) == b"" and stalled.recv(10) == b""
    assert fake.errors == []


def test_tls() -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    with FakeUpstream(ssl_context=server_context) as fake:
        assert fake.url.startswith("https://127.0.0.1:")
        conn = http.client.HTTPSConnection("127.0.0.1", fake.port, context=client_context, timeout=5)
        try:
            conn.request("GET", "/v1/models")
            assert json.loads(conn.getresponse().read())["data"][0]["id"] == "fake-model"
        finally:
            conn.close()
        fake.wait_for_open_connections(0)


def test_a_crashing_behaviour_fails_the_with_block() -> None:
    with pytest.raises(AssertionError, match="LocalProtocolError"):
        with FakeUpstream() as fake:
            fake.push(Json({"a": 1}, headers=[("Content-Length", "999")]))  # h11 refuses the short body
            conn = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=5)
            try:
                conn.request("GET", "/v1/models")
                with pytest.raises(http.client.HTTPException):
                    conn.getresponse().read()
            finally:
                conn.close()
            fake.wait_for_open_connections(0)
