# scaling-framework: matrix_mixer
"""Framework 3, matrix mixer: a sequence mixer is a (data-dependent) T x T matrix M applied to the
values, Y = M V. Softmax attention is M = softmax(mask(Q K^T / sqrt(d))); structured choices (Toeplitz,
semiseparable as in SSMs, low-rank, Cauchy, Vandermonde) give other mixers (Hwang et al. 2024, "Hydra:
Bidirectional State Space Models Through Generalized Matrix Mixers", arXiv:2407.09941). What evolves is
the construction of M from the layer input and the queries/keys: its structure, parameterization and
normalization.

Contract, checked by the scaling evaluator (agentforge.scaling.evaluator):
  * ``Mixer(head_dim: int, n_heads: int)`` is a ``torch.nn.Module`` whose ``forward(q, k)`` takes
    RoPE-rotated queries and keys [batch, n_heads, seq_len, head_dim] and returns the mixing matrix
    M [batch, n_heads, seq_len, seq_len];
  * M must be lower triangular (M[..., t, s] = 0 for s > t: causality) and finite;
  * the fixed frame below (projections, RoPE, Y = M @ V, output projection) is not to be changed.
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
class Mixer(nn.Module):
    """The attention mixer: M = row-softmax of the causally masked scaled dot products."""

    def __init__(self, head_dim: int, n_heads: int):
        super().__init__()
        self.scale = 1.0 / math.sqrt(head_dim)

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        t = q.shape[-2]
        scores = (q @ k.transpose(-2, -1)) * self.scale
        scores = scores.masked_fill(~causal_mask(t, q.device), float("-inf"))
        return torch.softmax(scores, dim=-1)
# EVOLVE-BLOCK-END


class Attention(nn.Module):
    """The fixed frame: q/k/v projections, RoPE, Y = M @ V per head, output projection."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)
        self.mixer = Mixer(self.head_dim, n_heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        cos, sin = rope_cache(t, self.head_dim, 10000.0, x.device)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = self.mixer(q, k) @ v
        return self.out(y.transpose(1, 2).reshape(b, t, d))
