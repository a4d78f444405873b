"""PonderNet's halting distribution and its geometric prior (Banino et al. 2021, "PonderNet: Learning to
Ponder", eqs. 1-3 and the KL regulariser of section 2.2).

Given per-step halting probabilities lambda_1..lambda_N (lambda_N = 1 at the last step so nothing is lost),
the probability of halting at step n is p_n = lambda_n prod_{j<n} (1 - lambda_j). The prior is the same
construction with a constant lambda_p: a geometric distribution truncated at N, the tail mass on step N.
"""
from __future__ import annotations

import torch


def halting_distribution(lambdas: torch.Tensor) -> torch.Tensor:
    """p [N, ...] from lambdas [N, ...]; whatever mass is left after step N goes to step N."""
    survive = torch.cumprod(1 - lambdas, dim=0)                       # prod_{j<=n} (1 - lambda_j)
    before = torch.cat([torch.ones_like(survive[:1]), survive[:-1]], 0)  # prod_{j<n}
    p = lambdas * before
    return torch.cat([p[:-1], before[-1:]], 0)


def geometric_prior(lam_p: float, n: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Truncated geometric prior [n]: lam_p (1 - lam_p)^(k-1) for k < n, the tail (1 - lam_p)^(n-1) at n."""
    return halting_distribution(torch.full((n,), float(lam_p), device=device, dtype=dtype))
