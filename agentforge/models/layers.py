"""Transformer pieces of the Cognate backbone: RMSNorm, RoPE, causal sliding-window attention, SwiGLU.

The attention runs through ``F.scaled_dot_product_attention`` (the fused CPU kernel; flash /
memory-efficient kernels on GPU): ``is_causal`` when the sequence fits in the window, else a boolean
sliding-window mask. MuonClip's QK-clip needs the largest pre-softmax logit of every head, which the
fused kernels never materialize, so on training passes (``record_max_logit`` set, and the module in train
mode or autograd on) a separate no-grad reduction ``max_logits`` computes it exactly: q·kᵀ/√d in query chunks,
each against only the keys its window reaches, masked, reduced with amax — no softmax, no backward, no host
sync. Each module keeps the running max per head in ``max_logit``: the optimizer step reads it (QK-clip caps it
at tau), and the training loop resets it before the next batch (``LMModule.on_train_batch_start``), so the logged
``optimizer/max_attention_logit`` is that step's (a reset reads 0: a step whose logits are all negative logs 0).
Train-mode passes without autograd record too: the recursion steps a Cognate model runs under
``no_grad_steps`` use the same W_q and W_k, and QK-clip must bound every logit those weights produce
(it skipped them while recording needed autograd on). Eval-mode passes with autograd on record as well, through
``forward`` and through the KV cache's ``decode`` (new positions against the cached keys): Quiet-STaR trains its
model in eval mode (no memory writes), by full forwards (baking) and by differentiable KV-cache extensions (RL),
and its optimizer presets clip (τ 30 / 25), which read nothing before. Inference (no autograd, eval mode) skips it;
``optim.build_optimizer`` turns it off for an optimizer that does not clip.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich 2019): x / rms(x) * weight (``F.rms_norm``: one op)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)


def rope_cache(seq_len: int, head_dim: int, base: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables of rotary position embeddings (Su et al. 2021), shape [seq_len, head_dim/2]."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim))
    angles = torch.outer(torch.arange(seq_len, device=device).float(), inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[..., :d/2], x[..., d/2:]) of x [B, H, T, D] by the position angles."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = cos[: x.shape[-2]], sin[: x.shape[-2]]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def causal_window_mask(seq_len: int, window: int, device=None, *, q_start: int = 0, k_start: int = 0,
                       k_len: int | None = None) -> torch.Tensor:
    """Boolean mask, True where query i may attend key j: j <= i and i - j < window.

    Default [T, T] over positions 0..T-1; ``q_start``/``k_start``/``k_len`` select the block of query
    positions q_start..q_start+T-1 against key positions k_start..k_start+k_len-1."""
    i = torch.arange(q_start, q_start + seq_len, device=device)[:, None]
    j = torch.arange(k_start, k_start + (seq_len if k_len is None else k_len), device=device)[None, :]
    return (j <= i) & (i - j < window)


_MASKS: dict[tuple, torch.Tensor] = {}   # (block, window, device, outside) -> a kept causal_window_mask


def kept_window_mask(t: int, window: int, device, *, q_start: int = 0, k_start: int = 0, k_len: int | None = None,
                     outside: bool = False) -> torch.Tensor:
    """``causal_window_mask(...)`` (its negation with ``outside``), built once per block and kept: the same few masks
    serve every layer, recursion step and training step (the attention's [T, T] mask when T > window, the query
    blocks of ``max_logits``), and on a GPU each of the ~6 ops that build one is a kernel launch. Built fresh under
    ``torch.compile`` (which fuses them anyway) and inside a CUDA-graph capture (a kept tensor must not live in a
    graph's pool); at most 256 kept."""
    k_len = t if k_len is None else k_len
    if torch.compiler.is_compiling() or (torch.device(device).type == "cuda" and torch.cuda.is_current_stream_capturing()):
        mask = causal_window_mask(t, window, device, q_start=q_start, k_start=k_start, k_len=k_len)
        return ~mask if outside else mask
    key = (t, window, str(device), q_start, k_start, k_len, outside)
    mask = _MASKS.get(key)
    if mask is None:
        if len(_MASKS) >= 256:
            _MASKS.clear()
        mask = causal_window_mask(t, window, device, q_start=q_start, k_start=k_start, k_len=k_len)
        mask = _MASKS[key] = ~mask if outside else mask
    return mask


@torch.no_grad()
def max_logits(q: torch.Tensor, k: torch.Tensor, window: int, chunk: int = 128) -> torch.Tensor:
    """Per-head max over batch, queries and attended keys of the attention logits q·kᵀ/√d, [H].

    q: [B, H, T, D], k: [B, H, N, D] (after RoPE), N >= T: the queries are the last T of the N positions the keys
    cover (N = T for a whole sequence; N > T for new positions after cached keys, ``decode``). Query block [s, e)
    can only reach keys [s - window + 1, e) (positions counted from the first key), so each
    chunk multiplies B·H·chunk·(chunk + window - 1) logits instead of T²: the same numbers the explicit
    attention masks and softmaxes, without the softmax or a backward. Nothing leaves the device. The 1/√d
    comes after the max: rounding x/√d is monotone in x, so max(fl(x/√d)) = fl(max(x)/√d), bit for bit, and
    a chunk costs a matmul, a masked fill, an amax and a maximum (the masks are kept: ``kept_window_mask``)
    instead of a dozen ops — on a GPU each op is a launch, 32 calls per 25M training step."""
    t, scale = q.shape[-2], math.sqrt(q.shape[-1])
    o = k.shape[-2] - t   # the first query's position
    best = None
    for s in range(0, t, chunk):
        e = min(s + chunk, t)
        ks = max(0, o + s - window + 1)
        scores = q[:, :, s:e] @ k[:, :, ks:o + e].transpose(-2, -1)
        outside = kept_window_mask(e - s, window, q.device, q_start=o + s, k_start=ks, k_len=o + e - ks, outside=True)
        m = scores.masked_fill(outside, float("-inf")).amax(dim=(0, 2, 3))
        best = m if best is None else torch.maximum(best, m)
    return best / scale


def update_max_logit(attn: nn.Module, q: torch.Tensor, k: torch.Tensor, window: int) -> None:
    """``attn.max_logit`` [H] <- the running max of it and this pass's ``max_logits`` (no autograd); shared by every
    attention module QK-clip reads (this file's and the grokking reference decoder's)."""
    with torch.no_grad():
        attn.max_logit.copy_(torch.maximum(attn.max_logit, max_logits(q, k, window).to(attn.max_logit)))


class CausalSelfAttention(nn.Module):
    """Multi-head causal attention over a sliding window (SDPA), recording each head's max logit on
    train-mode passes, with or without autograd, and on eval-mode passes with autograd (see the module docstring;
    ``record_max_logit = False`` turns the reduction off)."""

    def __init__(self, d_model: int, n_heads: int, window: int):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.n_heads, self.head_dim, self.window = n_heads, d_model // n_heads, window
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.o_proj = nn.Linear(d_model, d_model, bias=False)
        self.register_buffer("max_logit", torch.zeros(n_heads), persistent=False)
        self.record_max_logit = True

    def reset_max_logit(self) -> None:
        self.max_logit.zero_()

    def qkv(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """Queries, keys (both rotated, in one ``apply_rope`` call) and values [B, H, T, D/H] of x [B, T, D]."""
        b, t, _ = x.shape
        q, k, v = (p(x).view(b, t, self.n_heads, self.head_dim) for p in (self.q_proj, self.k_proj, self.v_proj))
        q, k = apply_rope(torch.cat([q, k], 2).transpose(1, 2), cos, sin).split(self.n_heads, 1)
        return q, k, v.transpose(1, 2)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x, cos, sin)
        if self.record_max_logit and (self.training or torch.is_grad_enabled()):  # a training pass (module docstring)
            update_max_logit(self, q, k, self.window)
        if t <= self.window:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=kept_window_mask(t, self.window, x.device))
        return self.o_proj(out.transpose(1, 2).reshape(b, t, d))

    def decode(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: dict) -> torch.Tensor:
        """New positions x [B, T, D] with their rotary angles cos/sin [T, D/H/2], attending to the keys/values
        in ``cache`` (dict "k", "v": [B, H, <= window, D], the latest positions; updated, with their graph)
        and, causally within the window, to each other (``causal_window_mask`` with the block's offsets)."""
        b, t, d = x.shape
        q, k, v = self.qkv(x, cos, sin)
        past = cache.get("k")
        if past is not None:
            k, v = torch.cat([past, k], 2), torch.cat([cache["v"], v], 2)
        if self.record_max_logit and torch.is_grad_enabled():   # a training extension (Quiet-STaR's RL step)
            update_max_logit(self, q, k, self.window)
        cache["k"], cache["v"] = k[:, :, -self.window:], v[:, :, -self.window:]
        if t == 1:  # one position: every cached key is in its window
            out = F.scaled_dot_product_attention(q, cache["k"], cache["v"])
        elif past is None and t <= self.window:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            n = k.shape[2]
            mask = causal_window_mask(t, self.window, x.device, q_start=n - t, k_len=n)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, d))


class SwiGLU(nn.Module):
    """Gated feed-forward (Shazeer 2020): down(silu(gate(x)) * up(x))."""

    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.gate = nn.Linear(d_model, hidden, bias=False)
        self.up = nn.Linear(d_model, hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then + mlp(norm(x))."""

    def __init__(self, d_model: int, n_heads: int, window: int, ffn_hidden: int):
        super().__init__()
        self.attn_norm = RMSNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_heads, window)
        self.mlp_norm = RMSNorm(d_model)
        self.mlp = SwiGLU(d_model, ffn_hidden)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.mlp(self.mlp_norm(x))

    def decode(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: dict) -> torch.Tensor:
        """``forward`` for new positions after cached ones, with the attention's key/value cache (attention.decode)."""
        x = x + self.attn.decode(self.attn_norm(x), cos, sin, cache)
        return x + self.mlp(self.mlp_norm(x))
