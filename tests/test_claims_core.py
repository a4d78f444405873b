"""Docstring claims of agentforge/{models,quant,reasoning,optim} checked on cases small enough to derive by hand.

Each test names the module and the claim it checks; the other claims of these modules are tested beside the
code they exercise (tests/test_mechanisms.py, test_model.py, test_memory.py, test_optim.py, test_quant.py,
test_reasoning.py, ...). Tiny tensors only: the whole file runs in a few seconds.
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
from torch.utils._python_dispatch import TorchDispatchMode

from agentforge.models import CognateConfig, CognateModel
from agentforge.models.grokking import ReferenceAttention
from agentforge.models.halting import geometric_prior, gibbs_halting, halting_distribution, pondernet_loss
from agentforge.models.kv_cache import CognateDecoder
from agentforge.models.layers import RMSNorm, apply_rope, rope_cache
from agentforge.models.memory import SurpriseMemory
from agentforge.models.surgery import wrap
from agentforge.optim import clip_grad_norm_, split_muon
from agentforge.optim.muon_grokfast import MuonGrokfast
from agentforge.optim.qk_clip import qk_clip_
from agentforge.optim.schedule import warmup_cosine
from agentforge.quant.calibrate import _MAX_QUANTILE_INPUT, activation_stats
from agentforge.quant.checkpoint import packed_tensors
from agentforge.quant.convert import convert_to_bitlinear, freeze, layer_stats
from agentforge.quant.packing import pack
from agentforge.quant.ternary import absmean_scale, quantize_activations
from agentforge.reasoning import baking, coherence, rewards
from agentforge.reasoning.rl import ThoughtConfig, rl_step
from agentforge.reasoning.strategies import generate_examples
from agentforge.reasoning.thoughts import (
    MixingHead,
    generate_with_thoughts,
    kl_to_reference,
    reinforce_loss,
    think,
)
from agentforge.reasoning.tokens import resize_vocab

PACKAGES = ("agentforge.models", "agentforge.quant", "agentforge.reasoning", "agentforge.optim")


def tiny(**kw) -> CognateModel:
    torch.manual_seed(0)
    base = dict(vocab_size=40, d_model=16, n_layers=1, n_heads=2, ffn_hidden=24, window=8, max_seq_len=32,
                max_steps=2, ltm_slots=4, ltm_key_dim=8)
    return CognateModel(CognateConfig(**{**base, **kw}))


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
    keys, vals, filled, last = mem.end_chunk(kc, vc, torch.ones(1, 1), amax, keys, vals, filled, last, 4.0)
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


# -- quant -----------------------------------------------------------------------------------------------------
class _Ops(TorchDispatchMode):
    def __enter__(self):
        self.names = []
        return super().__enter__()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.__name__)
        return func(*args, **(kwargs or {}))


def test_packed_bytes_by_hand():
    """packing: base3 byte = d0 + 3 d1 + 9 d2 + 27 d3 + 81 d4 with d = code + 1 (at most 242), the tail padded with
    the digit of 0; 2bit byte = d0 | d1 << 2 | d2 << 4 | d3 << 6."""
    base3 = pack(torch.tensor([1, 1, 1, 1, 1, 0, 1, -1], dtype=torch.int8))
    assert base3.tolist() == [242, 1 + 3 * 2 + 9 * 0 + 27 * 1 + 81 * 1]          # tail (0, 1, -1, pad 0, pad 0)
    two = pack(torch.tensor([1, 0, -1, 1, -1], dtype=torch.int8), "2bit")
    assert two.tolist() == [2 | 1 << 2 | 0 << 4 | 2 << 6, 0 | 1 << 2 | 1 << 4 | 1 << 6]


def test_absmean_scale_shapes_and_values():
    """ternary.absmean_scale: mean|W| over the tensor (shape []) or per output row (shape [out, 1])."""
    w = torch.tensor([[1.0, -3.0], [0.0, 2.0]])
    assert absmean_scale(w).shape == () and absmean_scale(w).item() == 1.5
    assert absmean_scale(w, per_channel=True).tolist() == [[2.0], [1.0]]


@pytest.mark.parametrize("clip,out,ops", [(2.0, "int8", 7), (None, "dequantized", 7), (2.0, "codes", 6),
                                          (torch.tensor(2.0), "int8", 8)])
def test_quantizer_op_counts_as_its_docstring_states(clip, out, ops):
    x = torch.randn(1, 1, 16)
    with torch.no_grad(), _Ops() as rec:
        quantize_activations(x, clip=clip, out=out)
    assert len(rec.names) == ops, rec.names


def test_calibration_counts_every_call_of_a_layer_and_takes_the_percentile_of_token_absmax():
    """A layer called twice per forward (as each recursion step calls it) sees every token twice; clip = the
    percentile of the per-token absmax, scale = clip / 127. Inputs: embeddings of rows 0..3 are one-hot * (1..4)."""

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(4, 4)
            self.lin = nn.Linear(4, 4)
            with torch.no_grad():
                self.embed.weight.copy_(torch.diag(torch.arange(1.0, 5.0)))
                self.lin.weight.zero_()
                self.lin.bias.zero_()

        def forward(self, ids):
            e = self.embed(ids)
            return self.lin(e) + self.lin(e)

    rows = torch.tensor([[0, 1, 9], [2, 3, 9]]) % 4                   # inputs rows[:, :-1]: tokens 0, 1, 2, 3
    st = activation_stats(Twice(), rows, ["lin"], percentile=0.5)["lin"]
    assert st["tokens"] == 8 and st["absmax_max"] == 4.0 and st["absmax_mean"] == pytest.approx(2.5)
    assert st["clip"] == pytest.approx(2.5) and st["scale"] == pytest.approx(2.5 / 127)   # median of 1,1,2,2,3,3,4,4
    assert st["abs_mean"] == pytest.approx(2.5 / 4)


def test_quant_modules_touch_files_only_in_checkpoint_and_native():
    """quant/__init__: pure compute except checkpoint.py (the packed checkpoint) and native.py (its build)."""
    io_names = {"open", "Path", "load_checkpoint", "save_checkpoint", "load_inline", "save", "load", "safe_open"}
    pkg = importlib.import_module("agentforge.quant")
    touching = set()
    for info in pkgutil.iter_modules(pkg.__path__):
        tree = ast.parse(open(importlib.import_module(f"agentforge.quant.{info.name}").__file__).read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                f = node.func
                name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
                if name in io_names:
                    touching.add(info.name)
    assert touching == {"checkpoint", "native"}, touching


@pytest.mark.parametrize("scheme", ["base3", "2bit"])
def test_layer_stats_stored_bytes_are_the_packed_checkpoints_bytes(scheme):
    """convert.layer_stats: a layer's stored bytes are what the packed checkpoint spends on it (packed codes, float32
    gamma and clip, fp16 bias; fp16 preserved parameters), byte for byte; ratio = float32 bytes / stored bytes."""
    model = tiny()
    convert_to_bitlinear(model)
    freeze(model)
    tensors, _ = packed_tensors(model, scheme, "float16")
    rows = layer_stats(model, scheme, preserved_itemsize=2)
    assert any(r["quantized"] for r in rows) and any(not r["quantized"] for r in rows)
    for r in rows:
        mod, prefix = model.get_submodule(r["name"]), f"{r['name']}." if r["name"] else ""
        if r["quantized"]:
            keys = [k for k in tensors if k.startswith(prefix) and "." not in k[len(prefix):]]
        else:
            keys = [prefix + k for k, p in mod._parameters.items() if p is not None]
        assert r["stored_bytes"] == sum(tensors[k].numel() * tensors[k].element_size() for k in keys), r["name"]
        assert r["compression_ratio"] == pytest.approx(4 * r["original_params"] / r["stored_bytes"])


@pytest.mark.slow
def test_torch_quantile_input_limit_that_calibration_samples_under():
    """calibrate._MAX_QUANTILE_INPUT: torch.quantile takes 2**24 elements and refuses one more."""
    assert _MAX_QUANTILE_INPUT < 2**24
    assert torch.quantile(torch.zeros(2**24), 0.5).item() == 0.0
    with pytest.raises(RuntimeError, match="too large"):
        torch.quantile(torch.zeros(2**24 + 1), 0.5)


# -- reasoning -------------------------------------------------------------------------------------------------
def test_reinforce_with_the_mean_baseline_by_hand():
    """rewards: r_j = sum of the true tokens' mixed log-likelihoods; A_j = r_j - mean_k r_k; thoughts.reinforce_loss
    = -mean_j A_j sum_l log p(z_jl), A constant. Two thoughts: r = (-1, -3) -> A = (1, -1); thought log-probs
    summing to (-2, -4) give loss -(1 * -2 + -1 * -4) / 2 = -1 and d loss / d log p(z_jl) = -A_j / 2."""
    r = rewards.thought_rewards(torch.tensor([[[-0.5, -0.5], [-1.0, -2.0]]]))
    assert r.tolist() == [[-1.0, -3.0]]
    adv = rewards.advantages(r)
    assert adv.tolist() == [[1.0, -1.0]]
    logp = torch.tensor([[[-1.0, -1.0], [-3.0, -1.0]]], requires_grad=True)
    loss = reinforce_loss(logp, adv.requires_grad_())
    assert loss.item() == pytest.approx(-1.0)
    loss.backward()
    assert logp.grad.tolist() == [[[-0.5, -0.5], [0.5, 0.5]]] and adv.grad is None


def test_mixing_head_is_the_reference_mlp_with_hidden_d_and_starts_at_w_zero():
    """Linear(2D, H), ReLU, Linear(H, H), ReLU, Linear(H, 1), H = D, no squashing; last weight 0, bias init_weight."""
    head = MixingHead(6, init_weight=2.5)
    kinds = [type(m) for m in head.net]
    assert kinds == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    assert [(m.in_features, m.out_features) for m in head.net[::2]] == [(12, 6), (6, 6), (6, 1)]
    w = head(torch.randn(3, 6), torch.randn(3, 6))
    assert torch.equal(w, torch.full((3, 1), 2.5))                   # > 1: not squashed
    assert torch.equal(MixingHead(6)(torch.randn(3, 6), torch.randn(3, 6)), torch.zeros(3, 1))


def test_mixing_logits_equals_the_references_mixing_of_final_norm_states():
    """thoughts.MixingHead: w * logits_with + (1 - w) * logits_without = lm_head(w * norm(h_with) + (1 - w) *
    norm(h_without)), the reference's mixture, because the Cognate lm_head has no bias."""
    model = tiny().eval()
    assert model.lm_head.bias is None
    h_with, h_without, w = torch.randn(3, 16), torch.randn(3, 16), torch.rand(3, 1)
    with torch.no_grad():
        ours = w * model.lm_head(model.norm(h_with)) + (1 - w) * model.lm_head(model.norm(h_without))
        ref = model.lm_head(w * model.norm(h_with) + (1 - w) * model.norm(h_without))
    assert torch.allclose(ours, ref, atol=1e-6)


@pytest.mark.parametrize("use_cache", [True, False])
def test_generation_with_thoughts_costs_what_its_docstring_counts(use_cache, monkeypatch):
    """thoughts.generate_with_thoughts, per token with a thought of L tokens: cached, one pass over context +
    [thinking] then L + 1 decode steps (decoder runs: 1 + L + 1), no full forward; uncached, L + 2 forwards."""
    model, length, new = tiny(vocab_size=272, max_seq_len=64).eval(), 3, 2
    runs, forwards = [], []
    real_run = CognateDecoder._run
    monkeypatch.setattr(CognateDecoder, "_run", lambda self, ids: runs.append(ids.shape[1]) or real_run(self, ids))
    model.register_forward_hook(lambda *_: forwards.append(1))
    generate_with_thoughts(model, MixingHead(16), torch.randint(0, 256, (1, 8)), new, length, 259, 260,
                           context_len=16, generator=torch.Generator().manual_seed(0), use_cache=use_cache)
    if use_cache:
        assert len(forwards) == 0 and len(runs) == new * (length + 2) and runs.count(1) == new * (length + 1)
    else:
        assert len(runs) == 0 and len(forwards) == new * (length + 2)


def test_rl_step_loss_is_reinforce_plus_both_lm_losses_plus_the_kl():
    """rl.py: loss = REINFORCE (reward = gain over the mean thought) + NLL of the true tokens under the mixed
    prediction + next-token loss of the window + kl_coef * KL(policy || reference), from the same sampled batch."""
    model, head = tiny(vocab_size=272, max_seq_len=64).eval(), MixingHead(16, init_weight=0.5)
    ref = tiny(vocab_size=272, max_seq_len=64).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.01 * torch.randn_like(p))                       # a reference the policy differs from
    cfg = ThoughtConfig(num_thoughts=3, thought_length=2, n_true=2, context_len=8, kl_coef=0.7)
    ids = {"start": 259, "end": 260, "banned": [256, 257, 259, 260]}
    windows = torch.randint(0, 256, (2, 10), generator=torch.Generator().manual_seed(0))
    loss, figures = rl_step(model, head, ref, windows, cfg, ids, torch.Generator().manual_seed(1))
    batch = think(model, head, windows, 2, 3, 2, 259, 260, 1.0, ids["banned"], torch.Generator().manual_seed(1))
    logp = batch.true_logp_mixed()
    policy = reinforce_loss(batch.thought_logp, rewards.advantages(rewards.thought_rewards(logp)))
    base_ce = torch.nn.functional.cross_entropy(batch.base_logits.flatten(0, 1), windows[:, 1:].flatten())
    with torch.no_grad():
        kl = kl_to_reference(batch.base_logits, ref(windows[:, :-1]).logits)
    expect = policy - logp.mean() + base_ce + 0.7 * kl
    assert kl > 0 and loss.item() == pytest.approx(expect.item(), rel=1e-5)
    assert figures["kl"] == pytest.approx(kl.item(), rel=1e-5)


def test_coherence_combine_and_prior_by_hand():
    """coherence = 0.4 semantic + 0.3 syntactic + 0.3 predictive; prior = (0.4 semantic + 0.3 syntactic) / 0.7."""
    s = {"semantic": torch.tensor([1.0]), "syntactic": torch.tensor([0.3]), "predictive": torch.tensor([0.0])}
    assert coherence.combine(s).item() == pytest.approx(0.4 + 0.09)
    assert coherence.prior(s).item() == pytest.approx(0.49 / 0.7)
    assert coherence.prior({**s, "predictive": torch.tensor([1.0])}).item() == pytest.approx(0.49 / 0.7)


def test_kl_and_agreement_by_hand():
    """KL(p || q) for p = (1/2, 1/2), q = (1/4, 3/4): 0.5 ln 2 + 0.5 ln(2/3), in thoughts.kl_to_reference and
    baking.baking_kl alike; agreement = share of masked positions with the same argmax."""
    p, q = torch.tensor([[[0.0, 0.0]]]), torch.log(torch.tensor([[[0.25, 0.75]]]))
    kl = 0.5 * math.log(2) + 0.5 * math.log(2 / 3)
    assert kl_to_reference(p, q).item() == pytest.approx(kl)
    assert baking.baking_kl(p, q, torch.ones(1, 1, dtype=torch.bool)).item() == pytest.approx(kl)
    t = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]])
    s = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]])
    assert baking.agreement(t, s, torch.tensor([[True, True, False]])) == 0.5


def test_a_new_tokens_logit_is_the_mean_logit_so_it_takes_at_most_one_nth_of_the_trained_mass():
    """tokens.resize_vocab (Hewitt 2021): the new lm_head row is the mean of the n trained rows, so at any hidden
    state its logit is the mean trained logit and, by Jensen, exp(mean l) <= mean exp(l): p_new <= p_trained / n."""
    model = tiny(vocab_size=259)
    resize_vocab(model, 261, [259, 260], torch.Generator().manual_seed(0))
    with torch.no_grad():
        z = torch.randn(5, 16)
        logits = model.lm_head(z)
        p = logits.softmax(-1)
    assert torch.allclose(logits[:, 259], logits[:, :259].mean(-1), atol=1e-6)   # trained: the ids below 259
    assert torch.all(p[:, 259] <= p[:, :259].sum(-1) / 259 + 1e-9)


def test_strategy_examples_of_train_and_val_are_disjoint():
    """strategies.generate_examples: train/val are disjoint (no question in both)."""
    train = {e["question"] for e in generate_examples(10, 0, "train")}
    val = {e["question"] for e in generate_examples(10, 0, "val")}
    assert len(train) > 90 and len(val) > 90 and not train & val


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
