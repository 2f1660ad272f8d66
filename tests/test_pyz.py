"""The single-file build: scripts/build_pyz.py makes a zipapp that runs on a bare Python 3.9+.

"Bare" is `-I -S`: no environment variables, no user or system site-packages, so the only h11
the proxy can import is the copy inside the archive.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from chatproxy import __version__

from subproc import ROOT, ProxyProcess, chat, other_python

BARE = ["-I", "-S"]


@pytest.fixture(scope="module")
def pyz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("pyz") / "chatproxy.pyz"
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build_pyz.py"), "--output", str(output)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"built {output}")
    return output


@pytest.fixture(scope="module")
def bare_python() -> str:
    """Another interpreter than the one running the tests; Python 3.9 when there is one (the floor)."""
    found = other_python()
    if found is None:
        pytest.skip("no Python 3.9-3.13 other than the running one was found")
    return found[1]


def test_archive_holds_chatproxy_h11_and_its_licence(pyz):
    """Everything the proxy imports is inside; no bytecode of the building interpreter is."""
    with zipfile.ZipFile(pyz) as archive:
        names = set(archive.namelist())
        main = archive.read("__main__.py").decode()
    assert {
        "__main__.py",
        "chatproxy/__init__.py",
        "chatproxy/cli.py",
        "chatproxy/proxy.py",
        "h11/__init__.py",
    } <= names
    assert "h11/LICENSE.txt" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert "from chatproxy.cli import main" in main
    assert pyz.read_bytes().startswith(b"#!/usr/bin/env python3\n")


def test_bare_interpreter_has_no_h11_of_its_own(bare_python):
    """Guards the next tests: if this interpreter could import h11, they would prove nothing."""
    result = subprocess.run([bare_python, *BARE, "-c", "import h11"], capture_output=True, text=True, timeout=30)
    assert result.returncode != 0 and "No module named 'h11'" in result.stderr


def test_version_from_the_archive(pyz, bare_python, tmp_path):
    result = subprocess.run(
        [bare_python, *BARE, str(pyz), "--version"], capture_output=True, text=True, timeout=30, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"chatproxy {__version__}"


def test_proxy_runs_from_the_archive_and_records(pyz, bare_python, upstream, tmp_path):
    """A chat relayed by the archived proxy under a bare interpreter lands in the dataset, recorded by
    a recorder process started from the same archive."""
    datasets = tmp_path / "datasets"
    command = [
        bare_python,
        *BARE,
        str(pyz),
        "--target",
        upstream.url,
        "--port",
        "0",
        "--datasets",
        str(datasets),
        "--session",
        "from-pyz",
    ]
    with ProxyProcess(command, cwd=tmp_path) as proc:
        proc.wait_started()
        reply = chat(proc.port, "hello from a zipapp")
        assert reply["choices"][0]["message"]["content"] == "echo: hello from a zipapp"
        proc.wait_for(r"recorded from-pyz: fake-model, 2 turns")
        assert proc.stop(signal.SIGTERM) == 0, "\n".join(proc.lines)
    records = json.loads((datasets / "from-pyz.json").read_text(encoding="utf-8"))
    assert [turn["value"] for turn in records[0]["conversations"]] == [
        "hello from a zipapp",
        "echo: hello from a zipapp",
    ]
    assert not [line for line in proc.lines if "Traceback" in line]
    # The recorder process was started from the archive too, not replaced by the in-process fallback.
    assert not [line for line in proc.lines if "recording in this process instead" in line]
