"""sharegpt: canonical messages -> ShareGPT records LLaMA-Factory loads, and the validator for them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chatproxy.chats.sharegpt import llamafactory_problems, to_sharegpt


def system(text: str, **extra: Any) -> dict:
    return {"role": "system", "content": text, **extra}


def user(text: str, **extra: Any) -> dict:
    return {"role": "user", "content": text, **extra}


def bot(text: str | None = None, **extra: Any) -> dict:
    message = {"role": "assistant", **extra}
    if text is not None:
        message["content"] = text
    return message


def call(name: str, arguments: str, call_id: str = "") -> dict:
    return {"id": call_id, "name": name, "arguments": arguments}


def tool(text: str, call_id: str = "", **extra: Any) -> dict:
    return {"role": "tool", "content": text, "tool_call_id": call_id, **extra}


def turns(*pairs: tuple[str, str]) -> list[dict]:
    return [{"from": tag, "value": value} for tag, value in pairs]


WEATHER = call("get_weather", '{"city": "Paris"}', "c1")
TIME = call("get_time", '{"tz": "CET"}', "c2")
WEATHER_VALUE = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
BOTH_VALUE = (
    '[{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "get_time", "arguments": {"tz": "CET"}}]'
)
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather now",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    },
]
TOOLS_TEXT = json.dumps([TOOLS[0]["function"]])


class Case(NamedTuple):
    name: str
    messages: list
    expected: dict | None
    tools: list | None = None
    reasoning: str = "keep"


CASES = [
    # -- basic shape ------------------------------------------------------------------------------------
    Case(
        "plain chat with system",
        [system("Be brief."), user("Hi"), bot("Hello"), user("Bye"), bot("Bye!")],
        {
            "conversations": turns(
                ("system", "Be brief."), ("human", "Hi"), ("gpt", "Hello"), ("human", "Bye"), ("gpt", "Bye!")
            )
        },
    ),
    Case("no system", [user("Hi"), bot("Hello")], {"conversations": turns(("human", "Hi"), ("gpt", "Hello"))}),
    Case(
        "leading system messages joined",
        [system("A"), system("B"), user("Hi"), bot("Hello")],
        {"conversations": turns(("system", "A\n\nB"), ("human", "Hi"), ("gpt", "Hello"))},
    ),
    Case(
        "mid-chat system folded into the next human turn",
        [user("u1"), bot("a1"), system("Now be formal."), user("u2"), bot("a2")],
        {"conversations": turns(("human", "u1"), ("gpt", "a1"), ("human", "Now be formal.\n\nu2"), ("gpt", "a2"))},
    ),
    Case(
        "mid-chat system with no human after it is dropped",
        [user("u1"), bot("a1"), system("late")],
        {"conversations": turns(("human", "u1"), ("gpt", "a1"))},
    ),
    # -- greetings ---------------------------------------------------------------------------------------
    Case(
        "greeting appended to the system turn",
        [system("You are Ann."), bot("*waves* Hi, I'm Ann."), user("Hi Ann"), bot("Hello!")],
        {
            "conversations": turns(
                ("system", "You are Ann.\n\n*waves* Hi, I'm Ann."), ("human", "Hi Ann"), ("gpt", "Hello!")
            )
        },
    ),
    Case(
        "greeting creates the system turn",
        [bot("Welcome!"), user("Hi"), bot("Hello")],
        {"conversations": turns(("system", "Welcome!"), ("human", "Hi"), ("gpt", "Hello"))},
    ),
    Case(
        "preamble: systems first, then greetings; tool messages dropped",
        [bot("G1"), system("S1"), tool("stray"), bot("G2"), user("Hi"), bot("Hello")],
        {"conversations": turns(("system", "S1\n\nG1\n\nG2"), ("human", "Hi"), ("gpt", "Hello"))},
    ),
    # -- tools -------------------------------------------------------------------------------------------
    Case(
        "one tool call",
        [user("Weather?"), bot(None, tool_calls=[WEATHER]), tool("18C", "c1"), bot("18C in Paris.")],
        {
            "conversations": turns(
                ("human", "Weather?"),
                ("function_call", WEATHER_VALUE),
                ("observation", "18C"),
                ("gpt", "18C in Paris."),
            ),
            "tools": TOOLS_TEXT,
        },
        TOOLS,
    ),
    Case(
        "parallel calls and their results",
        [
            user("Weather and time?"),
            bot(None, tool_calls=[WEATHER, TIME]),
            tool("18C", "c1"),
            tool("14:00", "c2"),
            bot("18C, 14:00."),
        ],
        {
            "conversations": turns(
                ("human", "Weather and time?"),
                ("function_call", BOTH_VALUE),
                # LLaMA-Factory 0.9.5 OpenAIDatasetConverter: one <tool_response> block per result.
                ("observation", "18C\n</tool_response>\n<tool_response>\n14:00"),
                ("gpt", "18C, 14:00."),
            )
        },
    ),
    Case(
        "text beside tool calls is kept before a <tool_call> block",
        [user("Weather?"), bot("Let me check.", tool_calls=[WEATHER]), tool("18C"), bot("18C.")],
        {
            "conversations": turns(
                ("human", "Weather?"),
                ("function_call", "Let me check.\n<tool_call>" + WEATHER_VALUE + "</tool_call>"),
                ("observation", "18C"),
                ("gpt", "18C."),
            )
        },
    ),
    Case(
        "gpt text followed by a tool call message: one function_call turn",
        [user("Weather?"), bot("Let me check."), bot(None, tool_calls=[WEATHER]), tool("18C"), bot("18C.")],
        {
            "conversations": turns(
                ("human", "Weather?"),
                ("function_call", "Let me check.\n<tool_call>" + WEATHER_VALUE + "</tool_call>"),
                ("observation", "18C"),
                ("gpt", "18C."),
            )
        },
    ),
    Case(
        "consecutive tool-call messages: one parallel function_call turn",
        [
            user("Both?"),
            bot(None, tool_calls=[WEATHER]),
            bot(None, tool_calls=[TIME]),
            tool("18C"),
            tool("14:00"),
            bot("Done."),
        ],
        {
            "conversations": turns(
                ("human", "Both?"),
                ("function_call", BOTH_VALUE),
                ("observation", "18C\n</tool_response>\n<tool_response>\n14:00"),
                ("gpt", "Done."),
            )
        },
    ),
    Case(
        "arguments that are not JSON stay a raw string",
        [user("x"), bot(None, tool_calls=[call("f", '{"city": "Par')])],
        {
            "conversations": turns(
                ("human", "x"), ("function_call", '{"name": "f", "arguments": "{\\"city\\": \\"Par"}')
            )
        },
    ),
    Case(
        "arguments that are JSON but not an object stay a raw string; empty ones become {}",
        [user("x"), bot(None, tool_calls=[call("f", "[1, 2]"), call("g", "")])],
        {
            "conversations": turns(
                ("human", "x"),
                ("function_call", '[{"name": "f", "arguments": "[1, 2]"}, {"name": "g", "arguments": {}}]'),
            )
        },
    ),
    Case(
        "unanswered tool result then the user: one human turn",
        [user("Weather?"), bot(None, tool_calls=[WEATHER]), tool("18C"), user("Never mind."), bot("OK.")],
        {
            "conversations": turns(
                ("human", "Weather?"), ("function_call", WEATHER_VALUE), ("human", "18C\n\nNever mind."), ("gpt", "OK.")
            )
        },
    ),
    Case(
        "tools unwrapped, missing parameters filled in, non-objects skipped",
        [user("x"), bot("y")],
        {
            "conversations": turns(("human", "x"), ("gpt", "y")),
            "tools": '[{"name": "ping", "parameters": {"type": "object", "properties": {}}}, '
            '{"name": "legacy", "parameters": {"type": "object", "properties": {}}}]',
        },
        [
            {"type": "function", "function": {"name": "ping"}},
            "junk",
            {"name": "legacy", "parameters": {"type": "object"}},
        ],
    ),
    Case(
        "empty tools list: no tools key",
        [user("x"), bot("y")],
        {"conversations": turns(("human", "x"), ("gpt", "y"))},
        [],
    ),
    # -- merging and trimming ----------------------------------------------------------------------------
    Case(
        "consecutive users merged",
        [user("a"), user("b"), bot("c")],
        {"conversations": turns(("human", "a\n\nb"), ("gpt", "c"))},
    ),
    Case(
        "consecutive assistants merged",
        [user("a"), bot("b"), bot("c")],
        {"conversations": turns(("human", "a"), ("gpt", "b\n\nc"))},
    ),
    Case(
        "empty assistant message ignored",
        [user("a"), bot(""), user("b"), bot("c")],
        {"conversations": turns(("human", "a\n\nb"), ("gpt", "c"))},
    ),
    Case(
        "trailing human dropped",
        [user("a"), bot("b"), user("c")],
        {"conversations": turns(("human", "a"), ("gpt", "b"))},
    ),
    Case(
        "trailing observation dropped",
        [user("Weather?"), bot(None, tool_calls=[WEATHER]), tool("18C")],
        {"conversations": turns(("human", "Weather?"), ("function_call", WEATHER_VALUE))},
    ),
    Case("nothing: no record", [], None),
    Case("system and user only: no record", [system("s"), user("u")], None),
    Case("no user message: no record", [system("s"), bot("greeting")], None),
    Case("only an empty answer: no record", [user("u"), bot(None)], None),
    Case(
        "non-object messages and unknown roles ignored",
        ["junk", user("a"), {"role": "narrator", "content": "x"}, bot("b")],
        {"conversations": turns(("human", "a"), ("gpt", "b"))},
    ),
    # -- reasoning ---------------------------------------------------------------------------------------
    Case(
        "reasoning kept",
        [user("2+2?"), bot("4", reasoning="Two and two.")],
        {"conversations": turns(("human", "2+2?"), ("gpt", "<think>\nTwo and two.\n</think>\n\n4"))},
    ),
    Case(
        "reasoning dropped",
        [user("2+2?"), bot("4", reasoning="Two and two.")],
        {"conversations": turns(("human", "2+2?"), ("gpt", "4"))},
        reasoning="drop",
    ),
    Case(
        "reasoning only, kept",
        [user("2+2?"), bot(None, reasoning="Hmm")],
        {"conversations": turns(("human", "2+2?"), ("gpt", "<think>\nHmm\n</think>\n\n"))},
    ),
    Case("reasoning only, dropped: no record", [user("2+2?"), bot(None, reasoning="Hmm")], None, reasoning="drop"),
    Case(
        "merged assistants: reasoning joined, then text joined",
        [user("q"), bot("a", reasoning="r1"), bot("b", reasoning="r2")],
        {"conversations": turns(("human", "q"), ("gpt", "<think>\nr1\n\nr2\n</think>\n\na\n\nb"))},
    ),
    Case(
        "reasoning beside a tool call is kept as a think block before it",
        [user("Weather?"), bot(None, reasoning="I should call it.", tool_calls=[WEATHER])],
        {
            "conversations": turns(
                ("human", "Weather?"),
                (
                    "function_call",
                    "<think>\nI should call it.\n</think>\n\n" + WEATHER_VALUE,
                ),
            )
        },
    ),
    Case(
        "reasoning and text beside a tool call, reasoning dropped",
        [user("Weather?"), bot("Checking.", reasoning="I should call it.", tool_calls=[WEATHER])],
        {
            "conversations": turns(
                ("human", "Weather?"), ("function_call", "Checking.\n<tool_call>" + WEATHER_VALUE + "</tool_call>")
            )
        },
        reasoning="drop",
    ),
    # -- images and other placeholders --------------------------------------------------------------------
    Case(
        "images follow their placeholders",
        [
            user("What is this?\n<image>", images=["S/images/a.png"]),
            bot("A cat."),
            user("<image>\n<image>\nAnd these?", images=["S/images/b.png", "https://x.org/c.jpg"]),
            bot("Dogs."),
        ],
        {
            "conversations": turns(
                ("human", "What is this?\n<image>"),
                ("gpt", "A cat."),
                ("human", "<image>\n<image>\nAnd these?"),
                ("gpt", "Dogs."),
            ),
            "images": ["S/images/a.png", "S/images/b.png", "https://x.org/c.jpg"],
        },
    ),
    Case(
        "image in a dropped trailing turn goes with it",
        [user("<image>", images=["a.png"]), bot("A cat."), user("<image>", images=["b.png"])],
        {"conversations": turns(("human", "<image>"), ("gpt", "A cat.")), "images": ["a.png"]},
    ),
    Case(
        "image in a system message cannot be attached",
        [system("Style guide:\n<image>", images=["s.png"]), user("Hi"), bot("Hello")],
        {"conversations": turns(("system", "Style guide:\n[image]"), ("human", "Hi"), ("gpt", "Hello"))},
    ),
    Case(
        "mid-chat system image travels with the human turn",
        [user("a"), bot("b"), system("<image>", images=["s.png"]), user("<image>", images=["u.png"]), bot("c")],
        {
            "conversations": turns(("human", "a"), ("gpt", "b"), ("human", "<image>\n\n<image>"), ("gpt", "c")),
            "images": ["s.png", "u.png"],
        },
    ),
    Case(
        "typed <image> with no image is neutralised",
        [user("What does the <image> tag do?"), bot("It embeds a picture.")],
        {"conversations": turns(("human", "What does the [image] tag do?"), ("gpt", "It embeds a picture."))},
    ),
    Case(
        "placeholder count not matching its images: images left out",
        [user("<image> and <image>", images=["only-one.png"]), bot("?")],
        {"conversations": turns(("human", "[image] and [image]"), ("gpt", "?"))},
    ),
    Case(
        "audio and video placeholders neutralised, file kept",
        [user("<audio>\n<file>\nTranscribe; ignore <video>."), bot("Done.")],
        {"conversations": turns(("human", "[audio]\n<file>\nTranscribe; ignore [video]."), ("gpt", "Done."))},
    ),
    Case(
        "images in a tool result",
        [
            user("Screenshot?"),
            bot(None, tool_calls=[call("shot", "{}")]),
            tool("<image>", images=["shot.png"]),
            bot("Done."),
        ],
        {
            "conversations": turns(
                ("human", "Screenshot?"),
                ("function_call", '{"name": "shot", "arguments": {}}'),
                ("observation", "<image>"),
                ("gpt", "Done."),
            ),
            "images": ["shot.png"],
        },
    ),
    Case(
        "image placeholder in reasoning neutralised",
        [user("q"), bot("a", reasoning="the <image> shows")],
        {"conversations": turns(("human", "q"), ("gpt", "<think>\nthe [image] shows\n</think>\n\na"))},
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_to_sharegpt(case: Case) -> None:
    record = to_sharegpt(case.messages, case.tools, case.reasoning)
    assert record == case.expected
    if record is not None:
        assert llamafactory_problems(record) == []


TEXT = st.lists(st.sampled_from(["hi", "<image>", "<audio>", "<video>", "\n", " ", "", "<"]), max_size=4).map("".join)
CANONICAL = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant", "tool", "other"])},
    optional={
        "content": TEXT,
        "images": st.lists(st.sampled_from(["a.png", "b.png", "https://x/c.jpg"]), max_size=2),
        "reasoning": TEXT,
        "tool_calls": st.lists(
            st.builds(call, st.sampled_from(["f", ""]), st.sampled_from(["{}", '{"a": "<image>"}', "{", ""])),
            max_size=2,
        ),
    },
)


@given(messages=st.lists(CANONICAL, max_size=10), reasoning=st.sampled_from(["keep", "drop"]))
def test_any_chat_gives_a_loadable_record_or_none(messages: list[dict], reasoning: str) -> None:
    """Whatever the journal holds, the export is either nothing or a record LLaMA-Factory accepts."""
    record = to_sharegpt(messages, TOOLS, reasoning)
    if record is not None:
        assert llamafactory_problems(record) == []
        assert record["conversations"][-1]["from"] in ("gpt", "function_call")


def test_placeholders_in_arguments_are_escaped_exactly() -> None:
    """LLaMA-Factory counts <image> in the raw value; the JSON escape hides it and decodes to the same text."""
    record = to_sharegpt([user("Render"), bot(None, tool_calls=[call("html", '{"src": "<image> <audio>"}')])])
    assert record is not None
    value = record["conversations"][1]["value"]
    assert "<image>" not in value and "<audio>" not in value
    assert json.loads(value) == {"name": "html", "arguments": {"src": "<image> <audio>"}}
    assert llamafactory_problems(record) == []


def test_unicode_is_written_readably() -> None:
    record = to_sharegpt([user("Wetter?"), bot(None, tool_calls=[call("wetter", '{"stadt": "Zürich"}')])])
    assert record is not None
    assert record["conversations"][1]["value"] == '{"name": "wetter", "arguments": {"stadt": "Zürich"}}'


def test_input_is_not_modified() -> None:
    messages = [system("s"), user("<image>", images=["a.png"]), bot("b", tool_calls=[WEATHER]), tool("r")]
    snapshot = json.dumps(messages)
    to_sharegpt(messages, TOOLS)
    assert json.dumps(messages) == snapshot


def test_unknown_reasoning_mode_raises() -> None:
    with pytest.raises(ValueError, match="reasoning"):
        to_sharegpt([user("a"), bot("b")], reasoning="strip")


# ---------------------------------------------------------------------------------------------------------
# llamafactory_problems
# ---------------------------------------------------------------------------------------------------------

GOOD = turns(("human", "q"), ("gpt", "a"))

PROBLEM_CASES = [
    ("not an object", [], "not a JSON object"),
    ("no conversations", {}, "missing or empty"),
    ("empty conversations", {"conversations": []}, "missing or empty"),
    ("turn without value", {"conversations": [{"from": "human"}, {"from": "gpt", "value": "a"}]}, "turn 0"),
    ("non-string value", {"conversations": turns(("human", "q")) + [{"from": "gpt", "value": None}]}, "turn 1"),
    ("system not first", {"conversations": turns(("human", "q"), ("system", "s"), ("gpt", "a"))}, "turn 1 is 'system'"),
    ("answer first", {"conversations": turns(("system", "s"), ("gpt", "a"), ("human", "q"))}, "turn 1 is 'gpt'"),
    ("two humans in a row", {"conversations": turns(("human", "q"), ("human", "q"))}, "turn 1 is 'human'"),
    ("unknown tag", {"conversations": turns(("user", "q"), ("gpt", "a"))}, "turn 0 is 'user'"),
    ("odd count", {"conversations": turns(("human", "q"), ("gpt", "a"), ("human", "q"))}, "positive even number"),
    ("system only", {"conversations": turns(("system", "s"))}, "positive even number"),
    ("function_call not JSON", {"conversations": turns(("human", "q"), ("function_call", "f(x)"))}, "not JSON"),
    (
        "function_call without arguments",
        {"conversations": turns(("human", "q"), ("function_call", '[{"name": "f"}]'))},
        "'name' and 'arguments'",
    ),
    ("tools not a string", {"conversations": GOOD, "tools": [{"name": "f"}]}, "not a JSON string"),
    ("tools not JSON", {"conversations": GOOD, "tools": "[{"}, "not valid JSON"),
    ("tools not a list", {"conversations": GOOD, "tools": '{"name": "f"}'}, "not a JSON list"),
    ("tool without name", {"conversations": GOOD, "tools": '[{"parameters": {"properties": {}}}]'}, "no name"),
    ("tool without properties", {"conversations": GOOD, "tools": '[{"name": "f"}]'}, "parameters.properties"),
    (
        "tool parameters not an object",
        {"conversations": GOOD, "tools": '[{"name": "f", "parameters": [1]}]'},
        "parameters.properties",
    ),
    ("more images than placeholders", {"conversations": GOOD, "images": ["a.png"]}, "0 <image> placeholders but 1"),
    (
        "placeholder without image",
        {"conversations": turns(("human", "<image>"), ("gpt", "a"))},
        "1 <image> placeholders but 0",
    ),
    (
        "image placeholder in the system turn",
        {"conversations": turns(("system", "<image>"), ("human", "q"), ("gpt", "a")), "images": ["a.png"]},
        "system turn contains <image>",
    ),
    ("images not paths", {"conversations": GOOD, "images": [1]}, "not a list of paths"),
    ("audio placeholder without audio", {"conversations": turns(("human", "<audio>"), ("gpt", "a"))}, "<audio>"),
    ("video placeholder without video", {"conversations": turns(("human", "<video>"), ("gpt", "a"))}, "<video>"),
]


@pytest.mark.parametrize("record, problem", [c[1:] for c in PROBLEM_CASES], ids=[c[0] for c in PROBLEM_CASES])
def test_llamafactory_problems_found(record: Any, problem: str) -> None:
    problems = llamafactory_problems(record)
    assert any(problem in text for text in problems), problems


@pytest.mark.parametrize(
    "record",
    [
        {"conversations": GOOD},
        {"conversations": turns(("system", "s"), ("human", "q"), ("gpt", "a"))},
        {
            "conversations": turns(
                ("human", "q"), ("function_call", '{"name": "f", "arguments": {}}'), ("observation", "r"), ("gpt", "a")
            ),
            "tools": "",
        },
        {"conversations": turns(("human", "<image>"), ("gpt", "a")), "images": ["a.png"], "tools": None},
        {"conversations": GOOD, "tools": json.dumps(TOOLS)},  # the wrapped OpenAI form is read too
    ],
)
def test_llamafactory_problems_accepts_valid_records(record: dict) -> None:
    assert llamafactory_problems(record) == []


# ---------------------------------------------------------------------------------------------------------
# Loading with Hugging Face datasets, as LLaMA-Factory does
# ---------------------------------------------------------------------------------------------------------


def test_records_load_with_hugging_face_datasets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows with and without "tools"/"images" load together from one JSON array; missing keys read as None."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    # minversion also skips when only the project's own datasets/ folder (a namespace package) is importable.
    datasets = pytest.importorskip("datasets", minversion="2.14")
    records = [
        to_sharegpt([user("Hi"), bot("Hello")]),
        to_sharegpt([system("Be brief."), user("<image>\nWhat?", images=["S/images/a.png"]), bot("A cat.")]),
        to_sharegpt(
            [user("Weather?"), bot(None, tool_calls=[WEATHER, TIME]), tool("18C"), tool("14:00"), bot("18C.")], TOOLS
        ),
        to_sharegpt([bot("Welcome!"), user("<image><image>", images=["b.png", "c.png"]), bot("Two dogs.")], TOOLS),
    ]
    assert all(record is not None and llamafactory_problems(record) == [] for record in records)
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps(records, ensure_ascii=False, indent=2), encoding="utf-8")

    loaded = datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(tmp_path / "cache"))

    assert set(loaded.column_names) == {"conversations", "tools", "images"}
    assert len(loaded) == len(records)
    for row, record in zip(loaded, records):
        assert row == {"tools": None, "images": None, **record}


WEATHER_CALL_BLOCK = "<tool_call>" + WEATHER_VALUE + "</tool_call>"


@pytest.mark.parametrize(
    "value, ok",
    [
        (WEATHER_VALUE, True),
        # FunctionFormatter (LLaMA-Factory 0.9.5): the JSON between the template's tool_call_words ...
        ("Let me check.\n" + WEATHER_CALL_BLOCK, True),
        ("<think>\nHmm.\n</think>\n\nLet me check.\n" + WEATHER_CALL_BLOCK, True),
        # ... or, without them, the value minus its thought_words block.
        ("<think>\nHmm.\n</think>\n\n" + WEATHER_VALUE, True),
        # Text beside bare JSON is json.loads'ed whole: RuntimeError, the run stops.
        ("Let me check.\n" + WEATHER_VALUE, False),
        ("<tool_call>not json</tool_call>", False),
    ],
)
def test_function_call_values_as_llamafactory_parses_them(value: str, ok: bool) -> None:
    record = {"conversations": turns(("human", "Weather?"), ("function_call", value))}
    problems = llamafactory_problems(record)
    assert (problems == []) if ok else any("not JSON" in p for p in problems), problems


def test_text_and_reasoning_beside_a_call_survive_in_a_value_llamafactory_loads() -> None:
    record = to_sharegpt([user("Weather?"), bot("Let me check.", reasoning="Paris, so call it.", tool_calls=[WEATHER])])
    assert record is not None and llamafactory_problems(record) == []
    value = record["conversations"][1]["value"]
    assert value == "<think>\nParis, so call it.\n</think>\n\nLet me check.\n" + WEATHER_CALL_BLOCK
