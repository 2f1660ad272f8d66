"""The real trainers (LLaMA-Factory, TRL, Axolotl) and two `datasets` versions on what chatproxy records.

They are not test dependencies: `python scripts/trainer_check.py --install` puts each in its own venv
(GBs: torch and friends). Each one installed there is checked here; the others are skipped.
"""

from __future__ import annotations

import importlib.util
import io
import os
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from subproc import ROOT

_spec = importlib.util.spec_from_file_location("trainer_check", ROOT / "scripts" / "trainer_check.py")
assert _spec is not None and _spec.loader is not None
check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check)

VENVS = Path(os.environ.get("TRAINER_VENVS") or check.DEFAULT_VENVS)


@pytest.mark.timeout(3600)
@pytest.mark.parametrize("name", list(check.TRAINERS) + sorted(check.DATASETS_VENVS))
def test_trainer_keeps_and_trains_every_record(name, tmp_path):
    """Every record exported keeps in the trainer's own pipeline and 2 steps train; every export reads
    back unchanged in each `datasets` version (but openai's tool objects, which are for OpenAI)."""
    pytest.importorskip("openai")
    if check.installed(VENVS, name) is None:
        pytest.skip(
            f"{name} is not installed in {VENVS / name} (python scripts/trainer_check.py --install --trainer {name})"
        )
    output = io.StringIO()
    with redirect_stdout(output):
        code = check.main(["--venvs", str(VENVS), "--trainer", name, "--keep", str(tmp_path / "work")])
    assert code == 0, output.getvalue()
