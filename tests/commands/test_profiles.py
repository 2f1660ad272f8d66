"""Profiles and the consumer rules they are checked against: pure functions, plain dicts in and out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

import pytest

from chatproxy.chats.openai_chat import openai_tools, to_openai_chat
from chatproxy.commands.profiles import PROFILES, Unusable, tool_call_problem
from chatproxy.commands.trainer_rules import (
    axolotl_problems,
    fastchat_problems,
    llamafactory_problems,
    openai_problems,
    unsloth_dataset_problems,
    unsloth_problems,
)

HERE = Path(".")
WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
}


def user(text: str, **extra: Any) -> Dict[str, Any]:
    return {"role": "user", "content": text, **extra}


def assistant(text: str = "", **extra: Any) -> Dict[str, Any]:
    message: Dict[str, Any] = {"role": "assistant", **extra}
    if text:
        message["content"] = text
    return message


def call(name: str, arguments: str, call_id: str = "c1") -> Dict[str, str]:
    return {"id": call_id, "name": name, "arguments": arguments}


def tool(text: str, call_id: str = "c1") -> Dict[str, Any]:
    return {"role": "tool", "content": text, "tool_call_id": call_id}


TOOL_CHAT = [
    {"role": "system", "content": "Be brief."},
    user("Weather in Paris?"),
    assistant("Let me look.", tool_calls=[call("get_weather", '{"city": "Paris"}')]),
    tool("sunny"),
    assistant("Sunny."),
]


# ---------------------------------------------------------------------------------------------------------
# What every profile refuses
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arguments, problem",
    [
        ('{"city": "Paris"}', ""),
        ("", ""),
        ("  ", ""),
        ('{"city": "Par', "assistant tool call with truncated JSON arguments"),
        ('{"cities": ["Paris", "Ro', "assistant tool call with truncated JSON arguments"),
        ("city=Paris", "assistant tool call with arguments that are not valid JSON"),
        ('{"a": 1}}', "assistant tool call with arguments that are not valid JSON"),
        ('["Paris"]', "assistant tool call with arguments that are not a JSON object"),
        ('"Paris"', "assistant tool call with arguments that are not a JSON object"),
    ],
)
def test_tool_call_arguments(arguments, problem):
    assert tool_call_problem([user("q"), assistant(tool_calls=[call("f", arguments)])]) == problem


def test_calls_in_the_preamble_are_not_held_against_the_chat():
    """They are dropped with the preamble (sharegpt.py rule 2), so their arguments do not matter."""
    chat = [assistant(tool_calls=[call("f", "{broken")]), user("q"), assistant("a")]
    assert tool_call_problem(chat) == ""


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_every_profile_refuses_a_truncated_call(name):
    chat = [user("q"), assistant(tool_calls=[call("get_weather", '{"city": "Pa')])]
    with pytest.raises(Unusable, match="truncated JSON arguments"):
        PROFILES[name].record(chat, [WEATHER], "keep", HERE)


@pytest.mark.parametrize("name", sorted(PROFILES))
@pytest.mark.parametrize(
    "chat, reason",
    [
        ([{"role": "system", "content": "s"}, assistant("hi")], "no user message"),
        ([user("anyone?")], "no assistant reply after the first user message"),
    ],
)
def test_every_profile_explains_a_chat_with_nothing_to_learn(name, chat, reason):
    with pytest.raises(Unusable, match=reason):
        PROFILES[name].record(chat, None, "keep", HERE)


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_every_profile_writes_the_tool_chat_its_consumers_accept(name):
    record = PROFILES[name].record(TOOL_CHAT, [WEATHER], "keep", HERE)
    for _, rules in PROFILES[name].validators:
        assert rules(record) == []


# ---------------------------------------------------------------------------------------------------------
# sharegpt-plain
# ---------------------------------------------------------------------------------------------------------


def plain(chat: List[Dict[str, Any]], tools: Any = None, reasoning: str = "keep") -> List[Dict[str, str]]:
    return PROFILES["sharegpt-plain"].record(chat, tools, reasoning, HERE)["conversations"]


def test_plain_puts_the_system_prompt_before_the_first_human_message():
    turns = plain([{"role": "system", "content": "Be brief."}, user("Hi"), assistant("Hello")])
    assert turns == [{"from": "human", "value": "Be brief.\n\nHi"}, {"from": "gpt", "value": "Hello"}]


def test_plain_writes_tool_use_as_text_and_the_tool_list_first():
    turns = plain(TOOL_CHAT, [WEATHER])
    assert [t["from"] for t in turns] == ["human", "gpt", "human", "gpt"]
    assert turns[0]["value"] == "Be brief.\n\n<tools>\n" + json.dumps(WEATHER) + "\n</tools>\n\nWeather in Paris?"
    assert (
        turns[1]["value"]
        == 'Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    )
    assert turns[2]["value"] == "<tool_response>\nsunny\n</tool_response>"


def test_plain_leaves_the_tool_list_out_of_a_chat_that_uses_no_tools():
    assert plain([user("Hi"), assistant("Hello")], [WEATHER])[0]["value"] == "Hi"


def test_plain_parallel_results_share_one_human_turn():
    chat = [
        user("q"),
        assistant(tool_calls=[call("a", "{}", "1"), call("b", "", "2")]),
        tool("A", "1"),
        tool("B", "2"),
        assistant("done"),
    ]
    turns = plain(chat)
    assert turns[1]["value"].count("<tool_call>") == 2 and '"arguments": {}' in turns[1]["value"]
    assert turns[2]["value"] == "<tool_response>\nA\n</tool_response>\n\n<tool_response>\nB\n</tool_response>"


def test_plain_has_no_images_and_no_extra_keys():
    chat = [user("Look\n<image>", images=["s/images/x.png"]), assistant("A cat")]
    record = PROFILES["sharegpt-plain"].record(chat, None, "keep", HERE)
    assert record == {"conversations": [{"from": "human", "value": "Look\n[image]"}, {"from": "gpt", "value": "A cat"}]}


def test_plain_reasoning_keep_and_drop():
    chat = [user("q"), assistant("a", reasoning="because")]
    assert plain(chat)[1]["value"] == "<think>\nbecause\n</think>\n\na"
    assert plain(chat, reasoning="drop")[1]["value"] == "a"


# ---------------------------------------------------------------------------------------------------------
# sharegpt images
# ---------------------------------------------------------------------------------------------------------


def test_sharegpt_keeps_files_that_exist_and_neutralises_the_rest(tmp_path):
    (tmp_path / "s" / "images").mkdir(parents=True)
    (tmp_path / "s" / "images" / "a.png").write_bytes(b"png")
    chat = [
        user("<image> and <image>", images=["s/images/a.png", "https://example.com/b.png"]),
        assistant("two"),
        user("<image>", images=["s/images/gone.png"]),
        assistant("three"),
    ]
    record = PROFILES["sharegpt"].record(chat, None, "keep", tmp_path)
    assert [t["value"] for t in record["conversations"]] == ["<image> and [image]", "two", "[image]", "three"]
    assert record["images"] == [str((tmp_path / "s" / "images" / "a.png").resolve())]
    assert llamafactory_problems(record) == []


# ---------------------------------------------------------------------------------------------------------
# openai
# ---------------------------------------------------------------------------------------------------------


def test_openai_tool_chat():
    record = to_openai_chat(TOOL_CHAT, [WEATHER])
    assert record == {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": "Let me look.",
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
            {"role": "assistant", "content": "Sunny."},
        ],
        "tools": [WEATHER],
    }


def test_openai_ids_missing_or_repeated_are_replaced_and_results_follow_them():
    chat = [
        user("q"),
        assistant(tool_calls=[call("a", "", ""), call("b", "{}", "")]),
        tool("A", ""),
        tool("B", "x"),
        assistant("ok"),
    ]
    messages = to_openai_chat(chat)["messages"]
    ids = [c["id"] for c in messages[1]["tool_calls"]]
    assert ids == ["call_1", "call_2"] and messages[1]["tool_calls"][0]["function"]["arguments"] == "{}"
    assert [m["tool_call_id"] for m in messages[2:4]] == ids
    assert openai_problems({"messages": messages}) == []


def test_openai_folds_like_sharegpt():
    chat = [
        {"role": "system", "content": "S"},
        assistant("Greetings, traveller."),  # a character's greeting joins the system prompt
        user("one"),
        user("two"),  # consecutive users are one turn
        assistant("a"),
        assistant("b", reasoning="r"),  # consecutive assistants are one turn
        {"role": "system", "content": "Be formal now."},  # mid-chat system goes before the next user text
        user("three"),
        tool("a result nobody asked for"),  # an unanswered result is user text
        assistant("c"),
        user("unanswered"),  # trailing: dropped
    ]
    assert to_openai_chat(chat)["messages"] == [
        {"role": "system", "content": "S\n\nGreetings, traveller."},
        {"role": "user", "content": "one\n\ntwo"},
        {"role": "assistant", "content": "<think>\nr\n</think>\n\na\n\nb"},
        {"role": "user", "content": "Be formal now.\n\nthree\n\na result nobody asked for"},
        {"role": "assistant", "content": "c"},
    ]


def test_openai_placeholders_become_text():
    record = to_openai_chat([user("see <image> hear <audio>", images=["x.png"]), assistant("ok")])
    assert record["messages"][0] == {"role": "user", "content": "see [image] hear [audio]"}


def test_openai_a_call_left_unanswered_mid_chat_is_refused():
    chat = [user("q"), assistant(tool_calls=[call("get_weather", "{}")]), user("never mind"), assistant("ok")]
    with pytest.raises(Unusable, match="OpenAI would reject it: .*'c1' has no result"):
        PROFILES["openai"].record(chat, [WEATHER], "keep", HERE)


def test_openai_a_final_call_needs_no_result():
    record = PROFILES["openai"].record(
        [user("q"), assistant(tool_calls=[call("get_weather", "{}")])], [WEATHER], "keep", HERE
    )
    assert record["messages"][-1]["tool_calls"][0]["id"] == "c1"


@pytest.mark.parametrize(
    "tools, expected",
    [
        ([WEATHER], [WEATHER]),
        (
            [{"name": "legacy", "parameters": {"type": "object"}}],
            [{"type": "function", "function": {"name": "legacy", "parameters": {"type": "object"}}}],
        ),
        ([{"type": "web_search_preview"}, "junk", {"type": "function", "function": {"name": ""}}], []),
        (
            [{"type": "function", "function": {"name": "f", "parameters": "not a schema"}}],
            [{"type": "function", "function": {"name": "f"}}],
        ),
        (None, []),
    ],
)
def test_openai_tools(tools, expected):
    assert openai_tools(tools) == expected


# ---------------------------------------------------------------------------------------------------------
# The consumers' rules: each check fires on what it is there for
# ---------------------------------------------------------------------------------------------------------


def turns(*pairs: str) -> Dict[str, Any]:
    return {"conversations": [{"from": pairs[i], "value": pairs[i + 1]} for i in range(0, len(pairs), 2)]}


@pytest.mark.parametrize(
    "record, problem",
    [
        (turns("human", "q", "gpt", "a"), None),
        (turns("system", "s", "human", "q", "gpt", "a"), "FastChat knows only 'human' and 'gpt'"),
        (turns("human", "q", "function_call", "{}"), "FastChat knows only"),
        (turns("gpt", "a", "human", "q", "gpt", "b"), "turn 0 is 'gpt' where 'human' must be"),
        (turns("human", "q", "human", "q2", "gpt", "a"), "turn 1 is 'human' where 'gpt' must be"),
        (turns("human", "q", "gpt", "a", "human", "q2"), "the last turn is not from 'gpt'"),
        ({"conversations": [{"from": "human", "value": 1}, {"from": "gpt", "value": "a"}]}, "no string value"),
        ({"messages": []}, "no conversations list"),
    ],
)
def test_fastchat_rules(record, problem):
    found = fastchat_problems(record)
    assert (found == []) if problem is None else any(problem in p for p in found)


@pytest.mark.parametrize(
    "record, problem",
    [
        (turns("human", "q", "gpt", "a"), None),
        (turns("system", "s", "human", "q", "gpt", "a"), None),
        (turns("human", "q", "system", "s", "gpt", "a"), "system turn after the start"),
        (turns("human", "q", "observation", "r"), "not one of Unsloth's aliases"),
        ({"conversations": [{"from": "human", "value": "q", "weight": "1"}]}, "exactly the keys"),
        ({"conversations": [{"from": "human", "value": None}]}, "non-string field"),
        ({"messages": [{"role": "user", "content": "q"}]}, "no conversations list"),
    ],
)
def test_unsloth_rules(record, problem):
    found = unsloth_problems(record)
    assert (found == []) if problem is None else any(problem in p for p in found)


def test_unsloth_needs_texts_more_varied_than_roles():
    """standardize_data_formats takes the key with fewer distinct values (first 10 records) as the role."""
    assert unsloth_dataset_problems([turns("human", "same", "gpt", "same")])
    # Two texts for two roles is a tie, and a tie makes it pick the text key ("value", the second key).
    assert unsloth_dataset_problems([turns("human", "q", "gpt", "a")])
    assert unsloth_dataset_problems([turns("human", "q", "gpt", "a"), turns("human", "r", "gpt", "b")]) == []


def oa(*messages: Dict[str, Any], **extra: Any) -> Dict[str, Any]:
    return {"messages": list(messages), **extra}


CALL = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}


@pytest.mark.parametrize(
    "record, problem",
    [
        (oa(user("q"), assistant("a")), None),
        (oa(user("q"), {"role": "assistant", "tool_calls": [CALL]}, tool("r"), assistant("a")), None),
        (oa(user("q")), "no assistant message"),
        ({"messages": []}, "messages is missing or empty"),
        (oa(user("q"), assistant("a"), meta={}), "unrecognized key 'meta'"),
        (oa({"role": "developer", "content": "d"}, user("q"), assistant("a")), "unrecognized role 'developer'"),
        (oa(user("q", images=["x"]), assistant("a")), "unrecognized key 'images'"),
        (oa(user(""), assistant("a")), "content is missing or empty"),
        (
            oa(user("q"), {"role": "assistant", "content": "a", "reasoning_content": "r"}),
            "unrecognized key 'reasoning_content'",
        ),
        (
            oa(user("q"), {"role": "assistant", "tool_calls": [dict(CALL, function={"name": "f", "arguments": {}})]}),
            "arguments are not a JSON object in a string",
        ),
        (oa(user("q"), {"role": "assistant", "tool_calls": [dict(CALL, type="code")]}), "needs id, type 'function'"),
        (oa(user("q"), tool("r"), assistant("a")), "tool result for no open tool call"),
        (
            oa(user("q"), {"role": "assistant", "tool_calls": [CALL]}, user("q2"), assistant("a")),
            "has no result before",
        ),
        (oa(user("q"), assistant("a"), tools=[{"name": "f"}]), "tools[0] is not"),
        (oa(user("q"), assistant("a"), tools=[]), "tools is not a non-empty list"),
    ],
)
def test_openai_rules(record, problem):
    found = openai_problems(record)
    assert (found == []) if problem is None else any(problem in p for p in found), found


@pytest.mark.parametrize(
    "record, problem",
    [
        (oa(user("q"), assistant("a")), None),
        ({"conversations": []}, "is not a list"),
        (oa({"role": "function", "content": "x"}, assistant("a")), "not in the default roles"),
        (
            oa(user("q"), {"role": "assistant", "tool_calls": [dict(CALL, function={"name": "f", "arguments": "{x"})]}),
            "not JSON",
        ),
        # Axolotl 0.19 _get_tools json.loads a string tools column.
        (oa(user("q"), assistant("a"), tools="[]"), None),
        (oa(user("q"), assistant("a"), tools='{"name": "f"}'), "tools is not a list"),
        (oa(user("q"), assistant("a"), tools="[{"), "not JSON"),
        # transform_message with split_thinking reads transformed_message["content"].
        (oa(user("q"), {"role": "assistant", "tool_calls": [CALL]}), "without string content"),
    ],
)
def test_axolotl_rules(record, problem):
    found = axolotl_problems(record)
    assert (found == []) if problem is None else any(problem in p for p in found), found
