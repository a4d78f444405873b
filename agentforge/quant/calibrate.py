"""Calibration: statistics of each quantized layer's input over real data, which set its activation scale.

BitNet b1.58 scales activations per token by their absmax (Ma et al. 2024). One outlier token then
coarsens only its own grid, but rare huge tokens still dominate; the calibrated ceiling ``clip`` (the
``percentile`` quantile of the per-token absmax over the calibration tokens, as in percentile
calibration, Wu et al. 2020 "Integer Quantization for Deep Learning Inference") bounds the scale, and in
``static`` mode it is the one scale for every token. Each recursion step's call of a layer counts.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

_MAX_QUANTILE_INPUT = 2**24 - 1  # torch.quantile refuses more than 2**24 elements


@torch.no_grad()
def activation_stats(model: nn.Module, rows: torch.Tensor, layer_names: list[str], batch_size: int = 16,
                     percentile: float = 0.999, bits: int = 8,
                     on_batch: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, dict]:
    """Run ``rows`` [N, T+1] through the model (inputs rows[:, :-1]); per layer name return
    {tokens, abs_mean, absmax_mean, absmax_max, clip, scale} where scale = clip / (2^(bits-1) - 1)."""
    absmax: dict[str, list[torch.Tensor]] = {n: [] for n in layer_names}
    abs_sum = dict.fromkeys(layer_names, 0.0)
    count = dict.fromkeys(layer_names, 0)
    amax_sum = dict.fromkeys(layer_names, 0.0)  # running sum and count for on_batch (no re-concatenation)
    tokens = dict.fromkeys(layer_names, 0)

    def hook(name):
        def fn(_mod, args):
            a = args[0].detach().float().abs()
            m = a.amax(dim=-1).flatten()
            absmax[name].append(m.cpu())
            abs_sum[name] += float(a.sum())
            amax_sum[name] += float(m.sum())
            tokens[name] += m.numel()
            count[name] += a.numel()
        return fn

    handles = [model.get_submodule(n).register_forward_pre_hook(hook(n)) for n in layer_names]
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    try:
        for i in range(0, len(rows), batch_size):
            model(rows[i: i + batch_size, :-1].to(device))
            if on_batch is not None:
                on_batch(min(i + batch_size, len(rows)),
                         {n: amax_sum[n] / tokens[n] for n in layer_names if tokens[n]})
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    qmax = 2 ** (bits - 1) - 1
    out = {}
    for n in layer_names:
        if not absmax[n]:  # never called (e.g. a memory read on an empty bank): leave uncalibrated
            continue
        a = torch.cat(absmax[n])
        sample = a if a.numel() <= _MAX_QUANTILE_INPUT else a[torch.randperm(a.numel())[:_MAX_QUANTILE_INPUT]]
        clip = float(torch.quantile(sample, percentile))
        out[n] = {"tokens": int(a.numel()), "abs_mean": abs_sum[n] / max(count[n], 1),
                  "absmax_mean": float(a.mean()), "absmax_max": float(a.max()), "clip": clip,
                  "scale": clip / qmax}
    return out


def apply_clips(model: nn.Module, stats: dict[str, dict]) -> None:
    """Set each calibrated BitLinear's ``act_clip``."""
    for name, st in stats.items():
        model.get_submodule(name).act_clip.fill_(st["clip"])
