"""SillyTavern's own web UI, driven in headless Chromium in front of the proxy (scripts/sillytavern_check.py).

SillyTavern is not a test dependency: the check runs when a checkout with its node_modules exists at
$CHATPROXY_SILLYTAVERN (default ~/.cache/chatproxy-frontends/SillyTavern: clone SillyTavern, check out a
release tag, `npm ci`) and Chromium is installed; it is skipped otherwise. It takes a few minutes.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest

from subproc import ROOT

_spec = importlib.util.spec_from_file_location("sillytavern_check", ROOT / "scripts" / "sillytavern_check.py")
assert _spec is not None and _spec.loader is not None
check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check)

CHECKOUT = Path(os.environ.get("CHATPROXY_SILLYTAVERN") or check.DEFAULT_CHECKOUT)


@pytest.mark.timeout(900)
def test_every_record_equals_the_chat_sillytavern_saved(tmp_path: Path) -> None:
    """Seven chats and a Test Message clicked through SillyTavern: one record per saved chat and per branch
    left behind, each equal to what SillyTavern saved, and nothing else."""
    if not (CHECKOUT / "server.js").exists() or not (CHECKOUT / "node_modules").is_dir():
        pytest.skip(f"no SillyTavern checkout with node_modules at {CHECKOUT} (set CHATPROXY_SILLYTAVERN)")
    if check.CHROMIUM is None or shutil.which("node") is None:
        pytest.skip("needs chromium and node on PATH")
    lines: list = []
    try:
        problems = check.run(CHECKOUT, None, tmp_path, report=lines.append)
    except check.CheckFailed as exc:
        pytest.fail("\n".join(lines + [str(exc)]), pytrace=False)
    assert problems == 0, "\n".join(lines)
