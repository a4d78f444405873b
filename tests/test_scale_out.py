"""Lightning DDP on the CPU (gloo, two processes): one run dir, one W&B run, one checkpoint, metrics
written once, and the same weights on both ranks (QK-clip max logits are reduced across ranks)."""
from __future__ import annotations

import json

import pytest

from agentforge.artifacts import load_model
from agentforge.tracking.wandb_offline import find_offline_runs, read_offline_run
from tests.conftest import TINY, run_cli

pytestmark = pytest.mark.slow


def test_ddp_two_cpu_processes_write_once(tmp_path):
    args = ["phase=cognate", "model=m1", "hardware=ddp", "hardware.accelerator=cpu", "hardware.devices=2",
            *[a for a in TINY if not a.startswith(("logger", "hardware"))]]
    proc = run_cli(args, tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs_root = tmp_path / "outputs" / "runs"
    run_dirs = [d for d in runs_root.rglob("*_cognate_*") if d.is_dir()]
    assert len(run_dirs) == 1, run_dirs
    assert len(find_offline_runs(tmp_path / "outputs")) == 1
    steps = [json.loads(x).get("_step") for x in (run_dirs[0] / "metrics.jsonl").read_text().splitlines()
             if "train/loss" in x]
    assert steps and len(steps) == len(set(steps)), "no train/loss row, or a metric row written by both ranks"
    run = read_offline_run(find_offline_runs(tmp_path / "outputs")[0])
    assert "optimizer/qk_clipped_heads" in run.history_keys()
    load_model(tmp_path / "outputs" / "artifacts" / "cognate" / "model1")
    final = json.loads((tmp_path / "outputs" / "artifacts" / "cognate" / "model1" / "metrics.json").read_text())
    assert final["ddp/rank_weight_spread"] == 0.0   # both ranks ended with the same weights
