"""The real openai SDK through the proxy: what it gets is what the backend sent, and the chat is recorded."""

from __future__ import annotations

import json

import openai
import pytest

from fake_upstream import SSE, Chat


def client_for(proxy, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=proxy.url + "/v1", api_key="sk-test-secret-key-123", max_retries=0, timeout=10, **kwargs
    )


def test_non_streaming_chat_is_relayed_and_recorded(upstream, proxy):
    """A plain chat completion comes back intact and lands in SESSION.json as system/human/gpt."""
    client = client_for(proxy)
    reply = client.chat.completions.create(
        model="fake-model",
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Hello there"},
        ],
    )
    assert reply.choices[0].message.content == "echo: Hello there"
    proxy.wait_recorded(1)
    data = proxy.dataset()
    assert data[0]["conversations"] == [
        {"from": "system", "value": "You are terse."},
        {"from": "human", "value": "Hello there"},
        {"from": "gpt", "value": "echo: Hello there"},
    ]
    assert data[0]["meta"]["model"] == "fake-model"
    assert data[0]["meta"]["complete"] is True


def test_streaming_chat_is_relayed_and_recorded(upstream, proxy):
    """Streamed deltas reach the SDK unchanged and the joined text is recorded."""
    client = client_for(proxy)
    stream = client.chat.completions.create(
        model="fake-model",
        messages=[{"role": "user", "content": "Tell me a long story about streams"}],
        stream=True,
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == "echo: Tell me a long story about streams"
    proxy.wait_recorded(1)
    conversation = proxy.dataset()[0]["conversations"]
    assert conversation[-1] == {"from": "gpt", "value": text}


def test_stream_bytes_reach_the_client_unchanged(upstream, proxy):
    """The SSE body the client reads is byte-for-byte what the backend wrote, split however TCP likes."""
    import http.client

    payloads = [
        json.dumps(
            {
                "id": "c1",
                "object": "chat.completion.chunk",
                "model": "m",
                "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}],
            }
        )
        for piece in ["Hel", "lo ", "wör", "ld"]
    ] + [
        json.dumps(
            {
                "id": "c1",
                "object": "chat.completion.chunk",
                "model": "m",
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            }
        ),
        "[DONE]",
    ]
    upstream.push(SSE(payloads, split=7))
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
    body = json.dumps({"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    received = response.read()
    conn.close()
    assert received == b"".join(f"data: {p}\n\n".encode() for p in payloads)
    proxy.wait_recorded(1)
    assert proxy.dataset()[0]["conversations"][-1] == {"from": "gpt", "value": "Hello wörld"}


def test_text_completion_streaming_and_not(upstream, proxy):
    """/v1/completions: the prompt is the human turn, the completion the gpt turn."""
    client = client_for(proxy)
    plain = client.completions.create(model="fake-model", prompt="Once upon a time")
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(model="fake-model", prompt="Twice upon a time", stream=True)
        if c.choices
    )
    assert plain.choices[0].text.startswith("echo: ")
    assert streamed.startswith("echo: ")
    proxy.wait_recorded(2)
    records = proxy.dataset()
    assert [r["conversations"] for r in records] == [
        [{"from": "human", "value": "Once upon a time"}, {"from": "gpt", "value": plain.choices[0].text}],
        [{"from": "human", "value": "Twice upon a time"}, {"from": "gpt", "value": streamed}],
    ]


def test_models_and_embeddings_pass_through_unrecorded(upstream, proxy):
    client = client_for(proxy)
    assert [m.id for m in client.models.list()] == ["fake-model"]
    embedding = client.embeddings.create(model="fake-model", input="hello")
    assert len(embedding.data[0].embedding) > 0
    assert proxy.dataset() == []


def test_api_key_never_reaches_disk(upstream, proxy):
    """The key is forwarded to the backend, and appears in no dataset, journal or lock file."""
    client = client_for(proxy)
    client.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "secret?"}])
    proxy.wait_recorded(1)
    proxy.flush()
    assert upstream.requests[-1].header("authorization") == "Bearer sk-test-secret-key-123"
    for path in proxy.datasets.rglob("*"):
        if path.is_file():
            assert b"sk-test-secret-key-123" not in path.read_bytes(), path


def test_upstream_error_is_relayed_not_recorded(upstream, proxy):
    from fake_upstream import Json

    upstream.push(Json({"error": {"message": "model overloaded", "type": "server_error"}}, status=503))
    client = client_for(proxy)
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "x"}])
    assert "model overloaded" in str(info.value)
    assert proxy.dataset() == []


def test_reasoning_and_tool_calls_stream(upstream, proxy):
    """A reasoning model's streamed thinking and parallel tool calls are reassembled."""
    upstream.push(
        Chat(
            "",
            reasoning="Let me think.",
            tool_calls=[
                {"id": "call_a", "name": "get_weather", "arguments": '{"city": "Paris"}'},
                {"id": "call_b", "name": "get_time", "arguments": '{"tz": "CET"}'},
            ],
            finish_reason="tool_calls",
        )
    )
    client = client_for(proxy)
    stream = client.chat.completions.create(
        model="fake-model",
        stream=True,
        messages=[{"role": "user", "content": "Weather and time in Paris?"}],
        tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
    )
    for _ in stream:
        pass
    proxy.wait_recorded(1)
    record = proxy.journal()[0]
    reply = record["messages"][-1]
    assert reply["reasoning"] == "Let me think."
    assert [(c["name"], json.loads(c["arguments"])) for c in reply["tool_calls"]] == [
        ("get_weather", {"city": "Paris"}),
        ("get_time", {"tz": "CET"}),
    ]
