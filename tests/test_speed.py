"""Speed work of issue 16: SDPA attention with the exact QK-clip max logit, no host syncs in the
attention / generation path, the KV cache (``hardware.compile``: test_compile.py; the BitNet kernel choice: test_bitnet_kernels.py)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from agentforge.models.generation import generate
from agentforge.models.layers import Block, CausalSelfAttention, apply_rope, causal_window_mask, max_logits, rope_cache
from agentforge.optim.qk_clip import qk_clip_
from tests.conftest import autograd_nodes
from tests.test_host_syncs import CountHostSyncs


def explicit_attention(attn: CausalSelfAttention, x, cos, sin):
    """The attention as it was computed before SDPA: scores materialized, masked, softmaxed."""
    b, t, d = x.shape
    q, k, v = (p(x).view(b, t, attn.n_heads, attn.head_dim).transpose(1, 2)
               for p in (attn.q_proj, attn.k_proj, attn.v_proj))
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(attn.head_dim)
    scores = scores.masked_fill(~causal_window_mask(t, attn.window), float("-inf"))
    out = F.softmax(scores, dim=-1) @ v
    return attn.o_proj(out.transpose(1, 2).reshape(b, t, d)), scores.amax(dim=(0, 2, 3))


@pytest.mark.parametrize("t,window", [(24, 8), (24, 64), (7, 3), (40, 1)])
def test_sdpa_attention_and_max_logit_equal_the_explicit_computation(t, window):
    torch.manual_seed(0)
    attn = CausalSelfAttention(32, 4, window)
    cos, sin = rope_cache(t, 8, 10000.0)
    x = torch.randn(3, t, 32)
    ref_out, ref_max = explicit_attention(attn, x, cos, sin)
    out = attn(x, cos, sin)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(attn.max_logit, ref_max.clamp(min=0), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("chunk", [1, 5, 16, 1000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_max_logits_equal_full_masked_scores(chunk, dtype):
    """Against the full masked scores (a chunk's matmul may round differently from the full one's: close), and bit for
    bit against scaling every logit before the max on the same chunks, with freshly built masks (the 1/sqrt(d) after
    the max rounds the same; the kept masks, reused on the second call, are the masks)."""
    torch.manual_seed(1)
    q, k = (torch.randn(2, 3, 37, 8) * 3).to(dtype), torch.randn(2, 3, 37, 8).to(dtype)
    window = 6
    full = (q @ k.transpose(-2, -1)) / math.sqrt(8)
    ref = full.masked_fill(~causal_window_mask(37, window), float("-inf")).amax(dim=(0, 2, 3))
    per_chunk = []
    for s in range(0, 37, chunk):
        e, ks = min(s + chunk, 37), max(0, s - window + 1)
        scores = (q[:, :, s:e] @ k[:, :, ks:e].transpose(-2, -1)) / math.sqrt(8)
        mask = causal_window_mask(e - s, window, q_start=s, k_start=ks, k_len=e - ks)
        per_chunk.append(scores.masked_fill(~mask, float("-inf")).amax(dim=(0, 2, 3)))
    exact = torch.stack(per_chunk).amax(0)
    for _ in range(2):
        got = max_logits(q, k, window, chunk=chunk)
        assert torch.equal(got, exact)
        torch.testing.assert_close(got, ref, rtol=1e-6 if dtype == torch.float32 else 1e-2, atol=1e-6)


def test_kept_window_masks_are_the_masks_built_once_and_fresh_under_compile(monkeypatch):
    from agentforge.models.layers import kept_window_mask

    a = kept_window_mask(10, 4, "cpu", q_start=3, k_start=1, k_len=12, outside=True)
    assert torch.equal(a, ~causal_window_mask(10, 4, q_start=3, k_start=1, k_len=12))
    assert kept_window_mask(10, 4, "cpu", q_start=3, k_start=1, k_len=12, outside=True) is a   # built once
    assert torch.equal(kept_window_mask(10, 4, "cpu"), causal_window_mask(10, 4))
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)   # traced: built in the graph, not kept
    assert kept_window_mask(10, 4, "cpu", q_start=3, k_start=1, k_len=12, outside=True) is not a


def test_window_mask_hand_case():
    # positions 0..3, window 2: each query sees itself and the one before
    assert causal_window_mask(4, 2).int().tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]]
    # query positions 2..3 against keys 1..3
    assert causal_window_mask(2, 2, q_start=2, k_start=1, k_len=3).int().tolist() == [[1, 1, 0], [0, 1, 1]]


def test_max_logit_recorded_only_on_training_steps():
    """Train-mode passes record, with autograd or without (a Cognate model's ``no_grad_steps``), and so do eval-mode
    passes with autograd (Quiet-STaR trains in eval mode); inference (eval mode, no autograd) and
    ``record_max_logit = False`` do not."""
    torch.manual_seed(0)
    attn = CausalSelfAttention(16, 2, 8)
    cos, sin = rope_cache(8, 8, 10000.0)
    x = torch.randn(1, 8, 16)
    attn.eval()
    with torch.no_grad():
        attn(x, cos, sin)
    assert attn.max_logit.abs().sum() == 0          # inference: nothing recorded
    attn(x, cos, sin)
    assert attn.max_logit.min() > 0                 # eval mode with autograd: a training pass, recorded
    attn.reset_max_logit()
    attn.train()
    attn.record_max_logit = False
    attn(x, cos, sin)
    assert attn.max_logit.abs().sum() == 0
    attn.record_max_logit = True
    with torch.no_grad():
        attn(x, cos, sin)
    recorded = attn.max_logit.clone()
    assert recorded.max() > 0                       # a no-grad training pass records
    attn.reset_max_logit()
    attn(x, cos, sin)
    torch.testing.assert_close(attn.max_logit, recorded)


def test_qk_clip_leaves_heads_under_tau_bit_identical_and_syncs_once():
    torch.manual_seed(0)
    attns = [CausalSelfAttention(16, 4, 8) for _ in range(3)]
    for a in attns:
        a.max_logit.copy_(torch.tensor([1.0, 9.0, 2.0, 3.0]))
    before = [a.q_proj.weight.clone() for a in attns]
    with CountHostSyncs() as c:
        clipped, largest = qk_clip_(attns, 4.0)
    assert (clipped, largest) == (3, 9.0)
    assert c.calls == ["tolist"]
    for a, w in zip(attns, before):
        assert torch.equal(a.q_proj.weight[:4], w[:4]) and torch.equal(a.q_proj.weight[8:], w[8:])
        torch.testing.assert_close(a.q_proj.weight[4:8], w[4:8] * math.sqrt(4.0 / 9.0))


def test_qk_clip_scales_each_layers_heads_when_head_sizes_differ():
    """The per-layer branch of ``qk_clip_`` (layers whose head sizes differ): each over-threshold head's rows get
    sqrt(tau / max), the others stay bit-identical, and every max_logit is clamped to tau."""
    torch.manual_seed(0)
    attns = [CausalSelfAttention(16, 4, 8), CausalSelfAttention(16, 2, 8)]   # head_dim 4 and 8
    attns[0].max_logit.copy_(torch.tensor([1.0, 9.0, 2.0, 3.0]))
    attns[1].max_logit.copy_(torch.tensor([16.0, 1.0]))
    before = [a.k_proj.weight.clone() for a in attns]
    assert qk_clip_(attns, 4.0) == (2, 16.0)
    torch.testing.assert_close(attns[0].k_proj.weight[4:8], before[0][4:8] * math.sqrt(4.0 / 9.0))
    assert torch.equal(attns[0].k_proj.weight[8:], before[0][8:]) and torch.equal(attns[0].k_proj.weight[:4], before[0][:4])
    torch.testing.assert_close(attns[1].k_proj.weight[:8], before[1][:8] * 0.5)
    assert torch.equal(attns[1].k_proj.weight[8:], before[1][8:])
    assert attns[0].max_logit.tolist() == [1.0, 4.0, 2.0, 3.0] and attns[1].max_logit.tolist() == [4.0, 1.0]


def test_attention_forward_and_backward_make_no_host_sync():
    torch.manual_seed(0)
    blk = Block(32, 4, 8, 64)
    cos, sin = rope_cache(24, 8, 10000.0)
    x = torch.randn(2, 24, 32, requires_grad=True)
    with CountHostSyncs() as c:
        blk(x, cos, sin).sum().backward()          # training step: SDPA + the max-logit reduction
        with torch.no_grad():
            blk.eval()(x, cos, sin)
    assert c.calls == []
    assert blk.attn.max_logit.max() > 0


class TinyLM(nn.Module):
    """A sync-free causal LM (one Block) to test the decoding loop on its own."""

    def __init__(self, vocab=11):
        super().__init__()
        self.embed, self.block, self.head = nn.Embedding(vocab, 16), Block(16, 2, 64, 32), nn.Linear(16, vocab)
        cos, sin = rope_cache(64, 8, 10000.0)
        self.register_buffer("cos", cos)
        self.register_buffer("sin", sin)

    def forward(self, ids):
        t = ids.shape[1]
        return self.head(self.block(self.embed(ids), self.cos[:t], self.sin[:t]))


class CountUp(nn.Module):
    """Next token = last token + 1 (mod V): row starting at s emits eos=V-1 after V-1-s tokens."""

    def __init__(self, vocab=10):
        super().__init__()
        self.vocab = vocab

    def forward(self, ids):
        return F.one_hot((ids + 1) % self.vocab, self.vocab).float()


def test_generation_stops_where_the_last_row_emits_eos():
    ids = torch.tensor([[7], [4], [8]])            # eos 9 after 2, 5, 1 tokens
    out = generate(CountUp(), ids, 40, 64, eos_id=9)
    assert out.tolist() == [[7, 8, 9, 9, 9, 9], [4, 5, 6, 7, 8, 9], [8, 9, 9, 9, 9, 9]]
    assert generate(CountUp(), ids, 3, 64, eos_id=9).tolist() == [[7, 8, 9, 9], [4, 5, 6, 7], [8, 9, 9, 9]]


@pytest.mark.parametrize("max_new", [5, 40])
def test_generation_syncs_once_per_check_and_matches_per_token_checks(max_new):
    torch.manual_seed(0)
    model = TinyLM().eval()
    ids = torch.randint(0, 11, (4, 6))
    eos = int(model(ids)[0, -1].argmax())         # an id the model emits, so rows stop at different steps
    with CountHostSyncs() as c:
        out = generate(model, ids, max_new, 64, eos_id=eos, check_every=16)
    assert len(c.calls) <= max_new // 16 + 1
    assert torch.equal(out, generate(model, ids, max_new, 64, eos_id=eos, check_every=1))
    with CountHostSyncs() as c:
        generate(model, ids, max_new, 64)          # no eos: no sync at all
    assert c.calls == []


# autograd nodes whose backward reads a tensor value back to the host (CUDA sync): cumprod and prod check their
# input for zeros (torch/csrc/autograd/FunctionsManual.cpp, cumprod_backward / prod_backward)
SYNCING_BACKWARD = {"CumprodBackward0", "ProdBackward0", "ProdBackward1"}


def _backward_nodes(t: torch.Tensor) -> set[str]:
    return {type(fn).__name__ for fn in autograd_nodes(t)}


def test_halting_distribution_has_cumprods_values_and_gradients_without_its_syncing_backward():
    """lambda = (0.2, 0.5, 1): p = (0.2, 0.8 * 0.5, 0.8 * 0.5) = (0.2, 0.4, 0.4) by hand; the gradients equal
    torch.cumprod's formula's, and no node of a Cognate training loss's graph syncs in its backward."""
    from agentforge.models import CognateConfig, CognateModel
    from agentforge.models.halting import halting_distribution

    lam = torch.tensor([[0.2, 0.3], [0.5, 0.0], [1.0, 1.0]], requires_grad=True)
    p = halting_distribution(lam)
    torch.testing.assert_close(p[:, 0], torch.tensor([0.2, 0.4, 0.4]))
    w = torch.randn(3, 2)
    (g,) = torch.autograd.grad((p * w).sum(), lam)
    lam2 = lam.detach().clone().requires_grad_(True)
    before = torch.cat([torch.ones_like(lam2[:1]), torch.cumprod(1 - lam2, 0)[:-1]], 0)
    ref = torch.cat([(lam2 * before)[:-1], before[-1:]], 0)
    (g_ref,) = torch.autograd.grad((ref * w).sum(), lam2)
    torch.testing.assert_close(g, g_ref)
    torch.manual_seed(0)
    model = CognateModel(CognateConfig(max_steps=3)).train()
    x = torch.randint(0, 256, (2, 40))
    nodes = _backward_nodes(model(x, x).loss)
    assert "CumprodBackward0" not in nodes and not nodes & SYNCING_BACKWARD
    assert "CumprodBackward0" in _backward_nodes(torch.cumprod(lam, 0).sum())   # the walk does see such nodes


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_attention_and_generation_raise_no_sync_under_debug_mode():
    torch.manual_seed(0)
    blk = Block(32, 4, 8, 64).cuda()
    cos, sin = rope_cache(24, 8, 10000.0, device="cuda")
    x = torch.randn(2, 24, 32, device="cuda", requires_grad=True)
    model = TinyLM().cuda().eval()
    ids = torch.randint(0, 11, (2, 12), device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        blk(x, cos, sin).sum().backward()          # SDPA (masked: T > window) + the max-logit reduction
        generate(model, ids, 8, 64)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert blk.attn.max_logit.max().item() > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_cognate_training_step_and_cached_generation_raise_no_sync_under_debug_mode():
    """The whole Cognate model (ACT halting, the memory, QK-clip's max logit) in bf16 autocast, as the phases run
    it on a GPU: no host sync in a training forward + backward, nor in KV-cached greedy generation."""
    from agentforge.models import CognateConfig, CognateModel

    torch.manual_seed(0)
    model = CognateModel(CognateConfig()).cuda().train()
    x, y = (torch.randint(0, 256, (2, 64), device="cuda") for _ in range(2))

    def step():
        with torch.autocast("cuda", torch.bfloat16):
            out = model(x, y)
        (out if torch.is_tensor(out) else out.loss).backward()
    for _ in range(3):  # warm-up: lazy inits may sync once; the memory's scan is captured as a CUDA graph
        step()
    from agentforge.models import graphs

    assert graphs.captured(model.memory) >= 1    # so the step below replays it
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
        model.eval()
        with torch.no_grad():
            model.generate(x[:, :8], 16)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)



def _cognate(**kw):
    from agentforge.models import CognateConfig, CognateModel

    torch.manual_seed(0)
    base = dict(d_model=32, n_layers=2, n_heads=2, ffn_hidden=64, window=8, max_steps=3, ltm_slots=4, ltm_key_dim=8,
                ltm_chunk=4, max_seq_len=96)
    return CognateModel(CognateConfig(**{**base, **kw})).eval()


@pytest.mark.parametrize("memory,halting,gate_norm", [(True, True, False), (False, True, False), (True, False, False),
                                                      (True, True, True)])
def test_kv_cache_logits_equal_the_full_forward(memory, halting, gate_norm):
    """Across chunk boundaries (memory writes), past the attention window, with and without halting, with the memory
    gate reading the stream or it normalized (``model.ltm_gate_norm``, the models' default)."""
    model = _cognate(ltm_gate_norm=gate_norm)
    ids = torch.randint(0, 256, (2, 21), generator=torch.Generator().manual_seed(1))
    with model.ablate(memory=memory, halting=halting), torch.no_grad():
        full = model(ids).logits
        dec = model.kv_decoder(2)
        inc = torch.stack([dec.step(ids[:, i]) for i in range(ids.shape[1])], 1)
    torch.testing.assert_close(inc, full, rtol=1e-5, atol=1e-5)


def test_kv_cache_greedy_tokens_equal_uncached_with_per_row_eos():
    model = _cognate()
    ids = torch.randint(0, 256, (3, 7), generator=torch.Generator().manual_seed(2))
    free = model.generate(ids, 30, use_cache=False)
    eos = int(free[1, 7 + 5])                      # row 1 emits this id after 5 tokens: rows stop at different steps
    cached = model.generate(ids, 30, eos_id=eos)
    assert torch.equal(cached, model.generate(ids, 30, eos_id=eos, use_cache=False))
    assert torch.equal(model.generate(ids, 30), free)
    assert (cached[1, 7 + 5:] == eos).all()


def test_kv_cache_is_used_only_while_the_sequence_fits(monkeypatch):
    from agentforge.models import kv_cache

    model = _cognate(max_seq_len=16)
    ids = torch.randint(0, 256, (1, 6))
    built = []
    real = kv_cache.CognateDecoder.__init__
    monkeypatch.setattr(kv_cache.CognateDecoder, "__init__", lambda self, *a: built.append(1) or real(self, *a))
    model.generate(ids, 10)                        # 16 positions: cached
    assert built == [1]
    long = model.generate(ids, 14)                 # 20 > max_seq_len: the sliding uncached loop
    assert built == [1] and long.shape == (1, 20)


def test_interleaved_medians_rotate_the_order_and_take_medians(monkeypatch):
    """Every case is timed once a round, each round starting one case later, and the median is reported."""
    from agentforge.evals import speed

    order, calls = [], {"a": 0, "b": 0, "c": 0}

    def case(name):
        def run():
            calls[name] += 1
            order.append(name)
        return run

    med = speed.interleaved_medians({n: case(n) for n in "abc"}, repeats=3, warmup=1)
    assert order == list("abc") + list("abc") + list("bca") + list("cab")  # warm-up, then rotated rounds
    assert calls == {"a": 4, "b": 4, "c": 4} and set(med) == {"a", "b", "c"} and all(v >= 0 for v in med.values())
    ticks = iter([0.0, 1.0, 1.0, 4.0, 4.0, 6.0] * 2)  # one case, three rounds: 1, 3 and 2 s -> median 2 s
    with monkeypatch.context() as m:
        m.setattr(speed.time, "perf_counter", lambda: next(ticks))
        assert speed.interleaved_medians({"x": lambda: None}, repeats=3, warmup=0) == {"x": 2.0}
        assert speed.interleaved_times({"x": lambda: None}, repeats=3, warmup=0) == {"x": [1.0, 3.0, 2.0]}
    with pytest.raises(ValueError):
        speed.interleaved_medians({}, repeats=3)


def test_interleaved_latency_ms_times_every_model_in_eval_mode_and_restores_its_mode():
    """phase=bitnet's before/after latency: one median (ms) per model, [1, seq_len] inputs, every call in eval
    mode (one untimed round, then ``repeats`` interleaved ones), each model's training flag restored."""
    from agentforge.evals.speed import interleaved_latency_ms

    seen = []

    class Probe(torch.nn.Embedding):
        def forward(self, ids):
            seen.append((self.training, tuple(ids.shape)))
            return super().forward(ids)

    a, b = Probe(256, 4).train(), Probe(256, 4).eval()
    ms = interleaved_latency_ms([a, b], 5, repeats=3)
    assert len(ms) == 2 and all(v > 0 for v in ms)
    assert a.training and not b.training
    assert seen == [(False, (1, 5))] * 8
