"""The running proxy's page: answered by a `chatproxy review` child process that the proxy starts on the
page's first request; the proxy checks the key, the child ends with the proxy; the proxy process itself
loads no catalogue, no commands."""

from __future__ import annotations

import http.client
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from subproc import ROOT, ProxyProcess, chat

# Every chatproxy module the process imported, written at exit (as tests/test_layout.py does).
CLI_WITH_MODULES = """\
import atexit, json, sys
out = sys.argv.pop(1)
def dump():
    with open(out, "w", encoding="utf-8") as f:
        json.dump(sorted(m for m in sys.modules if m == "chatproxy" or m.startswith("chatproxy.")), f)
atexit.register(dump)
from chatproxy.cli import main
raise SystemExit(main())
"""


def request(
    port: int, method: str, path: str, body: Any = None, headers: Optional[Dict[str, str]] = None
) -> Tuple[int, Dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request(method, path, json.dumps(body) if body is not None else None, headers or {})
    reply = conn.getresponse()
    result = reply.status, {k.lower(): v for k, v in reply.getheaders()}, reply.read()
    conn.close()
    return result


def page_processes(pid: int) -> List[int]:
    """The children of `pid` that serve a review page (the recorder process is another child)."""
    found: List[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            if b"--for-proxy" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(int(child))
    return found


def test_the_proxy_checks_the_key_and_its_page_process_answers(upstream: Any, tmp_path: Path) -> None:
    datasets = tmp_path / "datasets"
    out = tmp_path / "modules.json"
    command = [sys.executable, "-c", CLI_WITH_MODULES, str(out), "--target", upstream.url, "--port", "0"]
    command += ["--datasets", str(datasets), "--session", "live", "--proxy-key", "s3cret"]
    with ProxyProcess(command, cwd=ROOT) as proc:
        proc.wait_started()
        port = proc.port
        key = {"X-Chatproxy-Key": "s3cret"}
        assert chat_with_key(port, "hello page")
        proc.wait_for(r"recorded live")
        assert request(port, "GET", "/_chatproxy/review/api/list")[0] == 401
        assert request(port, "GET", "/_chatproxy/review/api/list?key=wrong")[0] == 401
        status, headers, page = request(port, "GET", "/_chatproxy/review/?key=s3cret")
        assert status == 200 and "HttpOnly; SameSite=Strict" in headers["set-cookie"]
        assert headers["content-security-policy"].startswith("default-src 'self'")
        cookie = headers["set-cookie"].split(";")[0]
        token = re.search(rb'name="chatproxy-token" content="([0-9a-f]+)"', page)
        assert token is not None
        deadline = time.monotonic() + 20
        while True:
            status, _, body = request(port, "GET", "/_chatproxy/review/api/list?q=hello", headers={"Cookie": cookie})
            assert status == 200, body
            listed = json.loads(body)
            if listed["total"] == 1 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        (row,) = listed["rows"]
        assert row["first"] == "hello page" and row["session"] == "live"
        # A mark through the proxy: same origin (the proxy's), the child's page token.
        sent = {"Content-Type": "application/json", "Origin": f"http://127.0.0.1:{port}", **key}
        sent["X-Chatproxy-Token"] = token.group(1).decode()
        status, _, body = request(
            port, "POST", "/_chatproxy/review/api/mark", {"session": "live", "id": row["id"], "op": "keep"}, sent
        )
        assert status == 200 and json.loads(body)["status"] == "keep", body
        sent["Origin"] = "http://evil.example"
        mark = {"session": "live", "id": row["id"], "op": "discard"}
        assert request(port, "POST", "/_chatproxy/review/api/mark", mark, sent)[0] == 403
        assert (datasets / "live.review.jsonl").read_bytes().count(b"\n") == 1
        assert request(port, "GET", "/_chatproxy/review/api/list?status=kept", headers=key)[0] == 200
        (child,) = page_processes(proc.proc.pid)
        assert proc.stop() == 0, "\n".join(proc.lines)
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{child}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{child}"), "the page's process outlived the proxy"
    loaded = json.loads(out.read_text(encoding="utf-8"))
    assert "chatproxy.review.app" in loaded
    heavy = [name for name in loaded if name.startswith(("chatproxy.commands", "chatproxy.chats"))]
    heavy += [name for name in loaded if name in ("chatproxy.review.catalogue", "chatproxy.review.reading")]
    assert heavy == [], f"the proxy process loaded {heavy}: the page's process reads the sessions"


def chat_with_key(port: int, text: str) -> Dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    body = json.dumps({"model": "fake-model", "messages": [{"role": "user", "content": text}]})
    conn.request(
        "POST", "/v1/chat/completions", body, {"Content-Type": "application/json", "X-Chatproxy-Key": "s3cret"}
    )
    reply = json.loads(conn.getresponse().read())
    conn.close()
    return reply  # type: ignore[no-any-return]


def test_without_a_key_the_proxys_page_refuses_other_host_names(upstream: Any, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "chatproxy", "--target", upstream.url, "--port", "0"]
    command += ["--datasets", str(tmp_path / "datasets"), "--session", "live"]
    with ProxyProcess(command, cwd=ROOT) as proc:
        proc.wait_started()
        assert chat(proc.port, "hi")["choices"]
        assert request(proc.port, "GET", "/_chatproxy/review/api/list", headers={"Host": "evil.example"})[0] == 421
        status, _, body = request(proc.port, "GET", "/_chatproxy/review/api/facets")
        assert status == 200 and json.loads(body)["sessions"] == ["live"]
        assert proc.stop() == 0


def test_where_no_page_process_starts_the_proxy_serves_the_page_itself(upstream: Any, tmp_path: Path) -> None:
    """`chatproxy review` refuses a datasets folder that does not exist (a proxy started with --no-record
    makes none): the proxy then serves the page in its own process, as the recorder falls back."""
    command = [sys.executable, "-m", "chatproxy", "--target", upstream.url, "--port", "0", "--no-record"]
    command += ["--datasets", str(tmp_path / "none-yet")]
    with ProxyProcess(command, cwd=ROOT) as proc:
        proc.wait_started()
        status, _, body = request(proc.port, "GET", "/_chatproxy/review/api/list")
        assert status == 200 and json.loads(body)["total"] == 0
        assert request(proc.port, "GET", "/_chatproxy/review/")[0] == 200
        assert proc.wait_for(r"serving it in this process instead")
        assert proc.stop() == 0
