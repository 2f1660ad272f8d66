"""The package keeps to its declared floor, Python 3.9 (pyproject.toml requires-python).

Three checks, cheapest first: vermin reads the source for newer syntax and library use; a real
Python 3.9 compiles every module; and the same interpreter imports every module (which runs
decorators such as dataclass options evaluated at import). test_pyz.py then runs the whole proxy
under Python 3.9 from the single-file build.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import h11
import pytest

from subproc import ROOT, find_python

PACKAGE = ROOT / "chatproxy"


def _vermin() -> str:
    beside = Path(sys.executable).with_name("vermin")
    found = str(beside) if beside.exists() else shutil.which("vermin")
    if found is None:
        pytest.skip("vermin is not installed (it is in the test extra: pip install -e '.[test]')")
    return found


@pytest.fixture(scope="module")
def python39() -> str:
    found = find_python((3, 9))
    if found is None:
        pytest.skip("no Python 3.9 interpreter found")
    return found


def test_requires_python_is_3_9():
    assert 'requires-python = ">=3.9"' in (ROOT / "pyproject.toml").read_text(encoding="utf-8")


def test_vermin_finds_nothing_newer_than_3_9():
    result = subprocess.run(
        [_vermin(), "--target=3.9-", "--violations", "--no-tips", "--no-parse-comments", str(PACKAGE)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_python39_compiles_every_module(python39, tmp_path):
    """Syntax from later versions (match, parenthesised with-items, except*) fails here."""
    copy = tmp_path / "chatproxy"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    result = subprocess.run(
        [python39, "-I", "-S", "-m", "compileall", "-q", str(copy)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_python39_imports_every_module(python39):
    """Import-time use of newer APIs (dataclass slots/kw_only, typing features) fails here."""
    modules = sorted(f"chatproxy.{p.stem}" for p in PACKAGE.glob("*.py") if p.stem != "__main__")
    h11_home = str(Path(h11.__file__).resolve().parent.parent)
    code = (
        "import importlib, sys\n"
        f"sys.path[:0] = [{str(ROOT)!r}, {h11_home!r}]\n"
        "sys.dont_write_bytecode = True\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "import chatproxy\n"
        "assert chatproxy.serve and chatproxy.Config and chatproxy.parse_target\n"
    )
    result = subprocess.run([python39, "-I", "-S", "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
