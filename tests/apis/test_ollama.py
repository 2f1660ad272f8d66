"""Ollama's native API through the proxy with the real `ollama` client: NDJSON streams relayed
byte for byte and recorded (`stream` defaults to true there), tools, thinking and images kept."""

from __future__ import annotations

import base64
import http.client
import json
from typing import Any, Callable, Dict, Iterator, List

import ollama
import pytest

from fake_agents import OllamaTurn

JPEG = base64.b64encode(b"\xff\xd8\xff\xe0" + b"\0" * 40).decode()


@pytest.fixture
def client_for() -> Iterator[Callable[[Any], ollama.Client]]:
    made: List[ollama.Client] = []

    def make(proxy: Any) -> ollama.Client:
        made.append(ollama.Client(host=proxy.url, timeout=10))
        return made[-1]

    yield make
    for client in made:
        client.close()


def test_streamed_chat_with_thinking_is_recorded(upstream, proxy, client_for):
    upstream.push(OllamaTurn(text="The sky is blue because of Rayleigh scattering.", reasoning="Physics."))
    parts = list(
        client_for(proxy).chat(
            model="qwen3", messages=[{"role": "user", "content": "Why is the sky blue?"}], stream=True, think=True
        )
    )
    assert "".join(p.message.content or "" for p in parts) == "The sky is blue because of Rayleigh scattering."
    assert parts[-1].done
    proxy.wait_recorded(1)
    [record] = proxy.journal()
    assert record["messages"][-1] == {
        "role": "assistant",
        "content": "The sky is blue because of Rayleigh scattering.",
        "reasoning": "Physics.",
    }
    assert record["meta"]["api"] == "ollama.chat" and record["meta"]["stream"] is True
    assert record["meta"]["usage"] == {"prompt_tokens": 13, "completion_tokens": 8, "total_tokens": 21}
    assert record["meta"]["finish_reason"] == "stop" and record["meta"]["complete"] is True


def test_default_stream_bytes_reach_the_client_unchanged(upstream, proxy, client_for):
    """No `stream` field means streaming; the NDJSON body is relayed exactly."""
    turn = OllamaTurn(text="Hello there, friend.", split=5)
    upstream.push(turn)
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
    try:
        body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "Hi"}]}).encode()
        conn.request("POST", "/api/chat", body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        relayed = response.read()
    finally:
        conn.close()
    assert response.getheader("Content-Type") == "application/x-ndjson"
    expected = b"".join(json.dumps(line).encode() + b"\n" for line in turn.lines({"model": "m"}, generate=False))
    assert relayed == expected
    proxy.wait_recorded(1)
    assert proxy.dataset()[0]["conversations"][-1] == {"from": "gpt", "value": "Hello there, friend."}


def test_tool_loop_with_images_is_one_record(upstream, proxy, client_for):
    upstream.push(
        OllamaTurn(calls=[("get_weather", {"city": "Oslo"})]),
        OllamaTurn(calls=[("get_weather", {"city": "Bergen"})]),
        OllamaTurn(calls=[("get_weather", {"city": "Tromsø"})]),
        OllamaTurn(text="Cold everywhere."),
    )
    client = client_for(proxy)
    tools = [
        {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}}
    ]
    messages: List[Dict[str, Any]] = [
        {"role": "user", "content": "Weather in this picture's cities?", "images": [JPEG]}
    ]
    for round_ in range(4):
        reply = client.chat(model="m", messages=messages, tools=tools, stream=False)
        messages.append(reply.message.model_dump(exclude_none=True))
        for call in reply.message.tool_calls or []:
            messages.append({"role": "tool", "content": f"-{round_} C", "tool_name": call.function.name})
    proxy.wait_recorded(4)
    [record] = proxy.dataset()
    kinds = [t["from"] for t in record["conversations"]]
    assert kinds == ["human"] + ["function_call", "observation"] * 3 + ["gpt"]
    assert record["conversations"][0]["value"] == "<image>\nWeather in this picture's cities?"
    [image] = record["images"]
    assert image.endswith(".jpg") and (proxy.datasets / image).read_bytes().startswith(b"\xff\xd8\xff")


def test_generate_streamed_and_not(upstream, proxy, client_for):
    upstream.push(OllamaTurn(text="Once upon a time."), OllamaTurn(text="The end."))
    client = client_for(proxy)
    streamed = "".join(
        p.response for p in client.generate(model="m", prompt="Tell a story", system="Be short.", stream=True)
    )
    assert streamed == "Once upon a time."
    assert client.generate(model="m", prompt="Finish it", stream=False).response == "The end."
    proxy.wait_recorded(2)
    values = sorted([t["value"] for t in r["conversations"]] for r in proxy.dataset())
    assert values == [["Be short.", "Tell a story", "Once upon a time."], ["Finish it", "The end."]]


def test_a_model_load_request_is_relayed_not_recorded(upstream, proxy, client_for):
    """`/api/generate` with no prompt loads the model; it is not a chat."""
    from fake_upstream import Json

    upstream.push(Json({"model": "m", "done": True, "done_reason": "load", "response": ""}))
    client_for(proxy).generate(model="m", prompt="")
    proxy.flush()
    assert proxy.dataset() == []


def test_a_cut_ndjson_stream_is_recorded_incomplete(upstream, proxy, client_for):
    upstream.push(OllamaTurn(text="a long long long answer", cut_after=2))
    parts = list(client_for(proxy).chat(model="m", messages=[{"role": "user", "content": "Go"}], stream=True))
    assert not parts[-1].done
    proxy.wait_recorded(1)
    [record] = proxy.journal()
    assert record["meta"]["complete"] is False and record["meta"]["finish_reason"] is None
