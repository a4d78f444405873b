"""Quiet-STaR's reward (Zelikman et al. 2024, Sec. 4.4): how much a thought helps predict what follows.

r_j = log p_talk(t | c, z_j) - mean_k log p_talk(t | c, z_k), with t the next ``n_true`` true tokens
(teacher-forced) and p_talk the mixed prediction. The mean over the thoughts of the same position is
the REINFORCE baseline, so a thought is rewarded only for beating its siblings.

Deviation from the reference code, on purpose: the authors' implementation (ezelikman/quiet-star,
``modeling_mistral.py``: ``remove_negative_rewards = True``, the advantage clamped at 0 before the policy loss)
drops negative advantages, so a thought worse than its siblings is never pushed down. Here the signed advantage
is used, as the paper's equation for the policy gradient writes it (Sec. 4.4: -r_j * grad log p(T_j)): the
clamped form learns nothing from a below-average thought, and with K = 2 thoughts from half of them.
"""
from __future__ import annotations

import torch


def thought_rewards(true_logp_mixed: torch.Tensor) -> torch.Tensor:
    """[N, K] summed log-likelihood of the true tokens under each thought's mixed prediction."""
    return true_logp_mixed.sum(-1)


def advantages(rewards: torch.Tensor) -> torch.Tensor:
    """[N, K] reward minus the mean over the K thoughts of the same position."""
    return rewards - rewards.mean(-1, keepdim=True)


def likelihood_gain(true_logp_mixed: torch.Tensor, true_logp_without: torch.Tensor) -> torch.Tensor:
    """[N, K] per-token gain in log-likelihood of the true tokens with the thought over without any."""
    return (true_logp_mixed - true_logp_without[:, None, :]).mean(-1)


def thought_diversity(thoughts: torch.Tensor) -> float:
    """Mean pairwise Hamming distance (share of differing tokens) between the thoughts of a position."""
    n, k, length = thoughts.shape
    if k < 2 or length == 0:
        return 0.0
    diff = (thoughts[:, :, None, :] != thoughts[:, None, :, :]).float().mean(-1)  # [N, K, K]
    return float(diff.sum() / (n * k * (k - 1)))
