"""Grokfast gradient filters (Lee et al. 2024, "Grokfast: Accelerated Grokking by Amplifying Slow
Gradients", arXiv:2405.20233; reference code github.com/ironjr/grokfast).

Grokking is slow because the component of the gradient that drives generalization changes slowly over
the steps while the fast, noisy component dominates. Grokfast low-pass filters each parameter's gradient
over time and adds the slow part back, amplified by lambda, before the optimizer sees it:

* EMA:  ema <- alpha * ema + (1 - alpha) * g;   g <- g + lambda * ema
        (the first step seeds ema with g itself, as the reference ``gradfilter_ema`` does)
* MA:   the mean of the last ``window`` gradients;  g <- g + lambda * mean
        (applied only once the window is full, the reference ``gradfilter_ma`` with warmup=True)

The filter state lives in the caller's per-parameter state dict (tensors only), so it is saved and
resumed with the optimizer's ``state_dict``.
"""
from __future__ import annotations

import torch


def ema_filter_(params: list[torch.Tensor], states: list[dict], alpha: float, lamb: float) -> None:
    """In place on each p.grad: update the EMA in ``state['grokfast_ema']`` and add lambda * EMA."""
    grads, emas, fresh = [], [], []
    for p, st in zip(params, states):
        if "grokfast_ema" not in st:
            st["grokfast_ema"] = p.grad.detach().clone()
            fresh.append(p.grad)
            continue
        grads.append(p.grad)
        emas.append(st["grokfast_ema"])
    if emas:
        torch._foreach_lerp_(emas, grads, 1.0 - alpha)   # ema = alpha*ema + (1-alpha)*g
        torch._foreach_add_(grads, emas, alpha=lamb)
    if fresh:
        torch._foreach_mul_(fresh, 1.0 + lamb)            # ema = g on the first step: g + lambda*g


def ma_filter_(params: list[torch.Tensor], states: list[dict], window: int, lamb: float) -> int:
    """Moving-average variant: ring buffer ``grokfast_ma`` [window, *shape] and ``grokfast_ma_count``.
    Returns how many gradient entries were amplified (0 while the window is still filling)."""
    filtered = 0
    for p, st in zip(params, states):
        if "grokfast_ma" not in st:
            st["grokfast_ma"] = torch.zeros((window, *p.shape), dtype=p.grad.dtype, device=p.grad.device)
            st["grokfast_ma_count"] = torch.zeros((), dtype=torch.int64)
        count = int(st["grokfast_ma_count"])
        st["grokfast_ma"][count % window].copy_(p.grad)
        st["grokfast_ma_count"].add_(1)
        if count + 1 >= window:
            p.grad.add_(st["grokfast_ma"].mean(0), alpha=lamb)
            filtered += p.grad.numel()
    return filtered


@torch.no_grad()
def count_dominated(grads: list[torch.Tensor], slow: list[torch.Tensor], lamb: float, chunk: int = 1 << 24) -> torch.Tensor:
    """How many entries of the filtered gradients ``grads`` (raw + lambda * slow) the amplified slow part dominates,
    |lambda * slow| > |raw| = |g - lambda * slow| (an int64 tensor, on the device: no host sync). The same count as
    ``sum(((lamb * s).abs() > (g - lamb * s).abs()).sum() for g, s in zip(grads, slow))`` (NaN entries count as not
    dominated), in ~8 ops per ``chunk`` entries instead of 5 per tensor (with the rest of the filter's statistics: 675
    ops per step for the 25M model's 83 tensors before, 29 that are not views now, counted with a dispatch mode): the tensors are taken in runs of at most
    ``chunk`` entries (one tensor larger than that is a run of its own), flattened and compared in one piece; on a GPU
    each op is a kernel launch."""
    counts, i = [], 0
    while i < len(grads):
        j, n = i, 0
        while j < len(grads) and (j == i or n + grads[j].numel() <= chunk):
            n, j = n + grads[j].numel(), j + 1
        a = torch._foreach_mul(slow[i:j], lamb)
        raw = torch._foreach_sub(grads[i:j], a)
        torch._foreach_abs_(a)
        torch._foreach_abs_(raw)
        counts.append((torch.cat([x.flatten() for x in a]) > torch.cat([x.flatten() for x in raw])).sum())
        i = j
    return torch.stack(counts).sum() if counts else torch.zeros((), dtype=torch.int64)

