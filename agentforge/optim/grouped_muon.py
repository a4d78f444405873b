"""Muon with one batched Newton-Schulz per shape: ``torch.optim.Muon``'s update, in fewer (larger) ops.

Muon (Jordan et al. 2024, "Muon: An optimizer for hidden layers in neural networks", kellerjordan.github.io/
posts/muon; lr scaling ``match_rms_adamw`` from Liu et al. 2025, "Muon is Scalable for LLM Training",
arXiv:2502.16982) updates each hidden matrix W with gradient G by

    B <- mu * B + (1 - mu) * G                    (torch's lerp form of the momentum buffer)
    U <- (1 - mu) * G + mu * B   (Nesterov)   or   U <- B
    X <- bf16(U) (transposed when tall) / ||U||_F
    5 times:  A = X Xᵀ;  X <- a X + (b A + c A²) X     (quintic Newton-Schulz, (a, b, c) = (3.4445, -4.7750, 2.0315))
    W <- W * (1 - lr * wd) - lr' * X              (lr' = lr * 0.2 * sqrt(max(rows, cols)) for match_rms_adamw)

``torch.optim.Muon`` (torch/optim/_muon.py, ``_single_tensor_muon``; its foreach path is not implemented) runs this
matrix by matrix: ~24 ops per matrix, 1 382 ops a step for the 25M Cognate model's hidden matrices (counted on the
CPU with a dispatch mode, docs/speed.md), each a kernel launch on a GPU, where that step was launch-bound (the phase's
optimizer cost 1.06-1.30x AdamW's step on an H100: ``benchmarks/gpu_h100_2026-11-26.md`` call 8,
``gpu_h100_2026-11-27.md`` call 11).
Here the matrices of one param group that share a shape (a transformer's q/k/v/o projections, its MLP's gate/up,
...) take each line above together: the momentum as ``torch._foreach`` ops, the Newton-Schulz iteration as ``bmm`` /
``baddbmm`` on the stacked matrices, the per-matrix Frobenius norm as one ``vector_norm`` over the last two dims,
the weight update as ``torch._foreach`` ops. Same state (``momentum_buffer``), same hyper-parameters, same
checkpoints as ``torch.optim.Muon`` (it subclasses it: construction, validation, ``_init_group``, ``state_dict``).

Deviation, on purpose: the arithmetic is the same, but batched bf16 matmuls and norms may accumulate in another
order than the single-matrix kernels, so the update can differ from ``torch.optim.Muon``'s by bf16 rounding
(tested: parameters after several steps agree to rounding, ``tests/test_grouped_muon.py``). A second deviation, for
bf16 *parameters* without Nesterov only (the phases keep fp32 weights): there torch's ``bfloat16()`` of the bf16
momentum buffer is the buffer itself, so its in-place normalisation rescales the stored momentum; here the
normalisation acts on a stacked copy and the buffer keeps the momentum, as the algorithm defines it. Memory: during
the step each shape group holds a few copies of its matrices (the Nesterov updates and their stack in fp32, the
Newton-Schulz iterates in bf16, the result cast back), freed when the group is done.
"""
from __future__ import annotations

from collections import defaultdict

import torch
from torch.optim._muon import _adjust_lr


def newton_schulz_batched(g: torch.Tensor, coefficients: tuple[float, float, float], steps: int,
                          eps: float) -> torch.Tensor:
    """The quintic Newton-Schulz orthogonalization of each matrix of ``g`` [n, rows, cols], in bf16, as
    ``torch.optim._muon._zeropower_via_newtonschulz`` does it for one matrix (the same ops, batched)."""
    a, b, c = coefficients
    x = g.bfloat16()
    tall = g.size(-2) > g.size(-1)
    if tall:
        x = x.mT
    x = x / torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True).clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.mT
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.mT if tall else x


class GroupedMuon(torch.optim.Muon):
    """``torch.optim.Muon`` whose step runs the matrices of one shape together (module docstring)."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, bufs = [], [], []
            self._init_group(group, params, grads, bufs)
            lr, wd, mu = float(group["lr"]), float(group["weight_decay"]), float(group["momentum"])
            same: dict[tuple, list[int]] = defaultdict(list)
            for i, p in enumerate(params):
                same[(tuple(p.shape), p.dtype, p.device)].append(i)
            for (shape, dtype, _), idx in same.items():
                ps, gs, bs = [params[i] for i in idx], [grads[i] for i in idx], [bufs[i] for i in idx]
                torch._foreach_lerp_(bs, gs, 1 - mu)
                upd = torch._foreach_lerp(gs, bs, mu) if group["nesterov"] else bs
                x = newton_schulz_batched(torch.stack(upd), group["ns_coefficients"], group["ns_steps"], group["eps"])
                if wd:
                    torch._foreach_mul_(ps, 1 - lr * wd)
                step_lr = _adjust_lr(lr, group["adjust_lr_fn"], torch.Size(shape))
                torch._foreach_add_(ps, list(x.to(dtype).unbind(0)), alpha=-step_lr)
        return loss
