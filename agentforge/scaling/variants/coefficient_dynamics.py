# scaling-framework: coefficient_dynamics
"""Framework 1, coefficient dynamics: attention as a linear combination y_t = sum_{s<=t} alpha[t, s] v_s
whose coefficients are produced by some dynamics over the sequence. Softmax attention is the case
alpha[t, s] = exp(q_t.k_s / sqrt(d)) / sum_{r<=t} exp(q_t.k_r / sqrt(d)); the unified view of attention,
SSMs and RNNs as such coefficient-generating systems is Sieber et al. 2024, "Understanding the
differences in Foundation Models: Attention, State Space Models, and Recurrent Neural Networks"
(arXiv:2405.15731). What evolves is how alpha is computed from q and k: normalization, decay, gating,
kernels, learned temperatures.

Contract, checked by the scaling evaluator (agentforge.scaling.evaluator):
  * ``Coefficients(head_dim: int, n_heads: int)`` is a ``torch.nn.Module`` whose ``forward(q, k)`` takes
    RoPE-rotated queries and keys [batch, n_heads, seq_len, head_dim] and returns the coefficients
    alpha [batch, n_heads, seq_len, seq_len];
  * alpha[..., t, s] must be 0 for s > t (causality: no token sees the future), and finite;
  * the fixed frame below (projections, RoPE, y = alpha @ v, output projection) is not to be changed.
Only the code between the EVOLVE-BLOCK markers may change; the block may import only math, torch
and agentforge.models.layers.
"""
import math

import torch
import torch.nn.functional as F  # noqa: F401  (for the EVOLVE block)
from torch import nn

from agentforge.models.layers import apply_rope, rope_cache


def causal_mask(seq_len: int, device=None) -> torch.Tensor:
    """Boolean [T, T], True where position t may read position s (s <= t)."""
    return torch.ones(seq_len, seq_len, dtype=torch.bool, device=device).tril()


# EVOLVE-BLOCK-START
class Coefficients(nn.Module):
    """Softmax coefficients: alpha[t, s] = softmax_s(q_t . k_s / sqrt(head_dim)) over s <= t."""

    def __init__(self, head_dim: int, n_heads: int):
        super().__init__()
        self.scale = 1.0 / math.sqrt(head_dim)

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        t = q.shape[-2]
        logits = (q @ k.transpose(-2, -1)) * self.scale
        logits = logits.masked_fill(~causal_mask(t, q.device), float("-inf"))
        return torch.softmax(logits, dim=-1)
# EVOLVE-BLOCK-END


class Attention(nn.Module):
    """The fixed frame: q/k/v projections, RoPE, y = alpha @ v per head, output projection."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)
        self.coefficients = Coefficients(self.head_dim, n_heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        cos, sin = rope_cache(t, self.head_dim, 10000.0, x.device)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = self.coefficients(q, k) @ v
        return self.out(y.transpose(1, 2).reshape(b, t, d))
