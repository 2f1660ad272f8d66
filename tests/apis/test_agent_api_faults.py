"""Failure paths of the agent APIs (Responses, Anthropic Messages, Ollama), as the chat completions
suites check them: an upstream error before the stream, the upstream cut mid-stream, the client
gone mid-stream. The client's traffic is relayed as it came, nothing is recorded twice, and what was
streamed is kept, marked incomplete. And a three-round agent loop of each API in every profile."""

from __future__ import annotations

import json
import socket
import time
from typing import Any, Dict, List

import pytest

from chatproxy.commands import export

from fake_agents import MessagesTurn, OllamaTurn, ResponsesTurn, Turn
from fake_upstream import Json, Raw

ROUTES = {
    "responses": ("/v1/responses", {"model": "m", "input": "Tell me a long story", "stream": True}, ResponsesTurn),
    "messages": (
        "/v1/messages",
        {"model": "c", "max_tokens": 99, "stream": True, "messages": [{"role": "user", "content": "A long story"}]},
        MessagesTurn,
    ),
    "ollama.chat": ("/api/chat", {"model": "m", "messages": [{"role": "user", "content": "A long story"}]}, OllamaTurn),
}
STORY = "Once upon a time " * 40


def request(path: str, body: Dict[str, Any]) -> bytes:
    data = json.dumps(body).encode()
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    ).encode() + data


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("api", sorted(ROUTES))
def test_an_upstream_error_before_the_stream_is_relayed_and_not_recorded(upstream, proxy, api):
    path, body, _ = ROUTES[api]
    upstream.push(Json({"error": {"type": "overloaded_error", "message": "busy"}}, status=529))
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
    try:
        conn.request("POST", path, body=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        assert response.status == 529 and b"overloaded_error" in response.read()
    finally:
        conn.close()
    proxy.flush()
    assert not (proxy.datasets / f"{proxy.session}.jsonl").exists() or proxy.journal() == []


@pytest.mark.parametrize("api", sorted(ROUTES))
def test_the_upstream_cut_mid_stream_keeps_what_came_marked_incomplete(upstream, proxy, api):
    path, body, turn = ROUTES[api]
    whole: Turn = turn(text=STORY)
    upstream.push(_Cut(whole, keep=0.6))
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(request(path, body))
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert not answer.endswith(b"0\r\n\r\n")  # the client saw the cut, not a clean end
    proxy.wait_recorded(1)
    [record] = proxy.journal()
    assert record["meta"]["complete"] is False and record["meta"]["api"] == api
    assert STORY.startswith(record["messages"][-1]["content"]) and record["messages"][-1]["content"]


@pytest.mark.parametrize("api", sorted(ROUTES))
def test_the_client_gone_mid_stream_is_recorded_once_incomplete(upstream, proxy, api):
    path, body, turn = ROUTES[api]
    slow: Turn = turn(text=STORY, split=40)
    upstream.push(_Slow(slow))
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(request(path, body))
        seen = b""
        while len(seen) < 3000:  # some of the story has come, most has not: then leave
            chunk = sock.recv(65536)
            assert chunk, "the stream ended before the client left"
            seen += chunk
        assert seen.startswith(b"HTTP/1.1 200 ")
    proxy.wait_recorded(1, timeout=10)
    time.sleep(0.2)
    [record] = proxy.journal()
    assert record["meta"]["complete"] is False
    assert upstream.wait_for_open_connections(0) is None  # the upstream side was closed, not drained


class _Cut(Raw):
    """The turn's stream as the real behaviour writes it, cut after a share of its bytes."""

    def __init__(self, turn: Turn, keep: float) -> None:
        super().__init__(b"")
        self.turn, self.keep = turn, keep

    async def run(self, ex: Any) -> None:
        sent: List[bytes] = []

        async def capture(data: bytes) -> None:
            sent.append(data)

        async def nothing(*_: Any, **__: Any) -> None:
            return None

        ex.start, ex.send_data, ex.end = nothing, capture, nothing
        await self.turn.run(ex)
        body = b"".join(sent)
        cut = body[: int(len(body) * self.keep)]
        content_type = b"application/x-ndjson" if isinstance(self.turn, OllamaTurn) else b"text/event-stream"
        head = b"HTTP/1.1 200 OK\r\nContent-Type: " + content_type + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
        self.data = head + f"{len(cut):x}\r\n".encode() + cut + b"\r\n"
        await super().run(ex)


class _Slow(Raw):
    """The turn's stream, one small write every 20 ms, so the client can leave in the middle."""

    def __init__(self, turn: Turn) -> None:
        super().__init__(b"")
        self.turn = turn

    async def run(self, ex: Any) -> None:
        import asyncio

        original = ex.send_data

        async def slowly(data: bytes) -> None:
            await asyncio.sleep(0.02)
            await original(data)

        ex.send_data = slowly
        try:
            await self.turn.run(ex)
        except (ConnectionError, OSError):
            pass  # the proxy closed the upstream side when the client left: what this test wants
        ex.keep_alive = False


def test_three_round_loops_of_every_api_export_in_every_profile(upstream, proxy, tmp_path):
    """Anthropic Messages and Ollama loops (the Responses one is in test_responses.py), each one record."""
    import anthropic
    import ollama

    rounds = [("read", {"n": i}) for i in range(3)]
    upstream.push(*[MessagesTurn(calls=[call]) for call in rounds], MessagesTurn(text="All read."))
    upstream.push(*[OllamaTurn(calls=[call]) for call in rounds], OllamaTurn(text="All read too."))
    tools = [{"name": "read", "input_schema": {"type": "object", "properties": {"n": {"type": "integer"}}}}]
    with anthropic.Anthropic(base_url=proxy.url, api_key="k", max_retries=0) as client:
        messages: List[Dict[str, Any]] = [{"role": "user", "content": "Read three pages."}]
        for _ in range(4):
            reply = client.messages.create(model="c", max_tokens=50, messages=messages, tools=tools)
            messages.append({"role": "assistant", "content": [b.model_dump() for b in reply.content]})
            calls = [b for b in reply.content if b.type == "tool_use"]
            if calls:
                result = {"type": "tool_result", "tool_use_id": calls[0].id, "content": "page"}
                messages.append({"role": "user", "content": [result]})
    local = ollama.Client(host=proxy.url)
    try:
        chat: List[Dict[str, Any]] = [{"role": "user", "content": "Read three pages, please."}]
        for _ in range(4):
            answer = local.chat(model="m", messages=chat, stream=False)
            chat.append(answer.message.model_dump(exclude_none=True))
            if answer.message.tool_calls:
                chat.append({"role": "tool", "content": "page", "tool_name": "read"})
    finally:
        local.close()
    proxy.wait_recorded(8)
    assert len(proxy.dataset()) == 2
    proxy.stop()
    for profile in ("sharegpt", "sharegpt-plain", "messages", "openai"):
        out = tmp_path / f"{profile}.jsonl"
        assert export.main(["--datasets", str(proxy.datasets), "--all", "--format", profile, "--out", str(out)]) == 0
        assert len(out.read_text().splitlines()) == 2, profile
    rows = [json.loads(line) for line in (tmp_path / "messages.jsonl").read_text().splitlines()]
    assert sorted([m["role"] for m in row["messages"]].count("tool") for row in rows) == [3, 3]
