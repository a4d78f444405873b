"""PonderNet's halting distribution, its geometric prior and its loss (Banino et al. 2021, "PonderNet:
Learning to Ponder", eqs. 1-3 and section 2.2).

Given per-step halting probabilities lambda_1..lambda_N (lambda_N = 1 at the last step so nothing is lost),
the probability of halting at step n is p_n = lambda_n prod_{j<n} (1 - lambda_j). The prior is the same
construction with a constant lambda_p: a geometric distribution truncated at N, the tail mass on step N
(a constant halting head matches it exactly, so the KL is 0 at the prior). The paper picks N so that tail
is small; with N = 4 steps it is (1 - lambda_p)^3, 42 % for lambda_p = 0.25. The prior's own median is then
still step 3 (cumulative 0.58), but only just: a loss gain of beta ln(0.578 / 0.422) = 0.315 beta nats at the
last step (``gibbs_halting``, below) moves the median halting step to the bound — the model configs choose
lambda_p with that in mind.

The loss per token is sum_n p_n L_n + beta KL(p || prior). Its minimiser over p is the Gibbs distribution
p_n ∝ prior_n exp(-L_n / beta) (``gibbs_halting``): beta is a temperature in nats. With beta far below the
per-step loss gains L_n - L_{n+1}, every token is pushed to the step with the lowest loss (the last one);
halting can only tell hard tokens from easy ones when beta is on the scale of those gains.
"""
from __future__ import annotations

import torch


def halting_distribution(lambdas: torch.Tensor) -> torch.Tensor:
    """p [N, ...] from lambdas [N, ...]; whatever mass is left after step N goes to step N.

    The survival products prod_{j<n} (1 - lambda_j) are multiplied out step by step, not with ``torch.cumprod``:
    cumprod's backward reads ``(input == 0).any()`` back to the host, a CUDA sync on every training step (found by
    ``torch.cuda.set_sync_debug_mode`` on an H100, tests/test_speed.py), and N is a handful of recursion steps."""
    keep = 1 - lambdas
    survive = [torch.ones_like(keep[0])]
    for k in keep[:-1]:
        survive.append(survive[-1] * k)
    before = torch.stack(survive, 0)                                  # prod_{j<n} (1 - lambda_j)
    p = lambdas * before
    return torch.cat([p[:-1], before[-1:]], 0)


def geometric_prior(lam_p: float, n: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Truncated geometric prior [n]: lam_p (1 - lam_p)^(k-1) for k < n, the tail (1 - lam_p)^(n-1) at n."""
    return halting_distribution(torch.full((n,), float(lam_p), device=device, dtype=dtype))


def pondernet_terms(p: torch.Tensor, step_loss: torch.Tensor, mask: torch.Tensor, lam_p: float,
                    beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PonderNet's two terms (Banino et al. 2021, eq. 5), each a mean over masked tokens: the reconstruction
    sum_n p_n L_n and the regularization beta KL(p || truncated geometric prior lam_p); p, step_loss [N, ...],
    mask [...] (1 where the token has a target). The regularization is 0 with one step or beta 0."""
    denom = mask.sum().clamp(min=1)
    reconstruction = (p * step_loss * mask).sum() / denom
    if p.shape[0] > 1 and beta > 0:
        prior = geometric_prior(lam_p, p.shape[0], device=p.device, dtype=p.dtype)
        prior = prior.view(-1, *([1] * (p.dim() - 1)))
        kl = (p * (torch.log(p.clamp(min=1e-8)) - torch.log(prior))).sum(0)
        return reconstruction, beta * (kl * mask).sum() / denom
    return reconstruction, reconstruction.new_zeros(())


def pondernet_loss(p: torch.Tensor, step_loss: torch.Tensor, mask: torch.Tensor, lam_p: float,
                   beta: float) -> torch.Tensor:
    """Mean over masked tokens of sum_n p_n L_n + beta KL(p || geometric prior): ``pondernet_terms`` summed."""
    reconstruction, regularization = pondernet_terms(p, step_loss, mask, lam_p, beta)
    return reconstruction + regularization


def gibbs_halting(step_loss: torch.Tensor, lam_p: float, beta: float) -> torch.Tensor:
    """The p [N, ...] that minimises ``pondernet_loss`` for fixed per-step losses [N, ...]:
    softmax_n(log prior_n - L_n / beta)."""
    prior = geometric_prior(lam_p, step_loss.shape[0], device=step_loss.device, dtype=step_loss.dtype)
    return torch.softmax(torch.log(prior).view(-1, *([1] * (step_loss.dim() - 1))) - step_loss / beta, 0)
