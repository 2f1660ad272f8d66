"""`chatproxy stats` and `chatproxy show` on sessions recorded through the real proxy with the openai SDK."""

from __future__ import annotations

import re
from typing import Any, Dict

import pytest

from chatproxy.commands import show, stats

from subproc import ROOT
from test_export import MONDAY_RECORDS, TUESDAY_RECORDS, client_for, record_week


@pytest.fixture
def week(upstream: Any, make_proxy: Any) -> Any:
    return record_week(upstream, make_proxy)


def run(capsys: Any, *argv: str) -> Any:
    command = {"stats": stats, "show": show}[argv[0]]
    code = command.main(list(argv[1:]))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def table(text: str, title: str) -> Dict[str, str]:
    """The rows of one stats table, by label."""
    block = text.split(title + "\n", 1)[1].split("\n\n", 1)[0]
    return {m.group(1): m.group(2) for m in re.finditer(r"^  (\S+(?: \S+)?)\s{2,}(.*)$", block, re.M)}


# ---------------------------------------------------------------------------------------------------------
# stats
# ---------------------------------------------------------------------------------------------------------


def test_stats_counts_a_recorded_session(week, capsys):
    code, out, err = run(capsys, "stats", "monday", "--datasets", str(week.datasets))
    assert code == 0 and err == ""
    rows = table(out, "session monday")
    # greeting (2 exchanges), reasoning, tools (2), haiku twice, image, truncated call, reset stream, completion
    assert rows["conversations"] == "7"  # the regenerated haiku is a branch of the same chat
    assert rows["branches"] == "8"  # the reset stream is incomplete, not a branch
    assert rows["turns"] == "21"
    assert rows["models"] == f"fake-model ({MONDAY_RECORDS})"
    assert rows["apis"] == f"chat.completions ({MONDAY_RECORDS - 1}), completions (1)"
    # The fake backend reports usage on every non-streamed reply: 9 of the 11.
    assert rows["tokens"].endswith("completion (usage in 9 of 11 replies)")
    assert rows["incomplete"] == "1"
    assert rows["skipped"] == "1"  # the tool call cut off by max_tokens
    assert rows["damaged lines"] == "0"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4}", rows["first"])
    assert rows["first"] <= rows["last"]


def test_stats_without_sessions_counts_every_session_and_a_total(week, capsys):
    code, out, _ = run(capsys, "stats", "--datasets", str(week.datasets))
    assert code == 0
    assert table(out, "session tuesday")["models"] == "fake-model (2), other-model (1)"
    total = table(out, "total (2 sessions)")
    assert total["apis"].startswith("chat.completions (")
    # Tuesday holds monday's greeting chat again: the total counts it once, as export writes it.
    assert total["conversations"] == "8" and total["branches"] == "9"
    assert total["summed"].startswith("9 conversations, 10 branches, ")
    assert total["models"] == f"fake-model ({MONDAY_RECORDS + 2}), other-model (1)"
    bonjour = len("Bonjour") + len("echo: Bonjour")
    assert (
        int(total["characters"].replace(",", ""))
        == int(table(out, "session monday")["characters"].replace(",", "")) + bonjour
    )


def test_stats_reads_a_session_while_it_is_recorded(week, capsys):
    """No lock is taken: the proxy records on, and stats sees the new record."""
    run(capsys, "stats", "monday", "--datasets", str(week.datasets))
    client_for(week).chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "More?"}])
    week.wait_recorded(MONDAY_RECORDS + TUESDAY_RECORDS + 1)
    _, out, _ = run(capsys, "stats", "monday", "--datasets", str(week.datasets))
    assert table(out, "session monday")["conversations"] == "8"


def test_stats_reports_damaged_lines_and_carries_on(week, capsys, tmp_path):
    lines = (week.datasets / "tuesday.jsonl").read_bytes().splitlines(keepends=True)
    (tmp_path / "tuesday.jsonl").write_bytes(lines[0] + b"garbage\n" + b"".join(lines[1:]))
    code, out, err = run(capsys, "stats", "tuesday", "--datasets", str(tmp_path))
    assert code == 0
    assert err.startswith("chatproxy: warning: ") and "skipped damaged line 2: not JSON" in err
    assert table(out, "session tuesday")["damaged lines"] == "1"


# ---------------------------------------------------------------------------------------------------------
# show
# ---------------------------------------------------------------------------------------------------------


def test_show_prints_a_readable_transcript(week, capsys):
    code, out, _ = run(capsys, "show", "monday", "--datasets", str(week.datasets))
    assert code == 0
    assert "system     You are terse.\nuser       Hello there\nassistant  echo: Hello there\n" in out
    assert "thinking   The capital of France is Paris.\nassistant  Paris." in out
    assert 'calls      get_weather({"city": "Paris"}) [call_a]\n' in out
    assert "tool       [call_a] sunny, 21 C\ntool       [call_b] 14:00\n" in out
    assert "images     monday/images/" in out
    headers = [line for line in out.splitlines() if line.startswith("── ")]
    assert len(headers) == 9  # every branch, the incomplete reply included
    assert re.match(
        r"── monday/[0-9a-f]{16} · \d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4} · fake-model · 4 turns ──$", headers[0]
    )
    assert sum("branch 1 of 2" in h for h in headers) == 1 and sum("branch 2 of 2" in h for h in headers) == 1
    assert sum(h.endswith("· incomplete ──") for h in headers) == 1


def test_show_last_prints_the_most_recently_continued(week, capsys):
    _, out, _ = run(capsys, "show", "monday", "--last", "2", "--datasets", str(week.datasets))
    headers = [line for line in out.splitlines() if line.startswith("── ")]
    assert len(headers) == 2
    assert "user       A long story, please\nassistant  Once there was" in out
    assert out.rstrip().endswith("assistant  echo: Once upon a time")


def test_show_shortens_long_messages_unless_full(week, capsys):
    text = "word " * 1000
    client_for(week, session="long").chat.completions.create(
        model="fake-model", messages=[{"role": "user", "content": text}]
    )
    week.wait_recorded(MONDAY_RECORDS + TUESDAY_RECORDS + 1)
    _, out, _ = run(capsys, "show", "long", "--datasets", str(week.datasets))
    assert "… (3,000 more characters; --full prints everything)" in out
    _, out, _ = run(capsys, "show", "long", "--full", "--datasets", str(week.datasets))
    assert text in out and "more characters" not in out


# ---------------------------------------------------------------------------------------------------------
# Errors and help
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, message",
    [
        (["show", "nosuch"], "chatproxy show: error: unknown session 'nosuch'"),
        (["show"], "chatproxy show: error: the following arguments are required: SESSION"),
        (["show", "monday", "--last", "0"], "chatproxy show: error: --last must be at least 1"),
        (["show", "monday", "--last", "two"], "chatproxy show: error: argument --last: invalid int value: 'two'"),
        (["stats", "monday", "nosuch"], "chatproxy stats: error: unknown session 'nosuch'"),
        (["stats", "--datasets", "{tmp}/nowhere"], "chatproxy stats: error: no datasets folder"),
        (["stats", "../etc"], "chatproxy stats: error: invalid session id '../etc'"),
    ],
)
def test_errors_are_one_line_and_exit_2(week, capsys, tmp_path, argv, message):
    argv = [a.format(tmp=tmp_path) for a in argv]
    if "--datasets" not in argv:
        argv += ["--datasets", str(week.datasets)]
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith(message)


@pytest.mark.parametrize(
    "command, options",
    [
        ("stats", ["--datasets", "SESSION"]),
        ("show", ["--datasets", "--last", "--full", "SESSION"]),
    ],
)
def test_help(capsys, command, options):
    code, out, _ = run(capsys, command, "--help")
    assert code == 0
    for option in options:
        assert option in out


def test_stats_of_an_empty_datasets_folder(capsys, tmp_path):
    code, _, err = run(capsys, "stats", "--datasets", str(tmp_path))
    assert code == 2 and "no recorded sessions in" in err


def test_show_survives_an_output_that_cannot_encode_the_text(week):
    """Recorded text may hold any character; an ASCII-only stdout gets "?" instead of a crash."""
    import os
    import subprocess
    import sys

    client_for(week, session="unicode").chat.completions.create(
        model="fake-model", messages=[{"role": "user", "content": "Grüße aus Köln 🌧"}]
    )
    week.wait_recorded(MONDAY_RECORDS + TUESDAY_RECORDS + 1)
    done = subprocess.run(
        [sys.executable, "-m", "chatproxy", "show", "unicode", "--datasets", str(week.datasets)],
        capture_output=True,
        timeout=60,
        cwd=str(ROOT),
        env=dict(os.environ, PYTHONIOENCODING="ascii"),
    )
    assert done.returncode == 0, done.stderr
    assert b"user       Gr??e aus K?ln ?\n" in done.stdout


def test_stats_names_the_api_of_records_made_before_meta_api(tmp_path, capsys):
    """Journals written before meta.api existed are counted by their path."""
    import json

    line = {"v": 1, "id": "a", "parent": None, "base": 0, "meta": {"endpoint": "/v1/messages", "model": "c"}}
    line["messages"] = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello"}]
    (tmp_path / "old.jsonl").write_text(json.dumps(line) + "\n")
    code, out, _ = run(capsys, "stats", "old", "--datasets", str(tmp_path))
    assert code == 0 and table(out, "session old")["apis"] == "messages (1)"
