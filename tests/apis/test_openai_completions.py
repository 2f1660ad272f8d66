"""normalize: request messages, non-streaming choices and streamed chunks -> canonical messages."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from typing import Any, NamedTuple

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chatproxy.apis.openai_completions import (
    StreamAccumulator,
    assistant_from_choice,
    chat_choices,
    completion_choices,
    normalize_messages,
)

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(40))
JPEG = b"\xff\xd8\xff\xe0" + b"jpeg body"
PNG_URL = "data:image/png;base64," + base64.b64encode(PNG).decode()
JPEG_URL = "data:image/jpeg;base64," + base64.b64encode(JPEG).decode()
PNG_PATH = f"S/images/{hashlib.sha256(PNG).hexdigest()}.png"
# Padding stripped and the base64 wrapped at 16 columns, as some clients send it.
PNG_URL_WRAPPED = "data:image/png;base64," + "\n".join(
    base64.b64encode(PNG).decode().rstrip("=")[i : i + 16] for i in range(0, 64, 16)
)
SVG_PATH = "S/images/" + hashlib.sha256(b"<svg/>").hexdigest() + ".svg+xml"
JPEG_PATH = f"S/images/{hashlib.sha256(JPEG).hexdigest()}.jpeg"


class RecordingSink:
    """Content-addressed like the real one, and remembers every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[bytes, str]] = []

    def __call__(self, data: bytes, mime: str) -> str:
        self.calls.append((data, mime))
        return f"S/images/{hashlib.sha256(data).hexdigest()}.{mime.split('/')[-1]}"


def image_part(url: Any) -> dict:
    return {"type": "image_url", "image_url": {"url": url, "detail": "auto"}}


# ---------------------------------------------------------------------------------------------------------
# normalize_messages
# ---------------------------------------------------------------------------------------------------------


class Case(NamedTuple):
    name: str
    messages: list
    expected: list[dict]
    saved: list[tuple[bytes, str]] = []  # what the image sink must have received, in order


MESSAGE_CASES = [
    Case(
        "plain strings",
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
        ],
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
        ],
    ),
    Case("developer is system", [{"role": "developer", "content": "Rules"}], [{"role": "system", "content": "Rules"}]),
    Case("null content has no key", [{"role": "user", "content": None}], [{"role": "user"}]),
    Case("empty string content has no key", [{"role": "user", "content": ""}], [{"role": "user"}]),
    Case("missing content has no key", [{"role": "user"}], [{"role": "user"}]),
    Case(
        "text parts joined by newline",
        [{"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]}],
        [{"role": "user", "content": "one\ntwo"}],
    ),
    Case(
        "data URL image saved through the sink",
        [{"role": "user", "content": [{"type": "text", "text": "What is this?"}, image_part(PNG_URL)]}],
        [{"role": "user", "content": "What is this?\n<image>", "images": [PNG_PATH]}],
        [(PNG, "image/png")],
    ),
    Case(
        "two images keep their order",
        [{"role": "user", "content": [image_part(JPEG_URL), {"type": "text", "text": "vs"}, image_part(PNG_URL)]}],
        [{"role": "user", "content": "<image>\nvs\n<image>", "images": [JPEG_PATH, PNG_PATH]}],
        [(JPEG, "image/jpeg"), (PNG, "image/png")],
    ),
    Case(
        "http URL kept as is",
        [{"role": "user", "content": [image_part("https://example.com/cat.png")]}],
        [{"role": "user", "content": "<image>", "images": ["https://example.com/cat.png"]}],
    ),
    Case(
        "image_url shorthand string",
        [{"role": "user", "content": [{"type": "image_url", "image_url": "https://example.com/a.jpg"}]}],
        [{"role": "user", "content": "<image>", "images": ["https://example.com/a.jpg"]}],
    ),
    Case(
        "base64 without padding and with line breaks",
        [{"role": "user", "content": [image_part(PNG_URL_WRAPPED)]}],
        [{"role": "user", "content": "<image>", "images": [PNG_PATH]}],
        [(PNG, "image/png")],
    ),
    Case(
        "percent-encoded data URL",
        [{"role": "user", "content": [image_part("data:image/svg+xml,%3Csvg%2F%3E")]}],
        [{"role": "user", "content": "<image>", "images": [SVG_PATH]}],
        [(b"<svg/>", "image/svg+xml")],
    ),
    Case(
        "audio and file placeholders",
        [
            {
                "role": "user",
                "content": [
                    {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
                    {"type": "file", "file": {"file_id": "file-1"}},
                    {"type": "text", "text": "Summarise both"},
                ],
            }
        ],
        [{"role": "user", "content": "<audio>\n<file>\nSummarise both"}],
    ),
    Case(
        "unknown part keeps its text, else vanishes",
        [{"role": "user", "content": [{"type": "input_text", "text": "kept"}, {"type": "mystery", "x": 1}]}],
        [{"role": "user", "content": "kept"}],
    ),
    Case(
        "refusal part is text",
        [{"role": "assistant", "content": [{"type": "refusal", "refusal": "I can't help with that."}]}],
        [{"role": "assistant", "content": "I can't help with that."}],
    ),
    Case(
        "assistant reasoning_content",
        [{"role": "assistant", "content": "4", "reasoning_content": "2+2"}],
        [{"role": "assistant", "content": "4", "reasoning": "2+2"}],
    ),
    Case(
        "assistant reasoning field",
        [{"role": "assistant", "content": "4", "reasoning": "2+2"}],
        [{"role": "assistant", "content": "4", "reasoning": "2+2"}],
    ),
    Case(
        "assistant tool calls, null content",
        [
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    },
                    {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": {"tz": "CET"}}},
                ],
            }
        ],
        [
            {
                "role": "assistant",
                "tool_calls": [
                    {"id": "call_1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
                    {"id": "call_2", "name": "get_time", "arguments": '{"tz": "CET"}'},
                ],
            }
        ],
    ),
    Case(
        "legacy function_call",
        [{"role": "assistant", "content": None, "function_call": {"name": "lookup", "arguments": '{"q": 1}'}}],
        [{"role": "assistant", "tool_calls": [{"id": "", "name": "lookup", "arguments": '{"q": 1}'}]}],
    ),
    Case(
        "tool result",
        [{"role": "tool", "tool_call_id": "call_1", "content": "18C"}],
        [{"role": "tool", "content": "18C", "tool_call_id": "call_1"}],
    ),
    Case(
        "legacy function role is tool with its name",
        [{"role": "function", "name": "lookup", "content": "found"}],
        [{"role": "tool", "content": "found", "name": "lookup"}],
    ),
    Case(
        "participant names kept",
        [{"role": "user", "name": "alice", "content": "hi"}],
        [{"role": "user", "content": "hi", "name": "alice"}],
    ),
    Case(
        "reasoning and tool_call_id only where they belong",
        [{"role": "user", "content": "x", "reasoning": "no", "tool_calls": [], "tool_call_id": "no"}],
        [{"role": "user", "content": "x"}],
    ),
    Case(
        "malformed entries skipped",
        [
            "text",
            None,
            3,
            {"content": "no role"},
            {"role": ["user"]},
            {"role": "wizard"},
            {"role": "user", "content": "ok"},
        ],
        [{"role": "user", "content": "ok"}],
    ),
    Case(
        "content of the wrong type becomes its JSON text",
        [{"role": "user", "content": 5}, {"role": "user", "content": {"a": "é"}}],
        [{"role": "user", "content": "5"}, {"role": "user", "content": '{"a": "é"}'}],
    ),
    Case(
        "malformed parts",
        [{"role": "user", "content": ["bare string", 7, {"type": "text", "text": None}, {"type": "image_url"}]}],
        [{"role": "user", "content": "bare string\n7"}],
    ),
    Case(
        "malformed tool calls skipped",
        [{"role": "assistant", "content": "x", "tool_calls": ["junk", {"id": "c"}, {"function": {"arguments": None}}]}],
        [{"role": "assistant", "content": "x", "tool_calls": [{"id": "", "name": "", "arguments": ""}]}],
    ),
]


@pytest.mark.parametrize("case", MESSAGE_CASES, ids=[c.name for c in MESSAGE_CASES])
def test_normalize_messages(case: Case) -> None:
    sink = RecordingSink()
    assert normalize_messages(case.messages, sink) == case.expected
    assert sink.calls == case.saved


def test_output_is_json_ready() -> None:
    """Canonical messages survive a JSON round trip unchanged (the journal stores them as JSON)."""
    messages = [case for cases in (c.messages for c in MESSAGE_CASES) for case in cases]
    canonical = normalize_messages(messages, RecordingSink())
    assert json.loads(json.dumps(canonical)) == canonical


@pytest.mark.parametrize("url", ["data:image/png;base64,@@@not base64@@@", "data:image/png;base64,", "data:image/png"])
def test_undecodable_data_url_drops_the_image_and_warns(url: str, caplog: pytest.LogCaptureFixture) -> None:
    sink = RecordingSink()
    content = [{"type": "text", "text": "look"}, image_part(url)]
    with caplog.at_level(logging.WARNING, logger="chatproxy.normalize"):
        assert normalize_messages([{"role": "user", "content": content}], sink) == [{"role": "user", "content": "look"}]
    assert sink.calls == []
    assert any("image" in record.getMessage() for record in caplog.records)
    payload = url.partition(",")[2]
    assert not payload or payload not in caplog.text  # the image itself never reaches the log


def test_failing_sink_costs_only_the_image(caplog: pytest.LogCaptureFixture) -> None:
    def full_disk(data: bytes, mime: str) -> str:
        raise OSError(28, "No space left on device")

    content = [{"type": "text", "text": "look"}, image_part(PNG_URL)]
    with caplog.at_level(logging.WARNING, logger="chatproxy.normalize"):
        canonical = normalize_messages([{"role": "user", "content": content}], full_disk)
    assert canonical == [{"role": "user", "content": "look"}]
    assert "No space left" in caplog.text


def test_skipped_message_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="chatproxy.normalize"):
        normalize_messages([{"role": "user", "content": "a"}, "junk"], RecordingSink())
    assert "messages[1]" in caplog.text


@pytest.mark.parametrize("messages", [None, {"role": "user"}, "hi", 3])
def test_non_list_messages_raise_value_error(messages: Any) -> None:
    with pytest.raises(ValueError, match="messages must be a JSON array"):
        normalize_messages(messages, RecordingSink())


# ---------------------------------------------------------------------------------------------------------
# Non-streaming responses
# ---------------------------------------------------------------------------------------------------------


CHOICE_CASES = [
    ("text", {"role": "assistant", "content": "Hi"}, {"role": "assistant", "content": "Hi"}),
    ("null content", {"role": "assistant", "content": None}, {"role": "assistant"}),
    ("not an object", None, {"role": "assistant"}),
    (
        "tool calls with null content",
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}},
            ],
        },
        {"role": "assistant", "tool_calls": [{"id": "c1", "name": "f", "arguments": '{"a":1}'}]},
    ),
    (
        "object arguments serialised",
        {"role": "assistant", "tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": {"a": [1, "ü"]}}}]},
        {"role": "assistant", "tool_calls": [{"id": "c1", "name": "f", "arguments": '{"a": [1, "ü"]}'}]},
    ),
    (
        "reasoning_content wins over reasoning",
        {"role": "assistant", "content": "4", "reasoning_content": "think", "reasoning": "think"},
        {"role": "assistant", "content": "4", "reasoning": "think"},
    ),
    (
        "reasoning alone",
        {"role": "assistant", "content": "4", "reasoning": "think"},
        {"role": "assistant", "content": "4", "reasoning": "think"},
    ),
    (
        "refusal beside null content",
        {"role": "assistant", "content": None, "refusal": "I can't."},
        {"role": "assistant", "content": "I can't."},
    ),
    (
        "legacy function_call",
        {"role": "assistant", "content": None, "function_call": {"name": "f", "arguments": "{}"}},
        {"role": "assistant", "tool_calls": [{"id": "", "name": "f", "arguments": "{}"}]},
    ),
]


@pytest.mark.parametrize("message, expected", [c[1:] for c in CHOICE_CASES], ids=[c[0] for c in CHOICE_CASES])
def test_assistant_from_choice(message: Any, expected: dict) -> None:
    assert assistant_from_choice(message) == expected


def test_chat_choices_sorted_by_index() -> None:
    body = {
        "choices": [
            {"index": 1, "message": {"role": "assistant", "content": "B"}, "finish_reason": "length"},
            {"index": 0, "message": {"role": "assistant", "content": "A"}, "finish_reason": "stop"},
            "junk",
        ]
    }
    assert chat_choices(body) == [
        (0, {"role": "assistant", "content": "A"}, "stop"),
        (1, {"role": "assistant", "content": "B"}, "length"),
    ]


def test_completion_choices() -> None:
    body = {
        "choices": [
            {"index": 1, "text": " world", "finish_reason": None},
            {"index": 0, "text": "Hello", "finish_reason": "stop"},
            {"text": 5},  # no index: its position; no text string: ""
        ]
    }
    assert completion_choices(body) == [(0, "Hello", "stop"), (1, " world", None), (2, "", None)]


@pytest.mark.parametrize("body", [None, [], {}, {"choices": None}, {"choices": "x"}])
def test_choices_of_malformed_bodies_are_empty(body: Any) -> None:
    assert chat_choices(body) == []
    assert completion_choices(body) == []


# ---------------------------------------------------------------------------------------------------------
# StreamAccumulator
# ---------------------------------------------------------------------------------------------------------


def chunk(*choices: dict, **extra: Any) -> dict:
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "m", "choices": list(choices), **extra}


def delta(index: int = 0, finish_reason: str | None = None, **fields: Any) -> dict:
    return {"index": index, "delta": fields, "finish_reason": finish_reason}


def call_fragment(index: int, call_id: str | None = None, name: str | None = None, arguments: str = "") -> dict:
    fragment: dict = {"index": index, "function": {"arguments": arguments}}
    if call_id is not None:
        fragment.update(id=call_id, type="function")
        fragment["function"]["name"] = name
    return fragment


class StreamCase(NamedTuple):
    name: str
    chunks: list
    expected: list[tuple[int, dict, str | None]]


STREAM_CASES = [
    StreamCase(
        "content deltas",
        [
            chunk(delta(role="assistant", content="")),
            chunk(delta(content="Hel")),
            chunk(delta(content="lo")),
            chunk(delta(finish_reason="stop")),
        ],
        [(0, {"role": "assistant", "content": "Hello"}, "stop")],
    ),
    StreamCase(
        "reasoning deltas before content",
        [
            chunk(delta(reasoning_content="Two ")),
            chunk(delta(reasoning_content="plus two")),
            chunk(delta(content="4", reasoning_content=None)),
            chunk(delta(finish_reason="stop")),
        ],
        [(0, {"role": "assistant", "content": "4", "reasoning": "Two plus two"}, "stop")],
    ),
    StreamCase(
        "reasoning field, and both fields counted once",
        [chunk(delta(reasoning="a")), chunk(delta(reasoning="b", reasoning_content="b")), chunk(delta(content="c"))],
        [(0, {"role": "assistant", "content": "c", "reasoning": "ab"}, None)],
    ),
    StreamCase(
        "parallel tool calls, interleaved fragments",
        [
            chunk(delta(role="assistant", content=None, tool_calls=[call_fragment(0, "call_a", "get_weather")])),
            chunk(delta(tool_calls=[call_fragment(1, "call_b", "get_time")])),
            chunk(delta(tool_calls=[call_fragment(0, arguments='{"city":')])),
            chunk(delta(tool_calls=[call_fragment(1, arguments='{"tz":')])),
            chunk(delta(tool_calls=[call_fragment(1, arguments='"CET"}')])),
            chunk(delta(tool_calls=[call_fragment(0, arguments='"Paris"}')])),
            chunk(delta(finish_reason="tool_calls")),
        ],
        [
            (
                0,
                {
                    "role": "assistant",
                    "tool_calls": [
                        {"id": "call_a", "name": "get_weather", "arguments": '{"city":"Paris"}'},
                        {"id": "call_b", "name": "get_time", "arguments": '{"tz":"CET"}'},
                    ],
                },
                "tool_calls",
            )
        ],
    ),
    StreamCase(
        "cut-off stream keeps truncated arguments",
        [chunk(delta(tool_calls=[call_fragment(0, "c", "f", '{"q": "unfini')]))],
        [(0, {"role": "assistant", "tool_calls": [{"id": "c", "name": "f", "arguments": '{"q": "unfini'}]}, None)],
    ),
    StreamCase(
        "repeated id and name are not doubled",
        [
            chunk(delta(tool_calls=[call_fragment(0, "c", "f", "{")])),
            chunk(delta(tool_calls=[call_fragment(0, "c", "f", "}")])),
        ],
        [(0, {"role": "assistant", "tool_calls": [{"id": "c", "name": "f", "arguments": "{}"}]}, None)],
    ),
    StreamCase(
        "fragment without index is index 0",
        [
            chunk(delta(tool_calls=[{"id": "c", "function": {"name": "f", "arguments": '{"a"'}}])),
            chunk(delta(tool_calls=[{"function": {"arguments": ": 1}"}}])),
        ],
        [(0, {"role": "assistant", "tool_calls": [{"id": "c", "name": "f", "arguments": '{"a": 1}'}]}, None)],
    ),
    StreamCase(
        "whole calls without index, told apart by id",
        [
            chunk(
                delta(
                    tool_calls=[
                        {"id": "c1", "function": {"name": "f", "arguments": "{}"}},
                        {"id": "c2", "function": {"name": "g", "arguments": "{}"}},
                    ]
                )
            )
        ],
        [
            (
                0,
                {
                    "role": "assistant",
                    "tool_calls": [
                        {"id": "c1", "name": "f", "arguments": "{}"},
                        {"id": "c2", "name": "g", "arguments": "{}"},
                    ],
                },
                None,
            )
        ],
    ),
    StreamCase(
        "object arguments in a fragment",
        [chunk(delta(tool_calls=[{"index": 0, "id": "c", "function": {"name": "f", "arguments": {"a": 1}}}]))],
        [(0, {"role": "assistant", "tool_calls": [{"id": "c", "name": "f", "arguments": '{"a": 1}'}]}, None)],
    ),
    StreamCase(
        "legacy function_call deltas",
        [
            chunk(delta(function_call={"name": "f", "arguments": ""})),
            chunk(delta(function_call={"arguments": '{"x":'})),
            chunk(delta(function_call={"arguments": "2}"})),
        ],
        [(0, {"role": "assistant", "tool_calls": [{"id": "", "name": "f", "arguments": '{"x":2}'}]}, None)],
    ),
    StreamCase(
        "n=2 choices interleaved",
        [
            chunk(delta(0, content="A")),
            chunk(delta(1, content="B")),
            chunk(delta(1, content="b")),
            chunk(delta(0, content="a")),
            chunk(delta(1, finish_reason="length")),
            chunk(delta(0, finish_reason="stop")),
        ],
        [(0, {"role": "assistant", "content": "Aa"}, "stop"), (1, {"role": "assistant", "content": "Bb"}, "length")],
    ),
    StreamCase(
        "text completion chunks",
        [
            {"object": "text_completion", "choices": [{"index": 0, "text": "Once", "finish_reason": None}]},
            {"object": "text_completion", "choices": [{"index": 0, "text": " upon", "finish_reason": "length"}]},
        ],
        [(0, {"role": "assistant", "content": "Once upon"}, "length")],
    ),
    StreamCase(
        "garbage is ignored",
        [
            None,
            "x",
            {"choices": "x"},
            {"choices": [None, {"index": 0, "delta": "x"}]},
            chunk(delta(content=5)),
            chunk(delta(content="ok", tool_calls="x", function_call="x")),
            chunk(delta(tool_calls=["x", {"index": 0}])),
        ],
        [(0, {"role": "assistant", "content": "ok", "tool_calls": [{"id": "", "name": "", "arguments": ""}]}, None)],
    ),
    StreamCase("nothing", [], []),
]


@pytest.mark.parametrize("case", STREAM_CASES, ids=[c.name for c in STREAM_CASES])
def test_stream_accumulator(case: StreamCase) -> None:
    accumulator = StreamAccumulator()
    for item in case.chunks:
        accumulator.add(item)
    assert accumulator.choices() == case.expected


def test_stream_metadata_and_usage_only_final_chunk() -> None:
    """OpenAI/vLLM put usage in a last chunk with no choices; the last non-null usage is kept."""
    accumulator = StreamAccumulator()
    assert (accumulator.model, accumulator.response_id, accumulator.usage) == (None, None, None)
    accumulator.add({"id": "", "model": "", "choices": [delta(content="Hi")], "usage": None})
    final = {"prompt_tokens": 5, "total_tokens": 7}
    running = {"total_tokens": 3}
    accumulator.add({"id": "chatcmpl-9", "model": "qwen", "choices": [delta(finish_reason="stop")], "usage": running})
    accumulator.add({"id": "chatcmpl-9", "model": "qwen", "choices": [], "usage": final})
    accumulator.add({"id": "other", "model": "other", "choices": [], "usage": None})
    assert accumulator.model == "qwen"
    assert accumulator.response_id == "chatcmpl-9"
    assert accumulator.usage == final
    assert accumulator.choices() == [(0, {"role": "assistant", "content": "Hi"}, "stop")]


def _pieces(text: str, cuts: list[int]) -> list[str]:
    bounds = [0] + sorted(set(c % (len(text) + 1) for c in cuts)) + [len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]


@given(
    cuts_a=st.lists(st.integers(min_value=0), max_size=8),
    cuts_b=st.lists(st.integers(min_value=0), max_size=8),
    order=st.lists(st.booleans(), min_size=20, max_size=20),
)
def test_any_split_and_interleaving_of_parallel_calls(cuts_a: list[int], cuts_b: list[int], order: list[bool]) -> None:
    """However two calls' arguments are cut and interleaved, each call gets its own arguments back."""
    args_a, args_b = '{"city": "Paris", "unit": "C"}', '{"tz": "Europe/Berlin"}'
    queues = {
        0: [call_fragment(0, arguments=p) for p in _pieces(args_a, cuts_a)],
        1: [call_fragment(1, arguments=p) for p in _pieces(args_b, cuts_b)],
    }
    accumulator = StreamAccumulator()
    accumulator.add(chunk(delta(tool_calls=[call_fragment(0, "a", "weather"), call_fragment(1, "b", "time")])))
    flips = iter(order)
    while queues[0] or queues[1]:
        side = 1 if not queues[0] else 0 if not queues[1] else int(next(flips, False))
        accumulator.add(chunk(delta(tool_calls=[queues[side].pop(0)])))
    assert accumulator.choices() == [
        (
            0,
            {
                "role": "assistant",
                "tool_calls": [
                    {"id": "a", "name": "weather", "arguments": args_a},
                    {"id": "b", "name": "time", "arguments": args_b},
                ],
            },
            None,
        )
    ]
