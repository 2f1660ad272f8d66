"""The review page in a real headless Chromium, driven over the DevTools protocol (--remote-debugging-pipe,
stdlib only): search, open, mark with the keyboard, reload, export; a hostile conversation runs nothing."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from cdp import CHROMIUM, Browser, distinct_pixel_bytes
from review_sessions import make_week
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
    # The search is no export option: the page says so, and counts what the command would write.
    assert count.startswith("5 records (messages)") and "not applied by export: search" in count
    href = browser.js("document.getElementById('export-download').href")
    assert "api/export/file?" in href and "profile=messages" in href
    download = browser.js(f"fetch({href!r}).then(r => r.text())")
    assert len(download.splitlines()) == 5 and all(json.loads(line)["messages"] for line in download.splitlines())
    browser.js(
        "const s = document.getElementById('export-profile'); s.value = 'sharegpt'; "
        "s.dispatchEvent(new Event('change'))"
    )
    browser.wait("document.getElementById('export-command').textContent.includes('--format sharegpt')")
    browser.js("document.getElementById('export-copy').click()")
    browser.wait("document.getElementById('export-copy').textContent !== 'copy command'")
