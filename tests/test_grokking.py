"""phase=grokking: the modular-arithmetic data and its split, the reference decoder against the Grokfast
code's own, task resolution, the benchmark's lower bounds, and the real CLI on a tiny setting (the
pipeline and its logged keys, not that it groks)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from agentforge.errors import ConfigError
from agentforge.models.grokking import (
    GrokkingTransformer,
    ReferenceAttention,
    ReferenceDecoder,
    accuracy,
    modular_dataset,
    resolve_task,
    train_grokking,
)
from agentforge.phases.grokking import resolve
from tests.conftest import compose_cfg, run_cli

TINY_GROK = ["phase=grokking", "logger=none", "hardware=cpu", "phase.modulus=7", "phase.d_model=16",
             "phase.ffn_hidden=32", "phase.n_heads=2", "phase.batch_size=8", "phase.max_steps=6",
             "phase.eval_every=3"]


def test_accuracy_by_hand():
    logits = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    assert accuracy(logits, torch.tensor([1, 1, 1, 0])) == 0.75


def test_modular_dataset_labels_and_split():
    (xt, yt), (xv, yv) = modular_dataset(7, "div", 0.5, seed=0)
    assert len(xt) + len(xv) == 7 * 6 and len(xt) == 21
    x, y = torch.cat([xt, xv]), torch.cat([yt, yv])
    assert ((y * x[:, 1]) % 7 == x[:, 0]).all() and (x[:, 1] > 0).all()     # c * b = a (mod 7), b != 0
    assert len({tuple(r) for r in xt.tolist()} & {tuple(r) for r in xv.tolist()}) == 0
    (xa, ya), _ = modular_dataset(5, "sub", 1.0, seed=1)
    assert ((xa[:, 0] - xa[:, 1]) % 5 == ya).all() and len(xa) == 25


@pytest.mark.parametrize("op", ["add", "mul"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_commutative_split_keeps_swapped_pairs_together(op, seed):
    """A random split over ordered pairs puts about half the swaps of validation pairs in training."""
    (xt, _), (xv, _) = modular_dataset(23, op, 0.5, seed=seed)
    train = {tuple(r) for r in xt.tolist()}
    val = {tuple(r) for r in xv.tolist()}
    assert not {(b, a) for a, b in val} & train                    # no (b, a) of a validation (a, b) in training
    assert len(train) + len(val) == 23 * 23 and abs(len(train) - 23 * 23 / 2) <= 1


def _reference_decoder(ours: ReferenceDecoder) -> nn.Module:
    """The Grokfast reference code's Decoder (github.com/ironjr/grokfast, main.py), seq-first, with
    nn.MultiheadAttention, carrying `ours`' weights."""
    class Block(nn.Module):
        def __init__(self, src):
            super().__init__()
            d = src.ln_1.normalized_shape[0]
            self.ln_1, self.ln_2, self.mlp = src.ln_1, src.ln_2, src.mlp
            self.attn = nn.MultiheadAttention(d, src.attn.n_heads)
            a = src.attn
            with torch.no_grad():
                self.attn.in_proj_weight.copy_(torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]))
                self.attn.in_proj_bias.copy_(torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias]))
                self.attn.out_proj.weight.copy_(a.o_proj.weight)
                self.attn.out_proj.bias.copy_(a.o_proj.bias)

        def forward(self, x):
            attn_mask = torch.triu(torch.full((len(x), len(x)), -float("Inf")), diagonal=1)
            x = self.ln_1(x)
            a, _ = self.attn(x, x, x, attn_mask=attn_mask, need_weights=False)
            x = x + a
            return x + self.mlp(self.ln_2(x))

    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList(Block(b) for b in ours.layers)

        def forward(self, x):   # x: [seq, batch]
            h = ours.token_embeddings(x)
            h = h + ours.position_embeddings(torch.arange(x.shape[0]).unsqueeze(-1)).expand_as(h)
            for layer in self.layers:
                h = layer(h)
            return ours.head(ours.ln_f(h))

    return Decoder()


def test_reference_decoder_matches_the_grokfast_code():
    torch.manual_seed(0)
    p = 11
    ours = ReferenceDecoder(p, d_model=32, n_layers=2, n_heads=4, ffn_hidden=128).eval()
    ab = torch.tensor([[3, 5], [0, 10], [7, 7]])
    seq = torch.stack([ab[:, 0], torch.full((3,), p + 1), ab[:, 1], torch.full((3,), p)])   # [a, op, b, =]
    ref_logits = _reference_decoder(ours)(seq)[-1]
    assert torch.allclose(ours(ab), ref_logits, atol=1e-5)
    # parameter count of the reference at width 128 (vocab 99, 5 position rows) minus its unused 5th row
    big = ReferenceDecoder(97)
    per_block = 2 * 256 + (3 * 128 * 128 + 3 * 128) + (128 * 128 + 128) + (128 * 512 + 512 + 512 * 128 + 128)
    assert sum(q.numel() for q in big.parameters()) == 99 * 128 + 5 * 128 + 2 * per_block + 256 + 128 * 99 - 128


def test_reference_attention_starts_as_multihead_attention_does():
    """q/k/v: Xavier-uniform over the stacked [3d, d] matrix, bound sqrt(6 / (d + 3d)), zero biases, as
    nn.MultiheadAttention's in_proj; its output bias zero as out_proj's."""
    torch.manual_seed(0)
    d = 128
    ours, mha = ReferenceAttention(d, 4), nn.MultiheadAttention(d, 4)
    bound = (6 / (d + 3 * d)) ** 0.5
    for w in (ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight, mha.in_proj_weight):
        assert 0.99 * bound < float(w.abs().max()) <= bound
    assert not any(lin.bias.any() for lin in (ours.q_proj, ours.k_proj, ours.v_proj, ours.o_proj))
    assert not mha.in_proj_bias.any() and not mha.out_proj.bias.any()


def test_resolve_task_lays_top_level_keys_over_the_task():
    phase = {"task": "a", "max_steps": 9, "modulus": None, "target_accuracy": 0.9,
             "tasks": {"a": {"modulus": 97, "max_steps": 100, "target_accuracy": 0.5}}}
    t = resolve_task(phase)
    assert (t["task"], t["modulus"], t["max_steps"], t["target_accuracy"]) == ("a", 97, 9, 0.9)
    with pytest.raises(KeyError, match="phase.task"):
        resolve_task({**phase, "task": "b"})


def test_tasks_resolve_with_their_own_optimizer_settings(tmp_path):
    task, opt = resolve(compose_cfg(["phase=grokking", "optimizer=grokfast_adamw"], tmp_path))
    assert (task["task"], task["operation"], task["model"], task["train_fraction"]) == ("paper", "div", "reference", 0.5)
    assert (opt["weight_decay"], opt["weight_decay_mode"], opt["grokfast_alpha"], opt["grokfast_lambda"],
            opt["lr"], opt["betas"]) == (0.005, "coupled", 0.98, 2.0, 1e-3, [0.9, 0.98])
    task, opt = resolve(compose_cfg(["phase=grokking", "phase.task=strong_wd", "optimizer=adamw"], tmp_path))
    assert (task["model"], opt["weight_decay"], opt["weight_decay_mode"], opt["lr"]) == ("project", 1.0, "decoupled", 3e-3)
    _, opt = resolve(compose_cfg(["phase=grokking", "phase.task_optimizer_settings=false", "optimizer=adamw",
                                  "optimizer.lr=0.02"], tmp_path))
    assert (opt["lr"], opt["weight_decay"]) == (0.02, 0.01)                # the preset as composed
    # an optimizer key the user sets on the command line wins over the task's setting (it was silently replaced)
    muon = compose_cfg(["phase=grokking", "optimizer=muon", "optimizer.lr=3e-3"], tmp_path)
    assert resolve(muon, explicit={"lr"})[1]["lr"] == 3e-3 and resolve(muon, explicit=set())[1]["lr"] == 1e-3
    with pytest.raises(ConfigError, match="phase.task"):
        resolve(compose_cfg(["phase=grokking", "phase.task=nope"], tmp_path))
    with pytest.raises(ConfigError, match="phase.d_model"):
        resolve(compose_cfg(["phase=grokking", "phase.d_model=30", "phase.n_heads=4"], tmp_path))


def test_train_grokking_reports_steps_when_target_reached():
    task = {"modulus": 5, "operation": "sub", "train_fraction": 0.5, "model": "project", "d_model": 16, "n_layers": 1,
            "n_heads": 2, "ffn_hidden": 32, "batch_size": 0, "max_steps": 4, "eval_every": 2, "target_accuracy": 1e-6}
    opt = {"name": "muon_grokfast", "lr": 1e-3, "weight_decay": 0.0, "warmup_steps": 0, "min_lr_ratio": 1.0,
           "kl_coef": 0.0, "grokfast_lambda": 0.3, "qk_clip": 30.0}
    r = train_grokking(task, opt, seed=0)
    assert r["steps_to_target_val"] == 2 and r["steps_run"] == 2          # any accuracy > 0 "reaches" it; stops
    assert r["curve"]["step"] == [2] and r["steps_per_second"] > 0
    assert GrokkingTransformer(5, 16, 1, 2, 32)(torch.zeros(3, 2, dtype=torch.long)).shape == (3, 5)


def _bench():
    spec = importlib.util.spec_from_file_location("bench_grokking", Path(__file__).parent.parent / "benchmarks/bench_grokking.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_speedup_is_a_lower_bound_when_adamw_did_not_generalize():
    speedup = _bench().speedup
    assert speedup({"steps_to_target_val": 4000, "steps_run": 4000}, {"steps_to_target_val": 400, "steps_run": 400}) \
        == ("10.00", 10.0, False)
    assert speedup({"steps_to_target_val": None, "steps_run": 3000}, {"steps_to_target_val": 300, "steps_run": 300}) \
        == (">= 10.00", 10.0, True)
    assert speedup({"steps_to_target_val": 500, "steps_run": 500}, {"steps_to_target_val": None, "steps_run": 1000})[1] is None
    assert _bench().parse_extra("x:muon:lr=0.01,weight_decay_mode=decoupled") == \
        ("x", "muon", {"lr": 0.01, "weight_decay_mode": "decoupled"})


def test_hardware_threads_and_loop_device_shared_with_evomerge(monkeypatch):
    from agentforge.training.trainer import loop_device, set_threads

    was = torch.get_num_threads()
    try:
        set_threads({"threads": 1})
        assert torch.get_num_threads() == 1
        set_threads({"threads": None})  # unset: the count the process started with (not an earlier job's)
        from agentforge.training.trainer import STARTUP_THREADS

        assert torch.get_num_threads() == STARTUP_THREADS
    finally:
        torch.set_num_threads(was)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert [loop_device({"accelerator": a}).type for a in ("auto", "gpu", "cuda", "cpu", "mps")] == \
        ["cuda", "cuda", "cuda", "cpu", "cpu"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert {loop_device({"accelerator": a}).type for a in ("auto", "gpu", "cuda", "cpu")} == {"cpu"}


@pytest.mark.slow   # ~13 s; the grokking CLI's bad-input test stays in the fast tier
def test_cli_grokking_logs_curves_and_results(tmp_path):
    proc = run_cli(TINY_GROK, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = next((tmp_path / "outputs" / "runs").glob("*/*_grokking_*"))
    res = json.loads((run_dir / "grokking_results.json").read_text())
    assert res["task"]["task"] == "paper" and res["task"]["model"] == "reference" and res["task"]["modulus"] == 7
    assert res["optimizer"]["name"] == "muon_grokfast" and res["optimizer"]["weight_decay_mode"] == "coupled"
    assert res["curve"]["step"] == [3, 6] and res["grokking/steps_run"] == 6
    assert all(0.0 <= a <= 1.0 for a in res["curve"]["val_accuracy"])
    assert "grokking/steps_to_95_val" in res
    assert (run_dir / "plots" / "grokking_accuracy.png").stat().st_size > 0
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    keys = set().union(*(r.get("metrics", r).keys() for r in rows))
    assert {"grokking/train_accuracy", "grokking/val_accuracy", "optimizer/muon_lr", "optimizer/grokfast_slow_ratio",
            "optimizer/slow_gradients_filtered", "optimizer/qk_clipped_heads"} <= keys


def test_cli_bad_operation_names_the_key(tmp_path):
    proc = run_cli([*TINY_GROK, "phase.operation=pow"], tmp_path)
    assert proc.returncode == 2 and "phase.operation" in proc.stderr


def test_bench_aims_need_five_seeds_on_one_side_for_a_verdict():
    verdict = _bench().aim_verdict
    assert verdict([12.0], 10.0) == "no verdict from 1 seed(s)"
    assert verdict([12.0, 11.0, 10.5, 10.1, 30.0], 10.0) == "MET"
    assert verdict([12.0, None, 10.5, 11.0, 12.0], 10.0) == "no verdict (budget reached)"
    assert verdict([9.9, 50.0, 60.0, 70.0, 80.0], 10.0).startswith("not shown")


@pytest.mark.slow   # ~7 s: a tiny run through the CLI; resolve's rule is tested in the default tier above
def test_a_command_line_optimizer_key_wins_over_the_tasks_setting_through_the_cli(tmp_path):
    """Hydra's record of the run's overrides reaches resolve: optimizer.lr=3e-3 is used, and the run says so."""
    proc = run_cli([*TINY_GROK, "optimizer=muon", "optimizer.lr=3e-3"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "optimizer.lr=0.003 (command line) is used over the task's 0.001" in proc.stdout
