# scaling-framework: baseline
"""Standard causal softmax attention (Vaswani et al. 2017, "Attention Is All You Need") with rotary
position embeddings (Su et al. 2021, RoFormer): the reference every evolved variant is compared to.

Contract, checked by the scaling evaluator (agentforge.scaling.evaluator):
  * ``Attention(d_model: int, n_heads: int)`` is a ``torch.nn.Module``;
  * ``forward(x)`` maps a float tensor [batch, seq_len, d_model] to the same shape;
  * it is causal: output position t depends only on input positions <= t;
  * its outputs are finite (no NaN/Inf).
Only the code between the EVOLVE-BLOCK markers may change; the block may import only math, torch
and agentforge.models.layers.
"""
import math  # noqa: F401  (for the EVOLVE block)

import torch
import torch.nn.functional as F
from torch import nn

from agentforge.models.layers import apply_rope, rope_cache


# EVOLVE-BLOCK-START
class Attention(nn.Module):
    """Multi-head causal softmax attention over RoPE-rotated queries and keys."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        cos, sin = rope_cache(t, self.head_dim, 10000.0, x.device)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(b, t, d))
# EVOLVE-BLOCK-END
