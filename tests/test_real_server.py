"""chatproxy in front of real OpenAI-compatible servers (LiteLLM's proxy, llama-cpp-python's server).

The servers are not test dependencies: `python scripts/real_server_check.py --install` puts them in
their own venvs (see that script). Each one installed there is checked here in a few seconds; the
others are skipped.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from subproc import ROOT

_spec = importlib.util.spec_from_file_location("real_server_check", ROOT / "scripts" / "real_server_check.py")
assert _spec is not None and _spec.loader is not None
real = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(real)

VENVS = Path(os.environ.get("REAL_SERVER_VENVS") or real.DEFAULT_VENVS)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", sorted(real.PACKAGES))
def test_real_server_through_the_proxy(name):
    """Models, chat and text completions, streamed and not, via the openai SDK; records match the replies."""
    pytest.importorskip("openai")
    python = real.installed(VENVS, name)
    if python is None:
        pytest.skip(f"{name} is not installed in {VENVS / name} (python scripts/real_server_check.py --install)")
    lines = []
    try:
        real.check(name, python, report=lines.append)
    except real.CheckFailed as exc:
        pytest.fail("\n".join(lines + [str(exc)]), pytrace=False)
