"""Muon-Grokfast: the Grokfast filter by hand, parameter routing, QK-clip, schedules, exact resume."""
from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from torch import nn

from agentforge.errors import ConfigError
from agentforge.models import CognateModel
from agentforge.models.cognate import CognateConfig
from agentforge.models.layers import CausalSelfAttention, rope_cache
from agentforge.optim import build_optimizer, record_max_logits, split_muon
from agentforge.optim.grokfast import ema_filter_, ma_filter_
from agentforge.optim.muon_grokfast import MuonGrokfast
from agentforge.optim.qk_clip import qk_clip_

MG = {"name": "muon_grokfast", "lr": 1e-3, "weight_decay": 0.01, "warmup_steps": 2, "min_lr_ratio": 0.1,
      "kl_coef": 0.0, "grokfast": "ema", "grokfast_alpha": 0.9, "grokfast_lambda": 0.3, "qk_clip": 30.0}


def tiny_model(seed=0) -> CognateModel:
    torch.manual_seed(seed)
    return CognateModel(CognateConfig(vocab_size=40, d_model=16, n_layers=1, n_heads=2, ffn_hidden=24, window=8,
                                      max_seq_len=16, max_steps=2, ltm_slots=8, ltm_key_dim=8))


def train_steps(model, opt, sched, n, seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        for a in model.attention_modules():
            a.reset_max_logit()
        ids = torch.randint(0, 40, (2, 9), generator=g)
        opt.zero_grad()
        model(ids[:, :-1], ids[:, 1:]).loss.backward()
        opt.step()
        sched.step()


def test_grokfast_ema_two_steps_by_hand():
    p = nn.Parameter(torch.zeros(2))
    st = [{}]
    p.grad = torch.tensor([1.0, 2.0])
    ema_filter_([p], st, alpha=0.5, lamb=2.0)          # ema = g1 = [1, 2];  g = g1 + 2*ema
    assert torch.equal(p.grad, torch.tensor([3.0, 6.0]))
    p.grad = torch.tensor([3.0, 0.0])
    ema_filter_([p], st, alpha=0.5, lamb=2.0)          # ema = .5*[1,2] + .5*[3,0] = [2, 1]
    assert torch.equal(st[0]["grokfast_ema"], torch.tensor([2.0, 1.0]))
    assert torch.equal(p.grad, torch.tensor([7.0, 2.0]))  # [3,0] + 2*[2,1]


def test_grokfast_ma_waits_for_full_window():
    p = nn.Parameter(torch.zeros(1))
    st = [{}]
    p.grad = torch.tensor([2.0])
    assert ma_filter_([p], st, window=2, lamb=1.0) == 0 and p.grad.item() == 2.0
    p.grad = torch.tensor([4.0])
    assert ma_filter_([p], st, window=2, lamb=1.0) == 1
    assert p.grad.item() == 4.0 + 3.0                  # + mean(2, 4)
    p.grad = torch.tensor([0.0])
    ma_filter_([p], st, window=2, lamb=1.0)
    assert p.grad.item() == 2.0                        # window now (4, 0): mean 2


def test_parameters_routed_to_the_right_group():
    model = tiny_model()
    muon, decay, no_decay = split_muon(model)
    names = {id(p): n for n, p in model.named_parameters()}
    muon_n = {names[id(p)] for p in muon}
    assert {"blocks.0.attn.q_proj.weight", "blocks.0.mlp.down.weight", "memory.gate.weight"} <= muon_n
    assert all(n.endswith("weight") and "norm" not in n for n in muon_n)
    assert {"lm_head.weight", "halt_head.weight"} == {names[id(p)] for p in decay}
    assert {"embed.weight", "norm.weight", "halt_head.bias", "memory.gate.bias"} <= {names[id(p)] for p in no_decay}
    assert len(muon) + len(decay) + len(no_decay) == len(list(model.parameters()))
    opt, _ = build_optimizer(model, MG, total_steps=10)
    assert [g["kind"] for g in opt.param_groups] == ["muon", "adamw", "adamw"]
    assert opt.param_groups[2]["weight_decay"] == 0.0 and opt.param_groups[0]["weight_decay"] == 0.01


def test_schedule_scales_every_group_and_metrics_report_it():
    model = tiny_model()
    opt, sched = build_optimizer(model, {**MG, "adamw_lr": 2e-3, "warmup_steps": 4}, total_steps=20)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-3 / 4, 2e-3 / 4, 2e-3 / 4])
    train_steps(model, opt, sched, 1, seed=1)
    m = opt.metrics()
    assert m["optimizer/muon_lr"] == pytest.approx(1e-3 / 4) and m["optimizer/adamw_lr"] == pytest.approx(2e-3 / 4)
    assert m["optimizer/grokfast_lambda"] == 0.3
    assert m["optimizer/slow_gradients_filtered"] == 0.0   # first step: ema = g, and 0.3*|g| < |g| everywhere
    assert m["optimizer/grokfast_slow_ratio"] == pytest.approx(0.3) and m["optimizer/qk_clipped_heads"] == 0.0


def test_muon_groups_take_exactly_torch_muon_steps():
    torch.manual_seed(0)
    w1 = nn.Parameter(torch.randn(6, 4))
    w2 = nn.Parameter(w1.detach().clone())
    ours = MuonGrokfast([{"params": [w1]}], [], lr=0.1, weight_decay=0.1, adjust_lr_fn="original")
    ref = torch.optim.Muon([w2], lr=0.1, weight_decay=0.1, adjust_lr_fn="original")
    for k in range(3):
        g = torch.randn(6, 4, generator=torch.Generator().manual_seed(k))
        w1.grad, w2.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    assert torch.equal(w1, w2)


def test_adamw_groups_take_exactly_torch_adamw_steps():
    torch.manual_seed(0)
    w1 = nn.Parameter(torch.randn(5))
    w2 = nn.Parameter(w1.detach().clone())
    ours = MuonGrokfast([], [{"params": [w1]}], lr=0.1, weight_decay=0.1, grokfast_lambda=0.5, grokfast="none")
    ref = torch.optim.AdamW([w2], lr=0.1, weight_decay=0.1, betas=(0.9, 0.95))
    for k in range(3):
        g = torch.randn(5, generator=torch.Generator().manual_seed(k))
        w1.grad, w2.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    assert torch.allclose(w1, w2, rtol=0, atol=1e-7)


def _attn_logits(attn, x, cos, sin):
    b, t, _ = x.shape
    from agentforge.models.layers import apply_rope
    q = apply_rope(attn.q_proj(x).view(b, t, attn.n_heads, attn.head_dim).transpose(1, 2), cos, sin)
    k = apply_rope(attn.k_proj(x).view(b, t, attn.n_heads, attn.head_dim).transpose(1, 2), cos, sin)
    return (q @ k.transpose(-2, -1)) / math.sqrt(attn.head_dim)


def test_qk_clip_brings_inflated_head_back_to_tau_and_leaves_others():
    torch.manual_seed(0)
    attn = CausalSelfAttention(16, 4, window=8)
    with torch.no_grad():
        attn.q_proj.weight[4:8] *= 40.0                 # inflate head 1
        attn.k_proj.weight[4:8] *= 40.0
    cos, sin = rope_cache(8, 4, 10000.0)
    x = torch.randn(2, 8, 16)
    attn(x, cos, sin)
    tau = 5.0
    assert attn.max_logit[1] > tau and (attn.max_logit[[0, 2, 3]] < tau).all()
    q_before, k_before = attn.q_proj.weight.clone(), attn.k_proj.weight.clone()
    clipped, largest = qk_clip_([attn], tau)
    assert clipped == 1 and largest > tau
    keep = torch.ones(16, dtype=torch.bool)
    keep[4:8] = False
    assert torch.equal(attn.q_proj.weight[keep], q_before[keep]) and torch.equal(attn.k_proj.weight[keep], k_before[keep])
    attn.reset_max_logit()
    attn(x, cos, sin)
    assert attn.max_logit[1].item() == pytest.approx(tau, rel=1e-4)
    mask = torch.ones(8, 8, dtype=torch.bool).tril()
    assert _attn_logits(attn, x, cos, sin)[:, 1].masked_fill(~mask, -1e9).max().item() == pytest.approx(tau, rel=1e-4)


def test_optimizer_clips_heads_after_the_step():
    """The clipped run equals a run without QK-clip whose heads are then scaled by hand by sqrt(tau / max logit of
    the step): the clip acts on the weights the Muon/AdamW step produced (clipping before the step differs)."""
    tau, model, plain = 1e-3, tiny_model(), tiny_model()
    clipped = {}
    for m, clip in ((model, tau), (plain, None)):
        opt, sched = build_optimizer(m, {**MG, "qk_clip": clip}, total_steps=10)
        record_max_logits(m, True)   # plain's step's max logits too, for the scaling by hand (its optimizer reads none)
        train_steps(m, opt, sched, 1, seed=2)
        clipped[clip] = opt.metrics()["optimizer/qk_clipped_heads"]
    assert clipped == {tau: 2.0, None: 0.0}   # 1 layer x 2 heads, all above a tiny tau
    for attn, ref in zip(model.attention_modules(), plain.attention_modules()):
        rows = torch.sqrt(tau / ref.max_logit).repeat_interleave(ref.head_dim)[:, None]
        assert (ref.max_logit > tau).all() and not torch.equal(attn.q_proj.weight, ref.q_proj.weight)
        for got, w in ((attn.q_proj.weight, ref.q_proj.weight), (attn.k_proj.weight, ref.k_proj.weight)):
            assert torch.allclose(got, w * rows, rtol=1e-6, atol=0)
    for (name, p), q in zip(model.named_parameters(), plain.parameters()):   # the clip touches W_q, W_k only
        assert name.endswith(("q_proj.weight", "k_proj.weight")) or torch.equal(p, q), name


@pytest.mark.parametrize("name,extra", [("muon_grokfast", {}), ("muon_grokfast", {"grokfast": "ma", "grokfast_window": 2}),
                                        ("grokfast_adamw", {}), ("muon", {})])
def test_resume_continues_ema_and_momentum_exactly(name, extra):
    cfg = {**MG, "name": name, **extra}
    a = tiny_model()
    opt_a, sched_a = build_optimizer(a, cfg, total_steps=10)
    train_steps(a, opt_a, sched_a, 3, seed=3)
    buf = io.BytesIO()
    torch.save({"model": a.state_dict(), "opt": opt_a.state_dict(), "sched": sched_a.state_dict()}, buf)
    buf.seek(0)
    ck = torch.load(buf, weights_only=True)           # as Lightning's SafeCheckpointIO loads it
    b = tiny_model(seed=99)
    b.load_state_dict(ck["model"])
    b.memory.load_state_dict(a.memory.state_dict())
    opt_b, sched_b = build_optimizer(b, cfg, total_steps=10)
    opt_b.load_state_dict(ck["opt"])
    sched_b.load_state_dict(ck["sched"])
    state_keys = {k for st in opt_b.state.values() for k in st}
    assert ("momentum_buffer" in state_keys) == (name != "grokfast_adamw")
    assert ("grokfast_ema" in state_keys or "grokfast_ma" in state_keys) == (name != "muon")
    train_steps(a, opt_a, sched_a, 2, seed=4)
    train_steps(b, opt_b, sched_b, 2, seed=4)
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(pa, pb), n


def test_resume_differs_without_the_state():
    """The exact-resume test above can fail: dropping the optimizer state changes the next update."""
    a = tiny_model()
    opt_a, sched_a = build_optimizer(a, MG, total_steps=10)
    train_steps(a, opt_a, sched_a, 3, seed=3)
    b = copy.deepcopy(a)
    opt_b, sched_b = build_optimizer(b, MG, total_steps=10)
    sched_b.load_state_dict(sched_a.state_dict())
    train_steps(a, opt_a, sched_a, 1, seed=4)
    train_steps(b, opt_b, sched_b, 1, seed=4)
    assert not torch.equal(a.blocks[0].attn.q_proj.weight, b.blocks[0].attn.q_proj.weight)


def test_bad_config_names_the_key():
    with pytest.raises(ConfigError, match="optimizer.grokfast_alpha"):
        build_optimizer(tiny_model(), {**MG, "grokfast_alpha": 1.5}, 10)
    with pytest.raises(ConfigError, match="optimizer.name"):
        build_optimizer(tiny_model(), {**MG, "name": "sgdx"}, 10)


def test_shipped_presets_match_the_seed(compose_cfg_fn=None):
    import tempfile
    from pathlib import Path

    from tests.conftest import compose_cfg
    want = {"muon_grokfast": (1e-3, 0.3, 30.0, 0.0), "muon_grokfast_baking": (1e-4, 0.2, 30.0, 0.0),
            "muon_grokfast_rl": (5e-4, 0.1, 25.0, 0.1)}
    with tempfile.TemporaryDirectory() as d:
        for preset, (lr, lam, tau, kl) in want.items():
            o = compose_cfg([f"optimizer={preset}"], Path(d)).optimizer
            assert (o.name, o.lr, o.grokfast_lambda, o.qk_clip, o.kl_coef) == ("muon_grokfast", lr, lam, tau, kl)
        for preset in ("adamw", "muon", "grokfast_adamw", *want):
            o = compose_cfg([f"optimizer={preset}"], Path(d)).optimizer
            assert {"name", "lr", "weight_decay", "warmup_steps", "min_lr_ratio", "kl_coef"} <= set(o)


def _record_used_grad_norms(opt) -> list[float]:
    """Norms of the gradients the inner AdamW actually steps with (a pre-hook on its step)."""
    norms: list[float] = []
    opt._adamw.register_step_pre_hook(lambda o, a, k: norms.append(float(torch.nn.utils.get_total_norm(
        [p.grad for g in o.param_groups for p in g["params"] if p.grad is not None]))))
    return norms


@pytest.mark.parametrize("order", ["filter_then_clip", "clip_then_filter"])
def test_gradient_used_respects_the_clip_norm_only_when_filtered_first(order):
    from agentforge.optim import clip_grad_norm_
    model = tiny_model()
    cfg = {**MG, "name": "grokfast_adamw", "grokfast_lambda": 2.0}
    opt, sched = build_optimizer(model, cfg, total_steps=10)
    norms = _record_used_grad_norms(opt)
    g = torch.Generator().manual_seed(5)
    for _ in range(4):
        ids = torch.randint(0, 40, (2, 9), generator=g)
        opt.zero_grad()
        model(ids[:, :-1], ids[:, 1:]).loss.backward()
        if order == "filter_then_clip":
            clip_grad_norm_(opt, model.parameters(), 0.05)
        else:                                              # the old order: clip raw, then filter in step()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.05)
        opt.step()
        sched.step()
    if order == "filter_then_clip":
        assert max(norms) <= 0.05 * (1 + 1e-4)
    else:
        assert max(norms) > 0.05 * 1.5                     # up to (1 + lambda) x the clip norm


def test_lightning_gradient_clip_val_bounds_the_filtered_gradient(tmp_path):
    """LMModule runs the filter in on_before_optimizer_step, which Lightning calls before it clips."""
    import lightning as L

    from agentforge.training.lm_module import LMModule
    model = tiny_model()
    module = LMModule(model, {**MG, "name": "grokfast_adamw", "grokfast_lambda": 2.0}, total_steps=4)

    class Record(L.Callback):
        def on_train_start(self, trainer, pl_module):
            self.rec = _record_used_grad_norms(trainer.optimizers[0])

    cb = Record()
    rows = torch.randint(0, 40, (8, 9), generator=torch.Generator().manual_seed(0))
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(rows), batch_size=2)
    trainer = L.Trainer(max_steps=4, gradient_clip_val=0.05, logger=False, callbacks=[cb], enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                        default_root_dir=str(tmp_path), num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(module, train_dataloaders=data)
    assert len(cb.rec) == 4 and max(cb.rec) <= 0.05 * (1 + 1e-4)


def test_a_model_loaded_in_eval_mode_trains_in_train_mode(tmp_path):
    """A checkpoint loads in eval mode and Lightning keeps modules' modes: LMModule's fit must switch the model to
    train mode (QK-clip records, halting and no_grad_steps as in training); phase=eval's fine-tune stages were
    trained in eval mode before."""
    import lightning as L

    from agentforge.training.lm_module import LMModule

    modes = []

    class Spy(LMModule):
        def training_step(self, batch, batch_idx):
            modes.append(all(m.training for m in self.model.modules()))
            return super().training_step(batch, batch_idx)

    model = tiny_model().eval()
    rows = torch.randint(0, 40, (4, 9), generator=torch.Generator().manual_seed(0))
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(rows), batch_size=2)
    trainer = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", default_root_dir=str(tmp_path),
                        num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(Spy(model, {**MG, "name": "adamw"}, total_steps=2), train_dataloaders=data)
    assert modes == [True, True]


def test_optimizer_metrics_by_hand_and_they_move():
    """alpha 0.5, lambda 0.5; g1 = [1, 2]: ema = g1, ratio 0.5, no entry dominated (0.5|g| < |g|);
    g2 = [3, 0]: ema = [2, 1], ratio 0.5*sqrt(5)/3, entry 1 dominated (0.5 > 0)."""
    p = nn.Parameter(torch.zeros(2))
    opt = MuonGrokfast([], [{"params": [p]}], lr=0.1, grokfast_alpha=0.5, grokfast_lambda=0.5)
    p.grad = torch.tensor([1.0, 2.0])
    opt.step()
    m1 = opt.metrics()
    assert m1["optimizer/grokfast_slow_ratio"] == pytest.approx(0.5)
    assert m1["optimizer/grokfast_slow_norm"] == pytest.approx(5 ** 0.5)
    assert m1["optimizer/slow_gradients_filtered"] == 0.0
    p.grad = torch.tensor([3.0, 0.0])
    opt.step()
    m2 = opt.metrics()
    assert m2["optimizer/grokfast_raw_grad_norm"] == pytest.approx(3.0)
    assert m2["optimizer/grokfast_slow_ratio"] == pytest.approx(0.5 * 5 ** 0.5 / 3)
    assert m2["optimizer/slow_gradients_filtered"] == 1.0


@pytest.mark.parametrize("chunk", [1, 7, 1 << 24])
def test_count_dominated_equals_the_per_tensor_count(chunk):
    """``count_dominated`` (a few ops per run of tensors) against the per-tensor definition, with NaN and ties, runs
    split inside the list (chunk 7: tensors of 5, 4, 6 and 3 entries) and one tensor larger than a run (chunk 1)."""
    from agentforge.optim.grokfast import count_dominated

    torch.manual_seed(0)
    grads = [torch.randn(5), torch.randn(2, 2), torch.randn(3, 2), torch.randn(3)]
    slow = [torch.randn_like(g) for g in grads]
    grads[1][0, 0], slow[2][1, 1] = float("nan"), float("nan")
    slow[3][0], grads[3][0] = 1.0, 1.0   # |0.5 * 1| = |1 - 0.5|: a tie is not dominated
    want = sum(int(((0.5 * s).abs() > (g - 0.5 * s).abs()).sum()) for g, s in zip(grads, slow))
    got = count_dominated(grads, slow, 0.5, chunk=chunk)
    assert got.dtype == torch.int64 and int(got) == want and 0 < want < 18


def test_optimizer_metrics_change_over_training():
    model = tiny_model()
    opt, sched = build_optimizer(model, {**MG, "grokfast_lambda": 2.0}, total_steps=10)
    seen = []
    for k in range(5):
        train_steps(model, opt, sched, 1, seed=10 + k)
        m = opt.metrics()
        seen.append((m["optimizer/grokfast_slow_ratio"], m["optimizer/slow_gradients_filtered"]))
    assert len({r for r, _ in seen}) == 5 and len({c for _, c in seen}) > 1


def test_the_training_loop_resets_the_recorded_max_logits_before_each_batch():
    """``optimizer/max_attention_logit`` is the step's own maximum: QK-clip only caps the record at tau, and
    LMModule clears it before every batch (a running maximum since the start would never come down)."""
    from agentforge.training.lm_module import LMModule
    model = tiny_model()
    module = LMModule(model, {**MG, "name": "muon_grokfast"}, total_steps=4)
    for attn in model.attention_modules():
        attn.max_logit.fill_(7.0)
    module.on_train_batch_start(None, 0)
    assert all(attn.max_logit.eq(0).all() for attn in model.attention_modules())
