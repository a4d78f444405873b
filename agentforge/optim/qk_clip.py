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
    final read of the two returned numbers. The factors of all layers are computed at once (one
    concatenation of their max logits), so a layer costs its two (four with biases) row scalings and
    little else: on a GPU each op is a kernel launch (the 25M model's 8 layers: 126 ops that are not views
    before, 30 now, counted with a dispatch mode)."""
    mods = [attn for attn in attention_modules if attn.max_logit.numel()]
    if not mods:
        return 0, float("-inf")
    sizes = [attn.max_logit.numel() for attn in mods]
    m = torch.cat([attn.max_logit.detach().float().flatten() for attn in mods])
    over = m > tau
    scale = torch.where(over, torch.sqrt(tau / m.clamp(min=tau)), torch.ones_like(m))
    head_dims = {attn.head_dim for attn in mods}
    if len(head_dims) == 1:   # one repeat for every layer, then views
        (d,) = head_dims
        rows = scale.repeat_interleave(d, output_size=m.numel() * d).split([n * d for n in sizes])
    else:
        rows = [s.repeat_interleave(a.head_dim, output_size=s.numel() * a.head_dim)
                for s, a in zip(scale.split(sizes), mods)]
    for attn, r in zip(mods, rows):
        r = r.to(attn.q_proj.weight.dtype)
        attn.q_proj.weight.mul_(r[:, None])
        attn.k_proj.weight.mul_(r[:, None])
        if getattr(attn.q_proj, "bias", None) is not None:
            attn.q_proj.bias.mul_(r)
            attn.k_proj.bias.mul_(r)
    torch._foreach_clamp_max_([attn.max_logit for attn in mods], tau)
    n, top = torch.stack([over.sum().float(), m.max()]).tolist()
    return int(n), top
