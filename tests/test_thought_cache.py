"""Quiet-STaR thoughts sampled with the KV cache (agentforge/reasoning/thought_cache.py, thoughts.py):
prefill + decode steps equal the full forward; cached and uncached sampling draw the same tokens with the
same log-probs; REINFORCE's gradients and thought-by-thought generation are unchanged."""
from __future__ import annotations

import copy

import pytest
import torch

from agentforge.models import CognateConfig, CognateModel
from agentforge.reasoning import thought_cache
from agentforge.reasoning.rl import ThoughtConfig, reference_logits, rl_step
from agentforge.reasoning.thoughts import MixingHead, generate_with_thoughts, sample_thoughts, think

torch.set_num_threads(1)
BANNED = [256, 257, 259, 260]


def model_with_mixed_halting(seed: int = 0, **over) -> CognateModel:
    """A small model whose window (6) and memory chunk (4) are crossed by the test sequences, and whose
    tokens halt at different steps (a halting head with large random weights)."""
    torch.manual_seed(seed)
    cfg = dict(vocab_size=272, d_model=32, n_layers=2, n_heads=2, ffn_hidden=64, window=6, max_seq_len=64,
               max_steps=3, ltm_slots=4, ltm_key_dim=8, ltm_chunk=4, ltm_max_writes=2, surprise_threshold=0.1)
    model = CognateModel(CognateConfig(**{**cfg, **over})).eval()
    with torch.no_grad():
        model.halt_head.weight.normal_(0, 2.0)
        model.memory.gate.bias.fill_(0.0)  # let the memory read matter
    return model


@pytest.mark.parametrize("ablation", [{}, {"memory": False}, {"steps": 2}, {"halting": False}])
def test_prefill_then_decode_steps_give_the_full_forward_logits(ablation):
    model = model_with_mixed_halting()
    ids = torch.randint(0, 256, (3, 19))
    with model.ablate(**ablation), torch.no_grad():
        full = model(ids)
        steps = full.halting_steps[:, :11]
        if not ablation:
            assert len(steps.unique()) > 1  # the tokens really halt at different steps
        dec, out = thought_cache.prefill(model, ids[:, :11])  # 11: two complete chunks of 4 and an open one
        torch.testing.assert_close(out.logits, full.logits[:, :11], atol=1e-5, rtol=1e-5)
        dec = dec.copy(repeat=2)
        for i in range(11, 19):
            logits = dec.step(ids[:, i].repeat_interleave(2, 0))
            torch.testing.assert_close(logits, full.logits[:, i].repeat_interleave(2, 0), atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(dec.hidden, full.hidden[:, i].repeat_interleave(2, 0), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 0.7, 0.0])
def test_cached_sampling_draws_the_uncached_tokens_and_log_probs(temperature):
    model = model_with_mixed_halting(1)
    prefixes = torch.randint(0, 256, (3, 9))
    draws = [sample_thoughts(model, prefixes, 8, temperature, BANNED, torch.Generator().manual_seed(5),
                             use_cache=cache, repeat=2, return_logp=True) for cache in (True, False)]
    (tok_c, logp_c), (tok_u, logp_u) = draws
    assert tok_c.shape == (6, 8) and torch.equal(tok_c, tok_u)
    torch.testing.assert_close(logp_c, logp_u, atol=1e-5, rtol=1e-5)
    assert not torch.isin(tok_c, torch.tensor(BANNED)).any()
    if temperature > 0:  # thoughts of the same context differ: the repeated rows draw independently
        assert not torch.equal(tok_c[0::2], tok_c[1::2])


def test_reinforce_log_probs_and_gradients_are_those_of_the_sampling_distribution():
    """think() recomputes the thoughts' log-probs with gradients (an extension of the cached context): they equal the
    (masked, tempered) log-probs the cached sampler drew from, and the REINFORCE gradient is the same
    whether the thoughts were sampled with the cache or without."""
    model = model_with_mixed_halting(2)
    head = MixingHead(32, init_weight=0.5)
    windows = torch.randint(0, 256, (2, 12))
    cfg = ThoughtConfig(num_thoughts=3, thought_length=5, n_true=3, context_len=9, temperature=0.8)
    ids = {"start": 259, "end": 260, "banned": BANNED}
    prefixes = torch.cat([windows[:, :9], torch.full((2, 1), 259)], 1)
    toks, logp = sample_thoughts(model, prefixes, 5, 0.8, BANNED, torch.Generator().manual_seed(3), repeat=3,
                                 return_logp=True)
    batch = think(model, head, windows, 3, 3, 5, 259, 260, 0.8, BANNED, torch.Generator().manual_seed(3))
    assert torch.equal(batch.thoughts.reshape(6, 5), toks)
    torch.testing.assert_close(batch.thought_logp.reshape(6, 5), logp, atol=1e-5, rtol=1e-5)
    grads = []
    for cache in (True, False):
        model.zero_grad()
        batch = think(model, head, windows, 3, 3, 5, 259, 260, 0.8, BANNED, torch.Generator().manual_seed(3),
                      use_cache=cache)
        batch.thought_logp.sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1])
    model.train()
    loss, fig = rl_step(model, head, copy.deepcopy(model).eval(), windows, cfg, ids, torch.Generator().manual_seed(3))
    assert torch.isfinite(loss) and model.training  # sampling put the model back in train mode


def test_generation_with_thoughts_gives_the_uncached_tokens():
    model = model_with_mixed_halting(3)
    head = MixingHead(32, init_weight=0.5)  # the thought moves the prediction
    prompt = torch.randint(0, 256, (1, 14))
    outs = [generate_with_thoughts(model, head, prompt, 6, 4, 259, 260, 10, 1.0, BANNED,
                                   torch.Generator().manual_seed(0), use_cache=cache) for cache in (True, False)]
    assert outs[0].shape == (1, 20) and torch.equal(outs[0], outs[1])
    plain = generate_with_thoughts(model, None, prompt, 6, 4, 259, 260, 10)
    assert not torch.equal(outs[0], plain)  # the thoughts did change the generated tokens


def test_sampling_past_max_seq_len_falls_back_to_the_sliding_uncached_path():
    model = model_with_mixed_halting(4, max_seq_len=16)
    prefixes = torch.randint(0, 256, (2, 12))
    assert not thought_cache.cacheable(model, 12 + 6)
    a = sample_thoughts(model, prefixes, 6, 1.0, BANNED, torch.Generator().manual_seed(1))
    b = sample_thoughts(model, prefixes, 6, 1.0, BANNED, torch.Generator().manual_seed(1), use_cache=False)
    assert torch.equal(a, b)


@pytest.mark.slow
def test_bench_thoughts_prints_the_generation_and_training_step_ratios():
    """benchmarks/bench_thoughts.py runs end to end (tiny settings) and prints both figures and the breakdown."""
    import os
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "benchmarks/bench_thoughts.py", "--tokens", "1", "--thought-lengths", "2",
                          "--repeats", "1", "--rl-repeats", "1", "--rl-sequences", "3"], capture_output=True, text=True,
                         timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    assert "L=2: cached and uncached generate the same tokens: True" in out.stdout
    for line in ("x the time of no thoughts", "thoughts, cached   (rl_step + backward)", "with the optimizer step",
                 "where the cached step goes: sampling the thoughts", "(6 windows x 4 thoughts x 2 tokens"):
        assert line in out.stdout, line   # 6 windows: --rl-sequences 3 x the phase's 2 thought positions


def _grads(*modules):
    return torch.cat([p.grad.flatten() for m in modules for p in m.parameters() if p.grad is not None])


def _count_forwards(*models) -> list:
    """A list that grows by one per full forward pass of any of ``models`` (the cached path runs none)."""
    calls = []
    for m in models:
        m.register_forward_pre_hook(lambda mod, args: calls.append(mod))
    return calls


@pytest.mark.parametrize("n_true,length", [(1, 5), (3, 5), (3, 1), (1, 0)])
def test_the_cached_think_gives_the_full_forward_batch_and_gradients(n_true, length):
    """think() on the KV cache (the contexts run once with gradients, extended with the true tokens and, per
    thought, with the thought) equals the full-forward reference (use_cache=False): every ThoughtBatch tensor,
    and the gradients of a loss on all of them w.r.t. every model and head parameter."""
    model = model_with_mixed_halting(5)
    head = MixingHead(32, hidden=16, init_weight=0.5)
    torch.nn.init.normal_(head.net[-1].weight, std=0.5)  # w varies with the hidden states: they get gradients
    windows = torch.randint(0, 256, (3, 10 + n_true))  # a context of 10 ends mid-chunk, past the window
    thoughts = torch.randint(0, 256, (3, 2, length))
    batches, grads, forwards = [], [], _count_forwards(model)
    for cache in (True, False):
        model.zero_grad(), head.zero_grad()
        b = think(model, head, windows, n_true, 2, length, 259, 260, 0.8, BANNED, thoughts=thoughts, use_cache=cache)
        assert (len(forwards) == 0) is cache  # the cached path ran (no full forward), the reference did not
        (b.mixed_logits.logsumexp(-1).sum() + b.thought_logp.sum() + b.base_logits.logsumexp(-1).sum()
         + b.mix_weight.sum()).backward()
        batches.append(b)
        grads.append(_grads(model, head))
    for name in ("thoughts", "with_inputs"):
        assert torch.equal(getattr(batches[0], name), getattr(batches[1], name))
    for name in ("thought_logp", "mixed_logits", "without_logits", "mix_weight", "base_logits"):
        torch.testing.assert_close(getattr(batches[0], name), getattr(batches[1], name), atol=1e-5, rtol=1e-5)
    assert grads[0].abs().sum() > 0
    assert (grads[0] - grads[1]).norm() <= 1e-5 * grads[1].norm()


def test_the_cached_rl_step_gives_the_full_forward_loss_figures_and_gradients():
    """rl_step with the KV cache (policy and reference) vs use_cache=False: the same sampled thoughts (same
    generator), loss, figures (KL, coherence) and gradients of the loss."""
    model = model_with_mixed_halting(6)
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))  # a reference that differs: the KL is not zero
    head = MixingHead(32, hidden=16, init_weight=0.5)
    windows = torch.randint(0, 256, (2, 13))
    ids = {"start": 259, "end": 260, "banned": BANNED}
    out, grads, forwards = [], [], _count_forwards(model, ref)
    for cache in (True, False):
        cfg = ThoughtConfig(num_thoughts=3, thought_length=4, n_true=3, context_len=10, temperature=0.9,
                            use_cache=cache)
        model.zero_grad(), head.zero_grad()
        loss, fig = rl_step(model, head, ref, windows, cfg, ids, torch.Generator().manual_seed(7))
        assert (len(forwards) == 0) is cache  # policy and reference both on the cache, then both not
        loss.backward()
        out.append((loss, fig))
        grads.append(_grads(model, head))
    (loss_c, fig_c), (loss_u, fig_u) = out
    torch.testing.assert_close(loss_c, loss_u, atol=1e-5, rtol=1e-5)
    assert fig_c["kl"] > 0 and fig_c["diversity"] == fig_u["diversity"]
    for key in ("reward", "lm_loss", "mixed_nll", "base_ce", "kl", "kl_thoughts", "mix_weight",
                "mix_weight_negative_share", "post_thought_gain"):
        assert fig_c[key] == pytest.approx(fig_u[key], rel=1e-5, abs=1e-6), key
    # the policy loss is a mean of advantages (~1e-2, differences of log-likelihoods) times the thoughts' summed
    # log-probs (~-20): float32 rounding of ~1e-7 in the log-likelihoods moves it by ~1e-5
    assert fig_c["policy_loss"] == pytest.approx(fig_u["policy_loss"], abs=3e-5)
    for key, vals in fig_c["coherence"].items():
        assert vals == pytest.approx(fig_u["coherence"][key], rel=1e-5, abs=1e-6), key
    assert (grads[0] - grads[1]).norm() <= 1e-5 * grads[1].norm()


def test_the_cached_step_serves_eval_mode_cognate_models_only():
    """The phase trains in eval mode (FrozenPair), where think() takes the KV cache; train mode (TRM no-grad steps,
    QK-clip statistics), a persistent memory, positions past the RoPE table or another model take the full forward."""
    model = model_with_mixed_halting(7)
    assert thought_cache.extendable(model, 64) and not thought_cache.extendable(model, 65)
    assert not thought_cache.extendable(torch.nn.Linear(2, 2).eval(), 20)
    model.train()
    assert not thought_cache.extendable(model, 20)
    model.eval()
    model.memory.persist = True
    assert not thought_cache.extendable(model, 20)


@pytest.mark.parametrize("window", [True, False])
def test_the_cached_reference_logits_equal_the_full_forwards(window):
    """rl.reference_logits on the KV cache (one fill of the contexts, one extension) vs full forward passes: the
    window's logits (for the KL; None when not asked) and the logits of every thought token (for the coherence)."""
    ref = model_with_mixed_halting(8)
    head = MixingHead(32, hidden=16)
    windows, thoughts = torch.randint(0, 256, (2, 13)), torch.randint(0, 256, (2, 3, 4))
    batch = think(ref, head, windows, 3, 3, 4, 259, 260, thoughts=thoughts)
    forwards = _count_forwards(ref)
    cached = reference_logits(ref, batch, 10, use_cache=True, window=window)
    assert not forwards
    full = reference_logits(ref, batch, 10, use_cache=False, window=window)
    assert cached[1].shape == (6, 4, 272) and (cached[0] is None) is (full[0] is None) is (not window)
    if window:
        assert cached[0].shape == (2, 12, 272)
        torch.testing.assert_close(cached[0], full[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cached[1], full[1], atol=1e-5, rtol=1e-5)
