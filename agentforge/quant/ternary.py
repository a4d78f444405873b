"""The quantizers of BitNet b1.58 (Ma et al. 2024, arXiv:2402.17764, eqs. 1-3, and the authors' "Training
Tips, Code and FAQ" note for the activation rounding range).

Weights, absmean:   gamma = max(mean|W|, eps),   W_q = RoundClip(W / gamma, -1, 1),   W ~ gamma * W_q
Activations, absmax per token (8 bits):   s = max|x_t| / 127,   x_q = clamp(round(x_t / s), -128, 127)

gamma is *clamped* to at least eps as in the authors' code (the FAQ note's ``weight_quant``:
``scale = 1.0 / w.abs().mean().clamp_(min=1e-5)``; ``u = (w * scale).round().clamp_(-1, 1) / scale``),
not divided by gamma + eps as the paper's eq. 1 is written: the two differ only when mean|W| is near
eps, where the clamp keeps a tiny matrix's codes and makes an all-zero one dequantize to exactly 0.

``threshold`` (the phase's ``sparsity_threshold``) has one meaning: the dead zone of the ternary rounding
in units of gamma — a weight becomes 0 when |W| / gamma <= threshold, else sign(W). At 0.5 this is
exactly the paper's RoundClip (round-half-to-even sends 0.5 to 0, and everything >= 1.5 clips to 1);
0.7 is the Ternary Weight Networks rule (Li et al. 2016, Delta = 0.7 E|W|); larger values give sparser
ternary matrices. The scale stays gamma = mean|W| whatever the threshold, as in the paper.
"""
from __future__ import annotations

import math

import torch

EPS = 1e-5          # the paper's epsilon (also the floor of the activation absmax)
PAPER_THRESHOLD = 0.5


def absmean_scale(w: torch.Tensor, per_channel: bool = False) -> torch.Tensor:
    """gamma = mean|W| over the whole tensor (shape []) or per output row (shape [out, 1])."""
    w = w.detach().float()
    return w.abs().mean(dim=1, keepdim=True) if per_channel else w.abs().mean()


def ternarize(w: torch.Tensor, threshold: float = PAPER_THRESHOLD, per_channel: bool = False,
              eps: float = EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes in {-1, 0, 1} as int8 with w's shape, scale gamma = max(mean|W|, eps) as float32) for [out, in]."""
    if w.ndim != 2:
        raise ValueError(f"ternarize expects a 2-D weight matrix, got shape {tuple(w.shape)}")
    gamma = absmean_scale(w, per_channel).clamp(min=eps)
    x = w.detach().float() / gamma
    codes = torch.where(x.abs() > threshold, torch.sign(x), torch.zeros_like(x))
    return codes.to(torch.int8), gamma.to(torch.float32)


def dequantize(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """gamma * W_q as float32 (the weight the quantized layer computes with)."""
    return codes.to(torch.float32) * scale


def quantize_activations(x: torch.Tensor, bits: int = 8, clip: torch.Tensor | float | None = None,
                         static: bool = False, eps: float = EPS, out: str = "codes") -> tuple[torch.Tensor, torch.Tensor]:
    """(x_q, per-token scale s [..., 1]) with x ~ s * x_q, x_q = clamp(round(x / s), -2^(b-1), 2^(b-1) - 1).

    Per token (the paper): s = clamp(max|x_t|, eps, clip) / (2^(b-1) - 1). ``clip`` is the calibrated ceiling on
    the per-token absmax (``calibrate.py``; inf or None = none); tokens beyond it saturate instead of
    coarsening the grid. ``static``: one scale for every token, s = clip / (2^(b-1) - 1).
    ``out``: "codes" (x_q as x's dtype), "int8" (x_q as int8, bits <= 8) or "dequantized" (s * x_q).
    Seven tensor ops per call in the per-token mode with a Python-number (or None) clip and ``out`` "int8" or
    "dequantized", as BitLinear's int8 kernel calls it (absmax, clamp, scale, divide, round, clamp, cast or
    rescale); six for "codes" (no cast; the float kernel's), one more for a one-element CPU tensor clip (read into a
    number first).
    At one row these, not the arithmetic, are the cost, so none is spent on anything else.
    """
    qmax = 2 ** (bits - 1) - 1
    if isinstance(clip, torch.Tensor) and clip.device.type == "cpu" and clip.numel() == 1:
        clip = float(clip)  # a Python number on CPU: one clamp below, no tensor allocated
    if static:
        if clip is None or not math.isfinite(float(clip)):
            raise ValueError("static activation scales need a calibrated (finite) clip value")
        clip = torch.as_tensor(clip, dtype=x.dtype, device=x.device)
        amax = clip.clamp(min=eps).expand(*x.shape[:-1], 1)
    else:
        amax = torch.linalg.vector_norm(x.detach() if x.requires_grad else x, float("inf"), dim=-1, keepdim=True)
        if isinstance(clip, torch.Tensor):
            amax = amax.clamp_(max=clip).clamp_(min=eps)
        else:  # min(max(a, eps), max(clip, eps)) = max(min(a, clip), eps): the same value in one op
            amax = amax.clamp_(min=eps, max=max(clip, eps) if clip is not None else None)
    s = amax / qmax
    q = torch.div(x, s).round_().clamp_(-qmax - 1, qmax)
    if out == "dequantized":
        return q.mul_(s), s
    return (q.to(torch.int8) if out == "int8" else q), s


def sparsity(codes: torch.Tensor) -> float:
    """Fraction of zero entries."""
    return float((codes == 0).sum()) / max(codes.numel(), 1)
