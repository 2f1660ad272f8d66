"""The Anthropic Messages API through the proxy with the real `anthropic` SDK: relayed unchanged,
recorded as one conversation per agent task, thinking kept where it was produced, Claude Code's
volatile stamp and side requests left out, secrets never on disk."""

from __future__ import annotations

import base64
import json
from typing import Any, Callable, Dict, Iterator, List

import anthropic
import pytest

from chatproxy.commands import export

from fake_agents import MessagesTurn

KEY = "sk-ant-test-secret-key-0123"
TOOLS = [
    {
        "name": "read_file",
        "description": "Read a file",
        "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
    }
]
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 32).decode()


@pytest.fixture
def client_for() -> Iterator[Callable[[Any], anthropic.Anthropic]]:
    """Clients closed after the test: a streamed response left to the garbage collector leaks its socket."""
    made: List[anthropic.Anthropic] = []

    def make(proxy: Any) -> anthropic.Anthropic:
        made.append(anthropic.Anthropic(base_url=proxy.url, api_key=KEY, max_retries=0, timeout=10))
        return made[-1]

    yield make
    for client in made:
        client.close()


def test_streamed_agent_loop_is_one_record_with_every_turns_thinking(upstream, proxy, client_for):
    """Three tool rounds with thinking; like Claude Code, the client resends history without the
    earlier thinking blocks. The record keeps every turn's reasoning where it was produced."""
    upstream.push(
        MessagesTurn(reasoning="Need the readme.", calls=[("read_file", {"path": "README.md"})]),
        MessagesTurn(reasoning="Now setup.py.", calls=[("read_file", {"path": "setup.py"})]),
        MessagesTurn(reasoning="And the licence.", calls=[("read_file", {"path": "LICENSE"})]),
        MessagesTurn(reasoning="Enough.", text="It is an MIT-licensed tool."),
    )
    client = client_for(proxy)
    system = [
        {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.197; cc_entrypoint=cli; cch=a1;"},
        {"type": "text", "text": "You are Claude Code."},
    ]
    messages: List[Dict[str, Any]] = [{"role": "user", "content": [{"type": "text", "text": "What is this repo?"}]}]
    for round_ in range(4):
        system[0]["text"] = f"x-anthropic-billing-header: cc_version=2.1.197; cc_entrypoint=cli; cch={round_};"
        with client.messages.stream(
            model="claude-sonnet-4-5",
            max_tokens=1000,
            system=system,
            messages=messages,
            tools=TOOLS,
            thinking={"type": "enabled", "budget_tokens": 1024},
            extra_query={"beta": "true"},
        ) as stream:
            final = stream.get_final_message()
        calls = [block for block in final.content if block.type == "tool_use"]
        # The history goes back without the thinking blocks, as agents send it.
        messages.append(
            {"role": "assistant", "content": [b.model_dump() for b in final.content if b.type != "thinking"]}
        )
        if calls:
            messages.append(
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": calls[0].id, "content": f"contents {round_}"}],
                }
            )
    assert final.content[-1].text == "It is an MIT-licensed tool."
    proxy.wait_recorded(4)
    [record] = proxy.dataset()
    turns = record["conversations"]
    assert [t["from"] for t in turns] == ["system"] + ["human"] + ["function_call", "observation"] * 3 + ["gpt"]
    assert turns[0]["value"] == "You are Claude Code."  # the billing stamp is not kept
    journal = proxy.journal()
    reasoning = [m.get("reasoning") for r in journal for m in r["messages"] if m["role"] == "assistant"]
    assert reasoning == ["Need the readme.", "Now setup.py.", "And the licence.", "Enough."]
    assert journal[-1]["meta"]["api"] == "messages" and journal[-1]["meta"]["finish_reason"] == "end_turn"
    assert journal[-1]["meta"]["usage"]["prompt_tokens"] == 25  # input plus cache reads
    arguments = [json.loads(c["arguments"]) for r in journal for m in r["messages"] for c in m.get("tool_calls", [])]
    assert arguments == [{"path": "README.md"}, {"path": "setup.py"}, {"path": "LICENSE"}]
    for path in proxy.datasets.iterdir():
        assert KEY.encode() not in path.read_bytes()


def test_non_streamed_with_image_and_string_system(upstream, proxy, client_for):
    upstream.push(MessagesTurn(text="A tiny black square."))
    reply = client_for(proxy).messages.create(
        model="claude-haiku",
        max_tokens=100,
        system="Describe images.",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
                    {"type": "text", "text": "What is this?"},
                ],
            }
        ],
    )
    assert reply.content[0].text == "A tiny black square."
    proxy.wait_recorded(1)
    [record] = proxy.dataset()
    assert [t["value"] for t in record["conversations"]] == [
        "Describe images.",
        "<image>\nWhat is this?",
        "A tiny black square.",
    ]
    [image] = record["images"]
    assert (proxy.datasets / image).read_bytes().startswith(b"\x89PNG")


def test_a_user_turn_resent_as_a_string_continues_the_same_chat(upstream, proxy, client_for):
    upstream.push(MessagesTurn(text="Hi!"), MessagesTurn(text="Fine, thanks."))
    client = client_for(proxy)
    first = [{"role": "user", "content": [{"type": "text", "text": "Hello", "cache_control": {"type": "ephemeral"}}]}]
    client.messages.create(model="c", max_tokens=50, messages=first)
    client.messages.create(
        model="c",
        max_tokens=50,
        messages=[
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": [{"type": "text", "text": "Hi!", "cache_control": {"type": "ephemeral"}}]},
            {"role": "user", "content": "How are you?"},
        ],
    )
    proxy.wait_recorded(2)
    [record] = proxy.dataset()
    assert [t["value"] for t in record["conversations"]] == ["Hello", "Hi!", "How are you?", "Fine, thanks."]


def test_claude_codes_title_request_is_not_a_chat(upstream, proxy, client_for):
    upstream.push(MessagesTurn(text='{"title": "Repo overview"}'))
    client_for(proxy).messages.create(
        model="claude-haiku",
        max_tokens=512,
        system=[{"type": "text", "text": "Generate a concise, sentence-case title (3-7 words) for this session."}],
        messages=[{"role": "user", "content": "<session>What is this repo?</session>"}],
    )
    proxy.flush()
    assert proxy.dataset() == []
    assert proxy.run(lambda: proxy.proxy.recorder.counts["skipped"]) == 1


def test_count_tokens_is_relayed_not_recorded(upstream, proxy, client_for):
    from fake_upstream import Json

    upstream.push(Json({"input_tokens": 5}))
    count = client_for(proxy).messages.count_tokens(model="c", messages=[{"role": "user", "content": "Hi"}])
    assert count.input_tokens == 5
    assert upstream.requests[-1].target == "/v1/messages/count_tokens"
    proxy.flush()
    assert proxy.dataset() == []


def test_headers_pass_through_untouched(upstream, proxy, client_for):
    upstream.push(MessagesTurn(text="ok"))
    client_for(proxy).messages.create(
        model="c",
        max_tokens=5,
        messages=[{"role": "user", "content": "Hi"}],
        extra_headers={
            "anthropic-beta": "interleaved-thinking-2025-05-14,fine-grained-tool-streaming-2025-05-14",
            "x-api-key": KEY,  # as Claude Code sends it (this SDK sends Authorization: Bearer)
            "anthropic-version": "2023-06-01",
        },
    )
    seen = upstream.requests[-1]
    assert seen.header("x-api-key") == KEY
    assert seen.header("authorization") == f"Bearer {KEY}"
    assert seen.header("anthropic-version") == "2023-06-01"
    assert seen.header("anthropic-beta") == "interleaved-thinking-2025-05-14,fine-grained-tool-streaming-2025-05-14"


def test_a_stream_that_ends_before_its_stop_reason_is_incomplete(upstream, proxy, client_for):
    upstream.push(MessagesTurn(text="This will be cut off somewhere in the middle.", cut_after=5))
    with client_for(proxy).messages.stream(model="c", max_tokens=50, messages=[{"role": "user", "content": "Go"}]) as s:
        text = "".join(s.text_stream)
    assert text and "This will be cut off".startswith(text[:5])
    proxy.wait_recorded(1)
    [record] = proxy.journal()
    assert record["meta"]["complete"] is False


def test_tool_round_exports_like_chat_completions(upstream, proxy, client_for, tmp_path):
    upstream.push(MessagesTurn(calls=[("read_file", {"path": "a"})]), MessagesTurn(text="Done."))
    client = client_for(proxy)
    messages: List[Dict[str, Any]] = [{"role": "user", "content": "Read a"}]
    first = client.messages.create(model="c", max_tokens=50, messages=messages, tools=TOOLS)
    messages += [
        {"role": "assistant", "content": [b.model_dump() for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": first.content[0].id, "content": "A!"}]},
    ]
    client.messages.create(model="c", max_tokens=50, messages=messages, tools=TOOLS)
    proxy.wait_recorded(2)
    proxy.stop()
    out = tmp_path / "openai.jsonl"
    assert export.main(["--datasets", str(proxy.datasets), "--all", "--format", "openai", "--out", str(out)]) == 0
    [row] = [json.loads(line) for line in out.read_text().splitlines()]
    assert [m["role"] for m in row["messages"]] == ["user", "assistant", "tool", "assistant"]
    assert row["messages"][1]["tool_calls"][0]["function"] == {"name": "read_file", "arguments": '{"path": "a"}'}
    assert row["tools"][0]["function"]["parameters"] == TOOLS[0]["input_schema"]
