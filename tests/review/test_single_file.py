"""The page from the single-file build (scripts/build_pyz.py) under a bare interpreter (-I -S: nothing
installed): its HTML, CSS and JavaScript are read from inside the archive, by `chatproxy review` and by the
proxy's page process, which the proxy starts from the same archive."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Tuple

import pytest
from review_sessions import make_week

from subproc import ROOT, ProxyProcess, chat

BARE = [sys.executable, "-I", "-S"]


@pytest.fixture(scope="module")
def pyz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("pyz") / "chatproxy.pyz"
    built = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build_pyz.py"), "--output", str(output)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert built.returncode == 0, built.stderr
    return output


def get(port: int, path: str) -> Tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/_chatproxy/review/" + path)
    reply = conn.getresponse()
    result = reply.status, reply.read()
    conn.close()
    return result


def test_review_runs_from_the_archive(pyz: Path, tmp_path: Path) -> None:
    folder = make_week(tmp_path)
    command = [*BARE, str(pyz), "review", "--all", "--datasets", str(folder), "--port", "0"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("chatproxy review: http://127.0.0.1:"), proc.communicate(timeout=10)
        port = int(line.rsplit(":", 1)[1].split("/", 1)[0])
        status, page = get(port, "")
        assert status == 200 and b'name="chatproxy-token"' in page and b"{{token}}" not in page
        assert get(port, "app.js")[0] == 200 and get(port, "app.css")[0] == 200
        deadline = time.monotonic() + 20
        while json.loads(get(port, "api/list")[1])["loading"] is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert json.loads(get(port, "api/list")[1])["total"] == 5
    finally:
        proc.terminate()
        _, errors = proc.communicate(timeout=10)
    assert "Traceback" not in errors, errors


def test_the_proxy_from_the_archive_serves_its_page(pyz: Path, upstream: Any, tmp_path: Path) -> None:
    command = [*BARE, str(pyz), "--target", upstream.url, "--port", "0", "--datasets", str(tmp_path / "d")]
    command += ["--session", "zipped"]
    with ProxyProcess(command, cwd=tmp_path) as proc:
        proc.wait_started()
        assert chat(proc.port, "hello from the archive")["choices"]
        proc.wait_for(r"recorded zipped")
        status, page = get(proc.port, "")
        assert status == 200 and b'name="chatproxy-token"' in page
        assert get(proc.port, "app.js")[0] == 200
        deadline = time.monotonic() + 20
        while True:  # the page's process may answer while it is still reading (it says so: `loading`)
            status, body = get(proc.port, "api/list?q=archive")
            listed = json.loads(body)
            if status != 200 or listed["loading"] is None or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert status == 200 and listed["rows"][0]["first"] == "hello from the archive"
        assert proc.stop() == 0, "\n".join(proc.lines)
    assert not [line for line in proc.lines if "Traceback" in line], proc.lines
