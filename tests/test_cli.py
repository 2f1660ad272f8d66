"""The command line: help, argument and environment errors, and the proxy run as a real process.

Argument errors go through `cli.main([...])` in-process; everything about a running proxy (start-up
line, record lines, signals, output modes) runs `python -m chatproxy` as a subprocess.
"""

from __future__ import annotations

import json
import logging
import os
import pty
import re
import signal
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Dict, List

import pytest

from chatproxy import __version__, cli
from chatproxy.config import Rotation, expand_session, parse_rotation

from subproc import ROOT, ProxyProcess, chat

UPSTREAM_URL = "http://127.0.0.1:9/v1"  # never contacted: these runs stop before listening


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    """No CHATPROXY_* from the developer's shell, and the chatproxy logger restored after main()."""
    for name in list(os.environ):
        if name.startswith("CHATPROXY_"):
            monkeypatch.delenv(name)
    logger = logging.getLogger("chatproxy")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved


def run_main(argv: List[str], capsys) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def python_m_chatproxy(*args: str) -> List[str]:
    return [sys.executable, "-m", "chatproxy", *args]


def subprocess_env(**extra: str) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATPROXY_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


# -- help and version ------------------------------------------------------------------------


def test_help_reads_like_a_man_page(capsys):
    """Exit 0; every option is described, with the sections a man page has."""
    code, out, err = run_main(["--help"], capsys)
    assert code == 0 and err == ""
    assert out.startswith("usage: chatproxy ")
    for action in cli.build_parser()._actions:
        for option in action.option_strings:
            assert option in out, option
    for section in ("examples:", "target URL:", "files (in --datasets", "environment:", "output:", "exit status:"):
        assert section in out, section
    assert "CHATPROXY_TARGET" in out


def test_version(capsys):
    code, out, _ = run_main(["--version"], capsys)
    assert (code, out) == (0, f"chatproxy {__version__}\n")


# -- errors: one line, exit 2, no traceback ----------------------------------------------------


def _file(tmp_path: Path) -> Path:
    regular = tmp_path / "file"
    regular.write_text("a regular file, not a folder")
    return regular


BAD_INVOCATIONS = [
    pytest.param(["--bogus"], "unrecognized arguments: --bogus", id="unknown-flag"),
    pytest.param([], "--target is required", id="missing-target"),
    pytest.param(["--target", "ftp://example.com"], "--target must start with http:// or https://", id="target-scheme"),
    pytest.param(["--target", "http://"], "--target has no host name", id="target-no-host"),
    pytest.param(["--target", "http://example.com:99999"], "--target has an invalid port", id="target-port"),
    pytest.param(["--target", UPSTREAM_URL, "--session", "../x"], "invalid session id '../x'", id="session-path"),
    pytest.param(["--target", UPSTREAM_URL, "--port", "70000"], "--port must be 0-65535", id="port-range"),
    pytest.param(
        ["--target", UPSTREAM_URL, "--port", "abc"], "argument --port: invalid int value: 'abc'", id="port-type"
    ),
    pytest.param(["--target", UPSTREAM_URL, "--branches", "some"], "argument --branches: invalid choice", id="choice"),
    pytest.param(["--target", UPSTREAM_URL, "--timeout", "0"], "--timeout must be a positive number", id="timeout"),
    pytest.param(
        ["--target", UPSTREAM_URL, "--ca-file", "/nonexistent/ca.pem"],
        "--ca-file /nonexistent/ca.pem: no such file",
        id="ca-file",
    ),
    pytest.param(
        ["--target", UPSTREAM_URL, "--rotate", "sometimes"],
        "argument --rotate: use daily, weekly, a period like 12h, 1d or 7d, a size like 200MB, or a period and a "
        "size like 1d,200MB (got 'sometimes')",
        id="rotate-word",
    ),
    pytest.param(
        ["--target", UPSTREAM_URL, "--rotate", "200"], "argument --rotate: use daily, weekly,", id="rotate-no-unit"
    ),
    pytest.param(
        ["--target", UPSTREAM_URL, "--rotate", "0h"], "a period must be at least 1h (got '0h')", id="rotate-zero"
    ),
    pytest.param(
        ["--target", UPSTREAM_URL, "--rotate", "10kib,1d,2d"], "argument --rotate: use daily", id="rotate-two-periods"
    ),
    pytest.param(
        ["--target", UPSTREAM_URL, "--rotate", "0.5KB"], "a size must be at least 1KB (got '0.5KB')", id="rotate-tiny"
    ),
    pytest.param(
        ["--target", UPSTREAM_URL, "--session", "team@20261202T000000Z"],
        "invalid session id 'team@20261202T000000Z': '@' separates a session from its part",
        id="session-part",
    ),
    pytest.param(
        ["--target", UPSTREAM_URL, "--session", "team-{instance}"],
        "--session 'team-{instance}' uses {instance}: set --instance (or CHATPROXY_INSTANCE)",
        id="template-no-instance",
    ),
    pytest.param(
        ["--target", UPSTREAM_URL, "--session", "team-{user}"],
        "--session 'team-{user}': unknown placeholder {user} (use {host} or {instance})",
        id="template-unknown",
    ),
    pytest.param(
        ["--target", UPSTREAM_URL, "--session", "team-{instance}", "--instance", "../x"],
        "invalid session id 'team-../x'",
        id="template-unsafe-instance",
    ),
]


@pytest.mark.parametrize("argv, reason", BAD_INVOCATIONS)
def test_bad_invocation_is_one_line_exit_2(argv, reason, tmp_path, capsys):
    code, out, err = run_main(argv + ["--datasets", str(tmp_path / "d")], capsys)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("chatproxy: error: "), err
    assert reason in err


def test_datasets_under_a_regular_file_is_refused(tmp_path, capsys):
    """A path below a regular file cannot be created by anyone, root included (ENOTDIR)."""
    folder = _file(tmp_path) / "sub"
    code, _, err = run_main(["--target", UPSTREAM_URL, "--datasets", str(folder)], capsys)
    assert code == 2
    assert err == f"chatproxy: error: cannot create --datasets folder {folder}: Not a directory\n"


def test_datasets_that_is_a_regular_file_is_refused(tmp_path, capsys):
    regular = _file(tmp_path)
    code, _, err = run_main(["--target", UPSTREAM_URL, "--datasets", str(regular)], capsys)
    assert code == 2 and err.count("\n") == 1
    assert str(regular) in err


def test_no_record_does_not_need_a_datasets_folder(tmp_path, capsys):
    """--no-record skips the folder check; the run then fails later for the port, not the folder."""
    args = cli.build_parser().parse_args(
        ["--target", UPSTREAM_URL, "--no-record", "--datasets", str(_file(tmp_path) / "x")]
    )
    config = cli.config_from_args(args)
    assert config.record.enabled is False


def test_errors_from_a_real_process_have_no_traceback(tmp_path):
    folder = _file(tmp_path) / "sub"
    result = subprocess.run(
        python_m_chatproxy("--target", UPSTREAM_URL, "--datasets", str(folder)),
        capture_output=True,
        text=True,
        timeout=60,
        env=subprocess_env(),
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert result.stderr == f"chatproxy: error: cannot create --datasets folder {folder}: Not a directory\n"


# -- environment variables ---------------------------------------------------------------------


def parse_with_env(argv: List[str], environ: Dict[str, str]):
    parser = cli.build_parser()
    parser.set_defaults(**cli.env_defaults(parser, environ))
    return parser.parse_args(argv)


def test_environment_sets_option_defaults():
    args = parse_with_env(
        [],
        {
            "CHATPROXY_TARGET": "http://127.0.0.1:8080/v1",
            "CHATPROXY_PORT": "4000",
            "CHATPROXY_NO_RECORD": "1",
            "CHATPROXY_KEEP_INCOMPLETE": "yes",
            "CHATPROXY_TIMEOUT": "30.5",
            "CHATPROXY_BRANCHES": "last",
            "CHATPROXY_LOG_FORMAT": "json",
            "CHATPROXY_QUIET": "off",
        },
    )
    assert (args.target, args.port, args.no_record, args.keep_incomplete) == (
        "http://127.0.0.1:8080/v1",
        4000,
        True,
        True,
    )
    assert (args.timeout, args.branches, args.log_format, args.quiet) == (30.5, "last", "json", False)


def test_rotation_and_instance_from_the_environment():
    args = parse_with_env([], {"CHATPROXY_ROTATE": "1d, 200MB", "CHATPROXY_INSTANCE": "2"})
    assert args.rotate == Rotation(period=86400, size=200_000_000) and args.instance == "2"
    assert parse_with_env(["--rotate", "weekly"], {"CHATPROXY_ROTATE": "1d"}).rotate == Rotation(period=7 * 86400)


@pytest.mark.parametrize(
    "text, rotation",
    [
        ("daily", Rotation(period=86400)),
        ("weekly", Rotation(period=7 * 86400)),
        ("1d", Rotation(period=86400)),
        ("12h", Rotation(period=12 * 3600)),
        ("7d", Rotation(period=7 * 86400)),
        ("2w", Rotation(period=14 * 86400)),
        ("200MB", Rotation(size=200_000_000)),
        ("1.5GiB", Rotation(size=3 * 2**29)),
        ("1d,200mb", Rotation(period=86400, size=200_000_000)),
    ],
)
def test_rotate_values(text, rotation):
    assert parse_rotation(text) == rotation


def test_rotation_is_described_with_its_utc_boundaries():
    assert parse_rotation("daily").describe() == "daily at 00:00 UTC"
    assert parse_rotation("7d").describe() == "weekly, Mondays at 00:00 UTC"
    assert parse_rotation("12h,200MB").describe() == "every 12h (UTC) or past 200,000,000 bytes"


@pytest.mark.parametrize(
    "template, instance, host, session",
    [
        ("team-{host}", None, "gpu-box-3.lab.example.com", "team-gpu-box-3"),
        ("team-{host}-{instance}", "2", "gpu-box-3", "team-gpu-box-3-2"),
        ("{instance}.{host}", "a", "Büro PC", "a.B-ro-PC"),  # made safe for a file name
        ("team-{host}", None, "---", "team-host"),
        ("plain", None, "ignored", "plain"),
    ],
)
def test_session_templates(template, instance, host, session):
    assert expand_session(template, instance, host=host.split(".")[0]) == session


def test_session_template_uses_this_machines_short_host_name(capsys, tmp_path):
    args = cli.build_parser().parse_args(["--target", UPSTREAM_URL, "--session", "team-{host}", "--instance", "1"])
    expected = "team-" + (re.sub(r"[^A-Za-z0-9_-]+", "-", socket.gethostname().split(".")[0]).strip("-") or "host")
    assert cli.config_from_args(args).session == expected


def test_recorder_memory_takes_a_size_from_the_command_line_or_the_environment():
    assert parse_with_env([], {}).recorder_memory == 64 * 2**20
    assert parse_with_env(["--recorder-memory", "0"], {}).recorder_memory == 0
    assert parse_with_env([], {"CHATPROXY_RECORDER_MEMORY": "200MB"}).recorder_memory == 200_000_000
    args = cli.build_parser().parse_args(["--target", UPSTREAM_URL, "--recorder-memory", "512KiB"])
    assert cli.config_from_args(args).record.recorder_memory == 512 * 1024


def test_a_recorder_memory_that_is_not_a_size_is_one_line_exit_2(capsys):
    code, _, err = run_main(["--target", UPSTREAM_URL, "--recorder-memory", "lots"], capsys)
    assert code == 2
    assert "argument --recorder-memory: not a size: 'lots' (use e.g. 64MiB, 200MB, 512KiB or bytes)" in err


def test_the_test_clock_hook_is_not_warned_about():
    parser = cli.build_parser()
    environ = {"CHATPROXY_TEST_CLOCK_FILE": "/tmp/clock", "CHATPROXY_ROTAT": "1d"}
    assert cli.unknown_env_names(parser, environ) == ["CHATPROXY_ROTAT"]


def test_command_line_wins_over_environment():
    args = parse_with_env(
        ["--port", "5000", "--target", "http://b"], {"CHATPROXY_PORT": "4000", "CHATPROXY_TARGET": "http://a"}
    )
    assert (args.port, args.target) == (5000, "http://b")


@pytest.mark.parametrize(
    "name, value, reason",
    [
        ("CHATPROXY_PORT", "abc", "CHATPROXY_PORT='abc': not a whole number"),
        ("CHATPROXY_MAX_BODY", "1e6", "CHATPROXY_MAX_BODY='1e6': not a whole number"),
        ("CHATPROXY_TIMEOUT", "soon", "CHATPROXY_TIMEOUT='soon': not a number"),
        ("CHATPROXY_NO_RECORD", "maybe", "CHATPROXY_NO_RECORD='maybe': use 1/0, true/false, yes/no or on/off"),
        ("CHATPROXY_REASONING", "hide", "CHATPROXY_REASONING='hide': use one of keep, drop"),
        ("CHATPROXY_LOG_FORMAT", "xml", "CHATPROXY_LOG_FORMAT='xml': use one of text, json"),
        (
            "CHATPROXY_ROTATE",
            "hourly-ish",
            "CHATPROXY_ROTATE='hourly-ish': use daily, weekly, a period like 12h, "
            "1d or 7d, a size like 200MB, or a period and a size like 1d,200MB (got 'hourly-ish')",
        ),
    ],
)
def test_invalid_environment_value_is_one_line_exit_2(name, value, reason, monkeypatch, capsys):
    monkeypatch.setenv(name, value)
    code, out, err = run_main(["--target", UPSTREAM_URL], capsys)
    assert code == 2
    assert err == f"chatproxy: error: {reason}\n"


def test_help_works_despite_an_invalid_environment(monkeypatch, capsys):
    monkeypatch.setenv("CHATPROXY_PORT", "abc")
    code, out, _ = run_main(["--help"], capsys)
    assert code == 0 and "CHATPROXY_<OPTION>" in out


def test_invalid_environment_value_in_a_real_process(tmp_path):
    result = subprocess.run(
        python_m_chatproxy(),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=subprocess_env(CHATPROXY_TARGET=UPSTREAM_URL, CHATPROXY_PORT="abc"),
    )
    assert (result.returncode, result.stderr) == (2, "chatproxy: error: CHATPROXY_PORT='abc': not a whole number\n")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_proxy_configured_only_from_the_environment(upstream, tmp_path):
    """CHATPROXY_TARGET, CHATPROXY_PORT and CHATPROXY_NO_RECORD=1 with no arguments at all."""
    port = free_port()
    env = subprocess_env(
        CHATPROXY_TARGET=upstream.url,
        CHATPROXY_PORT=str(port),
        CHATPROXY_DATASETS=str(tmp_path / "datasets"),
        CHATPROXY_NO_RECORD="1",
        CHATPROXY_SESION="typo",
    )
    with ProxyProcess(python_m_chatproxy(), env=env, cwd=tmp_path) as proc:
        match = proc.wait_started()
        assert match.group(1) == f"http://127.0.0.1:{port}"
        assert match.group(2) == upstream.url
        assert match.group(3) == "not recording (--no-record)"
        assert chat(port, "relayed only")["choices"][0]["message"]["content"] == "echo: relayed only"
        assert proc.stop(signal.SIGINT) == 0
    assert "chatproxy: warning: ignoring CHATPROXY_SESION: no such option" in proc.lines
    assert not (tmp_path / "datasets").exists()


# -- the proxy as a process ----------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_run_record_and_stop_on_signal(signum, upstream, tmp_path):
    """Start-up line, one short line per record, exit 0 on the signal with SESSION.json complete."""
    datasets = tmp_path / "datasets"
    command = python_m_chatproxy(
        "--target", upstream.url, "--port", "0", "--datasets", str(datasets), "--session", "cli-run"
    )
    with ProxyProcess(command, env=subprocess_env(), cwd=tmp_path) as proc:
        started = proc.wait_started()
        assert started.group(0).startswith("listening on http://127.0.0.1:")
        assert started.group(2) == upstream.url
        assert started.group(3) == str(datasets / "cli-run.json")
        assert proc.lines[0].startswith(f"chatproxy: chatproxy {__version__} listening on ")
        chat(proc.port, "hello")
        chat(proc.port, "hello again")
        chars = len("hello") + len("echo: hello")
        assert proc.wait_for(r"^chatproxy: recorded ").group(0)
        proc.wait_for(r"recorded cli-run: fake-model, 2 turns, \d+ chars")
        assert f"chatproxy: recorded cli-run: fake-model, 2 turns, {chars} chars" in proc.lines
        code = proc.stop(signum)
    assert code == 0, "\n".join(proc.lines)
    assert proc.lines[-1].startswith("chatproxy: stopped: 2 requests relayed, 2 conversations recorded, 0 errors")
    assert not [line for line in proc.lines if "Traceback" in line or "\r" in line or "requests |" in line]
    records = json.loads((datasets / "cli-run.json").read_text(encoding="utf-8"))
    assert sorted(r["conversations"][0]["value"] for r in records) == ["hello", "hello again"]
    assert len((datasets / "cli-run.jsonl").read_text(encoding="utf-8").splitlines()) == 2


def test_rotating_session_from_a_template_names_its_part_at_start(upstream, tmp_path):
    """--session team-{instance} --rotate 1d: the start-up line names the current part's live dataset, a
    second line says when it rolls over, and the record goes into that part's journal."""
    datasets = tmp_path / "datasets"
    clock = tmp_path / "clock"
    clock.write_text("1764700000")  # 2025-12-02T18:26:40Z
    command = python_m_chatproxy(
        "--target", upstream.url, "--port", "0", "--datasets", str(datasets), "--session", "team-{instance}"
    )
    env = subprocess_env(CHATPROXY_INSTANCE="7", CHATPROXY_ROTATE="1d", CHATPROXY_TEST_CLOCK_FILE=str(clock))
    with ProxyProcess(command, env=env, cwd=tmp_path) as proc:
        started = proc.wait_started()
        assert started.group(3) == str(datasets / "team-7@20251202T182640Z.json")
        proc.wait_for("rotating team-7 into a new part daily at 00:00 UTC$")
        chat(proc.port, "hello")
        proc.wait_for(r"recorded team-7: fake-model, 2 turns")
        assert proc.stop(signal.SIGTERM) == 0
    assert not [line for line in proc.lines if "warning" in line]
    assert len((datasets / "team-7@20251202T182640Z.jsonl").read_text(encoding="utf-8").splitlines()) == 1


def test_port_in_use_is_one_line_exit_1(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            python_m_chatproxy("--target", UPSTREAM_URL, "--port", str(port), "--datasets", str(tmp_path / "d")),
            capture_output=True,
            text=True,
            timeout=60,
            env=subprocess_env(),
            cwd=tmp_path,
        )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"chatproxy: error: cannot listen on 127.0.0.1:{port}: ")


def test_json_log_format(upstream, tmp_path):
    """--log-format json: every line is one JSON object with time, level, message (and fields)."""
    command = python_m_chatproxy(
        "--target",
        upstream.url,
        "--port",
        "0",
        "--datasets",
        str(tmp_path / "d"),
        "--session",
        "json-run",
        "--log-format",
        "json",
    )
    with ProxyProcess(command, env=subprocess_env(), cwd=tmp_path) as proc:
        listening = json.loads(proc.wait_for(r'"event": "listening"').string)
        chat(int(listening["url"].rsplit(":", 1)[1]), "structured")
        proc.wait_for(r'"message": "recorded json-run')
        assert proc.stop(signal.SIGTERM) == 0
    entries = [json.loads(line) for line in proc.lines]
    for entry in entries:
        assert {"time", "level", "message"} <= set(entry)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["time"])
    assert listening["level"] == "info"
    assert listening["target"] == upstream.url
    assert listening["dataset"] == str(tmp_path / "d" / "json-run.json")
    assert entries[-1]["event"] == "stopped" and entries[-1]["recorded"] == 1


def test_quiet_prints_only_problems(upstream, tmp_path):
    command = python_m_chatproxy("--target", upstream.url, "--port", "0", "--datasets", str(tmp_path / "d"), "--quiet")
    with ProxyProcess(command, env=subprocess_env(), cwd=tmp_path) as proc:
        deadline = time.monotonic() + 15
        while not list((tmp_path / "d").glob("*.lock")) and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.2)
        assert proc.stop(signal.SIGTERM) == 0
    assert proc.lines == []


# -- the terminal status line ------------------------------------------------------------------


def render(output: str) -> List[str]:
    """What a terminal shows for `output`: \\r returns to column 0 and later characters overwrite."""
    lines: List[List[str]] = [[]]
    column = 0
    for char in output:
        if char == "\r":
            column = 0
        elif char == "\n":
            lines.append([])
            column = 0
        else:
            line = lines[-1]
            line.extend(" " * (column - len(line) + 1) if column >= len(line) else "")
            line[column] = char
            column += 1
    return ["".join(line).rstrip() for line in lines]


class TerminalProcess:
    """chatproxy with stderr on a pseudo-terminal, as in an interactive shell."""

    def __init__(self, command: List[str], env: Dict[str, str], cwd: Path) -> None:
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave, env=env, cwd=str(cwd)
        )
        os.close(slave)
        self.output = ""

    def read_until(self, pattern: str, timeout: float = 15.0) -> None:
        import select

        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.output):
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} not seen on the terminal:\n{self.output!r}")
            ready, _, _ = select.select([self.master], [], [], 0.1)
            if ready:
                try:
                    self.output += os.read(self.master, 65536).decode("utf-8", "replace")
                except OSError:  # EIO: the child closed the terminal
                    raise AssertionError(f"terminal closed before {pattern!r}:\n{self.output!r}") from None

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        self.read_until(r"stopped: ")
        code = self.proc.wait(20)
        os.close(self.master)
        return code


def test_terminal_shows_a_status_line_below_clean_log_lines(upstream, tmp_path):
    env = subprocess_env(COLUMNS="200", TERM="xterm")
    command = python_m_chatproxy(
        "--target", upstream.url, "--port", "0", "--datasets", str(tmp_path / "d"), "--session", "tty"
    )
    term = TerminalProcess(command, env, tmp_path)
    try:
        term.read_until(r"\[0 requests \| 0 recorded \| 0 errors\] -> ")
        port = int(re.search(r"listening on http://127\.0\.0\.1:(\d+)", term.output).group(1))
        chat(port, "on a terminal")
        term.read_until(r"\[1 requests \| 1 recorded \| 0 errors\]")
        running = render(term.output)
        assert term.stop() == 0
    finally:
        if term.proc.poll() is None:
            term.proc.kill()
            term.proc.wait()
    status = f"[1 requests | 1 recorded | 0 errors] -> {tmp_path / 'd' / 'tty.json'}"
    assert running[-1] == status
    log_lines = running[:-1]
    assert log_lines[0].startswith("chatproxy: chatproxy ") and "listening on" in log_lines[0]
    chars = len("on a terminal") + len("echo: on a terminal")
    assert f"chatproxy: recorded tty: fake-model, 2 turns, {chars} chars" in log_lines
    assert all(line.startswith("chatproxy: ") for line in log_lines if line), log_lines
    assert not [line for line in log_lines if "requests |" in line]
    final = [line for line in render(term.output) if line]
    assert final[-1].startswith("chatproxy: stopped: 1 requests relayed, 1 conversations recorded, 0 errors")
    assert not [line for line in final if "requests |" in line]


def test_status_line_fits_the_terminal():
    counts = {"requests": 3, "recorded": 2, "errors": 1, "write_errors": 1}
    text = cli.status_text(counts, Path("/very/long/path/to/datasets/session.json"))
    assert text == "[3 requests | 2 recorded | 2 errors] -> /very/long/path/to/datasets/session.json"
    short = cli.fit(text, 60)
    assert (
        len(short) == 60
        and short.startswith("[3 requests | 2 recorded | 2 errors] ...")
        and short.endswith("session.json")
    )
    assert cli.status_text({"requests": 0}, None).endswith("(not recording)")


# -- packaging ---------------------------------------------------------------------------------


def test_console_script_is_declared():
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r'^\[project\.scripts\]\s*\nchatproxy = "chatproxy\.cli:main"', text, re.MULTILINE)


def test_console_script_is_installed():
    """After `pip install .` (CI installs the checkout), `chatproxy` exists and runs cli.main."""
    try:
        dist = metadata.distribution("chatproxy")
    except metadata.PackageNotFoundError:
        pytest.skip("chatproxy is not installed in this environment (pip install -e .)")
    scripts = [ep for ep in dist.entry_points if ep.group == "console_scripts" and ep.name == "chatproxy"]
    assert [ep.value for ep in scripts] == ["chatproxy.cli:main"]
    assert scripts[0].load() is cli.main
    script = Path(sys.executable).with_name("chatproxy")
    if script.exists():
        result = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
        assert (result.returncode, result.stdout) == (0, f"chatproxy {__version__}\n")
