"""The review page in a real headless Chromium, driven over the DevTools protocol (--remote-debugging-pipe,
stdlib only): search, open, mark with the keyboard, reload, export; a hostile conversation runs nothing."""

from __future__ import annotations

import base64
import json
import os
import shutil
import struct
import subprocess
import time
import zlib
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

import pytest
from review_sessions import make_week
from test_app import Page

from chatproxy import cli

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (.ci/run installs Debian's chromium)")


@pytest.fixture
def week(tmp_path: Path) -> Path:
    return make_week(tmp_path)


class Browser:
    """A tiny CDP client: NUL-separated JSON messages over the pipe pair Chromium reads on fd 3, writes on fd 4."""

    def __init__(self, profile: Path) -> None:
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()

        def wire() -> None:
            os.dup2(to_child_r, 3)
            os.dup2(from_child_w, 4)

        args = [str(CHROMIUM), "--headless=new", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe"]
        args += ["--no-first-run", "--disable-extensions", f"--user-data-dir={profile}", "--window-size=1280,900"]
        self.proc = subprocess.Popen(
            args + ["about:blank"],
            preexec_fn=wire,
            close_fds=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self._buffer = b""
        self._next = 0
        self.session: Optional[str] = None
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Page.enable")
        self.call("Runtime.enable")

    def call(self, method: str, **params: Any) -> Dict[str, Any]:
        self._next += 1
        message: Dict[str, Any] = {"id": self._next, "method": method, "params": params}
        if self.session and not method.startswith("Target."):
            message["sessionId"] = self.session
        os.write(self._to_child, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self._next:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})  # type: ignore[no-any-return]

    def _read(self) -> Dict[str, Any]:
        while b"\0" not in self._buffer:
            chunk = os.read(self._from_child, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed the pipe")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(line)  # type: ignore[no-any-return]

    def js(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result["result"].get("value")

    def wait(self, expression: str, timeout: float = 10) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {expression}")

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        self.wait("document.body && document.body.dataset.ready === '1'")

    def key(self, key: str) -> None:
        for kind in ("keyDown", "keyUp"):
            self.call(
                "Input.dispatchKeyEvent", type=kind, key=key, text=key if kind == "keyDown" and len(key) == 1 else ""
            )

    def type(self, text: str) -> None:
        self.call("Input.insertText", text=text)

    def screenshot(self, path: Path) -> bytes:
        data = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        path.write_bytes(data)
        return data

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except RuntimeError:
            pass  # already gone: the wait below reaps it
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_child)
        os.close(self._from_child)


def distinct_pixel_bytes(png: bytes) -> int:
    """How many different byte values the decoded image data holds: 1 or 2 for a blank page."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    position, idat = 8, b""
    while position < len(png):
        length, kind = struct.unpack(">I4s", png[position : position + 8])
        if kind == b"IDAT":
            idat += png[position + 8 : position + 8 + length]
        position += 12 + length
    return len(set(zlib.decompress(idat)))


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
