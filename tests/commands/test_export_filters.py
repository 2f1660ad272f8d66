"""`export`'s selection options are the review page's filters: the page's export count equals the records
the command line it prints writes, for each filter and for combinations; bad values are one-line errors."""

from __future__ import annotations

import hashlib
import json
import shlex
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "review"))

from review_sessions import PNG, bot, record, user, write_session  # noqa: E402
from test_app import Page  # noqa: E402

from chatproxy import cli  # noqa: E402

CALL = {"id": "call_1", "name": "get_weather", "arguments": '{"city": "Lisbon"}'}


def monday(session: str) -> List[Dict[str, Any]]:
    image = f"{session}/images/{hashlib.sha256(PNG).hexdigest()}.png"
    return [
        record(
            "d000000000000001",
            [{"role": "system", "content": "You are terse."}, user("hello there"), bot("Hi.")],
            "2026-05-01T10:00:00.000Z",
        ),
        record(
            "d000000000000002",
            [
                user("what is the weather in Lisbon?"),
                bot("", tool_calls=[CALL]),
                {"role": "tool", "tool_call_id": "call_1", "content": '{"sky": "clear"}'},
                bot("It is sunny in Lisbon."),
            ],
            "2026-05-01T11:00:00.000Z",
            model="gpt-4o-mini",
        ),
        record(
            "d000000000000003",
            [user("is 1001 prime?"), bot("No: 7 × 11 × 13.", reasoning="7 × 143 = 1001")],
            "2026-05-01T12:00:00.000Z",
            model="deepseek-r1",
            endpoint="/v1/messages",
            api="messages",
        ),
        record(
            "d000000000000004",
            [user("what is in this picture?\n<image>", images=[image]), bot("A single pixel.")],
            "2026-05-02T09:00:00.000Z",
            tags=["vision"],
        ),
        record(
            "d000000000000005",
            [user("tell me a long story"), bot("Once there was")],
            "2026-05-02T10:00:00.000Z",
            complete=False,
        ),
        record(
            "d000000000000006",
            [user("write a haiku about rain"), bot("Rain on the window")],
            "2026-05-02T11:00:00.000Z",
            model="llama-3",
        ),
        record("d000000000000007", [bot("Grey sky, soft drumming")], "2026-05-02T11:01:00.000Z", "d000000000000006", 1),
        record("d000000000000008", [user("plan a trip for me"), bot("Where to?")], "2026-05-02T12:00:00.000Z"),
    ]


def tuesday() -> List[Dict[str, Any]]:
    return [
        # The trip chat of monday, continued after a restart into a new session: the whole history again.
        record(
            "e000000000000001",
            [user("plan a trip for me"), bot("Where to?"), user("Porto, in June"), bot("Porto is lovely in June.")],
            "2026-05-03T09:00:00.000Z",
        ),
        record(
            "e000000000000002",
            [user("translate 'good morning' to Portuguese"), bot("Bom dia.")],
            "2026-05-03T10:00:00.000Z",
            model="claude-sonnet-4",
            endpoint="/v1/messages",
            api="messages",
            tags=["manual"],
        ),
        record("e000000000000003", [user("weather in Porto?"), bot("Rainy.")], "2026-05-03T11:00:00.000Z"),
    ]


@pytest.fixture
def week(tmp_path: Path) -> Path:
    folder = tmp_path / "datasets"
    write_session(folder, "monday", monday("monday"))
    write_session(folder, "tuesday", tuesday())
    images = folder / "monday" / "images"
    images.mkdir(parents=True)
    (images / f"{hashlib.sha256(PNG).hexdigest()}.png").write_bytes(PNG)
    for session, conv, *marks in (
        ("monday", "d000000000000001", "--discard"),
        ("monday", "d000000000000002", "--keep"),
        ("monday", "d000000000000003", "--rating", "4"),
        ("tuesday", "e000000000000002", "--keep", "--tag", "good"),
        ("tuesday", "e000000000000003", "--rating", "2"),
    ):
        assert cli.main(["mark", session, conv, *marks, "--datasets", str(folder)]) == 0
    return folder


@pytest.fixture
def page(week: Path) -> Iterator[Page]:
    running = Page(week)
    yield running
    running.stop()


def run(argv: List[str], capsys: Any) -> Tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def command_writes(command: str, out: Path, capsys: Any) -> bytes:
    """Run the command line the page printed (with --out pointed at `out`): the bytes it wrote."""
    argv = shlex.split(command)
    assert argv[:4] == ["python", "-m", "chatproxy", "export"] and argv[-2] == "--out"
    code, _, err = run(argv[3:-1] + [str(out)], capsys)
    if code == 1 and "nothing to export" in err:
        return b""
    assert code == 0, err
    return out.read_bytes()


SELECTIONS = [
    "",
    "q=weather",
    "q=PORTO+june",
    "session=tuesday",
    "session=monday",
    "model=gpt*&api=chat.completions",
    "api=messages",
    "since=2026-05-02&until=2026-05-02",
    "until=2026-05-01",
    "tag=vision",
    "tag=good",
    "tools=1",
    "tools=0&reasoning=0&images=0",
    "reasoning=1",
    "images=1",
    "complete=0",
    "complete=1&with_incomplete=1",
    "with_incomplete=1",
    "status=kept",
    "status=discarded",
    "status=unmarked",
    "with_discarded=1",
    "min_rating=3",
    "min_turns=3&max_turns=4",
    "max_turns=2",
    "min_chars=20&max_chars=60",
    "q=the&model=*&tools=0&status=unmarked&min_turns=2",
]


@pytest.mark.parametrize("filters", SELECTIONS)
def test_the_page_counts_what_its_command_line_writes(
    page: Page, week: Path, tmp_path: Path, capsys: Any, filters: str
) -> None:
    preview = page.get_json("api/export?profile=messages&" + filters)
    listed = page.get_json("api/list?per=200&" + filters)
    assert preview["listed"] == listed["total"]
    left_out = preview["discarded"] + preview["incomplete"] + preview["duplicates"] + preview["skipped"]
    assert preview["records"] == listed["total"] - left_out
    written = command_writes(preview["command"], tmp_path / "out.jsonl", capsys)
    assert len(written.splitlines()) == preview["records"]
    status, _, download = page.request("GET", "/_chatproxy/review/api/export/file?profile=messages&" + filters)
    assert status == 200 and download == written


def test_a_chat_continued_in_another_session_is_one_row_and_one_record(page: Page, tmp_path: Path, capsys: Any) -> None:
    rows = page.get_json("api/list?q=trip")["rows"]
    assert [(row["session"], row["turns"], row["first"]) for row in rows] == [("tuesday", 4, "plan a trip for me")]
    assert page.get_json("api/list?session=monday&q=trip")["total"] == 0
    preview = page.get_json("api/export?profile=messages&session=tuesday&q=trip")
    assert "--all" in preview["command"] and "--in-session tuesday" in preview["command"]
    written = command_writes(preview["command"], tmp_path / "trip.jsonl", capsys)
    (trip,) = [json.loads(line) for line in written.splitlines()]
    assert [m["content"] for m in trip["messages"]][-1] == "Porto is lovely in June."
    assert len(trip["messages"]) == 4


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--search", "weather"], {"what is the weather in Lisbon?", "weather in Porto?"}),
        (
            ["--in-session", "tuesday"],
            {"plan a trip for me", "translate 'good morning' to Portuguese", "weather in Porto?"},
        ),
        (["--api", "messages", "--include-discarded"], {"is 1001 prime?", "translate 'good morning' to Portuguese"}),
        (["--with", "tools"], {"what is the weather in Lisbon?"}),
        (["--with", "reasoning", "--with", "tools"], set()),
        (["--without", "images", "--search", "picture"], set()),
        (["--only-incomplete"], {"tell me a long story"}),
        (["--only", "discarded"], {"hello there"}),
        (["--min-turns", "4"], {"what is the weather in Lisbon?", "plan a trip for me"}),
        (["--max-turns", "2", "--search", "haiku"], {"write a haiku about rain"}),
        (["--min-chars", "60"], {"what is the weather in Lisbon?", "plan a trip for me"}),
        (["--max-chars", "30", "--include-discarded"], {"hello there", "weather in Porto?"}),
    ],
)
def test_each_selection_option(week: Path, tmp_path: Path, capsys: Any, options: List[str], expected: set) -> None:  # type: ignore[type-arg]
    out = tmp_path / "out.jsonl"
    code, _, err = run(
        ["export", "--all", "--datasets", str(week), "--format", "messages", "--out", str(out), *options], capsys
    )
    if not expected:
        assert code == 1 and "nothing to export" in err
        return
    assert code == 0, err
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert {next(m["content"] for m in r["messages"] if m["role"] == "user") for r in records} == expected


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--with", "tools", "--without", "tools"], "--with tools and --without tools exclude each other"),
        (["--min-turns", "5", "--max-turns", "2"], "--min-turns 5 is more than --max-turns 2"),
        (["--min-chars", "90", "--max-chars", "10"], "--min-chars 90 is more than --max-chars 10"),
        (["--max-chars", "-1"], "--max-chars must not be negative"),
        (["--max-turns", "many"], "--max-turns: invalid int value: 'many'"),
        (["--api", "nope"], "argument --api: invalid choice: 'nope'"),
        (["--with", "colour"], "argument --with: invalid choice: 'colour'"),
        (["--in-session", "friday"], "--in-session friday: not one of the sessions read (monday, tuesday)"),
        (["--search", "  "], "--search needs at least one word"),
        (["--only", "maybe"], "argument --only: invalid choice: 'maybe'"),
        (["--min-rating", "9"], "--min-rating must be from 1 to 5"),
        (["--since", "soon"], "--since: cannot read 'soon'"),
        (["--since", "2026-05-03", "--until", "2026-05-01"], "since must be before until"),
    ],
)
def test_a_bad_selection_is_one_line_and_writes_nothing(
    week: Path, tmp_path: Path, capsys: Any, options: List[str], message: str
) -> None:
    out = tmp_path / "out.jsonl"
    code, _, err = run(
        ["export", "--all", "--datasets", str(week), "--format", "messages", "--out", str(out), *options], capsys
    )
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


def test_help_documents_every_selection_option(capsys: Any) -> None:
    assert cli.main(["export", "--help"]) == 0
    shown = capsys.readouterr().out
    for option in (
        "--search WORDS",
        "--in-session SESSION",
        "--api API",
        "--with FEATURE",
        "--without FEATURE",
        "--only {kept,unmarked,discarded}",
        "--only-incomplete",
        "--max-turns N",
        "--min-chars N",
        "--max-chars N",
        "the review page's filters",
    ):
        assert option in shown, option


def test_a_bad_filter_on_the_page_is_refused_with_its_name(page: Page) -> None:
    for filters, word in (("min_turns=lots", "min turns"), ("tools=2", "tools"), ("since=whenever", "since")):
        status, _, body = page.request("GET", "/_chatproxy/review/api/list?" + filters)
        assert status == 400 and word in json.loads(body)["error"]
        status, _, body = page.request("GET", "/_chatproxy/review/api/export?profile=messages&" + filters)
        assert status == 400 and word in json.loads(body)["error"]
