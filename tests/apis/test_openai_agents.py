"""The OpenAI Agents SDK (openai-agents) through the proxy: its tool loop over the Responses API
(two non-streamed requests per tool round, instructions, strict tools, a user item with no type)
is recorded as one conversation."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import agents
import openai

from fake_agents import ResponsesTurn


def test_an_agent_with_a_tool_is_one_record(upstream: Any, proxy: Any) -> None:
    agents.set_tracing_disabled(True)
    upstream.push(
        ResponsesTurn(calls=[("get_time", {"city": "Lima"})]),
        ResponsesTurn(calls=[("get_time", {"city": "Quito"})]),
        ResponsesTurn(text="Lima and Quito share a clock."),
    )

    @agents.function_tool
    def get_time(city: str) -> str:
        """The local time in a city."""
        return json.dumps({"city": city, "time": "10:00"})

    async def run() -> Any:
        # Closed inside the loop that used it: an AsyncOpenAI left to the garbage collector leaks its socket.
        async with openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="sk-agents-secret", max_retries=0) as client:
            agent = agents.Agent(
                name="clock",
                instructions="Answer with the tools.",
                tools=[get_time],
                model=agents.OpenAIResponsesModel(model="gpt-test", openai_client=client),
            )
            return await agents.Runner.run(agent, "Do Lima and Quito share a time?")

    result = asyncio.run(run())
    assert result.final_output == "Lima and Quito share a clock."
    proxy.wait_recorded(3)
    sent = [request.json() for request in upstream.requests]
    assert all(body.get("instructions") == "Answer with the tools." for body in sent)
    assert sent[0]["tools"][0]["strict"] is True
    [record] = proxy.dataset()
    turns = record["conversations"]
    assert [t["from"] for t in turns] == [
        "system",
        "human",
        "function_call",
        "observation",
        "function_call",
        "observation",
        "gpt",
    ]
    assert json.loads(turns[3]["value"]) == {"city": "Lima", "time": "10:00"}
    assert json.loads(record["tools"])[0]["name"] == "get_time"
