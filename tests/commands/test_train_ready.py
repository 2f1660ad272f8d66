"""Train-ready (issue 12): what LLaMA-Factory, TRL and Axolotl stopped on, recorded through the real proxy
with the real `openai` SDK, checked in the live SESSION.json and in every export profile."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, List

import openai
import pytest

from chatproxy.commands import export
from chatproxy.commands.profiles import PROFILES

from fake_upstream import Chat

PREFILL = "There once was a cat from Peru,"
CONTINUATION = " who dreamed she was eating a shoe."
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
# OpenAI strict mode: an optional field is a union with null.
STRICT = {
    "type": "function",
    "function": {
        "name": "search",
        "strict": True,
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string"}, "site": {"type": ["string", "null"]}},
            "required": ["query", "site"],
            "additionalProperties": False,
        },
    },
}


def client_for(proxy: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk-test", max_retries=0, timeout=10)


def run_export(capsys: Any, *argv: str) -> Any:
    code = export.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def read_jsonl(path: Path) -> List[Dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def export_to(capsys: Any, proxy: Any, fmt: str, out: Path, *extra: str) -> List[Dict[str, Any]]:
    code, _, err = run_export(
        capsys, proxy.session, "--datasets", str(proxy.datasets), "--format", fmt, "--out", str(out), *extra
    )
    assert code == 0, err
    return read_jsonl(out)


# ---------------------------------------------------------------------------------------------------------
# The live SESSION.json
# ---------------------------------------------------------------------------------------------------------


def test_live_file_turns_an_http_image_into_text_and_does_not_list_it(upstream, make_proxy):
    """LLaMA-Factory hands every `images` entry to Image.open: a URL there stops the whole run."""
    proxy = make_proxy(upstream.url, session="live")
    client_for(proxy).chat.completions.create(
        model="fake-model",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                ],
            }
        ],
    )
    proxy.wait_recorded(1)
    [entry] = proxy.dataset()
    assert entry["images"] == []
    human = entry["conversations"][0]["value"]
    assert "[image]" in human and "<image>" not in human and "example.com" not in json.dumps(entry)


def test_live_file_always_has_the_tools_and_images_columns(upstream, make_proxy):
    """One dataset_info.json entry naming messages, tools and images reads any session (LLaMA-Factory 0.9.5
    reads example["tools"] and example["images"] of every example it maps: a missing one is a KeyError)."""
    proxy = make_proxy(upstream.url, session="live")
    client_for(proxy).chat.completions.create(
        model="fake-model", messages=[{"role": "user", "content": "Hello, how are you?"}]
    )
    proxy.wait_recorded(1)
    [entry] = proxy.dataset()
    assert list(entry) == ["conversations", "tools", "images", "meta"]
    assert (entry["tools"], entry["images"]) == ("", [])


def test_a_truncated_tool_call_is_left_out_of_the_live_file_and_of_every_export(
    upstream, make_proxy, capsys, tmp_path, caplog
):
    """finish_reason "length" in the middle of a call's arguments: a complete reply with a broken call.
    The live file and the export agree (both leave it out), and both say why."""
    proxy = make_proxy(upstream.url, session="live")
    client = client_for(proxy)
    client.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "Hello, how are you?"}])
    upstream.push(
        Chat(
            "",
            tool_calls=[{"id": "call_t", "name": "get_weather", "arguments": '{"city": "Par'}],
            finish_reason="length",
        )
    )
    with caplog.at_level(logging.WARNING):
        client.chat.completions.create(
            model="fake-model", tools=[WEATHER], messages=[{"role": "user", "content": "Weather in Paris?"}]
        )
        proxy.wait_recorded(2)
        live = proxy.dataset()
    assert [e["conversations"][0]["value"] for e in live] == ["Hello, how are you?"]
    assert "not in live.json: assistant tool call with truncated JSON arguments" in caplog.text
    for fmt in sorted(PROFILES):
        code, out, _ = run_export(
            capsys, "live", "--datasets", str(proxy.datasets), "--format", fmt, "--out", str(tmp_path / "x.jsonl")
        )
        assert code == 0 and "1 × assistant tool call with truncated JSON arguments (live/" in out, (fmt, out)
        assert len(read_jsonl(tmp_path / "x.jsonl")) == 1


# ---------------------------------------------------------------------------------------------------------
# An assistant prefill continued by the backend
# ---------------------------------------------------------------------------------------------------------


def test_a_prefill_and_its_continuation_are_one_assistant_turn_everywhere(upstream, make_proxy, capsys, tmp_path):
    proxy = make_proxy(upstream.url, session="live")
    upstream.push(Chat(CONTINUATION))
    client_for(proxy).chat.completions.create(
        model="fake-model",
        messages=[
            {"role": "user", "content": "A limerick, please."},
            {"role": "assistant", "content": PREFILL},
        ],
    )
    proxy.wait_recorded(1)
    whole = PREFILL + CONTINUATION
    [entry] = proxy.dataset()
    assert entry["conversations"] == [
        {"from": "human", "value": "A limerick, please."},
        {"from": "gpt", "value": whole},
    ]
    for fmt in sorted(PROFILES):
        [record] = export_to(capsys, proxy, fmt, tmp_path / f"{fmt}.jsonl")
        turns = record.get("conversations") or record["messages"]
        answers = [
            t.get("value", t.get("content")) for t in turns if t.get("from", t.get("role")) in ("gpt", "assistant")
        ]
        assert answers == [whole], fmt


# ---------------------------------------------------------------------------------------------------------
# Tool schemas through Hugging Face datasets; tool-call-only assistant messages
# ---------------------------------------------------------------------------------------------------------


def record_tool_chats(upstream: Any, proxy: Any) -> None:
    client = client_for(proxy)
    upstream.push(
        Chat("", tool_calls=[{"id": "call_1", "name": "search", "arguments": '{"query": "cats", "site": null}'}]),
        Chat("Cats are mammals."),
        Chat("It is sunny."),
    )
    history: List[Dict[str, Any]] = [{"role": "user", "content": "Look up cats"}]
    first = client.chat.completions.create(model="fake-model", tools=[STRICT], messages=history)
    history.append(first.choices[0].message.model_dump(exclude_none=True))
    history.append({"role": "tool", "tool_call_id": "call_1", "content": "Cats: mammals."})
    client.chat.completions.create(model="fake-model", tools=[STRICT], messages=history)
    client.chat.completions.create(
        model="fake-model", tools=[WEATHER], messages=[{"role": "user", "content": "Weather in Paris?"}]
    )
    proxy.wait_recorded(3)


def test_messages_profile_tool_schemas_read_back_from_datasets_byte_identical(upstream, make_proxy, capsys, tmp_path):
    """A strict-mode union type beside another tool's plain "string": as objects Arrow either fails
    (datasets <= 4.0.0) or adds each tool's keys to the others; as JSON text it reads back exactly."""
    datasets = pytest.importorskip("datasets")
    proxy = make_proxy(upstream.url, session="live")
    record_tool_chats(upstream, proxy)
    out = tmp_path / "chats.jsonl"
    written = export_to(capsys, proxy, "messages", out)
    loaded = datasets.load_dataset("json", data_files=str(out), split="train", cache_dir=str(tmp_path / "hf"))
    assert loaded.num_rows == len(written) == 2
    for row, record in zip(loaded, written):
        assert row["tools"] == record["tools"]  # the same text as in the file
    schemas = {tool["function"]["name"]: tool for row in loaded for tool in json.loads(row["tools"])}
    assert schemas == {"search": STRICT, "get_weather": WEATHER}  # as the client sent them, no key added


def test_an_assistant_message_that_only_calls_tools_has_empty_content(upstream, make_proxy, capsys, tmp_path):
    """Axolotl 0.19 with split_thinking reads message["content"]: a missing key is a KeyError."""
    proxy = make_proxy(upstream.url, session="live")
    record_tool_chats(upstream, proxy)
    for fmt in ("openai", "messages"):
        records = export_to(capsys, proxy, fmt, tmp_path / f"{fmt}.jsonl")
        calling = [m for r in records for m in r["messages"] if m.get("tool_calls")]
        assert calling and all(m["content"] == "" for m in calling), fmt


def test_tools_used_drops_tool_lists_of_chats_that_call_no_tool(upstream, make_proxy, capsys, tmp_path):
    proxy = make_proxy(upstream.url, session="live")
    record_tool_chats(upstream, proxy)  # the weather chat carries a tool list it never uses
    for fmt in sorted(PROFILES):
        every = export_to(capsys, proxy, fmt, tmp_path / "all.jsonl")
        used = export_to(capsys, proxy, fmt, tmp_path / "used.jsonl", "--tools", "used")
        assert len(every) == len(used) == 2
        if fmt == "sharegpt-plain":
            assert sum("<tools>" in r["conversations"][0]["value"] for r in used) == 1
            continue
        assert sum(bool(r.get("tools")) for r in every) == 2, fmt
        assert sum(bool(r.get("tools")) for r in used) == 1, fmt
        kept = next(r for r in used if r.get("tools"))
        assert "search" in json.dumps(kept["tools"]), fmt


# ---------------------------------------------------------------------------------------------------------
# Special-token text
# ---------------------------------------------------------------------------------------------------------


def record_special(upstream: Any, proxy: Any) -> None:
    client = client_for(proxy)
    upstream.push(Chat("Done.<|im_end|>"), Chat("Plain."))
    client.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "Say </s> please"}])
    client.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "Hello, how are you?"}])
    proxy.wait_recorded(2)


def test_special_token_text_is_kept_by_default_with_a_warning(upstream, make_proxy, capsys, tmp_path):
    proxy = make_proxy(upstream.url, session="live")
    record_special(upstream, proxy)
    out = tmp_path / "chats.jsonl"
    code, _, err = run_export(
        capsys, "live", "--datasets", str(proxy.datasets), "--format", "sharegpt", "--out", str(out)
    )
    assert code == 0
    assert "warning: 1 conversation contains special-token text (<|im_end|> in 1, </s> in 1)" in err
    assert len(read_jsonl(out)) == 2 and "<|im_end|>" in out.read_text(encoding="utf-8")


def test_special_tokens_drop_leaves_those_conversations_out(upstream, make_proxy, capsys, tmp_path):
    proxy = make_proxy(upstream.url, session="live")
    record_special(upstream, proxy)
    out = tmp_path / "chats.jsonl"
    code, stdout, _ = run_export(
        capsys,
        "live",
        "--datasets",
        str(proxy.datasets),
        "--format",
        "messages",
        "--out",
        str(out),
        "--special-tokens",
        "drop",
    )
    assert code == 0 and "1 × contains special-token text <|im_end|> (live/" in stdout
    assert [r["messages"][0]["content"] for r in read_jsonl(out)] == ["Hello, how are you?"]


def test_special_tokens_escape_breaks_every_token_with_a_zero_width_space(upstream, make_proxy, capsys, tmp_path):
    proxy = make_proxy(upstream.url, session="live")
    record_special(upstream, proxy)
    for fmt in sorted(PROFILES):
        out = tmp_path / "chats.jsonl"
        export_to(capsys, proxy, fmt, out, "--special-tokens", "escape")
        text = out.read_text(encoding="utf-8")
        assert "<|im_end|>" not in text and "</s>" not in text, fmt
        assert "Done.<\u200b|im_end|>" in text and "Say <\u200b/s> please" in text, fmt
