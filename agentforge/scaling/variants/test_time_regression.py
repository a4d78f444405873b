# scaling-framework: test_time_regression
"""Framework 2, test-time regression: at every step t the layer fits a regressor to the key-value pairs
it has seen, {(k_s, v_s) : s <= t}, and answers the query q_t with the regressor's prediction. Softmax
attention is the Nadaraya-Watson kernel regressor with kernel exp(q.k / sqrt(d)); linear attention,
DeltaNet and others are other regressors / optimizers (Wang, Shi & Fox 2025, "Test-time regression: a
unifying framework for designing sequence models with associative memory", arXiv:2501.12352). What
evolves is the regressor: its kernel, weighting of past pairs, regularization, or an online update.

Contract, checked by the scaling evaluator (agentforge.scaling.evaluator):
  * ``Regressor(head_dim: int, n_heads: int)`` is a ``torch.nn.Module`` whose ``forward(q, k, v)`` takes
    RoPE-rotated queries and keys and the values, each [batch, n_heads, seq_len, head_dim], and returns
    the predictions [batch, n_heads, seq_len, head_dim];
  * prediction t may use only the pairs s <= t and the query q_t (causality), and must be finite;
  * the fixed frame below (projections, RoPE, output projection) is not to be changed.
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
class Regressor(nn.Module):
    """Nadaraya-Watson regression with the exponential kernel (= softmax attention)."""

    def __init__(self, head_dim: int, n_heads: int):
        super().__init__()
        self.scale = 1.0 / math.sqrt(head_dim)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        t = q.shape[-2]
        log_kernel = (q @ k.transpose(-2, -1)) * self.scale
        log_kernel = log_kernel.masked_fill(~causal_mask(t, q.device), float("-inf"))
        weights = torch.softmax(log_kernel, dim=-1)  # kernel weights normalized over the pairs seen so far
        return weights @ v
# EVOLVE-BLOCK-END


class Attention(nn.Module):
    """The fixed frame: q/k/v projections, RoPE, the regressor per head, output projection."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)
        self.regressor = Regressor(self.head_dim, n_heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        cos, sin = rope_cache(t, self.head_dim, 10000.0, x.device)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = self.regressor(q, k, v)
        return self.out(y.transpose(1, 2).reshape(b, t, d))
