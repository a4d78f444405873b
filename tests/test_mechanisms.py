"""The Cognate mechanisms do measurable work: the memory recalls beyond the window, its surprise falls on
repeated content, its writes are filtered and evict the least recently used slot, its state is per
sequence; trained halting adapts to token difficulty; the ablations run and are paired (halting by hand:
test_halting.py)."""
from __future__ import annotations

import math

import pytest
import torch

from agentforge.data.recall import recall_rows
from agentforge.evals.stats import paired_bootstrap
from agentforge.models import CognateConfig, CognateModel
from agentforge.models.ablation import (
    recall_memory,
    token_scores,
)


def tiny(**kw) -> CognateModel:
    torch.manual_seed(0)
    base = dict(d_model=32, n_layers=1, n_heads=2, ffn_hidden=64, window=8, max_seq_len=128, ltm_slots=32,
                ltm_key_dim=16, ltm_chunk=4, max_steps=1)
    return CognateModel(CognateConfig(**{**base, **kw}))


# -- memory ------------------------------------------------------------------------------------------------

def test_surprise_falls_when_content_repeats():
    """A 32-token sequence then the same 32 tokens again: the second copy finds its own keys stored."""
    model = tiny(surprise_threshold=0.0, ltm_max_writes=4, ltm_slots=64).eval()
    x = torch.randint(0, 256, (1, 32), generator=torch.Generator().manual_seed(1))
    s = model(torch.cat([x, x], 1)).surprise[0]
    first, second = s[:32].mean(), s[40:].mean()  # past the window into the repeat, contexts match exactly
    assert first > 0.9 and second < 0.5 * first, (float(first), float(second))


def test_writes_are_filtered_by_surprise_and_counted_in_training_only():
    x = torch.randint(0, 256, (2, 16))
    quiet = tiny(surprise_threshold=1e9).train()
    quiet(x)
    assert int(quiet.memory.stats["writes"]) == 0 and quiet.memory.usage_fraction() == 0.0
    eager = tiny(surprise_threshold=0.0, ltm_max_writes=2).train()
    eager(x)
    # 4 chunks of 4 tokens, 2 writes per chunk per row, every token surprising enough
    assert int(eager.memory.stats["writes"]) == 2 * 4 * 2 and eager.memory.usage_fraction() == 8 / 32
    assert isinstance(eager.memory.stats["surprise_sum"], torch.Tensor)  # kept on the device, no host sync
    eager.memory.reset_stats()
    eager.eval()
    eager(x)
    assert eager.memory.stats["writes"] == 0 and eager.memory.stats["reads"] == 0, "eval reads leak into ltm/*"


def test_eviction_takes_the_least_recently_used_slot_not_the_newest():
    """The old defect: usage counted reads since the last write, so the newest slots always lost."""
    mem = tiny(ltm_slots=3, ltm_max_writes=1).memory
    keys, vals = torch.zeros(1, 3, 16), torch.zeros(1, 3, 16)
    filled = torch.ones(1, 3, dtype=torch.bool)
    last = torch.tensor([[5.0, 2.0, 7.0]])      # slot 2 newest, slot 1 least recently used
    kc, vc = torch.ones(1, 1, 16), torch.full((1, 1, 16), 3.0)
    keys, vals, filled, last, src = mem._write(kc, vc, torch.ones(1, 1), keys, vals, filled, last, now=8.0,
                                               src=torch.tensor([[0, 1, 2]]), offset=10)
    assert torch.equal(vals[0, 1], torch.full((16,), 3.0)) and vals[0, [0, 2]].abs().sum() == 0
    assert last.tolist() == [[5.0, 8.0, 7.0]]
    assert src.tolist() == [[0, 10, 2]]          # slot 1 now holds the chunk's token 0, at offset 10


def test_memory_state_is_per_sequence_unless_persistent():
    model = tiny(surprise_threshold=0.0).eval()
    with torch.no_grad():
        model.memory.gate.bias.fill_(2.0)
    a, b = torch.randint(0, 256, (1, 24)), torch.randint(0, 256, (1, 24))
    alone = model(a).logits
    model(b)
    assert torch.equal(model(a).logits, alone), "state leaked from the previous call"
    assert torch.allclose(model(torch.cat([a, b])).logits[0], alone[0], atol=1e-5), "rows of a batch interact"
    model.memory.persist = True
    model(b)
    assert model.memory.filled.any() and not torch.allclose(model(a).logits, alone)


def test_memory_reaches_beyond_the_attention_window_causally():
    """One layer, one step, window 4: a token 10 back can only be seen through the memory, and is."""
    model = tiny(window=4, surprise_threshold=0.0).eval()
    with torch.no_grad():
        model.memory.gate.bias.fill_(2.0)
    x = torch.randint(0, 256, (1, 16))
    y = x.clone()
    y[0, 1] = (y[0, 1] + 1) % 256
    out = model(torch.cat([x, y])).logits
    assert torch.equal(out[0, :1], out[1, :1])
    assert not torch.allclose(out[0, 11:], out[1, 11:])          # read from a chunk written earlier
    with model.ablate(memory=False):
        off = model(torch.cat([x, y])).logits
    assert torch.allclose(off[0, 5:], off[1, 5:], atol=1e-6)    # the window alone cannot


# -- trained tiny models -------------------------------------------------------------------------------------

def _train(model, batches, steps: int, lr: float = 1e-2):
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for i in range(steps):
        x = batches(i)
        loss = model(x[:, :-1], x[:, 1:]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _two_hop_rows(n: int, blocks: int, seed: int) -> torch.Tensor:
    """Blocks "d a b c e f d": the digit after "f" repeats the one 6 back, beyond a 4-token window, so one
    step (one layer) cannot predict it and two can; the letters are easy at any depth."""
    g = torch.Generator().manual_seed(seed)
    d = torch.randint(48, 58, (n, blocks), generator=g)
    filler = torch.tensor([97, 98, 99, 101, 102]).expand(n, 5)
    return torch.cat([torch.cat([d[:, b:b + 1], filler, d[:, b:b + 1]], 1) for b in range(blocks)], 1)


@pytest.mark.slow
def test_trained_halting_spends_more_steps_on_hard_tokens():
    model = tiny(window=4, max_steps=2, ponder_prior=0.6, ltm_chunk=16)
    model.memory.enabled = False  # only recursion can reach the digit
    _train(model, lambda i: _two_hop_rows(16, 5, i), 500)
    x = _two_hop_rows(64, 5, 10_000)
    steps = model(x[:, :-1]).halting_steps
    pos = torch.arange(x.shape[1] - 1) % 7
    hard, easy = steps[:, pos == 5].mean(), steps[:, (pos >= 1) & (pos <= 4)].mean()
    assert hard > easy + 0.5, (float(hard), float(easy))


@pytest.mark.slow
def test_trained_memory_recalls_beyond_the_window():
    """Two identical tiny models trained on the recall task (gap 16 > window 8), one with its memory:
    on held-out items the repeated code's digits have lower loss with memory than without."""
    def batches(i):
        return recall_rows(16, 63, seed=i, split="train", gap=16)[0]
    rows, mask = recall_rows(64, 63, seed=0, split="val", gap=16)
    per_item = {}
    for enabled in (True, False):
        model = tiny(ltm_slots=64, ltm_max_writes=4, surprise_threshold=0.0)
        model.memory.enabled = enabled
        _train(model, batches, 400)
        scores = token_scores(model, rows)
        per_item[enabled] = (scores["loss"] * mask).sum(1) / mask.sum(1)
        if enabled:  # lesioning the trained model's memory hurts too (paired bootstrap over items)
            assert recall_memory(model, rows, mask)["ablation/recall_no_memory_loss_delta_ci_low"] > 0
    assert float(per_item[False].mean()) > math.log(10) - 0.05  # without memory: chance on the digits
    bs = paired_bootstrap(per_item[False].tolist(), per_item[True].tolist())
    assert bs["ci95"][0] > 0, bs  # with memory: lower loss on the same items


def test_phase1_diversity_uses_the_deterministic_cost(tmp_path):
    """Halting 2, 3, 4 (CV sqrt(2/3)/3), LTM usage equal (CV 0), MFLOPs 1, 1, 1 (CV 0): the noisy
    latencies 10, 20, 30 are not used."""
    import json

    from agentforge.pipeline.thresholds import cognate_diversity
    for mid, h in zip((1, 2, 3), (2.0, 3.0, 4.0)):
        d = tmp_path / "cognate" / f"model{mid}"
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps({
            "diversity/avg_halting_steps": h, "diversity/ltm_usage": 0.5,
            "diversity/inference_mflops_per_token": 1.0, "diversity/inference_time_ms": 10.0 * (mid)}))
    assert cognate_diversity(tmp_path)["phase1/diversity"] == pytest.approx(math.sqrt(2 / 3) / 3 / 3)


@pytest.mark.parametrize("override,key", [("model.ponder_prior=1.5", "model.ponder_prior"),  # the others: slow tier
                                          pytest.param("model.no_grad_steps=-1", "model.no_grad_steps", marks=pytest.mark.slow),
                                          pytest.param("+phase.curriculum.0.mix.recal=1.0", "phase.curriculum[0]",
                                                       marks=pytest.mark.slow)])
def test_bad_mechanism_settings_fail_with_one_error_line(tmp_path, override, key):
    from tests.conftest import run_cli
    proc = run_cli(["phase=cognate", override, "logger=none"], tmp_path, timeout=60)
    err = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert len(err) == 1 and key in err[0], proc.stderr


def test_halting_verdict_is_pass_fail_or_inconclusive_from_the_cost_ci():
    """The cost CI is the negated CI of max_steps_loss_delta. Below the margin: PASS; wholly at or above it: FAIL;
    straddling it (the default pipeline's m2: [+0.0043, +0.0105]), or fewer than 30 rows: INCONCLUSIVE."""
    from agentforge.models.ablation import halting_verdict

    def m(lo_cost, hi_cost, n=32):
        return {"ablation/halting_noninferiority_margin": 0.01, "ablation/max_steps_loss_delta_ci_low": -hi_cost,
                "ablation/max_steps_loss_delta_ci_high": -lo_cost, "ablation/n_rows": float(n)}

    assert halting_verdict(m(-0.002, 0.008)).startswith("PASS (cost CI [-0.0020, +0.0080] vs margin 0.01, n=32)")
    assert halting_verdict(m(0.012, 0.03)).startswith("FAIL")
    assert halting_verdict(m(0.0043, 0.0105)).startswith("INCONCLUSIVE")
    assert halting_verdict(m(-0.002, 0.008, n=4)).startswith("INCONCLUSIVE")


def test_ablation_deltas_on_few_rows_use_the_exact_sign_flip_test():
    """4 rows, every variant row 0.01-0.04 above the trained one: the exact sign-flip p is 2/2^4 = 0.125 (the
    bootstrap said ~1e-4 with a CI excluding 0), and its inverted CI includes 0 at n = 4."""
    import torch

    from agentforge.models.ablation import _compare

    trained = torch.tensor([1.0, 2.0, 3.0, 4.0])
    out = _compare("x", trained + torch.tensor([0.01, 0.02, 0.03, 0.04]), trained, seed=0)
    assert out["x_p_value"] == pytest.approx(0.125) and out["x_delta"] == pytest.approx(0.025)
    assert out["x_delta_ci_low"] <= 0 <= out["x_delta_ci_high"]


@pytest.mark.slow
def test_cognate_run_reports_halting_compute_and_the_recall_scope(tmp_path):
    """The smoke run on 128-token rows: metrics.json has the max-steps MFLOPs/token, and the output prints the
    compute halting saves next to its verdict, the recall ablation's scope and the memory gate's figures (fast:
    tests/test_model.py, tests/test_model_edges.py, tests/test_memory.py)."""
    import json

    from tests.conftest import run_cli
    proc = run_cli(["phase=cognate", "model=m1", "experiment=smoke", "data.seq_len=128", "logger=none"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((tmp_path / "outputs/artifacts/cognate/model1/metrics.json").read_text())
    assert m["diversity/inference_mflops_per_token_max_steps"] >= m["diversity/inference_mflops_per_token"] > 0
    assert m["ablation/backbone_reach_tokens"] == 504 and m["ablation/recall_gap_chars"] == 72
    assert "MFLOPs/token at max steps:" in next(ln for ln in proc.stdout.splitlines() if ln.startswith("halting:"))
    assert "recall: the repeat lies beyond one 64-token attention window; stacked layers" in proc.stdout
    gate = next(ln for ln in proc.stdout.splitlines() if ln.startswith("recall: the memory's gate"))
    assert f"opens {m['ablation/recall_gate_digits']:.3f} on the digits and {m['ablation/recall_gate_other']:.3f}" in gate
    assert 0 < m["ablation/recall_read_share_digits"] and 0 < m["ablation/recall_read_share_other"]


def test_ltm_heatmap_rows_are_each_epochs_reads_not_the_running_total():
    """The memory's ``usage`` buffer adds up every training pass's reads; the heatmap's epoch row is that epoch's
    share. An epoch with no training reads (here an eval-mode pass) gives an empty row; a snapshot of the running
    total repeated the previous row."""
    from types import SimpleNamespace

    from agentforge.models.cognate import CognateConfig, CognateModel
    from agentforge.phases.cognate import MemoryUsageCallback

    torch.manual_seed(0)
    model = CognateModel(CognateConfig(d_model=32, n_layers=1, n_heads=2, ffn_hidden=64, window=16, max_steps=2,
                                       max_seq_len=64))
    x = torch.randint(0, 256, (2, 48))
    model.train()
    model(x)   # reads before this run started (a resumed model's buffer)
    cb, module = MemoryUsageCallback(), SimpleNamespace(model=model)
    cb.on_train_start(None, module)
    before = model.memory.usage.clone()
    model(x.flip(1))
    cb.on_train_epoch_end(None, module)
    model.eval()
    model(x)
    cb.on_train_epoch_end(None, module)
    first = torch.tensor(cb.snapshots[0])
    epoch = model.memory.usage - before
    assert epoch.sum() > 0 and torch.allclose(first, epoch / epoch.sum())
    assert sum(cb.snapshots[1]) == 0.0
