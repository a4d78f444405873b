"""phase=grokking: the modular-arithmetic data, the accuracy, and the real CLI on a tiny setting
(the pipeline and its logged keys, not that it groks)."""
from __future__ import annotations

import json

import torch

from agentforge.models.grokking import GrokkingTransformer, accuracy, modular_dataset, train_grokking
from tests.conftest import run_cli

TINY_GROK = ["phase=grokking", "logger=none", "hardware=cpu", "phase.modulus=7", "phase.d_model=16",
             "phase.ffn_hidden=32", "phase.n_heads=2", "phase.batch_size=8", "phase.max_steps=6",
             "phase.eval_every=3"]


def test_accuracy_by_hand():
    logits = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    assert accuracy(logits, torch.tensor([1, 1, 1, 0])) == 0.75


def test_modular_dataset_labels_and_split():
    (xt, yt), (xv, yv) = modular_dataset(7, "div", 0.5, seed=0)
    assert len(xt) + len(xv) == 7 * 6 and abs(len(xt) - len(xv)) <= 1
    x, y = torch.cat([xt, xv]), torch.cat([yt, yv])
    assert ((y * x[:, 1]) % 7 == x[:, 0]).all() and (x[:, 2] == 7).all()     # c * b = a (mod 7), EQ token
    assert len({tuple(r) for r in xt.tolist()} & {tuple(r) for r in xv.tolist()}) == 0
    (xa, ya), _ = modular_dataset(5, "sub", 1.0, seed=1)
    assert ((xa[:, 0] - xa[:, 1]) % 5 == ya).all() and len(xa) == 25


def test_train_grokking_reports_steps_when_target_reached():
    task = {"modulus": 5, "operation": "add", "train_fraction": 0.8, "d_model": 16, "n_layers": 1, "n_heads": 2,
            "ffn_hidden": 32, "batch_size": 0, "max_steps": 4, "eval_every": 2, "target_accuracy": 1e-6}
    opt = {"name": "muon_grokfast", "lr": 1e-3, "weight_decay": 0.0, "warmup_steps": 0, "min_lr_ratio": 1.0,
           "kl_coef": 0.0, "grokfast_lambda": 0.3, "qk_clip": 30.0}
    r = train_grokking(task, opt, seed=0)
    assert r["steps_to_target_val"] == 2 and r["steps_run"] == 2          # any accuracy > 0 "reaches" it; stops
    assert r["curve"]["step"] == [2]
    assert GrokkingTransformer(5, 16, 1, 2, 32)(torch.zeros(3, 3, dtype=torch.long)).shape == (3, 5)


def test_cli_grokking_logs_curves_and_results(tmp_path):
    proc = run_cli(TINY_GROK, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = next((tmp_path / "outputs" / "runs").glob("*/*_grokking_*"))
    res = json.loads((run_dir / "grokking_results.json").read_text())
    assert res["optimizer"]["name"] == "muon_grokfast" and res["optimizer"]["weight_decay"] == 1.0
    assert res["curve"]["step"] == [3, 6] and res["grokking/steps_run"] == 6
    assert all(0.0 <= a <= 1.0 for a in res["curve"]["val_accuracy"])
    assert "grokking/steps_to_95_val" in res
    assert (run_dir / "plots" / "grokking_accuracy.png").stat().st_size > 0
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    keys = set().union(*(r.get("metrics", r).keys() for r in rows))
    assert {"grokking/train_accuracy", "grokking/val_accuracy", "optimizer/muon_lr",
            "optimizer/slow_gradients_filtered", "optimizer/qk_clipped_heads"} <= keys


def test_cli_bad_operation_names_the_key(tmp_path):
    proc = run_cli([*TINY_GROK, "phase.operation=pow"], tmp_path)
    assert proc.returncode == 2 and "phase.operation" in proc.stderr
