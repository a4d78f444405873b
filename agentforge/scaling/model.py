"""The small language-model family the scaling evaluator trains, with a pluggable attention module.

A pre-norm decoder (nanoGPT's shape) built from the project's own pieces: RMSNorm (Zhang & Sennrich
2019) and SwiGLU (Shazeer 2020) from ``agentforge.models.layers``, a tied token embedding / output
head, and no positional embedding of its own: position is the attention's business (the variant
templates apply RoPE, Su et al. 2021). The attention class comes from the variant file and must follow
the contract ``Attention(d_model, n_heads)`` with ``forward(x [B, T, D]) -> [B, T, D]``, causal.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from agentforge.models.layers import RMSNorm, SwiGLU


def ffn_hidden_for(d_model: int) -> int:
    """SwiGLU width ≈ 8/3·d (keeps the FFN near 8·d² parameters), rounded up to a multiple of 16."""
    return -(-(8 * d_model // 3) // 16) * 16


@dataclass
class ScalingOutput:
    loss: torch.Tensor | None
    logits: torch.Tensor


class ScalingBlock(nn.Module):
    def __init__(self, d_model: int, n_heads: int, attention_cls: type[nn.Module]):
        super().__init__()
        self.attn_norm = RMSNorm(d_model)
        self.attn = attention_cls(d_model, n_heads)
        self.mlp_norm = RMSNorm(d_model)
        self.mlp = SwiGLU(d_model, ffn_hidden_for(d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class ScalingLM(nn.Module):
    """Token embedding → n_layers blocks → RMSNorm → tied head; ``forward(ids, targets=None)``."""

    def __init__(self, vocab_size: int, d_model: int, n_layers: int, n_heads: int, attention_cls: type[nn.Module]):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d_model)
        self.blocks = nn.ModuleList(ScalingBlock(d_model, n_heads, attention_cls) for _ in range(n_layers))
        self.norm = RMSNorm(d_model)
        nn.init.normal_(self.embed.weight, std=0.02)

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.embed.weight.numel() if non_embedding else n

    def forward(self, ids: torch.Tensor, targets: torch.Tensor | None = None) -> ScalingOutput:
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x)
        logits = F.linear(self.norm(x), self.embed.weight)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
        return ScalingOutput(loss, logits)
