"""scripts/confirm_ablations.py re-measures the ablations on test-split rows, disjoint by content from the
validation rows the phase's own figures use."""
from __future__ import annotations

import importlib.util
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from agentforge.artifacts import save_model
from agentforge.data.datamodule import TaskPool
from agentforge.data.tokenizer import ByteTokenizer
from agentforge.models import CognateConfig, CognateModel
from agentforge.models.ablation import halting_verdict

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "confirm_ablations.py"


def _script():
    spec = importlib.util.spec_from_file_location("confirm_ablations", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_test_rows_share_no_text_with_validation_rows():
    mix = {"plain_text": 1.0, "arithmetic": 1.0, "recall": 1.0}
    val = set(TaskPool(42).sample_texts(mix, 40_000, random.Random(1), "val"))
    test = set(TaskPool(42).sample_texts(mix, 40_000, random.Random(1), "test"))
    assert val and test and not (val & test)


@pytest.mark.slow   # ~16 s; the ablations it calls are tested in the default tier (test_halting.py's `ablations`,
# halting_verdict in test_mechanisms.py), and the row split it relies on just above
def test_confirm_reports_paired_deltas_and_the_verdict(tmp_path):
    torch.manual_seed(0)
    model = CognateModel(CognateConfig(d_model=32, n_layers=1, n_heads=2, ffn_hidden=64, window=16, max_seq_len=128,
                                       ltm_key_dim=16, max_steps=2))
    save_model(tmp_path / "m", model, ByteTokenizer())
    out = _script().confirm(tmp_path / "m", n_rows=4, seq_len=128)
    assert out["ablation/n_rows"] == 4 and out["ablation/recall_n_rows"] == 4
    for k in ("steps1", "no_memory", "max_steps"):
        lo, d, hi = (out[f"ablation/{k}_loss_delta{s}"] for s in ("_ci_low", "", "_ci_high"))
        assert lo <= d <= hi
    # non-inferior exactly when the CI's bound on the cost of halting (always-max-steps minus halting) is within the margin
    assert out["ablation/halting_noninferior"] == float(out["ablation/max_steps_loss_delta_ci_low"]
                                                        > -out["ablation/halting_noninferiority_margin"])
    printed = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "m"), "--rows", "4"], capture_output=True,
                             text=True, check=True).stdout
    assert "n=4 test rows" in printed
    verdict = halting_verdict(out)   # the same model, rows and seed: the same verdict (4 rows: INCONCLUSIVE)
    assert verdict.startswith("INCONCLUSIVE") and f"halting {verdict}" in printed
