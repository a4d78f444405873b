"""Docstring claims of agentforge/models and agentforge/optim (and README's claim on clipping with coupled decay)
checked on cases small enough to derive by hand, and the docstrings' ``module.name`` cross-references of
models/quant/reasoning/optim (quant and reasoning claims: tests/test_claims_core_quant_reasoning.py).

Each test names the module and the claim it checks; the other claims of these modules are tested beside the
code they exercise (tests/test_mechanisms.py, test_model.py, test_memory.py, test_optim.py, ...). Tiny tensors
only: the file runs in a few seconds.
"""
from __future__ import annotations

import ast
import importlib
import math
import pkgutil
import re

import pytest
import torch
from torch import nn

from agentforge.models import CognateModel
from agentforge.models.grokking import ReferenceAttention
from agentforge.models.halting import geometric_prior, gibbs_halting, halting_distribution, pondernet_loss
from agentforge.models.layers import RMSNorm, apply_rope, rope_cache
from agentforge.models.memory import SurpriseMemory
from agentforge.models.surgery import wrap
from agentforge.optim import build_optimizer, clip_grad_norm_, split_muon
from agentforge.optim.muon_grokfast import MuonGrokfast
from agentforge.optim.qk_clip import qk_clip_
from agentforge.optim.schedule import warmup_cosine
from tests.docs_text import all_docs
from tests.test_mechanisms import tiny as mechanisms_tiny

PACKAGES = ("agentforge.models", "agentforge.quant", "agentforge.reasoning", "agentforge.optim")


def tiny(**kw) -> CognateModel:
    """test_mechanisms' seeded tiny model, smaller still (vocab 40, 2 steps, 4 memory slots)."""
    base = dict(vocab_size=40, d_model=16, n_layers=1, n_heads=2, ffn_hidden=24, window=8, max_seq_len=32,
                max_steps=2, ltm_slots=4, ltm_key_dim=8, ltm_chunk=16)
    return mechanisms_tiny(**{**base, **kw})


# -- models/halting.py ------------------------------------------------------------------------------------------
def test_halting_prior_tail_at_lambda_quarter_and_the_gain_that_moves_its_median_to_the_bound():
    """Docstring: N = 4, lambda_p = 0.25: tail (0.75)^3 = 0.421875 on step 4; prior p = (0.25, 0.1875, 0.140625,
    0.421875), cumulative 0.578 at step 3, so the prior's median is step 3; a loss gain at the last step above
    beta ln(0.578125 / 0.421875) = 0.315 beta moves the Gibbs minimiser's median to the bound."""
    p = geometric_prior(0.25, 4)
    assert torch.allclose(p, torch.tensor([0.25, 0.1875, 0.140625, 0.421875]))
    cum = p.cumsum(0)
    assert cum[1] < 0.5 <= cum[2]                                 # median: step 3, not the bound
    beta, threshold = 0.01, math.log(0.578125 / 0.421875)
    assert threshold == pytest.approx(0.31508, abs=1e-5)
    for gain, median in ((threshold - 0.005, 3), (threshold + 0.005, 4)):
        q = gibbs_halting(torch.tensor([1.0, 1.0, 1.0, 1.0 - gain * beta]), 0.25, beta).cumsum(0)
        assert int((q < 0.5).sum()) + 1 == median


@pytest.mark.parametrize("lam,n", [(0.5, 4), (0.25, 4), (0.6, 3), (0.7, 2)])
def test_expected_steps_of_the_truncated_prior(lam, n):
    """CognateConfig.ponder_prior: the truncated prior's expected step is (1 - (1 - lambda_p)^N) / lambda_p
    (m1: 0.5 over 4 steps -> 1.875, not 1 / lambda_p = 2)."""
    p = geometric_prior(lam, n, dtype=torch.float64)
    expected = float((p * torch.arange(1, n + 1, dtype=torch.float64)).sum())
    assert expected == pytest.approx((1 - (1 - lam) ** n) / lam, rel=1e-12)


def test_pondernet_loss_two_steps_by_hand():
    """L = (1, 3), prior 0.5 over 2 steps = (0.5, 0.5): p at the prior costs sum p L = 2 and KL 0; p = (1, 0) costs
    1 + beta * (1 * ln(1 / 0.5)) = 1 + beta ln 2 (the 0 * log 0 term is 0). Masked tokens do not count."""
    losses = torch.tensor([[1.0, 5.0], [3.0, 5.0]])                  # [N = 2, tokens = 2]; token 1 masked out
    mask = torch.tensor([1.0, 0.0])
    at_prior = torch.full((2, 2), 0.5)
    assert pondernet_loss(at_prior, losses, mask, 0.5, beta=0.3).item() == pytest.approx(2.0)
    first = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    assert pondernet_loss(first, losses, mask, 0.5, beta=0.3).item() == pytest.approx(1 + 0.3 * math.log(2))
    assert torch.allclose(halting_distribution(torch.tensor([0.3, 1.0])), torch.tensor([0.3, 0.7]))


# -- models/cognate.py ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prior,init,bias", [(0.5, None, 0.0), (0.8, None, math.log(4.0)), (1.0, None, 10.0),
                                             (0.5, -1.5, -1.5)])
def test_halting_head_starts_at_the_logit_of_the_prior(prior, init, bias):
    """CognateConfig.halt_bias_init: None = logit(ponder_prior) (10 when the prior is 1), else the given logit."""
    model = tiny(ponder_prior=prior, halt_bias_init=init)
    assert model.halt_head.bias.item() == pytest.approx(bias, abs=1e-6)


def test_training_loss_is_ponder_loss_plus_every_steps_loss_by_hand():
    """cognate.py step 3: loss = sum_n p_n L_n + ponder_cost KL(p || prior) + (1 + deep_supervision) mean_n L_n, per
    token means; lambda = 0.3 at step 1 of 2: p = (0.3, 0.7), KL against (0.5, 0.5) = 0.3 ln 0.6 + 0.7 ln 1.4; the
    cumulative 0.3 < 0.5 at step 1, so every token halts at step 2 and lm_loss is step 2's loss."""
    model = tiny(ponder_prior=0.5, ponder_cost=0.1, deep_supervision=0.3, max_steps=2).eval()
    with torch.no_grad():
        model.halt_head.weight.zero_()
        model.halt_head.bias.fill_(math.log(0.3 / 0.7))
    x = torch.randint(0, 40, (2, 6), generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 40, (2, 6), generator=torch.Generator().manual_seed(1))
    out = model(x, y)
    with torch.no_grad():
        e = model.embed(x)
        z1, _ = model._step(e, e, 6)
        z2, _ = model._step(z1, e, 6)
        l1, l2 = (torch.nn.functional.cross_entropy(model.lm_head(model.norm(z)).flatten(0, 1), y.flatten())
                  for z in (z1, z2))
    kl = 0.3 * math.log(0.6) + 0.7 * math.log(1.4)
    expect = 0.3 * l1 + 0.7 * l2 + 0.1 * kl + 1.3 * (l1 + l2) / 2
    assert out.loss.item() == pytest.approx(expect.item(), rel=1e-5)
    assert out.lm_loss.item() == pytest.approx(l2.item(), rel=1e-5) and torch.all(out.halting_steps == 2)


# -- models/surgery.py ------------------------------------------------------------------------------------------
def test_refinement_halts_at_the_first_stable_step_and_halting_changes_no_running_tokens_trajectory():
    """A token stops at the first step k whose greedy prediction equals step k-1's (else at K) and keeps it; the
    tokens still running follow the same trajectory as with halting off (refinement is position-wise)."""
    base = tiny().eval()
    model = wrap(base, max_inner_steps=4)
    torch.manual_seed(1)
    with torch.no_grad():
        model.refine_out.weight.normal_(std=1.0)                    # a refiner that changes predictions
    x = torch.randint(0, 40, (2, 12), generator=torch.Generator().manual_seed(0))
    halted, free = model(x, halt=True), model(x, halt=False)
    steps = halted.refine_steps.long()
    assert len(steps.unique()) >= 3                                  # early and late halting tokens both occur
    same = free.step_preds[1:] == free.step_preds[:-1]               # [K, B, T]: step k repeats step k-1
    first = torch.where(same.any(0), same.float().argmax(0) + 1, torch.full_like(steps, 4))
    assert torch.equal(steps, first)
    for b in range(2):
        for t in range(12):
            k = int(steps[b, t])
            assert torch.equal(halted.step_preds[: k + 1, b, t], free.step_preds[: k + 1, b, t])
            assert torch.all(halted.step_preds[k:, b, t] == halted.step_preds[k, b, t])


# -- models/layers.py -------------------------------------------------------------------------------------------
def test_rms_norm_by_hand():
    """x / rms(x) * weight: x = (3, 4), rms = sqrt(12.5); weight (1, 2)."""
    norm = RMSNorm(2, eps=0.0)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 2.0]))
    r = math.sqrt(12.5)
    assert torch.allclose(norm(torch.tensor([3.0, 4.0])), torch.tensor([3 / r, 8 / r]))


def test_rope_rotates_each_pair_by_position_times_frequency_and_only_offsets_matter():
    """rope_cache: [T, D/2] tables of angle t * base^(-2i/D); apply_rope rotates (x_i, x_{i+D/2}) by it. D = 2:
    (1, 0) at position 1 becomes (cos 1, sin 1). Rotations keep norms, and q_m . k_n depends on m - n only."""
    cos, sin = rope_cache(3, 2, 10000.0)
    assert cos.shape == (3, 1) and torch.allclose(cos[:, 0], torch.cos(torch.arange(3.0)))
    x = torch.tensor([1.0, 0.0]).expand(1, 1, 3, 2)                  # [B, H, T, D]
    out = apply_rope(x, cos, sin)
    assert torch.allclose(out[0, 0, 1], torch.tensor([math.cos(1.0), math.sin(1.0)]))
    cos, sin = rope_cache(8, 4, 10000.0)
    assert torch.allclose(cos[1], torch.tensor([1.0, 0.01]).cos())   # frequencies 1 and 10000^(-1/2)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(4, generator=g), torch.randn(4, generator=g)
    rq = apply_rope(q.expand(1, 1, 8, 4), cos, sin)[0, 0]             # q at every position 0..7
    rk = apply_rope(k.expand(1, 1, 8, 4), cos, sin)[0, 0]
    assert torch.allclose(rq.norm(dim=-1), q.norm().expand(8))
    assert torch.allclose(rq[5] @ rk[2], rq[3] @ rk[0], atol=1e-5) and torch.allclose(rq[7] @ rk[4], rq[3] @ rk[0],
                                                                                         atol=1e-5)


# -- models/memory.py -------------------------------------------------------------------------------------------
def test_memory_read_sharpness_starts_at_32():
    """beta = exp(log_beta), learned, starting at 32."""
    assert SurpriseMemory(8, 4, 4, 0.5).log_beta.exp().item() == pytest.approx(32.0)


def test_a_slot_is_used_when_a_token_gives_it_more_than_half_of_its_read():
    """end_chunk: slots whose max read weight in the chunk is > 0.5 are marked used now (0.5 itself is not);
    the chunk's one write then goes to the least recently used slot."""
    mem = SurpriseMemory(4, 3, 4, 0.0, max_writes=1, chunk=1)
    keys, vals = torch.zeros(1, 3, 4), torch.zeros(1, 3, 4)
    filled = torch.ones(1, 3, dtype=torch.bool)
    last = torch.tensor([[1.0, 2.0, 3.0]])                           # slot 0 least recently used ...
    amax = torch.tensor([[0.6, 0.5, 0.0]])                           # ... until a token reads 0.6 of it now
    kc, vc = torch.ones(1, 1, 4), torch.full((1, 1, 4), 7.0)
    keys, vals, filled, last, _ = mem.end_chunk(kc, vc, torch.ones(1, 1), amax, keys, vals, filled, last, 4.0)
    assert last.tolist() == [[4.0, 4.0, 3.0]]                        # slot 0 used (0.6), then slot 1 written
    assert torch.equal(vals[0, 1], torch.full((4,), 7.0)) and vals[0, [0, 2]].abs().sum() == 0


def test_a_persistent_bank_keeps_the_last_rows_final_bank():
    """persist: the buffers hold the final bank of the batch's last row (here: the bank row b alone builds)."""
    torch.manual_seed(0)
    h = torch.randn(2, 8, 8)
    banks = []
    for batch in (h, h[1:]):
        torch.manual_seed(1)
        mem = SurpriseMemory(8, 6, 4, 0.0, max_writes=2, chunk=4).eval()
        mem.persist = True
        mem.read(batch)
        banks.append((mem.keys.clone(), mem.values.clone(), mem.filled.clone()))
    assert banks[0][2].any() and all(torch.equal(a, b) for a, b in zip(*banks))


# -- optim ---------------------------------------------------------------------------------------------------
def test_warmup_cosine_by_hand():
    """Linear warmup (step + 1) / warmup, then cosine from 1 to min_ratio over total - warmup steps, then flat."""
    f = dict(warmup_steps=4, total_steps=14, min_ratio=0.1)
    assert [warmup_cosine(s, **f) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert warmup_cosine(4, **f) == pytest.approx(1.0)
    assert warmup_cosine(9, **f) == pytest.approx(0.55)              # half way: (1 + 0.1) / 2
    assert warmup_cosine(14, **f) == pytest.approx(0.1) and warmup_cosine(99, **f) == pytest.approx(0.1)
    assert warmup_cosine(0, warmup_steps=0, total_steps=10, min_ratio=0.0) == 1.0


def test_qk_clip_scales_one_heads_query_and_key_rows_and_biases_by_sqrt_tau_over_max():
    """One head at 4 tau: its q and k rows (weights and biases) x sqrt(1/4) = 0.5 exactly, so its logits q.k shrink
    by exactly 1/4; the head under tau is bit-identical; the recorded max falls to tau."""
    torch.manual_seed(0)
    attn = ReferenceAttention(8, 2)                                   # biases, head_dim 4
    with torch.no_grad():
        for lin in (attn.q_proj, attn.k_proj):
            lin.bias.normal_()
    tau = 2.0
    attn.max_logit.copy_(torch.tensor([4 * tau, tau / 2]))
    before = {n: p.detach().clone() for n, p in attn.named_parameters()}
    x = torch.randn(1, 3, 8)

    def logits():
        q, k = (p(x).view(1, 3, 2, 4).transpose(1, 2) for p in (attn.q_proj, attn.k_proj))
        return q @ k.transpose(-2, -1)

    old = logits()
    assert qk_clip_([attn], tau) == (1, 4 * tau)
    for name in ("q_proj", "k_proj"):
        w, b = getattr(attn, name).weight, getattr(attn, name).bias
        assert torch.equal(w[:4], before[f"{name}.weight"][:4] * 0.5) and torch.equal(b[:4], before[f"{name}.bias"][:4] * 0.5)
        assert torch.equal(w[4:], before[f"{name}.weight"][4:]) and torch.equal(b[4:], before[f"{name}.bias"][4:])
    new = logits()
    assert torch.allclose(new[0, 0], old[0, 0] / 4, atol=1e-6) and torch.equal(new[0, 1], old[0, 1])
    assert attn.max_logit.tolist() == [tau, tau / 2]


def test_muon_takes_hidden_matrices_only():
    """optim.split_muon: Muon gets 2-D weights of hidden nn.Linear layers; a Linear named *head, a matrix with a
    dimension of 1, embeddings go to AdamW (with decay for matrices, without for embeddings and biases)."""
    model = nn.ModuleDict({"hidden": nn.Linear(4, 3), "score": nn.Linear(4, 1), "out_head": nn.Linear(4, 5),
                           "embed": nn.Embedding(6, 4)})
    muon, decay, no_decay = ({id(p) for p in group} for group in split_muon(model))
    assert muon == {id(model["hidden"].weight)}
    assert decay == {id(model["score"].weight), id(model["out_head"].weight)}
    assert no_decay == {id(model["embed"].weight)} | {id(model[n].bias) for n in ("hidden", "score", "out_head")}


def test_clip_grad_norm_returns_the_filtered_norm_and_the_step_does_not_filter_again():
    """optim.clip_grad_norm_: Grokfast first (first step: ema = g, so g + lambda g = 2 g with lambda 1), then the
    clip; the returned norm is the filtered one (|2 (3, 4)| = 10); step() then uses the clipped gradient as is."""
    p = nn.Parameter(torch.zeros(2))
    opt = MuonGrokfast([], [{"params": [p]}], lr=0.1, grokfast_lambda=1.0, grokfast_alpha=0.5)
    p.grad = torch.tensor([3.0, 4.0])
    assert clip_grad_norm_(opt, [p], 1.0).item() == pytest.approx(10.0)
    assert torch.allclose(p.grad, torch.tensor([0.6, 0.8]))
    opt.step()
    assert torch.equal(opt.state[p]["grokfast_ema"], torch.tensor([3.0, 4.0]))     # the raw gradient, once
    assert opt.metrics()["optimizer/grokfast_raw_grad_norm"] == pytest.approx(5.0)


@pytest.mark.parametrize("mode,wd,used_norm", [("decoupled", 0.005, None), ("decoupled", 0.5, None),
                                               ("coupled", 0.005, 0.054), ("coupled", 0.5, 2.08)])
def test_the_gradient_used_exceeds_the_clip_norm_only_with_coupled_decay(mode, wd, used_norm):
    """README (Optimizers): 'so with decoupled decay (the default) the gradient used never exceeds the clip norm;
    with `weight_decay_mode=coupled` the L2 term `wd·p` joins it after the clip, so the gradient used can exceed the
    clip norm by up to wd·‖p‖ (p: the decayed weights; clip 0.05 on a tiny Cognate, Grokfast λ 2: 0.054 with wd
    0.005, 2.08 with wd 0.5)' (also optim.clip_grad_norm_'s and MuonGrokfast's docstrings)."""
    model, clip = tiny(), 0.05
    opt, _ = build_optimizer(model, {"name": "grokfast_adamw", "lr": 1e-3, "weight_decay": wd, "weight_decay_mode": mode,
                                     "warmup_steps": 0, "min_lr_ratio": 1.0, "grokfast_lambda": 2.0}, 10)
    used = []   # the norm of the gradient the AdamW step reads
    opt._adamw.register_step_pre_hook(lambda o, a, k: used.append(float(torch.nn.utils.get_total_norm(
        [p.grad for g in o.param_groups for p in g["params"] if p.grad is not None]))))
    decayed = [p.detach().clone() for g in opt.param_groups if g["l2"] or g["weight_decay"] for p in g["params"]]
    ids = torch.randint(0, 40, (2, 9), generator=torch.Generator().manual_seed(1))
    model(ids[:, :-1], ids[:, 1:]).loss.backward()
    clip_grad_norm_(opt, model.parameters(), clip)
    opt.step()
    readme = " ".join(all_docs().split())   # README.md + docs/ (this claim: docs/optimizers.md)
    if used_norm is None:
        assert used[0] <= clip * (1 + 1e-5)
        assert "with decoupled decay (the default) the gradient used never exceeds the clip norm" in readme
    else:
        assert clip < used[0] <= clip + wd * float(torch.nn.utils.get_total_norm(decayed)) * (1 + 1e-5)
        assert round(used[0], 3 if used[0] < 1 else 2) == used_norm and f"{used_norm} with wd {wd}" in readme


# -- docstring cross-references ----------------------------------------------------------------------------------
def test_docstring_references_to_module_attributes_resolve():
    """Every ``module.name`` a docstring of these packages cites (module = one of their modules) exists: the
    anti-theater docstring once cited ``rl.prior_quality``, which never existed."""
    mods = {}
    for pkg in PACKAGES:
        for info in pkgutil.iter_modules(importlib.import_module(pkg).__path__):
            mods[info.name] = importlib.import_module(f"{pkg}.{info.name}")
    ref = re.compile(r"``([A-Za-z_]\w*)\.([A-Za-z_][\w.]*)(?:\([^`]*\))?``")
    missing = []
    for name, mod in mods.items():
        tree = ast.parse(open(mod.__file__).read())
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)):
                continue
            for head, rest in ref.findall(ast.get_docstring(node) or ""):
                if head not in mods or rest == "py":
                    continue
                obj = mods[head]
                for attr in rest.split("."):
                    obj = getattr(obj, attr, None)
                if obj is None:
                    missing.append(f"{name}: {head}.{rest}")
    assert not missing, missing
