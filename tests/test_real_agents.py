"""The real coding agents through chatproxy: Codex CLI (`codex exec`, OpenAI Responses) and Claude Code
(`claude -p`, Anthropic Messages), each run non-interactively with a dummy key against a fake backend
(fake_agents.AgentScript) that makes it run one real shell command and then answer. chatproxy runs as
users run it, a separate process.

The agents are npm packages, not test dependencies: each is found on PATH or under
$REAL_AGENTS_PREFIX (default ~/.cache/chatproxy-real-agents) as installed by

    npm install -g --prefix ~/.cache/chatproxy-real-agents @openai/codex @anthropic-ai/claude-code

(.ci/run does that). An agent that is not installed is skipped, unless REQUIRE_REAL_AGENTS=1 (set by
.ci/run once the install succeeded), where a missing agent fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

from fake_agents import AgentScript
from fake_upstream import FakeUpstream
from subproc import ROOT, ProxyProcess

PREFIX = Path(os.environ.get("REAL_AGENTS_PREFIX") or Path.home() / ".cache" / "chatproxy-real-agents")
KEY = "sk-dummy-real-agent-key-0123"
PROMPT = "List the files here with a shell command."
ANSWER = "There is one file: hello.txt."


def agent(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(PREFIX / "bin"))
    if found is None:
        reason = f"{name} is not installed (on PATH or in {PREFIX / 'bin'}; see this module's docstring)"
        if os.environ.get("REQUIRE_REAL_AGENTS") == "1":
            pytest.fail(reason + ", and REQUIRE_REAL_AGENTS=1", pytrace=False)
        pytest.skip(reason)
    # An install whose postinstall did not run leaves a stub (Claude Code copies its binary there).
    version = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=30)
    assert version.returncode == 0, f"{found} --version failed:\n{version.stdout}{version.stderr}"
    return found


class Run:
    """A fake backend, chatproxy in front of it, and a scratch home and work folder for the agent."""

    def __init__(self, tmp_path: Path, upstream: FakeUpstream) -> None:
        self.script = AgentScript(final_text=ANSWER)
        upstream.push(*[self.script] * 50)  # one instance answers every request
        self.datasets = tmp_path / "datasets"
        self.home = tmp_path / "home"
        self.work = tmp_path / "work"
        for folder in (self.home, self.work):
            folder.mkdir()
        (self.work / "hello.txt").write_text("hi\n")
        command = [sys.executable, "-m", "chatproxy", "--target", upstream.url, "--port", "0"]
        command += ["--datasets", str(self.datasets), "--session", "S"]
        self.proxy = ProxyProcess(command, cwd=ROOT)
        self.proxy.wait_started()
        assert self.proxy.url is not None
        self.url = self.proxy.url

    def agent(self, command: List[str], env: Dict[str, str]) -> subprocess.CompletedProcess[str]:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "ANTHROPIC_", "CODEX_"))}
        full_env.update(HOME=str(self.home), NO_COLOR="1", **env)
        done = subprocess.run(
            command,
            cwd=self.work,
            env=full_env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, f"{command[0]} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        return done

    def stop(self) -> None:
        assert self.proxy.stop() == 0, "\n".join(self.proxy.lines)

    def posts(self, suffix: str) -> List[Any]:
        return [seen for seen in self.script.seen if seen[0] == "POST" and seen[1].split("?")[0].endswith(suffix)]

    def dataset(self) -> List[Dict[str, Any]]:
        return list(json.loads((self.datasets / "S.json").read_text(encoding="utf-8")))

    def journal(self) -> List[Dict[str, Any]]:
        lines = (self.datasets / "S.jsonl").read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines]

    def assert_nothing_secret_on_disk(self, *secrets: str) -> None:
        for path in self.datasets.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                for secret in secrets:
                    assert secret.encode() not in data, (secret, path)

    def exported(self, tmp_path: Path) -> List[Dict[str, Any]]:
        from chatproxy.commands import export

        out = tmp_path / "export.json"
        assert export.main(["--datasets", str(self.datasets), "--all", "--format", "sharegpt", "--out", str(out)]) == 0
        return list(json.loads(out.read_text(encoding="utf-8")))


@pytest.fixture
def run(tmp_path: Path, upstream: FakeUpstream) -> Any:
    started = Run(tmp_path, upstream)
    yield started
    started.proxy.__exit__(None, None, None)


def assert_one_tool_round(record: Dict[str, Any], call: str) -> None:
    turns = record["conversations"]
    assert [t["from"] for t in turns] == ["system", "human", "function_call", "observation", "gpt"], turns
    assert PROMPT in turns[1]["value"]  # with the context the agent sends beside it
    assert turns[2]["value"].startswith("<think>\nI should list the files.\n</think>\n\n")
    assert json.loads(turns[2]["value"].split("</think>\n\n")[1])["name"] == call
    assert "hello.txt" in turns[3]["value"]  # what the agent's real shell printed
    assert turns[4]["value"] == f"<think>\nListed the files.\n</think>\n\n{ANSWER}"


@pytest.mark.timeout(180)
def test_codex_exec_through_the_proxy(run, tmp_path):
    codex = agent("codex")
    provider = {
        "name": '"chatproxy"',
        "base_url": f'"{run.url}/v1"',
        "wire_api": '"responses"',
        "env_key": '"CHATPROXY_TEST_KEY"',
    }
    command = [codex, "exec", "--skip-git-repo-check", "--dangerously-bypass-approvals-and-sandbox"]
    for key, value in provider.items():
        command += ["-c", f"model_providers.chatproxy.{key}={value}"]
    command += ["-c", 'model_provider="chatproxy"', "-m", "gpt-5-codex", PROMPT]
    codex_home = run.home / ".codex"
    codex_home.mkdir()
    done = run.agent(command, {"CODEX_HOME": str(codex_home), "CHATPROXY_TEST_KEY": KEY})
    assert ANSWER in done.stdout
    run.stop()
    posts = run.posts("/responses")
    assert [target for _, target, _, _ in posts] == ["/v1/responses", "/v1/responses"]
    _, _, headers, body = posts[0]
    assert dict((k.lower(), v) for k, v in headers)["authorization"] == f"Bearer {KEY}"
    assert body["stream"] is True and body["store"] is False
    names = [tool.get("name") for tool in body["tools"]]
    call = "exec_command" if "exec_command" in names else "shell"
    [record] = run.dataset()
    assert_one_tool_round(record, call)
    assert call in [tool["name"] for tool in json.loads(record["tools"])]
    assert len(run.journal()) == 2
    assert len(run.exported(tmp_path)) == 1  # not skipped (its built-in web_search tool once made it so)
    run.assert_nothing_secret_on_disk(KEY)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("nonessential", ["on", "off"])
def test_claude_code_through_the_proxy(run, tmp_path, nonessential):
    claude = agent("claude")
    env = {"ANTHROPIC_BASE_URL": run.url, "ANTHROPIC_API_KEY": KEY}
    if nonessential == "off":
        env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] = "1"
    # --allowedTools rather than --dangerously-skip-permissions, which Claude Code refuses as root.
    done = run.agent([claude, "-p", PROMPT, "--allowedTools", "Bash", "--output-format", "json"], env)
    assert json.loads(done.stdout)["result"] == ANSWER
    run.stop()
    posts = run.posts("/messages")
    assert {target for _, target, _, _ in posts} == {"/v1/messages?beta=true"}
    with_tools = [body for _, _, _, body in posts if body.get("tools")]
    titles = [body for _, _, _, body in posts if not body.get("tools")]
    assert len(with_tools) == 2  # the tool round
    assert len(titles) == (1 if nonessential == "on" else 0)
    headers = dict((k.lower(), v) for k, v in posts[0][2])
    assert headers["x-api-key"] == KEY and "anthropic-version" in headers
    stamp: Optional[str] = with_tools[0]["system"][0]["text"]
    assert stamp is not None and stamp.startswith("x-anthropic-billing-header:")
    [record] = run.dataset()  # the title request is not a record; the stamp does not split the task
    assert_one_tool_round(record, "Bash")
    assert len(run.journal()) == 2
    assert "x-anthropic-billing-header" not in (run.datasets / "S.jsonl").read_text(encoding="utf-8")
    # Its mid-conversation system messages (the agent list, after the prompt) stay with the prompt.
    for message in with_tools[0]["messages"]:
        if message["role"] == "system" and isinstance(message["content"], str):
            assert message["content"].strip()[:200] in record["conversations"][1]["value"]
    assert len(run.exported(tmp_path)) == 1
    run.assert_nothing_secret_on_disk(KEY)
