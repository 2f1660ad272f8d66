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


# The log readers, on lines as LLaMA-Factory 0.9.5 and Axolotl 0.19.0 print them (no venv needed).

LLAMAFACTORY_LOG = """\
[WARNING|2026-12-02 10:13:31] llamafactory.data.converter:143 >> Invalid role tag in [{'from': 'gpt'}].
[WARNING|2026-12-02 10:13:31] llamafactory.data.converter:143 >> Invalid message count in [{'from': 'gpt'}].
[WARNING|2026-12-02 10:13:31] llamafactory.data.converter:143 >> Skipping this abnormal example.
[WARNING|2026-12-02 10:13:31] llamafactory.data.converter:143 >> Invalid message count in [{'from': 'human'}].
[WARNING|2026-12-02 10:13:31] llamafactory.data.converter:143 >> Skipping this abnormal example.
[WARNING|2026-12-02 10:13:31] llamafactory.data.processor.supervised:157 >> Dropped invalid example: []
[WARNING|2026-12-02 10:13:31] llamafactory.data.processor.supervised:157 >> Dropped invalid example: []
[WARNING|2026-12-02 10:13:31] llamafactory...supervised:173 >> Dropped lengthy example with length 2000 > 1024.
[INFO|trainer.py:1470] 2026-12-02 10:13:32,973 >>   Num examples = 7
{'loss': '5.766', 'grad_norm': '2.206', 'learning_rate': '0.0001', 'epoch': '0.1'}
{'loss': '5.816', 'grad_norm': '2.071', 'learning_rate': '5e-05', 'epoch': '0.2'}
{'train_runtime': '0.2689', 'train_loss': '5.791', 'epoch': '0.2'}
"""


def test_llamafactory_log_one_reason_per_dropped_example():
    """An abnormal example is logged by the converter and again by the processor: counted once, with the
    converter's reasons."""
    assert check.llamafactory_drops(LLAMAFACTORY_LOG) == [
        "abnormal example (invalid role tag, invalid message count)",
        "abnormal example (invalid message count)",
        "Dropped lengthy example with length 2000 > 1024",
    ]
    assert check.num_examples(LLAMAFACTORY_LOG) == 7
    assert check.trained_steps(LLAMAFACTORY_LOG) == 2
    assert check.llamafactory_drops("Num examples = 10\n{'loss': '1.0'}\n") == []


def test_axolotl_log_drops():
    log = (
        "[INFO] [axolotl.utils.data.utils] Dropped 2 sequences outside valid range ([2, 1024])\n"
        "[INFO] [axolotl.utils.data.utils] Dropped 1 short sequences (<2 tokens)\n"
        "[WARNING] [axolotl.utils.trainer] Dropped 3 samples with no trainable tokens\n"
        "Dropping Invalid Sequences (<None or >1024) (num_proc=1): 100%|##| 9/9\n"
    )
    assert check.axolotl_drops(log) == [
        (2, "Dropped 2 sequences outside valid range ([2, 1024])"),
        (1, "Dropped 1 short sequences (<2 tokens)"),
        (3, "Dropped 3 samples with no trainable tokens"),
    ]
