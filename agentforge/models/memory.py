"""Long-term memory with surprise-gated writes and a MAG gate (after Titans, Behrouz et al. 2024).

Titans' "Memory as a Gate" (MAG) variant runs a sliding-window attention branch beside a long-term
memory and merges the two with a learned gate. Here the memory is a bank of ``slots`` key/value pairs:

* read:     q = W_q h;  a = softmax(q K^T / sqrt(d_k)) over the filled slots;  r = a V
* surprise: the memory's prediction error for the token, s = ||h - r||^2 / (||h||^2 + eps)
            (how badly what the memory recalls for this state matches the state itself; 1.0 when the
            memory is empty)
* write:    after the forward pass, tokens with s > ``surprise_threshold`` are stored (key W_q h,
            value h), highest surprise first, into empty slots, else the least-used ones
* gate:     out = g * h + (1 - g) * W_o r,  g = sigmoid(W_g h)

Writes happen only after the whole forward pass and never inside it, so a token never reads what a
later token of the same sequence wrote: the model stays causal. The bank is a persistent buffer and is
saved with the checkpoint.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class SurpriseMemory(nn.Module):
    def __init__(self, d_model: int, slots: int, key_dim: int, surprise_threshold: float,
                 max_writes: int = 8, gate_bias: float = 2.0):
        super().__init__()
        self.slots, self.key_dim = slots, key_dim
        self.surprise_threshold, self.max_writes = surprise_threshold, max_writes
        self.query = nn.Linear(d_model, key_dim, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)
        self.gate = nn.Linear(d_model, d_model)
        nn.init.zeros_(self.gate.weight)
        nn.init.constant_(self.gate.bias, gate_bias)  # starts mostly on the attention branch
        self.register_buffer("keys", torch.zeros(slots, key_dim))
        self.register_buffer("values", torch.zeros(slots, d_model))
        self.register_buffer("usage", torch.zeros(slots))
        self.register_buffer("filled", torch.zeros(slots, dtype=torch.bool))
        self.reset_stats()

    def reset_stats(self) -> None:
        """Counters since the last reset, read by the training callbacks (ltm/* keys)."""
        self.stats = {"reads": 0, "writes": 0, "surprise_sum": 0.0, "surprise_count": 0}

    def read(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (merged stream, per-token surprise [B, T]) for hidden states h [B, T, D]."""
        b, t, _ = h.shape
        self.stats["reads"] += b * t
        if not bool(self.filled.any()):
            recalled = torch.zeros_like(h)
        else:
            q = self.query(h)
            scores = q @ self.keys.t() / math.sqrt(self.key_dim)
            scores = scores.masked_fill(~self.filled, float("-inf"))
            attn = F.softmax(scores, dim=-1)
            recalled = attn @ self.values
            if self.training:
                with torch.no_grad():
                    self.usage += attn.detach().sum(dim=(0, 1))
        with torch.no_grad():
            err = (h.detach() - recalled.detach()).pow(2).sum(-1)
            surprise = err / (h.detach().pow(2).sum(-1) + 1e-6)
        self.stats["surprise_sum"] += float(surprise.sum())
        self.stats["surprise_count"] += surprise.numel()
        g = torch.sigmoid(self.gate(h))
        return g * h + (1 - g) * self.out(recalled), surprise

    @torch.no_grad()
    def write(self, h: torch.Tensor, surprise: torch.Tensor) -> int:
        """Store the most surprising token states of h [B, T, D]; returns the number written."""
        flat_h, flat_s = h.detach().reshape(-1, h.shape[-1]), surprise.reshape(-1)
        candidates = (flat_s > self.surprise_threshold).nonzero().squeeze(-1)
        if candidates.numel() == 0:
            return 0
        order = flat_s[candidates].argsort(descending=True)[: min(self.max_writes, self.slots)]
        chosen = candidates[order]
        # empty slots first (usage -inf), then the least used ones
        priority = torch.where(self.filled, self.usage, torch.full_like(self.usage, -1.0))
        slots = priority.argsort()[: chosen.numel()]
        # out of place: the read of this pass saved the old tensors for its backward
        self.keys = self.keys.index_copy(0, slots, self.query(flat_h[chosen]).to(self.keys.dtype))
        self.values = self.values.index_copy(0, slots, flat_h[chosen].to(self.values.dtype))
        self.usage = self.usage.index_fill(0, slots, 0.0)
        self.filled = self.filled.index_fill(0, slots, True)
        self.stats["writes"] += int(slots.numel())
        return int(slots.numel())

    def usage_fraction(self) -> float:
        return float(self.filled.float().mean())
