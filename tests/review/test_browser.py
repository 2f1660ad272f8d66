"""The review page in a real headless Chromium, driven over the DevTools protocol (--remote-debugging-pipe,
stdlib only): search, open, mark with the keyboard, reload, export; a hostile conversation runs nothing."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from cdp import CHROMIUM, Browser, distinct_pixel_bytes
from review_sessions import bot, make_week, record, user, write_session
from test_app import Page

from chatproxy import cli

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (.ci/run installs Debian's chromium)")


@pytest.fixture
def week(tmp_path: Path) -> Path:
    return make_week(tmp_path)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    running = Browser(tmp_path / "profile")
    yield running
    running.close()


@pytest.fixture
def page(week: Path) -> Iterator[Page]:
    running = Page(week)
    yield running
    running.stop()


def test_search_open_mark_reload_and_export(browser: Browser, page: Page, week: Path, tmp_path: Path) -> None:
    base = f"http://127.0.0.1:{page.port}/_chatproxy/review/"
    browser.open(base)
    assert browser.wait("document.querySelectorAll('#rows li').length") == 5
    shot = browser.screenshot(tmp_path / "list.png")
    assert distinct_pixel_bytes(shot) > 8
    browser.key("/")
    browser.type("drumming")
    browser.wait("document.querySelectorAll('#rows li').length === 1")
    assert "q=drumming" in browser.js("location.search")
    browser.key("Escape")
    browser.key("j")
    browser.wait("document.getElementById('transcript').textContent.includes('Grey sky, soft drumming')")
    browser.key("d")
    browser.wait("document.getElementById('mark-state').textContent === 'discarded'")
    assert distinct_pixel_bytes(browser.screenshot(tmp_path / "transcript.png")) > 8
    browser.call("Page.reload")
    browser.wait("document.body && document.body.dataset.ready === '1'")
    assert browser.wait("!!document.querySelector('#rows li.discard') && location.search.includes('drumming')")
    out = tmp_path / "out.jsonl"
    assert cli.main(["export", "week", "--datasets", str(week), "--format", "messages", "--out", str(out)]) == 0
    assert "Grey sky" not in out.read_text(encoding="utf-8")
    assert "Rain on the window" in out.read_text(encoding="utf-8")


def test_a_hostile_conversation_renders_as_text_and_runs_nothing(browser: Browser, page: Page) -> None:
    browser.open(f"http://127.0.0.1:{page.port}/_chatproxy/review/?q=onerror#week/a000000000000005")
    browser.wait("document.getElementById('transcript').textContent.includes('<script>')")
    time.sleep(0.3)  # an onerror handler would have fired by now
    assert browser.js("typeof window.__pwned") == "undefined"

    def found(selector: str) -> Any:
        return browser.js(f"document.querySelectorAll({selector!r}).length")

    assert found("#transcript script, #transcript a, #transcript img[src='x'], #rows b, #transcript b") == 0
    assert "<b>not bold</b>" in browser.js("document.getElementById('transcript').textContent")
    assert "javascript:" in browser.js("document.getElementById('transcript').textContent")


def test_bulk_marks_the_dashboard_and_export_from_the_page(browser: Browser, page: Page, tmp_path: Path) -> None:
    browser.open(f"http://127.0.0.1:{page.port}/_chatproxy/review/?q=haiku")
    assert browser.wait("document.querySelectorAll('#rows li').length") == 2
    browser.js("document.getElementById('bulk-discard').click()")
    browser.wait("document.querySelectorAll('#rows li.discard').length === 2")
    assert browser.js("document.getElementById('bulk-state').textContent") == "discard on 2 conversations"
    assert page.get_json("api/list?status=discarded")["total"] == 2
    browser.js("document.getElementById('bulk-undo').click()")
    browser.wait("document.querySelectorAll('#rows li.discard').length === 0")
    assert page.get_json("api/list?status=discarded")["total"] == 0
    # Tag all with the keyboard in the bulk field.
    browser.js("document.getElementById('bulk-tag').focus()")
    browser.type("rainy")
    browser.key("Enter")
    browser.wait(
        "document.querySelectorAll('#rows li').length === 2 && "
        "[...document.querySelectorAll('#rows .badge')].filter(b => b.textContent === '#rainy').length === 2"
    )

    # The dashboard of the selection, drawn as SVG elements (no markup parsed).
    browser.js("document.getElementById('show-dashboard').click()")
    browser.wait("document.querySelectorAll('#charts svg').length >= 6")
    assert browser.js("document.getElementById('dash-summary').textContent").startswith("2 conversations")
    assert browser.js("document.querySelectorAll('#charts svg rect.bar').length") >= 6
    assert browser.js("document.querySelector('#charts svg').namespaceURI") == "http://www.w3.org/2000/svg"
    assert "llama-3" in browser.js("document.getElementById('charts').textContent")
    assert distinct_pixel_bytes(browser.screenshot(tmp_path / "dashboard.png")) > 8

    # Export: the count for the profile, the command line, the download link.
    browser.js("document.getElementById('show-export').click()")
    browser.wait("document.getElementById('export-command').textContent.includes('chatproxy export')")
    count = browser.js("document.getElementById('export-count').textContent")
    # The search is applied as export's --search: the two haiku branches, and the command says so.
    assert count.startswith("2 records (messages) from the 2 conversations listed"), count
    command = browser.js("document.getElementById('export-command').textContent")
    assert "--search haiku" in command
    href = browser.js("document.getElementById('export-download').href")
    assert "api/export/file?" in href and "profile=messages" in href and "q=haiku" in href
    download = browser.js(f"fetch({href!r}).then(r => r.text())")
    assert len(download.splitlines()) == 2 and all(json.loads(line)["messages"] for line in download.splitlines())
    browser.js(
        "const s = document.getElementById('export-profile'); s.value = 'sharegpt'; "
        "s.dispatchEvent(new Event('change'))"
    )
    browser.wait("document.getElementById('export-command').textContent.includes('--format sharegpt')")
    browser.js("document.getElementById('export-copy').click()")
    browser.wait("document.getElementById('export-copy').textContent !== 'copy command'")


def branching(folder: Path) -> None:
    """Session `branches`: a chat regenerated at its last reply and edited at its second question (three
    branches), and one full of long words, a long URL, code and JSON."""
    long_word = "Pneumonoultramicroscopicsilicovolcanoconiosis" * 6
    url = "https://example.com/" + "/".join(f"segment-{n}-with-no-spaces-at-all" for n in range(12))
    code = "def f():\n    return " + "+".join(f"variable_number_{n}" for n in range(40))
    call = {"id": "call_9", "name": "lookup", "arguments": json.dumps({"query": long_word, "url": url, "n": 1})}
    write_session(
        folder,
        "branches",
        [
            record("c000000000000001", [user("plan a trip"), bot("Where to?")], "2026-05-07T10:00:00.000Z"),
            record(
                "c000000000000002",
                [user("Porto"), bot("Porto is lovely.")],
                "2026-05-07T10:01:00.000Z",
                "c000000000000001",
                2,
            ),
            record(
                "c000000000000003", [bot("Porto has port wine.")], "2026-05-07T10:02:00.000Z", "c000000000000002", 3
            ),
            record(
                "c000000000000004",
                [user("Lisbon instead"), bot("Lisbon has trams.")],
                "2026-05-07T10:03:00.000Z",
                "c000000000000001",
                2,
            ),
            record(
                "c000000000000005",
                [
                    user(f"{long_word} see {url}"),
                    bot(f"```python\n{code}\n```", tool_calls=[call]),
                    {"role": "tool", "tool_call_id": "call_9", "content": json.dumps({"result": [url] * 3})},
                    bot(long_word + " " + url),
                ],
                "2026-05-07T11:00:00.000Z",
            ),
        ],
    )


def test_branches_side_by_side_parting_turn_highlighted_and_linked(
    browser: Browser, week: Path, tmp_path: Path
) -> None:
    branching(week)
    page = Page(week)
    try:
        browser.open(f"http://127.0.0.1:{page.port}/_chatproxy/review/#branches/c000000000000002")
        browser.wait("document.querySelectorAll('#transcript .columns .branch').length === 3")
        # The shared turns once, above the columns; each column from the parting turn on.
        shared = browser.js("[...document.querySelectorAll('#transcript > .msg .text')].map(e => e.textContent)")
        assert shared == ["plan a trip", "Where to?"]
        columns = browser.js(
            "[...document.querySelectorAll('#transcript .branch')].map(c => ({id: c.dataset.branch, "
            "texts: [...c.querySelectorAll('.msg .text')].map(e => e.textContent), "
            "differs: [...c.querySelectorAll('.msg.differs .text')].map(e => e.textContent), "
            "current: c.classList.contains('current')}))"
        )
        assert columns == [
            {
                "id": "c000000000000002",
                "texts": ["Porto", "Porto is lovely."],
                "differs": ["Porto"],
                "current": True,
            },
            {
                "id": "c000000000000003",
                "texts": ["Porto", "Porto has port wine."],
                "differs": ["Porto has port wine."],  # it parts from the one shown at the reply
                "current": False,
            },
            {
                "id": "c000000000000004",
                "texts": ["Lisbon instead", "Lisbon has trams."],
                "differs": ["Lisbon instead"],
                "current": False,
            },
        ]
        boxes = browser.js(
            "[...document.querySelectorAll('#transcript .branch')].map(c => c.getBoundingClientRect().left)"
        )
        assert boxes[0] < boxes[1] < boxes[2]  # side by side
        assert distinct_pixel_bytes(browser.screenshot(tmp_path / "branches.png")) > 8
        # A link opens the other branch, which is then the one shown (and marked by the keys).
        browser.js("document.querySelector('.branch[data-branch=\"c000000000000004\"] a.branch-link').click()")
        browser.wait(
            "document.querySelector('.branch.current') && "
            "document.querySelector('.branch.current').dataset.branch === 'c000000000000004'"
        )
        assert browser.js("location.hash") == "#branches/c000000000000004"
        browser.key("d")
        browser.wait("document.getElementById('mark-state').textContent === 'discarded'")
        assert page.get_json("api/list?status=discarded")["rows"][0]["id"] == "c000000000000004"
        assert "discarded" in browser.js("document.querySelector('.branch.current .branch-head').textContent")
    finally:
        page.stop()


def overflow(browser: Browser) -> Any:
    """Elements wider than their box (horizontal overflow), by id: the document, the panes, the transcript."""
    return browser.js(
        "['html', '#list-pane', '#detail-pane', '#transcript', '#rows', 'header'].map(s => document.querySelector(s))"
        ".filter(e => e && e.scrollWidth > e.clientWidth).map(e => e.id || e.tagName)"
    )


def test_a_narrow_window_wraps_everything_and_overflows_nothing(browser: Browser, week: Path, tmp_path: Path) -> None:
    branching(week)
    page = Page(week)
    try:
        browser.resize(400, 900)
        browser.open(f"http://127.0.0.1:{page.port}/_chatproxy/review/")
        browser.wait("document.querySelectorAll('#rows li').length === 9")
        assert browser.js("document.documentElement.clientWidth") == 400
        assert overflow(browser) == []
        assert distinct_pixel_bytes(browser.screenshot(tmp_path / "narrow-list.png")) > 8
        for conversation in ("branches/c000000000000005", "branches/c000000000000002", "week/a000000000000004"):
            browser.js(f"location.hash = '#{conversation}'; location.reload()")
            browser.wait(
                "document.body && document.body.dataset.ready === '1' && !document.getElementById('detail').hidden"
            )
            assert overflow(browser) == [], conversation
            width = browser.js("document.documentElement.scrollWidth")
            assert width <= 400, (conversation, width)
        # The columns of the branches stack one under another.
        browser.js("location.hash = '#branches/c000000000000002'; location.reload()")
        browser.wait("document.querySelectorAll('#transcript .branch').length === 3")
        lefts = browser.js(
            "[...document.querySelectorAll('#transcript .branch')].map(c => c.getBoundingClientRect().left)"
        )
        assert len(set(lefts)) == 1
        browser.js("document.getElementById('show-dashboard').click()")
        browser.wait("document.querySelectorAll('#charts svg').length >= 6")
        assert overflow(browser) == []
        shot = browser.screenshot(tmp_path / "narrow-transcript.png")
        assert distinct_pixel_bytes(shot) > 8
    finally:
        page.stop()


def test_the_page_says_it_is_loading_then_shows_everything(browser: Browser, tmp_path: Path) -> None:
    folder = tmp_path / "datasets"
    padding = "lorem ipsum dolor sit amet " * 40
    write_session(
        folder,
        "long",
        [
            record(
                f"{n:016x}",
                [user(f"question {n} {padding}"), bot(f"answer {n}")],
                f"2026-05-01T{n % 24:02d}:00:00.000Z",
            )
            for n in range(12000)
        ],
    )
    page = Page(folder, read=False)
    try:
        browser.open(f"http://127.0.0.1:{page.port}/_chatproxy/review/")
        seen = browser.js("document.getElementById('summary').textContent")
        assert "loading…" in seen and browser.js("document.body.dataset.loading") == "1", seen
        browser.wait("document.body.dataset.loading === ''", timeout=60)
        assert browser.js("document.getElementById('summary').textContent") == "1–50 of 12000 conversations"
        assert browser.js("document.querySelectorAll('#rows li').length") == 50
    finally:
        page.stop()


def test_a_week_curated_with_the_keyboard_exports_clean_sft_and_dpo(browser: Browser, page: Page) -> None:
    """Issue's "done when": find the bad ones, discard them with the keyboard, fix two answers, export."""
    browser.open(f"http://127.0.0.1:{page.port}/_chatproxy/review/")
    browser.key("/")
    browser.type("onerror")
    browser.wait("document.querySelectorAll('#rows li').length === 1")
    browser.key("Escape")
    browser.key("j")
    browser.wait("document.getElementById('transcript').textContent.includes('not bold')")
    browser.key("d")
    browser.wait("document.getElementById('mark-state').textContent === 'discarded'")
    browser.js(
        "const q = document.getElementById('q'); q.value = ''; q.dispatchEvent(new Event('input', {bubbles: true}))"
    )
    browser.wait("document.querySelectorAll('#rows li').length === 5")
    for reply, fixed in (("A single pixel.", "One grey pixel."), ("Hi.", "Hello! How can I help?")):
        while reply not in browser.js("document.getElementById('transcript').textContent"):
            browser.key("j")
            time.sleep(0.2)
        browser.key("e")
        browser.wait("!!document.querySelector('#transcript textarea')")
        browser.js(f"document.querySelector('#transcript textarea').value = {fixed!r}")
        browser.key("Enter", modifiers=2)  # Ctrl+Enter saves
        browser.wait(f"document.getElementById('transcript').textContent.includes({fixed!r})")
        assert "(edited)" in browser.js("document.getElementById('transcript').textContent")
    browser.key("?")
    assert browser.wait("document.getElementById('keys').open")
    browser.key("Escape")
    browser.js("document.getElementById('show-export').click()")
    browser.wait("document.getElementById('export-count').textContent.startsWith('4 records (messages)')")
    sft = browser.js("fetch(document.getElementById('export-download').href).then(r => r.text())")
    assert "One grey pixel." in sft and "Hello! How can I help?" in sft and "not bold" not in sft
    browser.js(
        "const s = document.getElementById('export-profile'); s.value = 'dpo'; s.dispatchEvent(new Event('change'))"
    )
    browser.wait("document.getElementById('export-count').textContent.startsWith('2 records (dpo)')")
    pairs = [
        json.loads(line)
        for line in browser.js(
            "fetch(document.getElementById('export-download').href).then(r => r.text())"
        ).splitlines()
    ]
    # (the picture's reply keeps its recorded reasoning before the answer: --reasoning keep)
    chosen = sorted(pair["chosen"][-1]["content"].rsplit("\n", 1)[-1] for pair in pairs)
    rejected = sorted(pair["rejected"][-1]["content"].rsplit("\n", 1)[-1] for pair in pairs)
    assert chosen == ["Hello! How can I help?", "One grey pixel."] and rejected == ["A single pixel.", "Hi."]
    assert "--format dpo" in browser.js("document.getElementById('export-command').textContent")


def test_the_proxys_page_shows_new_chats_without_a_reload(browser: Browser, upstream: Any, make_proxy: Any) -> None:
    import http.client

    proxy = make_proxy(upstream.url)
    browser.open(f"http://127.0.0.1:{proxy.port}/_chatproxy/review/")
    assert browser.js("document.querySelectorAll('#rows li').length") == 0
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hello from the live session"}]})
    conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    assert conn.getresponse().read()
    conn.close()
    browser.wait("document.getElementById('rows').textContent.includes('hello from the live session')", timeout=20)
    assert browser.js("performance.getEntriesByType('navigation').length") == 1  # the same page, not reloaded
