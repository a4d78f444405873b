"""Docstring claims of agentforge/quant and agentforge/reasoning checked on cases small enough to derive by hand
(models and optim: tests/test_claims_core.py). Each test names the module and the claim it checks; the other
claims are tested beside the code they exercise (tests/test_quant.py, test_reasoning.py, ...). Tiny tensors only.
"""
from __future__ import annotations

import ast
import importlib
import math
import pkgutil

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from agentforge.models.kv_cache import CognateDecoder
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
from tests.test_claims_core import tiny


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


@pytest.mark.parametrize("use_cache", [True, False])
def test_mixing_in_think_is_the_references_mixture_of_final_norm_states(use_cache):
    """thoughts.think mixes ``w * logits_with + (1 - w) * logits_without``; the reference mixes the final-norm
    states, lm_head(w * norm(h_with) + (1 - w) * norm(h_without)). Equal because the Cognate lm_head has no bias:
    checked on think's own output against hidden states from plain full forwards (context + [thinking] z
    [/endthinking] true[:-1], and the window without a thought), with w varying across positions."""
    torch.manual_seed(0)
    model = tiny(vocab_size=272, max_seq_len=64).eval()
    assert model.lm_head.bias is None
    head = MixingHead(16, init_weight=0.3)
    nn.init.normal_(head.net[-1].weight, std=10.0)                    # w depends on the states, not only the bias
    n, k, length, n_true, c = 2, 3, 4, 3, 8
    windows, thoughts = torch.randint(0, 256, (n, c + n_true)), torch.randint(0, 256, (n, k, length))
    with torch.no_grad():
        b = think(model, head, windows, n_true, k, length, 259, 260, thoughts=thoughts, use_cache=use_cache)
        h_with = model(b.with_inputs[:, :-1]).hidden[:, c + length + 1:]          # [N*K, n_true, D]
        h_without = model(windows[:, :-1]).hidden[:, c - 1:].repeat_interleave(k, 0)
        w = b.mix_weight.reshape(n * k, n_true, 1)
        ref = model.lm_head(w * model.norm(h_with) + (1 - w) * model.norm(h_without))
    assert w.std() > 0.05 and not torch.allclose(ref, model.lm_head(model.norm(h_with)), atol=1e-3)
    torch.testing.assert_close(b.mixed_logits.reshape(n * k, n_true, -1), ref, atol=2e-5, rtol=1e-4)


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


def test_strategy_validation_responses_are_worded_by_a_template_training_never_uses():
    """strategies: "validation responses are worded by a second template per strategy that training never uses" —
    inside the thought ([thinking] ... [/endthinking]), with the numbers masked, no run of 4 words of a strategy's
    validation responses occurs in its training responses (only the format's ``#### N`` ending is shared)."""
    import re

    from agentforge.reasoning.strategies import STRATEGIES
    from agentforge.reasoning.tokens import THINK_END, THINK_START

    def grams(examples, key):
        out = set()
        for e in (e for e in examples if e["strategy"] == key):
            thought = e["response"].split(THINK_START, 1)[1].split(THINK_END, 1)[0]
            words = re.sub(r"-?\d+", "N", thought).split()
            assert len(words) >= 6, e["response"]
            out |= {tuple(words[i:i + 4]) for i in range(len(words) - 3)}
        return out

    train, val = generate_examples(20, 0, "train"), generate_examples(20, 0, "val")
    for s in STRATEGIES:
        assert s.token in s.val_template and s.val_template != s.template
        assert not grams(train, s.key) & grams(val, s.key), s.key
