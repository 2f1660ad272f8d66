"""openai_chat: canonical messages -> OpenAI chat fine-tuning examples (the openai and messages profiles)."""

from __future__ import annotations

import json
from typing import Any, Dict

from chatproxy.chats.openai_chat import openai_tools, to_openai_chat

WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
}
CALL = {"id": "c1", "name": "get_weather", "arguments": '{"city": "Paris"}'}


def user(text: str) -> Dict[str, Any]:
    return {"role": "user", "content": text}


def test_an_assistant_message_that_only_calls_tools_has_empty_string_content():
    """Axolotl 0.19 with split_thinking reads message["content"] (KeyError when missing); Jinja renders
    None as "None". "" is what every consumer takes."""
    record = to_openai_chat([user("Weather?"), {"role": "assistant", "tool_calls": [CALL]}], [WEATHER])
    assert record is not None
    assert record["messages"][-1] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
        ],
    }


def test_reasoning_before_a_tool_call_is_the_whole_content():
    record = to_openai_chat([user("Weather?"), {"role": "assistant", "reasoning": "Call it.", "tool_calls": [CALL]}])
    assert record is not None and record["messages"][-1]["content"] == "<think>\nCall it.\n</think>"


def test_tools_as_text_is_the_json_of_the_tool_objects():
    chat = [user("Hi"), {"role": "assistant", "content": "Hello"}]
    as_objects = to_openai_chat(chat, [WEATHER])
    as_text = to_openai_chat(chat, [WEATHER], tools_as_text=True)
    assert as_objects is not None and as_text is not None
    assert as_objects["tools"] == openai_tools([WEATHER]) == [WEATHER]
    assert isinstance(as_text["tools"], str) and json.loads(as_text["tools"]) == [WEATHER]
    assert "tools" not in to_openai_chat(chat, None, tools_as_text=True)  # type: ignore[operator]
