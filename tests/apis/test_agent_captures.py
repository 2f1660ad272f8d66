"""Requests the real agents sent, replayed through the proxy: Codex CLI 0.171.0 (`codex exec`, Responses
API) and Claude Code 2.1.197 (`claude -p`, Messages API), each doing one shell tool round against a fake
backend (tests/test_real_agents.py drives the agents themselves). The bodies in data/ are those captures,
trimmed (long texts cut, tool lists shortened) and without the dummy keys; the fake answers as it did.
"""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from typing import Any, Dict, List

from chatproxy.commands import export

from fake_agents import MessagesTurn, ResponsesTurn

DATA = Path(__file__).parent / "data"
KEY = "sk-replayed-dummy-key-0123"


def capture(name: str) -> Dict[str, Any]:
    return json.loads((DATA / name).read_text(encoding="utf-8"))


def replay(proxy: Any, route: str, headers: Dict[str, str], body: Dict[str, Any]) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    try:
        conn.request("POST", route, body=json.dumps(body).encode(), headers=headers)
        response = conn.getresponse()
        payload = response.read()
        assert response.status == 200, (response.status, payload)
        return payload
    finally:
        conn.close()


def exported(proxy: Any, tmp_path: Path, profile: str) -> List[Dict[str, Any]]:
    out = tmp_path / f"{profile}.json"
    assert export.main(["--datasets", str(proxy.datasets), "--all", "--format", profile, "--out", str(out)]) == 0
    return list(json.loads(out.read_text(encoding="utf-8")))


def assert_no_key_on_disk(proxy: Any) -> None:
    for path in proxy.datasets.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


def test_codex_exec_tool_round_is_one_record_that_exports(upstream, proxy, tmp_path):
    """Codex declares a `namespace` tool (functions grouped under one name) and the built-in `web_search`
    beside its functions. Before: both went into `tools` as sent, the nameless web_search made
    LLaMA-Factory's check fail, and `export --format sharegpt` skipped every Codex conversation."""
    data = capture("codex_exec_tool_round.json")
    first, second = data["requests"]
    upstream.push(
        ResponsesTurn(
            reasoning="I should list the files.", calls=[("exec_command", {"cmd": "ls"})], call_ids=["call_1_0"]
        ),
        ResponsesTurn(text="There is one file: hello.txt.", reasoning="Listed the files."),
    )
    headers = dict(data["headers"], authorization=f"Bearer {KEY}")
    for body in (first, second):
        assert b"response.completed" in replay(proxy, data["route"], headers, body)
    proxy.wait_recorded(2)
    [record] = proxy.dataset()
    turns = record["conversations"]
    assert [t["from"] for t in turns] == ["system", "human", "function_call", "observation", "gpt"]
    assert turns[0]["value"].startswith("You are a coding agent running in the Codex CLI")
    assert turns[1]["value"].startswith("<environment_context>")
    assert turns[1]["value"].endswith("List the files here with a shell command.")
    assert turns[2]["value"] == (
        '<think>\nI should list the files.\n</think>\n\n{"name": "exec_command", "arguments": {"cmd": "ls"}}'
    )
    assert turns[3]["value"].endswith("Output:\nhello.txt\n")
    assert turns[4]["value"] == "<think>\nListed the files.\n</think>\n\nThere is one file: hello.txt."
    names = [tool["name"] for tool in json.loads(record["tools"])]
    assert names == ["exec_command", "close_agent", "resume_agent"]  # the namespace's functions, in place
    journal = proxy.journal()
    assert journal[-1]["meta"]["builtin_tools"] == [{"type": "web_search", "external_web_access": True}]
    [row] = exported(proxy, tmp_path, "sharegpt")
    assert row["conversations"] == turns
    [openai_row] = [json.loads(line) for line in _export_lines(proxy, tmp_path, "openai")]
    assert [t["function"]["name"] for t in openai_row["tools"]] == names
    assert_no_key_on_disk(proxy)


def _export_lines(proxy: Any, tmp_path: Path, profile: str) -> List[str]:
    out = tmp_path / f"{profile}.jsonl"
    assert export.main(["--datasets", str(proxy.datasets), "--all", "--format", profile, "--out", str(out)]) == 0
    return [line for line in out.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_claude_code_tool_round_keeps_its_mid_conversation_system_message(upstream, proxy, tmp_path):
    """Claude Code (beta `mid-conversation-system-2026-04-07`) sends a `system` message after the user's
    prompt, before the model's answer: context the answer was given. Before: the ShareGPT rendering moves
    mid-chat system text into the *next* human turn, and with none following it was dropped."""
    data = capture("claude_code_tool_round.json")
    title, first, second = data["requests"]
    upstream.push(
        MessagesTurn(text='{"title": "List files"}'),
        MessagesTurn(
            reasoning="I should list the files.",
            calls=[("Bash", {"command": "ls", "description": "List files"})],
            call_ids=["toolu_3_0"],
        ),
        MessagesTurn(text="There is one file: hello.txt.", reasoning="Listed the files."),
    )
    headers = dict(data["headers"], **{"x-api-key": KEY})
    for body in (title, first, second):
        assert b"message_stop" in replay(proxy, data["route"], headers, body)
    proxy.wait_recorded(2)
    assert proxy.run(lambda: proxy.proxy.recorder.counts["skipped"]) == 1  # the title request
    [record] = proxy.dataset()
    turns = record["conversations"]
    assert [t["from"] for t in turns] == ["system", "human", "function_call", "observation", "gpt"]
    assert "x-anthropic-billing-header" not in json.dumps(record)
    assert turns[0]["value"].startswith("You are a Claude agent, built on Anthropic's Claude Agent SDK.")
    human = turns[1]["value"]
    assert human.startswith("<system-reminder>")
    prompt = human.index("List the files here with a shell command.")
    assert human.index("Available agent types for the Agent tool:") > prompt  # where the model read it
    assert turns[2]["value"].endswith('{"name": "Bash", "arguments": {"command": "ls", "description": "List files"}}')
    assert turns[3]["value"] == "hello.txt"
    assert turns[4]["value"] == "<think>\nListed the files.\n</think>\n\nThere is one file: hello.txt."
    assert [tool["name"] for tool in json.loads(record["tools"])] == ["Bash", "Read", "WebSearch"]
    [row] = exported(proxy, tmp_path, "sharegpt")
    assert row["conversations"] == turns
    assert_no_key_on_disk(proxy)
