"""Tensor-level merge methods, defined as mergekit (arcee-ai/mergekit) defines them.

Every function takes same-shaped tensors and returns one tensor. ``linear``, ``slerp`` and ``ties``
compute what mergekit's methods of those names compute; ``dare(rescale="l1")`` computes mergekit's
``dare_linear`` for the same random mask (mergekit draws the mask from torch's global generator, here it
comes from a seedable ``torch.Generator``, so the masks themselves differ unless the caller matches
them). ``dare(rescale="inverse_density")`` is the rescale of the DARE paper instead. Arithmetic runs in
float32 (float64 for SLERP's angles) and the result is cast back to the inputs' dtype.

Notation: x_1..x_n are the models' tensors, w_i their weights, b the base tensor, and
tau_i = x_i - b the task vectors.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def _stack(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) != 1:
        raise ValueError(f"tensors to merge must share one shape, got {sorted(shapes)}")
    return torch.stack([t.float() for t in tensors])


def _weights(weights: Sequence[float], n: int, like: torch.Tensor) -> torch.Tensor:
    if len(weights) != n:
        raise ValueError(f"{n} tensors but {len(weights)} weights")
    w = torch.tensor([float(x) for x in weights], dtype=like.dtype)
    return w.view(-1, *([1] * (like.dim() - 1)))


def linear(tensors: Sequence[torch.Tensor], weights: Sequence[float], normalize: bool = True) -> torch.Tensor:
    """Weighted average (Wortsman et al. 2022, "Model soups"; mergekit ``linear``).

        out = sum_i w_i x_i                       (normalize=False)
        out = sum_i w_i x_i / sum_i w_i           (normalize=True, mergekit's default)
    """
    x = _stack(tensors)
    w = _weights(weights, len(tensors), x)
    out = (w * x).sum(0)
    if normalize:
        out = out / w.sum(0)
    return out.to(tensors[0].dtype)


def lerp(t: float, v0: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
    return (1 - t) * v0 + t * v1


def slerp(t: float, v0: torch.Tensor, v1: torch.Tensor, dot_threshold: float = 0.9995,
          eps: float = 1e-8) -> torch.Tensor:
    """Spherical interpolation of the whole flattened tensors (Shoemake 1985; mergekit ``slerp``).

    With unit directions u_k = v_k / ||v_k|| (left as is when ||v_k|| <= eps), d = <u_0, u_1> and
    theta = arccos(d):

        out = sin((1-t) theta) / sin(theta) * v0 + sin(t theta) / sin(theta) * v1

    applied to the *unnormalized* v0, v1, as mergekit does. When |d| > dot_threshold the vectors are
    nearly collinear, sin(theta) ~ 0, and the result falls back to lerp: (1-t) v0 + t v1.
    """
    if v0.shape != v1.shape:
        raise ValueError(f"slerp needs one shape, got {tuple(v0.shape)} and {tuple(v1.shape)}")
    a, b = v0.double().flatten(), v1.double().flatten()
    na, nb = a.norm(), b.norm()
    ua = a / na if na > eps else a
    ub = b / nb if nb > eps else b
    dot = float((ua * ub).sum())
    if abs(dot) > dot_threshold:
        out = lerp(t, a, b)
    else:
        theta = math.acos(dot)
        s = math.sin(theta)
        out = math.sin((1 - t) * theta) / s * a + math.sin(t * theta) / s * b
    return out.view_as(v0).to(v0.dtype)


def slerp_many(tensors: Sequence[torch.Tensor], weights: Sequence[float], **kw) -> torch.Tensor:
    """SLERP of n >= 2 tensors as a chain of pairwise SLERPs (mergekit's slerp takes exactly two).

        acc_1 = x_1;   acc_k = slerp(t_k, acc_{k-1}, x_k),   t_k = w_k / (w_1 + ... + w_k)

    For two tensors this is mergekit's slerp with t = w_2 / (w_1 + w_2); on collinear tensors (the
    lerp fallback) the chain equals ``linear(tensors, weights)`` up to float rounding (not bit for bit:
    ~1e-7 apart in float32), since each step folds the next tensor into a running weighted mean.
    """
    if len(tensors) != len(weights) or not tensors:
        raise ValueError(f"{len(tensors)} tensors but {len(weights)} weights")
    acc, total = tensors[0], float(weights[0])
    for x, w in zip(tensors[1:], weights[1:]):
        total += float(w)
        acc = slerp(float(w) / total if total > 0 else 0.0, acc, x, **kw)
    return acc


def magnitude_sparsify(delta: torch.Tensor, density: float) -> torch.Tensor:
    """TIES' trim step: keep the k = int(density * numel) largest-|.| entries, zero the rest.

    (mergekit ``sparsify(method=magnitude)``; where mergekit refuses k = 0, one entry is kept.)
    """
    if density >= 1:
        return delta
    k = max(1, int(density * delta.numel()))
    mask = torch.zeros(delta.numel(), dtype=delta.dtype)
    mask[torch.topk(delta.abs().flatten().float(), k, sorted=False).indices] = 1
    return delta * mask.view_as(delta)


RESCALES = ("l1", "inverse_density", "none")


def rescale_masked(delta: torch.Tensor, mask: torch.Tensor, rescale: str, density: float,
                   eps: float = 1e-7) -> torch.Tensor:
    """delta * mask, rescaled by one of ``RESCALES`` (float32 in, float32 out):

    * ``"l1"`` (mergekit's default for ``dare_linear`` / ``dare_ties``: ``rescale: true`` means
      ``RescaleNorm.l1`` in ``mergekit/sparsify.py::rescaled_masked_tensor``):
          out = (m * delta) * ||delta||_1 / ||m * delta||_1,
      left as m * delta when either L1 norm is below ``eps`` (1e-7, mergekit's tolerance);
    * ``"inverse_density"`` (Yu et al. 2023, "Language Models are Super Mario", eq. 2):
          out = m * delta / density,  so E[out] = delta;
    * ``"none"``: m * delta.
    """
    masked = delta * mask
    if rescale == "none":
        return masked
    if rescale == "inverse_density":
        return masked / density
    if rescale != "l1":
        raise ValueError(f"DARE rescale must be one of {RESCALES}, got {rescale!r}")
    before, after = delta.abs().sum(), masked.abs().sum()
    if before < eps or after < eps:
        return masked
    return masked * (before / after)


def bernoulli_sparsify(delta: torch.Tensor, density: float, rescale: str = "l1",
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """DARE's drop-and-rescale: keep each entry with probability density = 1 - p, then rescale.

        m ~ Bernoulli(density)  (elementwise);   out = rescale_masked(delta, m, rescale, density)

    (mergekit ``sparsify(method=random)``; ``rescale`` as in ``rescale_masked``). density >= 1 keeps
    delta unchanged, as mergekit does.
    """
    if rescale not in RESCALES:
        raise ValueError(f"DARE rescale must be one of {RESCALES}, got {rescale!r}")
    if density >= 1:
        return delta
    mask = torch.bernoulli(torch.full(delta.shape, float(density), dtype=torch.float32), generator=generator)
    return rescale_masked(delta.float(), mask, rescale, density).to(delta.dtype)


def sign_consensus_mask(weighted_deltas: torch.Tensor) -> torch.Tensor:
    """TIES' sign election by mass: gamma = sign(sum_i w_i tau_i) (ties go to +); keep the entries
    whose own sign equals gamma (zeros never count). mergekit ``get_mask(method="sum")``."""
    majority = (weighted_deltas.sum(0) >= 0).to(weighted_deltas.dtype) * 2 - 1
    return weighted_deltas.sign() == majority


def _task_arithmetic(base: torch.Tensor, tensors: Sequence[torch.Tensor], weights: Sequence[float],
                     sparsified: list[torch.Tensor], consensus: bool, normalize: bool, lam: float) -> torch.Tensor:
    deltas = torch.stack([d.float() for d in sparsified])
    w = _weights(weights, len(tensors), deltas)
    weighted = deltas * w
    if consensus:
        mask = sign_consensus_mask(weighted).to(weighted.dtype)
        mixed = (weighted * mask).sum(0)
        divisor = (w * mask).sum(0)
        divisor[divisor == 0] = 1
    else:
        mixed = weighted.sum(0)
        divisor = w.sum(0).expand_as(mixed).clone()
        divisor[divisor.abs() < 1e-8] = 1
    if normalize:
        mixed = mixed / divisor
    return (base.float() + lam * mixed).to(base.dtype)


def ties(base: torch.Tensor, tensors: Sequence[torch.Tensor], weights: Sequence[float], density: float = 1.0,
         lam: float = 1.0, normalize: bool = True) -> torch.Tensor:
    """TIES-merging (Yadav et al. 2023, "Resolving Interference When Merging Models"; mergekit ``ties``).

        tau_i' = trim(x_i - b, density)                        (top-k magnitude)
        gamma  = sign(sum_i w_i tau_i')                        (elect the sign by mass)
        out    = b + lam * sum_i w_i tau_i' [sign(tau_i') = gamma] / sum_i w_i [sign(tau_i') = gamma]

    (the disjoint mean; where no model agrees the divisor is 1 and the entry stays b).
    """
    trimmed = [magnitude_sparsify(x.float() - base.float(), density) for x in tensors]
    return _task_arithmetic(base, tensors, weights, trimmed, consensus=True, normalize=normalize, lam=lam)


def dare(base: torch.Tensor, tensors: Sequence[torch.Tensor], weights: Sequence[float], density: float = 0.5,
         lam: float = 1.0, normalize: bool = False, generator: torch.Generator | None = None,
         rescale: str = "l1") -> torch.Tensor:
    """DARE with a linear combination (Yu et al. 2023; mergekit ``dare_linear``, normalize off by default).

        tau_i' = rescale(Bernoulli(density) mask_i * (x_i - b))    (drop rate p = 1 - density)
        out    = b + lam * sum_i w_i tau_i'    [ / sum_i w_i  when normalize ]

    ``rescale="l1"`` (default) is mergekit's: each masked task vector is scaled so its L1 norm equals
    the unmasked one's; ``"inverse_density"`` divides by density as in the paper (see ``rescale_masked``).
    """
    dropped = [bernoulli_sparsify(x.float() - base.float(), density, rescale, generator) for x in tensors]
    return _task_arithmetic(base, tensors, weights, dropped, consensus=False, normalize=normalize, lam=lam)
