"""--rotate: a session recorded into parts, on size or on schedule, under live traffic and across restarts.

The proxy is real (the recorder in its own process, as users run it), driven with the openai SDK. The
schedule is tested with the recorder's clock hook (CHATPROXY_TEST_CLOCK_FILE): a file holding the time
the recorder goes by, so that a day boundary passes when the test says, not after hours.
"""

from __future__ import annotations

import calendar
import concurrent.futures
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, List

import openai
import pytest

from chatproxy.commands import export, sessions, show, stats
from chatproxy.config import ConfigError, RecordOptions, Rotation, check_session_id, part_name, part_time
from chatproxy.recorder.core import CLOCK_FILE_ENV

SESSION = "team"
Messages = List[Dict[str, Any]]


def utc(text: str) -> float:
    return float(calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ")))


class FakeClock:
    """The time the recorder goes by, set by the test (the recorder reads the file when it decides)."""

    def __init__(self, path: Path, start: str) -> None:
        self.path = path
        self.set(start)

    def set(self, moment: str) -> None:
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(str(utc(moment)))
        os.replace(temporary, self.path)  # never read half-written


@pytest.fixture
def clock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock(tmp_path / "clock", "2026-12-01T09:00:00Z")
    monkeypatch.setenv(CLOCK_FILE_ENV, str(fake.path))  # inherited by the recorder process
    return fake


def rotating(rotation: Rotation, in_process: bool = False) -> RecordOptions:
    return RecordOptions(snapshot_interval=0.05, rotate=rotation, in_process=in_process)


RECORDERS = pytest.mark.parametrize("in_process", [False, True], ids=["recorder-process", "in-process"])


def client_for(proxy: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk-test", max_retries=0, timeout=10)


def say(client: openai.OpenAI, history: Messages, text: str, stream: bool = False) -> Messages:
    """One turn: the whole history and a new user message sent, the reply appended."""
    sent = history + [{"role": "user", "content": text}]
    if stream:
        chunks = client.chat.completions.create(model="fake-model", messages=sent, stream=True)  # type: ignore
        reply = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    else:
        reply = client.chat.completions.create(model="fake-model", messages=sent).choices[0].message.content or ""
    return sent + [{"role": "assistant", "content": reply}]


def journals(folder: Path) -> List[str]:
    """The session's journals as `ls` lists them."""
    listed = subprocess.run(["ls", str(folder)], capture_output=True, text=True, check=True).stdout.split()
    return [name for name in listed if name.startswith(SESSION) and name.endswith(".jsonl")]


def records(folder: Path, name: str) -> List[Dict[str, Any]]:
    return [json.loads(line) for line in (folder / name).read_text(encoding="utf-8").splitlines()]


def part_of(name: str) -> str:
    return name[len(SESSION) + 1 : -len(".jsonl")]


def exported(capsys: Any, folder: Path, *names: str) -> List[List[str]]:
    """`export NAMES` as each record's turns' text (system prompt left out)."""
    out = folder.parent / "out.jsonl"
    code = export.main(["--datasets", str(folder), "--format", "openai", "--out", str(out), *names])
    assert code == 0, capsys.readouterr().err
    capsys.readouterr()
    lines = out.read_text(encoding="utf-8").splitlines()
    return [[m["content"] for m in json.loads(line)["messages"] if m["role"] != "system"] for line in lines]


def live_entries(path: Path) -> List[Dict[str, Any]]:
    """A live dataset's entries: one JSON array, or a folder of them."""
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    return [entry for file in files for entry in json.loads(file.read_text(encoding="utf-8"))]


def whole(chat: int, turns: int) -> List[str]:
    return [text for turn in range(turns) for text in (f"chat {chat} turn {turn}", f"echo: chat {chat} turn {turn}")]


# -- names ------------------------------------------------------------------------------------------------


def test_part_names_are_utc_start_times_of_fixed_width_that_sort_in_time_order():
    moments = [utc("2026-12-01T23:59:59Z"), utc("2026-12-02T00:00:00Z"), utc("2027-01-01T00:00:00Z")]
    names = [part_name(moment) for moment in moments]
    assert names == ["20261201T235959Z", "20261202T000000Z", "20270101T000000Z"]
    assert sorted(names) == names and len({len(name) for name in names}) == 1
    assert [part_time(name) for name in names] == moments
    assert part_time("20261399T000000Z") is None and part_time("yesterday") is None


@pytest.mark.parametrize("name", ["team@20261202T000000Z", "a@b", "@x"])
def test_a_session_name_with_an_at_sign_is_refused(name):
    with pytest.raises(ConfigError, match="'@' separates a session from its part"):
        check_session_id(name)


@pytest.mark.parametrize(
    "moment, start, boundary",
    [
        ("2026-12-02T15:36:40Z", "2026-12-02T00:00:00Z", "2026-12-03T00:00:00Z"),  # daily: midnight UTC
        ("2026-12-02T00:00:00Z", "2026-12-02T00:00:00Z", "2026-12-03T00:00:00Z"),  # a boundary starts its day
    ],
)
def test_daily_boundaries_are_midnight_utc(moment, start, boundary):
    daily = Rotation(period=86400)
    assert (daily.period_start(utc(moment)), daily.next_boundary(utc(moment))) == (utc(start), utc(boundary))


def test_weekly_boundaries_are_mondays_and_twelve_hours_fall_at_noon_and_midnight():
    wednesday = utc("2026-12-02T15:36:40Z")
    assert Rotation(period=7 * 86400).period_start(wednesday) == utc("2026-11-30T00:00:00Z")  # a Monday
    assert Rotation(period=12 * 3600).next_boundary(wednesday) == utc("2026-12-03T00:00:00Z")
    assert Rotation(period=12 * 3600).period_start(wednesday) == utc("2026-12-02T12:00:00Z")


# -- size, under live traffic -----------------------------------------------------------------------------

CHATS = 8
TURNS = 6


@RECORDERS
def test_size_rotation_under_live_traffic_loses_splits_and_repeats_nothing(upstream, make_proxy, capsys, in_process):
    """Eight chats of six turns at once, streamed and not, while the journal rolls over every 4 KB: every
    exchange is in exactly one part, whole; the parts list in time order; export reads them as one."""
    proxy = make_proxy(upstream.url, session=SESSION, record=rotating(Rotation(size=4000), in_process))
    client = client_for(proxy)

    def chat(number: int) -> Messages:
        history: Messages = [{"role": "system", "content": f"Chat {number}, in a team of eight."}]
        for turn in range(TURNS):
            history = say(client, history, f"chat {number} turn {turn}", stream=turn % 2 == 1)
        return history

    with concurrent.futures.ThreadPoolExecutor(CHATS) as pool:
        list(pool.map(chat, range(CHATS)))
    proxy.wait_recorded(CHATS * TURNS)
    proxy.stop()

    listed = journals(proxy.datasets)
    assert len(listed) >= 3, listed
    assert all(part_time(part_of(name)) for name in listed)
    assert len(set(listed)) == len(listed)
    by_part = {name: records(proxy.datasets, name) for name in listed}
    assert [part_time(part_of(name)) for name in listed] == sorted(part_time(part_of(name)) for name in listed)
    # Record ids count up as the recorder places exchanges: `ls` lists the parts in the order they were filled.
    ids = [r["id"] for lines in by_part.values() for r in lines]
    assert ids == sorted(ids)
    replies = [r["messages"][-1]["content"] for lines in by_part.values() for r in lines]
    assert sorted(replies) == sorted(f"echo: chat {c} turn {t}" for c in range(CHATS) for t in range(TURNS))
    spanning = [
        c
        for c in range(CHATS)
        if sum(any(f"chat {c} " in r for r in _replies(lines)) for lines in by_part.values()) > 1
    ]
    assert spanning, "no chat went on in a later part"
    assert sorted(exported(capsys, proxy.datasets, SESSION)) == sorted(whole(c, TURNS) for c in range(CHATS))


def _replies(lines: List[Dict[str, Any]]) -> List[str]:
    return [r["messages"][-1]["content"] for r in lines]


# -- schedule ---------------------------------------------------------------------------------------------


@RECORDERS
def test_daily_rotation_rolls_over_at_midnight_utc_between_exchanges(upstream, make_proxy, clock, capsys, in_process):
    """The first part is named by its start; the first exchange after midnight starts the next day's part;
    a part that holds records rolls over at the boundary with no exchange (here woken by a flush)."""
    clock.set("2026-12-01T23:59:58Z")
    proxy = make_proxy(upstream.url, session=SESSION, record=rotating(Rotation(period=86400), in_process))
    client = client_for(proxy)
    history = say(client, [], "chat 0 turn 0")
    proxy.wait_recorded(1)
    clock.set("2026-12-02T00:00:03Z")
    history = say(client, history, "chat 0 turn 1")
    history = say(client, history, "chat 0 turn 2")
    proxy.wait_recorded(3)
    proxy.flush()
    assert journals(proxy.datasets) == [f"{SESSION}@20261201T235958Z.jsonl", f"{SESSION}@20261202T000003Z.jsonl"]
    assert _replies(records(proxy.datasets, f"{SESSION}@20261202T000003Z.jsonl")) == [
        "echo: chat 0 turn 1",
        "echo: chat 0 turn 2",
    ]
    status = proxy.run(lambda: proxy.proxy.recorder.status())  # /_chatproxy/status names the part in use
    assert status["journal"].endswith(f"{SESSION}@20261202T000003Z.jsonl"), status

    clock.set("2026-12-03T00:00:00Z")
    proxy.flush()  # no exchange: the recorder rolls over when it next writes
    assert (proxy.datasets / f"{SESSION}@20261203T000000Z.json").exists()
    say(client, history, "chat 0 turn 3")
    proxy.wait_recorded(4)
    proxy.stop()
    assert journals(proxy.datasets)[-1] == f"{SESSION}@20261203T000000Z.jsonl"
    assert exported(capsys, proxy.datasets, SESSION) == [whole(0, 4)]
    # The closed parts' live datasets were written a last time: each holds its part's chat as it stood.
    first = live_entries(proxy.datasets / f"{SESSION}@20261201T235958Z.json")
    assert [[c["value"] for c in entry["conversations"]] for entry in first] == [whole(0, 1)]


def test_an_idle_part_waits_for_its_next_exchange_rather_than_roll_empty(upstream, make_proxy, clock):
    clock.set("2026-12-01T10:00:00Z")
    proxy = make_proxy(upstream.url, session=SESSION, record=rotating(Rotation(period=86400)))
    clock.set("2026-12-04T08:00:00Z")  # three quiet days
    proxy.flush()
    say(client_for(proxy), [], "chat 0 turn 0")
    proxy.wait_recorded(1)
    proxy.stop()
    assert journals(proxy.datasets) == [f"{SESSION}@20261204T080000Z.jsonl"]


# -- restarts ---------------------------------------------------------------------------------------------


def test_a_restart_within_the_day_resumes_its_part_and_the_next_day_starts_a_new_one(
    upstream, make_proxy, clock, capsys
):
    daily = rotating(Rotation(period=86400))
    proxy = make_proxy(upstream.url, session=SESSION, record=daily)
    history = say(client_for(proxy), [], "chat 0 turn 0")
    proxy.wait_recorded(1)
    proxy.stop()

    clock.set("2026-12-01T15:00:00Z")
    proxy = make_proxy(upstream.url, session=SESSION, record=daily)
    history = say(client_for(proxy), history, "chat 0 turn 1")
    proxy.wait_recorded(1)
    proxy.stop()
    assert journals(proxy.datasets) == [f"{SESSION}@20261201T090000Z.jsonl"]
    resumed = records(proxy.datasets, f"{SESSION}@20261201T090000Z.jsonl")
    assert resumed[1]["parent"] == resumed[0]["id"]  # the chat continued in its index, not copied

    clock.set("2026-12-02T08:00:00Z")
    proxy = make_proxy(upstream.url, session=SESSION, record=daily)
    say(client_for(proxy), history, "chat 0 turn 2")
    proxy.wait_recorded(1)
    proxy.stop()
    assert journals(proxy.datasets) == [f"{SESSION}@20261201T090000Z.jsonl", f"{SESSION}@20261202T080000Z.jsonl"]
    assert exported(capsys, proxy.datasets, SESSION) == [whole(0, 3)]


def test_a_session_recorded_before_rotation_is_read_as_its_oldest_part(upstream, make_proxy, clock, capsys):
    proxy = make_proxy(upstream.url, session=SESSION)
    history = say(client_for(proxy), [], "chat 0 turn 0")
    say(client_for(proxy), [], "chat 1 turn 0")
    proxy.wait_recorded(2)
    proxy.stop()
    proxy = make_proxy(upstream.url, session=SESSION, record=rotating(Rotation(period=86400)))
    say(client_for(proxy), history, "chat 0 turn 1")
    proxy.wait_recorded(1)
    proxy.stop()
    assert journals(proxy.datasets) == [f"{SESSION}.jsonl", f"{SESSION}@20261201T090000Z.jsonl"]
    assert sorted(exported(capsys, proxy.datasets, SESSION)) == [whole(0, 2), whole(1, 1)]
    assert sessions.session_names(proxy.datasets) == [SESSION]
    assert stats.main(["--datasets", str(proxy.datasets), SESSION]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"session {SESSION} (2 parts)\n") and "  conversations  2\n" in out
    assert show.main(["--datasets", str(proxy.datasets), SESSION]) == 0
    assert capsys.readouterr().out.count("── ") == 2


def test_without_rotate_a_rotated_session_goes_on_in_its_newest_part(upstream, make_proxy, clock, capsys):
    proxy = make_proxy(upstream.url, session=SESSION, record=rotating(Rotation(period=86400)))
    history = say(client_for(proxy), [], "chat 0 turn 0")
    proxy.wait_recorded(1)
    proxy.stop()
    clock.set("2026-12-05T09:00:00Z")
    proxy = make_proxy(upstream.url, session=SESSION)
    say(client_for(proxy), history, "chat 0 turn 1")
    proxy.wait_recorded(1)
    proxy.stop()
    assert journals(proxy.datasets) == [f"{SESSION}@20261201T090000Z.jsonl"]
    assert exported(capsys, proxy.datasets, SESSION) == [whole(0, 2)]


def test_a_part_named_on_the_command_line_is_refused_with_the_session_to_name(upstream, make_proxy, clock, capsys):
    proxy = make_proxy(upstream.url, session=SESSION, record=rotating(Rotation(period=86400)))
    say(client_for(proxy), [], "chat 0 turn 0")
    proxy.wait_recorded(1)
    proxy.stop()
    code = export.main(
        [
            "--datasets",
            str(proxy.datasets),
            "--format",
            "sharegpt",
            "--out",
            str(proxy.datasets.parent / "x.json"),
            f"{SESSION}@20261201T090000Z",
        ]
    )
    assert code == 2
    assert f"is a part of session '{SESSION}': name the session" in capsys.readouterr().err


def test_listings_name_a_rotated_session_once_and_leave_other_files_out(tmp_path):
    folder = tmp_path / "datasets"
    folder.mkdir()
    names = [
        "team@20261201T090000Z.jsonl",
        "team@20261202T000000Z.jsonl",
        "team.jsonl",
        "team.review.jsonl",  # the session's review journal
        "team@yesterday.jsonl",  # not a part's name
        "team@20261201T090000Z.review.jsonl",
        "other@20261201T090000Z.jsonl",
        "team-2.jsonl",
    ]
    for name in names:
        (folder / name).write_text("")
    assert sessions.session_names(folder) == ["other", "team", "team-2"]
    assert [path.name for path in sessions.journals(folder, "team")] == names[2:3] + names[:2]
    assert sessions.journal_of(folder / names[0]) == ("team", "20261201T090000Z")
    assert sessions.journal_of(folder / "team.jsonl") == ("team", None)
    assert [sessions.journal_of(folder / name) for name in names[3:6]] == [None, None, None]


def test_a_damaged_line_in_a_later_part_is_reported_with_that_part_and_the_rest_exported(
    upstream, make_proxy, clock, capsys
):
    proxy = make_proxy(upstream.url, session=SESSION, record=rotating(Rotation(period=86400)))
    client = client_for(proxy)
    trip = say(client, [], "chat 0 turn 0")
    proxy.wait_recorded(1)
    clock.set("2026-12-02T09:00:00Z")
    say(client, trip, "chat 0 turn 1")
    other = say(client, [], "chat 1 turn 0")
    say(client, other, "chat 1 turn 1")
    proxy.wait_recorded(4)
    proxy.stop()
    second = proxy.datasets / f"{SESSION}@20261202T090000Z.jsonl"
    lines = second.read_bytes().splitlines(keepends=True)
    assert len(lines) == 3
    second.write_bytes(lines[0] + lines[1][:20] + b"\n" + lines[2])  # chat 1's first turn is lost
    assert exported(capsys, proxy.datasets, SESSION) == [whole(0, 2)]
    assert stats.main(["--datasets", str(proxy.datasets), SESSION]) == 0
    captured = capsys.readouterr()
    assert f"{second}: skipped damaged line 2: not JSON" in captured.err
    assert "  damaged lines  1\n" in captured.out and "  conversations  2\n" in captured.out


# -- collisions -------------------------------------------------------------------------------------------


def test_parts_begun_within_one_second_take_the_next_seconds_and_never_go_back(upstream, make_proxy, clock, capsys):
    """The clock stands still (and then goes back) while every exchange fills a part: the names go on a
    second at a time, and a restart goes on after the newest, though it lies ahead of the clock."""
    tiny = rotating(Rotation(size=1000))
    proxy = make_proxy(upstream.url, session=SESSION, record=tiny)
    client = client_for(proxy)
    padding = "x" * 1200  # each record alone passes the size
    for number in range(4):
        say(client, [], f"chat {number} turn 0 {padding}")
        proxy.wait_recorded(number + 1)
    proxy.stop()
    expected = [f"{SESSION}@20261201T0900{second:02d}Z.jsonl" for second in range(4)]
    assert journals(proxy.datasets) == expected

    clock.set("2026-12-01T08:00:00Z")  # set back an hour
    proxy = make_proxy(upstream.url, session=SESSION, record=tiny)
    say(client_for(proxy), [], f"chat 4 turn 0 {padding}")
    proxy.wait_recorded(1)
    proxy.stop()
    assert journals(proxy.datasets) == expected + [f"{SESSION}@20261201T090004Z.jsonl"]
    assert len(exported(capsys, proxy.datasets, SESSION)) == 5
