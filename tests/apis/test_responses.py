"""The OpenAI Responses API through the proxy with the real `openai` SDK: relayed unchanged, and
each conversation recorded once, tool rounds and reasoning included, streamed or not."""

from __future__ import annotations

import http.client
import json
from typing import Any, Callable, Dict, Iterator, List

import openai
import pytest

from chatproxy.commands import export

from fake_agents import ResponsesTurn
from fake_upstream import SSE, Json, Raw

WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "strict": True,
}


@pytest.fixture
def client_for() -> Iterator[Callable[[Any], openai.OpenAI]]:
    """Clients closed after the test: a stream cut short and left to the garbage collector leaks its socket."""
    made: List[openai.OpenAI] = []

    def make(proxy: Any) -> openai.OpenAI:
        made.append(openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk-responses-secret", max_retries=0, timeout=10))
        return made[-1]

    yield make
    for client in made:
        client.close()


def post(proxy: Any, path: str, body: bytes) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        return conn.getresponse().read()
    finally:
        conn.close()


def conversation(proxy: Any) -> List[Dict[str, Any]]:
    [record] = proxy.dataset()
    return record["conversations"]


@pytest.mark.parametrize("stream", [False, True])
def test_a_tool_round_trip_is_one_record(upstream, proxy, client_for, stream):
    """model → function_call → function_call_output → model: the second request resends the first
    turn's items, and the record holds the whole loop once, with the reasoning."""
    upstream.push(
        ResponsesTurn(reasoning="The user wants weather.", calls=[("get_weather", {"city": "Paris"})]),
        ResponsesTurn(text="It is 18 degrees in Paris."),
    )
    client = client_for(proxy)
    items: List[Any] = [{"role": "user", "content": "Weather in Paris?"}]

    def ask() -> Any:
        if not stream:
            return client.responses.create(model="m", instructions="Be brief.", input=items, tools=[WEATHER_TOOL])
        with client.responses.stream(model="m", instructions="Be brief.", input=items, tools=[WEATHER_TOOL]) as events:
            for _ in events:
                pass
            return events.get_final_response()

    first = ask()
    call = next(item for item in first.output if item.type == "function_call")
    assert json.loads(call.arguments) == {"city": "Paris"}
    items += [item.model_dump(exclude_none=True) for item in first.output]
    items.append({"type": "function_call_output", "call_id": call.call_id, "output": '{"temp": 18}'})
    second = ask()
    assert second.output_text == "It is 18 degrees in Paris."
    proxy.wait_recorded(2)
    turns = conversation(proxy)
    assert [t["from"] for t in turns] == ["system", "human", "function_call", "observation", "gpt"]
    assert turns[0]["value"] == "Be brief." and turns[1]["value"] == "Weather in Paris?"
    assert json.loads(turns[2]["value"].split("</think>")[-1]) == {
        "name": "get_weather",
        "arguments": {"city": "Paris"},
    }
    assert "The user wants weather." in turns[2]["value"] or proxy.journal()[0]["messages"][-1]["reasoning"]
    assert turns[3]["value"] == '{"temp": 18}'
    assert turns[4]["value"] == "It is 18 degrees in Paris."
    journal = proxy.journal()
    assert journal[-1]["meta"]["api"] == "responses" and journal[-1]["meta"]["usage"]["prompt_tokens"] == 11
    assert journal[0]["messages"][-1]["reasoning"] == "The user wants weather."


def test_previous_response_id_rebuilds_the_whole_conversation(upstream, proxy, client_for):
    """With previous_response_id the client sends only the new items; the record is still whole."""
    upstream.push(ResponsesTurn(text="Hello! What can I do?"), ResponsesTurn(text="Paris is the capital."))
    client = client_for(proxy)
    first = client.responses.create(model="m", instructions="Be kind.", input="Hi there")
    proxy.wait_recorded(1)
    second = client.responses.create(
        model="m", instructions="Be kind.", previous_response_id=first.id, input="Capital of France?"
    )
    assert second.output_text == "Paris is the capital."
    proxy.wait_recorded(2)
    assert [t["value"] for t in conversation(proxy)] == [
        "Be kind.",
        "Hi there",
        "Hello! What can I do?",
        "Capital of France?",
        "Paris is the capital.",
    ]
    assert "partial_history" not in proxy.journal()[-1]["meta"]


def test_an_unknown_previous_response_is_recorded_as_partial(upstream, proxy, client_for):
    upstream.push(ResponsesTurn(text="Sure."))
    client_for(proxy).responses.create(model="m", previous_response_id="resp_from_elsewhere", input="Go on")
    proxy.wait_recorded(1)
    [record] = proxy.dataset()
    assert [t["value"] for t in record["conversations"]] == ["Go on", "Sure."]
    assert record["meta"]["partial_history"] is True


def test_codex_style_history_with_developer_items_and_null_reasoning(upstream, proxy, client_for):
    """Codex resends everything each time: developer messages (its system prompt), a user
    environment message, reasoning items with null content, function calls with ids and status."""
    upstream.push(ResponsesTurn(calls=[("exec_command", {"cmd": "ls"})]), ResponsesTurn(text="Two files."))
    client = client_for(proxy)
    base: List[Dict[str, Any]] = [
        {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "You are Codex."}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "<environment_context/>"}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "List files"}]},
    ]
    with client.responses.stream(model="gpt-5-codex", input=base, store=False) as events:
        first = events.get_final_response()
    call = first.output[0]
    history = base + [
        {"type": "reasoning", "summary": [], "content": None, "encrypted_content": None},
        {
            "type": "function_call",
            "id": call.id,
            "status": "completed",
            "call_id": call.call_id,
            "name": "exec_command",
            "arguments": call.arguments,
        },
        {"type": "function_call_output", "call_id": call.call_id, "output": "a.txt\nb.txt"},
    ]
    with client.responses.stream(model="gpt-5-codex", input=history, store=False) as events:
        events.get_final_response()
    proxy.wait_recorded(2)
    turns = conversation(proxy)
    assert [t["from"] for t in turns] == ["system", "human", "function_call", "observation", "gpt"]
    assert turns[1]["value"] == "<environment_context/>\n\nList files"


def test_a_cut_stream_is_rebuilt_from_its_deltas_and_marked_incomplete(upstream, make_proxy, client_for):
    proxy = make_proxy(upstream.url)
    upstream.push(ResponsesTurn(text="A long answer that never finishes.", cut_after=6))
    with pytest.raises(RuntimeError):
        with client_for(proxy).responses.stream(model="m", input="Tell me") as events:
            events.get_final_response()
    proxy.wait_recorded(1)
    [record] = proxy.journal()
    assert record["meta"]["complete"] is False
    assert record["messages"][-1]["content"].startswith("A long answer")


def test_an_incomplete_response_is_marked_incomplete(upstream, proxy, client_for):
    upstream.push(ResponsesTurn(text="Half of it", status="incomplete"))
    client_for(proxy).responses.create(model="m", input="Write a lot")
    proxy.wait_recorded(1)
    [record] = proxy.journal()
    assert record["meta"]["complete"] is False and record["meta"]["finish_reason"] == "max_output_tokens"
    assert proxy.dataset() == []  # incomplete replies stay out of SESSION.json unless --keep-incomplete


@pytest.mark.parametrize(
    "path", ["/v1/responses/compact", "/v1/responses/resp_1/cancel", "/v1/responses/resp_1/input_items"]
)
def test_sub_routes_are_relayed_not_recorded(upstream, proxy, path):
    upstream.push(Json({"ok": True}))
    assert json.loads(post(proxy, path, b'{"input": "x"}')) == {"ok": True}
    proxy.flush()
    assert not (proxy.datasets / f"{proxy.session}.jsonl").exists() or proxy.journal() == []


def test_malformed_events_and_bodies_are_relayed_and_not_recorded(upstream, proxy):
    upstream.push(
        SSE([b"not json", b'{"type": "response.created"}']), Raw(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nnot")
    )
    assert post(proxy, "/v1/responses", b'{"input": "x", "stream": true}') == b"data: not json\n\n" + (
        b'data: {"type": "response.created"}\n\n'
    )
    assert post(proxy, "/v1/responses", b'{"input": "x"}') == b"not"
    proxy.flush()
    assert proxy.run(lambda: proxy.proxy.recorder.counts["unrecordable"]) == 2
    assert proxy.dataset() == []


def test_a_three_round_agent_loop_exports_in_every_profile(upstream, proxy, client_for, tmp_path):
    upstream.push(
        ResponsesTurn(calls=[("get_weather", {"city": "Paris"})]),
        ResponsesTurn(calls=[("get_weather", {"city": "Rome"})]),
        ResponsesTurn(calls=[("get_weather", {"city": "Oslo"})]),
        ResponsesTurn(text="Paris 18, Rome 25, Oslo 3."),
    )
    client = client_for(proxy)
    items: List[Any] = [{"role": "user", "content": "Weather in Paris, Rome and Oslo?"}]
    for round_ in range(4):
        reply = client.responses.create(model="m", input=items, tools=[WEATHER_TOOL])
        items += [item.model_dump(exclude_none=True) for item in reply.output]
        for item in reply.output:
            if item.type == "function_call":
                items.append({"type": "function_call_output", "call_id": item.call_id, "output": f"{round_}"})
    proxy.wait_recorded(4)
    assert len(proxy.dataset()) == 1
    proxy.stop()
    for profile in ("sharegpt", "openai", "sharegpt-plain"):
        out = tmp_path / f"{profile}.jsonl"
        code = export.main(["--datasets", str(proxy.datasets), "--format", profile, "--out", str(out), "--all"])
        assert code == 0, profile
        rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
        assert len(rows) == 1, profile
    openai_row = json.loads((tmp_path / "openai.jsonl").read_text())
    assert [m["role"] for m in openai_row["messages"]].count("tool") == 3
    assert openai_row["tools"][0]["function"]["name"] == "get_weather"
