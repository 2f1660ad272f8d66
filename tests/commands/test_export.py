"""`chatproxy export` on sessions recorded through the real proxy with the openai SDK.

The datasets it writes are loaded with Hugging Face `datasets` and run through the encoded rules of
LLaMA-Factory, FastChat, Unsloth, OpenAI and Axolotl (commands/trainer_rules.py): every profile must load whole.
"""

from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path
from typing import Any, Dict, List

import openai
import pytest

from chatproxy.commands import export
from chatproxy.commands.trainer_rules import (
    axolotl_problems,
    fastchat_problems,
    llamafactory_problems,
    openai_problems,
    trl_problems,
    unsloth_dataset_problems,
    unsloth_problems,
)

from fake_upstream import Chat, Reset
from subproc import ROOT

# A 1x1 PNG: a real image file for the image column.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather now",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CLOCK = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {"type": "object", "properties": {"tz": {"type": "string", "enum": ["CET", "UTC"]}}},
    },
}
CALLS = [
    {"id": "call_a", "name": "get_weather", "arguments": '{"city": "Paris"}'},
    {"id": "call_b", "name": "get_time", "arguments": '{"tz": "CET"}'},
]

MONDAY_RECORDS = 11
TUESDAY_RECORDS = 3
# Monday's leaves: greeting, reasoning, tools, two haiku branches, image, completion (the truncated tool
# call is skipped, the reset stream is incomplete); Tuesday adds the French chat (its greeting is a duplicate).
EXPORTED = 8

CONSUMERS = {
    "sharegpt": [llamafactory_problems],
    "sharegpt-plain": [fastchat_problems, unsloth_problems],
    "openai": [openai_problems],
    "messages": [axolotl_problems, trl_problems],
}


def client_for(proxy: Any, session: str = "", tags: str = "") -> openai.OpenAI:
    headers = {}
    if session:
        headers["X-Chatproxy-Session"] = session
    if tags:
        headers["X-Chatproxy-Tags"] = tags
    return openai.OpenAI(
        base_url=proxy.url + "/v1", api_key="sk-test", max_retries=0, timeout=10, default_headers=headers
    )


def record_week(upstream: Any, make_proxy: Any) -> Any:
    """Two sessions with what a week of chatting holds; returns the proxy, still running."""
    proxy = make_proxy(upstream.url, session="monday")
    monday = client_for(proxy)
    _greeting_chat(monday)
    upstream.push(Chat("Paris.", reasoning="The capital of France is Paris."))
    _consume(
        monday.chat.completions.create(
            model="fake-model", stream=True, messages=[{"role": "user", "content": "Capital of France?"}]
        )
    )
    _tool_chat(monday, upstream)
    haiku = [{"role": "user", "content": "Write a haiku"}]
    upstream.push(Chat("Leaves fall."), Chat("Snow melts."))
    monday.chat.completions.create(model="fake-model", messages=haiku)
    monday.chat.completions.create(model="fake-model", messages=haiku)  # regenerated: a second branch
    image = "data:image/png;base64," + base64.b64encode(PNG).decode()
    monday.chat.completions.create(
        model="fake-model",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": image}},
                ],
            }
        ],
    )
    upstream.push(
        Chat(
            "",
            tool_calls=[{"id": "call_t", "name": "get_weather", "arguments": '{"city": "Par'}],
            finish_reason="length",
        )
    )  # max_tokens hit mid-call: a complete reply, a broken call
    monday.chat.completions.create(
        model="fake-model", tools=[WEATHER], messages=[{"role": "user", "content": "Weather in Paris, briefly?"}]
    )
    upstream.push(Reset(after=_stream_head_and_one_chunk()))
    with pytest.raises(openai.APIError):
        _consume(
            monday.chat.completions.create(
                model="fake-model", stream=True, messages=[{"role": "user", "content": "A long story, please"}]
            )
        )
    monday.completions.create(model="fake-model", prompt="Once upon a time")
    tuesday = client_for(proxy, session="tuesday")
    _greeting_chat(tuesday)  # the same chat again, in another session
    client_for(proxy, session="tuesday", tags="keep,fr").chat.completions.create(
        model="other-model", messages=[{"role": "user", "content": "Bonjour"}]
    )
    proxy.wait_recorded(MONDAY_RECORDS + TUESDAY_RECORDS)
    proxy.flush()  # the live files are final now: tests compare them before and after an export
    return proxy


def _greeting_chat(client: openai.OpenAI) -> None:
    history = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hello there"}]
    first = client.chat.completions.create(model="fake-model", messages=history)
    history += [
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "Tell me more"},
    ]
    client.chat.completions.create(model="fake-model", messages=history)


def _tool_chat(client: openai.OpenAI, upstream: Any) -> None:
    upstream.push(Chat("", tool_calls=CALLS, finish_reason="tool_calls"), Chat("Sunny, and it is 14:00."))
    history: List[Dict[str, Any]] = [{"role": "user", "content": "Weather and time in Paris?"}]
    calls = client.chat.completions.create(model="fake-model", messages=history, tools=[WEATHER, CLOCK])
    history.append(calls.choices[0].message.model_dump(exclude_none=True))
    history += [
        {"role": "tool", "tool_call_id": "call_a", "content": "sunny, 21 C"},
        {"role": "tool", "tool_call_id": "call_b", "content": "14:00"},
    ]
    client.chat.completions.create(model="fake-model", messages=history, tools=[WEATHER, CLOCK])


def _consume(stream: Any) -> None:
    for _ in stream:
        pass


def _stream_head_and_one_chunk() -> bytes:
    event = (
        b'data: {"id":"c1","object":"chat.completion.chunk","created":0,"model":"fake-model","choices":'
        b'[{"index":0,"delta":{"role":"assistant","content":"Once there was"},"finish_reason":null}]}\n\n'
    )
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    return head + b"%x\r\n" % len(event) + event + b"\r\n"


@pytest.fixture
def week(upstream: Any, make_proxy: Any) -> Any:
    return record_week(upstream, make_proxy)


def run_export(capsys: Any, *argv: str) -> Result:
    code = export.main(list(argv))
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)


class Result:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err


def read_dataset(path: Path) -> List[Dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines()]


# ---------------------------------------------------------------------------------------------------------
# Every profile loads whole
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
@pytest.mark.parametrize("fmt", sorted(CONSUMERS))
def test_every_profile_loads_in_datasets_and_passes_its_consumers(week, capsys, tmp_path, fmt, suffix):
    """Recorded sessions export to a file Hugging Face datasets loads whole, and every record obeys the
    published rules of the profile's consumers."""
    datasets = pytest.importorskip("datasets", minversion="2.14")
    out = tmp_path / f"chats{suffix}"
    result = run_export(capsys, "--all", "--datasets", str(week.datasets), "--format", fmt, "--out", str(out))
    assert result.code == 0, result.err
    records = read_dataset(out)
    assert len(records) == EXPORTED
    for record in records:
        for rules in CONSUMERS[fmt]:
            assert rules(record) == [], record
    if fmt == "sharegpt-plain":
        assert unsloth_dataset_problems(records) == []
    loaded = datasets.load_dataset("json", data_files=str(out), split="train")
    assert loaded.num_rows == EXPORTED


def test_tool_schemas_that_differ_between_chats_still_load(week, capsys, tmp_path):
    """Frontends send whatever tool schemas they have; Arrow infers one type per nested field, so a
    parameter that is a string enum in one chat and an integer in another must still load."""
    datasets = pytest.importorskip("datasets", minversion="2.14")
    other_clock = {
        "type": "function",
        "function": {
            "name": "get_time",
            "parameters": {"type": "object", "properties": {"tz": {"type": "integer", "enum": [0, 1], "default": 0}}},
        },
    }
    client_for(week, session="wednesday").chat.completions.create(
        model="fake-model", tools=[other_clock], messages=[{"role": "user", "content": "Time at offset 1?"}]
    )
    week.wait_recorded(MONDAY_RECORDS + TUESDAY_RECORDS + 1)
    out = tmp_path / "chats.jsonl"
    run_export(capsys, "--all", "--datasets", str(week.datasets), "--format", "messages", "--out", str(out))
    loaded = datasets.load_dataset("json", data_files=str(out), split="train")
    assert loaded.num_rows == EXPORTED + 1


def test_openai_records_keep_tool_calls_and_results_structured(week, capsys, tmp_path):
    out = tmp_path / "chats.jsonl"
    run_export(capsys, "monday", "--datasets", str(week.datasets), "--format", "openai", "--out", str(out))
    tool_chat = next(r for r in read_dataset(out) if "tools" in r)
    assert [t["function"]["name"] for t in tool_chat["tools"]] == ["get_weather", "get_time"]
    call_message = tool_chat["messages"][1]
    assert [(c["id"], c["function"]["arguments"]) for c in call_message["tool_calls"]] == [
        ("call_a", '{"city": "Paris"}'),
        ("call_b", '{"tz": "CET"}'),
    ]
    assert [(m["role"], m.get("tool_call_id")) for m in tool_chat["messages"][2:]] == [
        ("tool", "call_a"),
        ("tool", "call_b"),
        ("assistant", None),
    ]


def test_sharegpt_images_are_absolute_paths_to_the_recorded_files(week, capsys, tmp_path):
    out = tmp_path / "chats.json"
    run_export(capsys, "monday", "--datasets", str(week.datasets), "--format", "sharegpt", "--out", str(out))
    with_image = next(r for r in read_dataset(out) if r["images"])
    (path,) = with_image["images"]
    assert os.path.isabs(path) and Path(path).read_bytes() == PNG
    assert with_image["conversations"][0]["value"] == "What is this?\n<image>"


def test_an_image_file_gone_from_disk_becomes_a_text_placeholder(week, capsys, tmp_path):
    """LLaMA-Factory opens every listed image: a deleted file would stop training, so its placeholder is
    neutralised instead of the conversation being lost."""
    for image in (week.datasets / "monday" / "images").iterdir():
        image.unlink()
    out = tmp_path / "chats.json"
    result = run_export(capsys, "monday", "--datasets", str(week.datasets), "--format", "sharegpt", "--out", str(out))
    assert result.code == 0
    chat = next(r for r in read_dataset(out) if r["conversations"][0]["value"].startswith("What is this?"))
    assert chat["conversations"][0]["value"] == "What is this?\n[image]" and chat["images"] == []
    assert llamafactory_problems(chat) == []


# ---------------------------------------------------------------------------------------------------------
# Skipped, duplicate, incomplete
# ---------------------------------------------------------------------------------------------------------


def test_a_conversation_that_cannot_be_valid_is_counted_and_explained(week, capsys, tmp_path):
    out = tmp_path / "chats.jsonl"
    result = run_export(capsys, "monday", "--datasets", str(week.datasets), "--format", "openai", "--out", str(out))
    assert "1 skipped:" in result.out
    assert "1 × assistant tool call with truncated JSON arguments (monday/" in result.out
    assert all("Par" not in json.dumps(r) or "Paris" in json.dumps(r) for r in read_dataset(out))


def test_the_same_chat_recorded_in_two_sessions_is_written_once(week, capsys, tmp_path):
    out = tmp_path / "chats.jsonl"
    result = run_export(
        capsys, "monday", "tuesday", "--datasets", str(week.datasets), "--format", "sharegpt", "--out", str(out)
    )
    assert "1 duplicate" in result.out
    greetings = [r for r in read_dataset(out) if r["conversations"][0]["value"] == "You are terse."]
    assert len(greetings) == 1


def test_incomplete_replies_only_with_keep_incomplete(week, capsys, tmp_path):
    out = tmp_path / "chats.jsonl"
    args = ["monday", "--datasets", str(week.datasets), "--format", "sharegpt", "--out", str(out)]
    run_export(capsys, *args)
    assert not any("A long story" in json.dumps(r) for r in read_dataset(out))
    run_export(capsys, *args, "--keep-incomplete")
    cut = [r for r in read_dataset(out) if r["conversations"][0]["value"] == "A long story, please"]
    assert cut and cut[0]["conversations"][-1] == {"from": "gpt", "value": "Once there was"}


# ---------------------------------------------------------------------------------------------------------
# Filters and options
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, expected",
    [
        (["--model", "other-*"], ["Bonjour"]),
        (["--model", "FAKE-MODEL"], None),  # case-insensitive: everything but the French chat
        (["--tag", "keep"], ["Bonjour"]),
        (["--tag", "keep", "--tag", "missing"], []),
        (["--min-turns", "4"], ["Hello there", "Weather and time in Paris?"]),
        (["--since", "2099-01-01"], []),
        (["--until", "2000-01-01"], []),
        (["--since", "1d", "--model", "other-model"], ["Bonjour"]),
    ],
)
def test_filters(week, capsys, tmp_path, options, expected):
    out = tmp_path / "chats.jsonl"
    result = run_export(
        capsys, "--all", "--datasets", str(week.datasets), "--format", "openai", "--out", str(out), *options
    )
    if expected == []:
        assert result.code == 1 and not out.exists()
        assert "nothing to export" in result.err
        return
    first_user = [next(m["content"] for m in r["messages"] if m["role"] == "user") for r in read_dataset(out)]
    if expected is None:
        assert "Bonjour" not in first_user and len(first_user) == EXPORTED - 1
    else:
        assert first_user == expected
    assert "filtered out" in result.out


def test_branches_last_keeps_only_the_newest_reply_of_a_regenerated_chat(week, capsys, tmp_path):
    out = tmp_path / "chats.jsonl"
    run_export(
        capsys,
        "monday",
        "--datasets",
        str(week.datasets),
        "--format",
        "sharegpt",
        "--out",
        str(out),
        "--branches",
        "last",
    )
    haiku = [
        r["conversations"][1]["value"] for r in read_dataset(out) if r["conversations"][0]["value"] == "Write a haiku"
    ]
    assert haiku == ["Snow melts."]


def test_reasoning_drop_leaves_only_the_answer(week, capsys, tmp_path):
    out = tmp_path / "chats.jsonl"
    for fmt in CONSUMERS:
        run_export(
            capsys,
            "monday",
            "--datasets",
            str(week.datasets),
            "--format",
            fmt,
            "--out",
            str(out),
            "--reasoning",
            "drop",
        )
        text = out.read_text(encoding="utf-8")
        assert "<think>" not in text and "Paris." in text


def test_split_writes_train_and_test_reproducibly(week, capsys, tmp_path):
    datasets = pytest.importorskip("datasets", minversion="2.14")
    out = tmp_path / "chats.jsonl"
    args = ["--all", "--datasets", str(week.datasets), "--format", "messages", "--out", str(out), "--split", "0.75"]
    result = run_export(capsys, *args, "--seed", "7")
    train, test = tmp_path / "chats.train.jsonl", tmp_path / "chats.test.jsonl"
    first = (train.read_bytes(), test.read_bytes())
    assert len(read_dataset(train)) == 6 and len(read_dataset(test)) == 2
    assert not out.exists()
    assert "test_datasets:" in result.out
    run_export(capsys, *args, "--seed", "7")
    assert (train.read_bytes(), test.read_bytes()) == first
    run_export(capsys, "tuesday", "monday", *args[1:], "--seed", "7")  # the order sessions are named in does not matter
    assert (train.read_bytes(), test.read_bytes()) == first
    # As the printed snippet does: one load per file (a column one split lacks would fail a joint load).
    assert f'train = load_dataset("json", data_files="{train.resolve()}", split="train")' in result.out
    assert f'test = load_dataset("json", data_files="{test.resolve()}", split="train")' in result.out
    rows = [datasets.load_dataset("json", data_files=str(path), split="train").num_rows for path in (train, test)]
    assert rows == [6, 2]


def test_split_shuffles_differently_with_another_seed():
    records = [b'{"n":%d}' % n for n in range(20)]
    one, other = export.split(records, 0.5, 1), export.split(records, 0.5, 2)
    assert sorted(one["train"] + one["test"]) == sorted(records)
    assert one["train"] != other["train"]


def test_json_out_is_an_array_and_jsonl_one_record_per_line(week, capsys, tmp_path):
    for suffix in (".json", ".jsonl"):
        out = tmp_path / f"chats{suffix}"
        run_export(capsys, "monday", "--datasets", str(week.datasets), "--format", "sharegpt", "--out", str(out))
        text = out.read_text(encoding="utf-8")
        if suffix == ".json":
            assert text.startswith("[\n") and len(json.loads(text)) == 7
        else:
            assert len(text.splitlines()) == 7 and all(json.loads(line) for line in text.splitlines())


# ---------------------------------------------------------------------------------------------------------
# The printed configuration
# ---------------------------------------------------------------------------------------------------------


def test_llamafactory_entry_names_the_file_and_the_columns_present(week, capsys, tmp_path):
    out = tmp_path / "my chats.json"
    result = run_export(capsys, "monday", "--datasets", str(week.datasets), "--format", "sharegpt", "--out", str(out))
    block = result.out.split("LLaMA-Factory: add to dataset_info.json (in your dataset_dir)\n", 1)[1]
    entry = json.loads("{" + block.split("\nand train with:", 1)[0] + "}")
    assert entry == {
        "my_chats": {
            "file_name": str(out.resolve()),
            "formatting": "sharegpt",
            "columns": {"messages": "conversations", "images": "images", "tools": "tools"},
        }
    }
    assert "dataset: my_chats" in result.out
    assert f'load_dataset("json", data_files="{out.resolve()}", split="train")' in result.out


def test_llamafactory_columns_are_in_every_record_even_with_no_tool_or_image(week, capsys, tmp_path):
    """LLaMA-Factory reads every column the entry names from every example: a session with no tool and no
    image still has both columns ("" and []), so the one entry printed (and the live file's) always fits."""
    out = tmp_path / "chats.json"
    result = run_export(capsys, "tuesday", "--datasets", str(week.datasets), "--format", "sharegpt", "--out", str(out))
    assert (
        '"columns": {\n      "messages": "conversations",\n      "images": "images",\n      "tools": "tools"\n    }'
        in result.out
    )
    records = read_dataset(out)
    assert records and all((r["tools"], r["images"]) == ("", []) for r in records)


def test_axolotl_block_for_messages_and_plain(week, capsys, tmp_path):
    out = tmp_path / "chats.jsonl"
    result = run_export(capsys, "monday", "--datasets", str(week.datasets), "--format", "messages", "--out", str(out))
    assert f"datasets:\n  - path: {out.resolve()}\n    ds_type: json\n    type: chat_template\n" in result.out
    assert "TRL: SFTTrainer" in result.out and "load_dataset(" in result.out
    result = run_export(capsys, "monday", "--datasets", str(week.datasets), "--format", "openai", "--out", str(out))
    assert "type: chat_template" not in result.out and 'purpose="fine-tune"' in result.out
    assert "--format messages" in result.out
    result = run_export(
        capsys, "monday", "--datasets", str(week.datasets), "--format", "sharegpt-plain", "--out", str(out)
    )
    assert (
        "    field_messages: conversations\n    message_property_mappings:\n      role: from\n      content: value"
        in result.out
    )
    assert "standardize_sharegpt(" in result.out and f"FastChat: --data_path {out.resolve()}" in result.out


# ---------------------------------------------------------------------------------------------------------
# Reading sessions
# ---------------------------------------------------------------------------------------------------------


def test_a_session_being_recorded_is_read_without_taking_its_lock(week, capsys, tmp_path):
    """The proxy keeps recording while (and after) an export reads its locked session."""
    out = tmp_path / "chats.jsonl"
    assert (
        run_export(capsys, "monday", "--datasets", str(week.datasets), "--format", "openai", "--out", str(out)).code
        == 0
    )
    client_for(week).chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "Still there?"}])
    week.wait_recorded(MONDAY_RECORDS + TUESDAY_RECORDS + 1)
    run_export(capsys, "monday", "--datasets", str(week.datasets), "--format", "openai", "--out", str(out))
    assert len(read_dataset(out)) == 8


def test_damaged_lines_are_reported_and_the_rest_exported(week, capsys, tmp_path):
    folder = tmp_path / "copy"
    folder.mkdir()
    lines = (week.datasets / "monday.jsonl").read_bytes().splitlines(keepends=True)
    # A garbage line in the middle, and the first record of the greeting chat lost: its continuation
    # cannot be exported without the beginning.
    (folder / "monday.jsonl").write_bytes(
        b"".join(lines[1:5]) + b"{not json\n" + b"".join(lines[5:]) + b'{"v": 1, "id"'
    )
    out = tmp_path / "chats.jsonl"
    result = run_export(capsys, "monday", "--datasets", str(folder), "--format", "openai", "--out", str(out))
    assert result.code == 0
    assert "chatproxy: warning: " in result.err and "skipped damaged line 5: not JSON" in result.err
    assert "left out the unfinished last line" in result.err
    assert "its beginning was on a damaged journal line" in result.out
    assert len(read_dataset(out)) == 6


def test_progress_shows_on_a_terminal_and_stays_quiet_when_piped(week, capsys, tmp_path, monkeypatch):
    out = tmp_path / "chats.jsonl"
    args = ["--all", "--datasets", str(week.datasets), "--format", "openai", "--out", str(out)]
    assert "\r" not in run_export(capsys, *args).err

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    monkeypatch.setattr(export, "PROGRESS_INTERVAL", 0.0)
    assert export.main(args) == 0
    shown = terminal.getvalue()
    assert "\rreading monday: 11 records read, " in shown and " skipped\x1b[K" in shown
    assert shown.endswith("\r\x1b[K")


# ---------------------------------------------------------------------------------------------------------
# Errors: one line, exit 2, nothing written
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, message",
    [
        (["nosuch", "--format", "sharegpt"], "unknown session 'nosuch'"),
        (["monday", "--format", "alpaca"], "argument --format: invalid choice: 'alpaca'"),
        (["monday", "--format", "sharegpt", "--out", "{tmp}/chats.csv"], "--out must end in .json or .jsonl"),
        (["monday", "--format", "sharegpt", "--since", "last tuesday"], "--since: cannot read 'last tuesday'"),
        (["monday", "--format", "sharegpt", "--until", "2024-13-45"], "--until: cannot read '2024-13-45'"),
        (["monday", "--all", "--format", "sharegpt"], "name sessions or use --all, not both"),
        (["--format", "sharegpt"], "name a session or use --all (sessions in "),
        (["monday", "--format", "sharegpt", "--split", "1.5"], "--split must be a fraction between 0 and 1"),
        (["monday", "--format", "sharegpt", "--out", "{tmp}/no/such/dir/x.json"], "does not exist"),
        (["monday", "--format", "sharegpt", "--out", "{datasets}/monday.json"], "would replace a session's own file"),
        (["monday", "--format", "openai", "--out", "{datasets}/chats.jsonl"], "would be read as a session"),
        (["monday", "--format", "sharegpt", "--out", "{datasets}/monday@20261201.json"], "is a session part's"),
        (["monday", "--format", "sharegpt", "--datasets", "{tmp}/nowhere"], "no datasets folder"),
    ],
)
def test_errors_are_one_line_exit_2_and_write_nothing(week, capsys, tmp_path, argv, message):
    before = written_files(tmp_path)
    snapshot = (week.datasets / "monday.json").read_bytes() if (week.datasets / "monday.json").exists() else None
    argv = [a.format(tmp=tmp_path, datasets=week.datasets) for a in argv]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "chats.json")]
    if "--datasets" not in argv:
        argv += ["--datasets", str(week.datasets)]
    result = run_export(capsys, *argv)
    assert result.code == 2
    assert result.out == ""
    assert result.err.count("\n") == 1 and result.err.startswith("chatproxy export: error: ")
    assert message in result.err
    assert written_files(tmp_path) == before
    if snapshot is not None:
        assert (week.datasets / "monday.json").read_bytes() == snapshot


def written_files(folder: Path) -> List[str]:
    # The datasets folder is the running proxy's: it writes snapshots and locks there on its own schedule.
    return sorted(str(p) for p in folder.rglob("*") if "datasets" not in p.relative_to(folder).parts)


def test_help_describes_every_option(capsys):
    assert export.main(["--help"]) == 0
    text = capsys.readouterr().out
    for option in (
        "--all",
        "--datasets",
        "--format",
        "--out",
        "--since",
        "--until",
        "--model",
        "--tag",
        "--min-turns",
        "--keep-incomplete",
        "--branches",
        "--reasoning",
        "--split",
        "--seed",
    ):
        assert option in text
    for profile in CONSUMERS:
        assert profile in text


def test_cli_dispatches_export(week, tmp_path):
    """`python -m chatproxy export ...` reaches this command with its exit status."""
    import subprocess
    import sys

    out = tmp_path / "chats.jsonl"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "chatproxy",
            "export",
            "monday",
            "--datasets",
            str(week.datasets),
            "--format",
            "openai",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(ROOT),
    )
    assert done.returncode == 0, done.stderr
    assert len(read_dataset(out)) == 7
    bad = subprocess.run(
        [sys.executable, "-m", "chatproxy", "export", "--format", "openai", "--out", "x.txt"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(tmp_path),
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1


# ---------------------------------------------------------------------------------------------------------
# Pieces
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, end, expected",
    [
        ("2024-05-01T12:00:00Z", False, "2024-05-01T12:00:00+00:00"),
        ("2024-05-01T12:00:00+02:00", False, "2024-05-01T10:00:00+00:00"),
        ("7d", False, "2024-05-08T12:00:00+00:00"),
        ("12h", False, "2024-05-15T00:00:00+00:00"),
        ("2w", False, "2024-05-01T12:00:00+00:00"),
    ],
)
def test_parse_when(text, end, expected):
    import datetime

    now = datetime.datetime(2024, 5, 15, 12, tzinfo=datetime.timezone.utc)
    parsed = export.parse_when(text, "--since", end, now=now)
    assert parsed.astimezone(datetime.timezone.utc).isoformat() == expected


def test_a_date_alone_is_local_midnight_and_as_until_includes_the_day():
    import datetime

    since = export.parse_when("2024-05-01", "--since", end=False)
    until = export.parse_when("2024-05-01", "--until", end=True)
    assert since.tzinfo is not None and (since.hour, since.minute) == (0, 0)
    assert until - since == datetime.timedelta(days=1)
