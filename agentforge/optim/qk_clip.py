"""QK-clip, the "Clip" of MuonClip (Kimi Team 2025, "Kimi K2: Open Agentic Intelligence", sec. 2.1).

Muon lets attention logits grow until training diverges. After each optimizer step, every head whose
largest pre-softmax logit in that step exceeded tau has its query and key projections rescaled by
sqrt(tau / max_logit) each, so the head's logits (q·k, bilinear in W_q and W_k; RoPE is linear and
commutes with the scaling) shrink by exactly tau / max_logit and the max falls back to tau. Other heads
are untouched.

An attention module here has ``q_proj`` and ``k_proj`` (nn.Linear, output rows grouped by head:
head h = rows h*head_dim:(h+1)*head_dim), ``n_heads``, ``head_dim`` and a buffer ``max_logit`` [n_heads].
"""
from __future__ import annotations

import torch


@torch.no_grad()
def qk_clip_(attention_modules, tau: float) -> tuple[int, float]:
    """Rescale the over-threshold heads in place; returns (heads clipped, largest logit seen).

    Every head's rows are multiplied by its factor (exactly 1.0 for the heads under tau, which leaves
    them bit-identical), so no per-layer decision is read back to the host: the only host sync is the
    final read of the two returned numbers."""
    clipped, largest = [], []
    for attn in attention_modules:
        m = attn.max_logit.detach().float()
        if not m.numel():
            continue
        largest.append(m.max())
        over = m > tau
        scale = torch.where(over, torch.sqrt(tau / m.clamp(min=tau)), torch.ones_like(m))
        rows = scale.repeat_interleave(attn.head_dim, output_size=m.numel() * attn.head_dim)
        rows = rows.to(attn.q_proj.weight.dtype)[:, None]
        attn.q_proj.weight.mul_(rows)
        attn.k_proj.weight.mul_(rows)
        if getattr(attn.q_proj, "bias", None) is not None:
            attn.q_proj.bias.mul_(rows[:, 0])
            attn.k_proj.bias.mul_(rows[:, 0])
        attn.max_logit.copy_(torch.minimum(attn.max_logit, torch.full_like(attn.max_logit, tau)))
        clipped.append(over.sum())
    if not clipped:
        return 0, float("-inf")
    n, top = torch.stack([torch.stack(clipped).sum().float(), torch.stack(largest).max()]).tolist()
    return int(n), top
