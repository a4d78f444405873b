"""Anti-theater checks: do the thoughts actually change and improve the predictions, or are they show?

On N held-out windows (one per held-out sequence, so the windows are independent units), each with K
sampled thoughts and n true tokens, the mixed prediction ("with thoughts") is compared with the model's
own prediction without any thought (the thoughts ablated):

* divergence:    per window, the mean total-variation distance between the two next-token
                 distributions; the check's figure is the mean over windows (pass > 0.3)
* ablation_drop: per window, top-1 accuracy on the true tokens with thoughts (mean over the K thoughts)
                 minus without them; the mean over windows (pass > 0.02)
* correlation:   Pearson correlation between a thought's *prior* quality and the accuracy of the
                 predictions made with it, *within* positions: both are centred on their mean over the
                 K thoughts of the same window before pooling, so easy and hard windows cannot make a
                 correlation on their own (pass > 0.5). The quality must be computable before the
                 future is seen — the ``prior`` of ``rl.coherence_scores`` (``coherence.prior``) uses only
                 the context and the thought, never the true tokens it is scored against. Undefined when
                 either side is constant within every window (counts as 0, CI [0, 0]).

Each figure comes with n (windows) and a 95 % percentile-bootstrap CI over windows (Efron & Tibshirani
1993; scipy's ``stats.bootstrap``; the drop through ``evals.stats.paired_bootstrap``). The verdict is
PASS when the whole CI is above the threshold, FAIL when the whole CI is at or below it, otherwise (or
with fewer than ``MIN_WINDOWS`` windows) INCONCLUSIVE; ``*_passed`` is True only for PASS.

A model whose thoughts are ignored (mixing weight 0) has divergence 0 and drop 0, so it fails.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats as sps

from agentforge.evals.stats import paired_bootstrap, threshold_verdict

THRESHOLDS = {"divergence": 0.3, "ablation_drop": 0.02, "correlation": 0.5}
MIN_WINDOWS = 20  # below this many held-out windows no verdict is given (INCONCLUSIVE)
_PASS_KEY = {"divergence": "divergence_passed", "ablation_drop": "ablation_passed", "correlation": "correlation_passed"}


def within_correlation(quality: np.ndarray, accuracy: np.ndarray) -> float:
    """Pearson r of [N, K] quality and accuracy after centring each row (window) on its mean; nan if undefined."""
    q = quality - quality.mean(1, keepdims=True)
    a = accuracy - accuracy.mean(1, keepdims=True)
    if q.shape[1] < 2 or np.ptp(q) < 1e-12 or np.ptp(a) < 1e-12:
        return float("nan")
    return float(np.sum(q * a) / math.sqrt(np.sum(q * q) * np.sum(a * a)))


def _mean_ci(values: np.ndarray, seed: int) -> list[float]:
    if len(values) < 2:
        return [float("nan"), float("nan")]
    return paired_bootstrap(values, np.zeros_like(values), n_resamples=2000, seed=seed)["ci95"]


def _corr_ci(quality: np.ndarray, accuracy: np.ndarray, seed: int) -> list[float]:
    n = len(quality)
    if n < 2:
        return [float("nan"), float("nan")]
    if not math.isfinite(within_correlation(quality, accuracy)):
        return [0.0, 0.0]  # nothing varies within a window: no correlation, counted as 0

    def stat(idx):
        r = within_correlation(quality[idx.astype(int)], accuracy[idx.astype(int)])
        return r if math.isfinite(r) else 0.0

    res = sps.bootstrap((np.arange(n),), stat, n_resamples=2000, vectorized=False, method="percentile",
                        rng=np.random.default_rng(seed))
    return [float(res.confidence_interval.low), float(res.confidence_interval.high)]


def verdict(ci: list[float], threshold: float, n: int) -> str:
    """PASS / FAIL / INCONCLUSIVE for "figure > threshold": the shared CI rule, with ``MIN_WINDOWS``."""
    lo, hi = ci
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "INCONCLUSIVE"
    return threshold_verdict(ci, ">", threshold, n=n, min_n=MIN_WINDOWS)[0]


def theater_metrics(mixed_logits: torch.Tensor, without_logits: torch.Tensor, true: torch.Tensor,
                    quality: torch.Tensor, thresholds: dict[str, float] = THRESHOLDS, seed: int = 0) -> dict:
    """mixed [N, K, n, V], without [N, n, V], true [N, n], quality [N, K] -> figures, n, CIs and verdicts."""
    p_with = F.softmax(mixed_logits.float(), -1)
    p_without = F.softmax(without_logits.float(), -1)[:, None]
    div_w = (0.5 * (p_with - p_without).abs().sum(-1)).mean((1, 2)).double().cpu().numpy()          # [N]
    correct_with = (mixed_logits.argmax(-1) == true[:, None]).float()                                  # [N, K, n]
    correct_without = (without_logits.argmax(-1) == true).float()                                      # [N, n]
    acc_with = correct_with.mean(-1).double().cpu().numpy()                                             # [N, K]
    acc_without = correct_without.mean(-1).double().cpu().numpy()                                       # [N]
    q = quality.detach().double().cpu().numpy()
    n = len(div_w)
    corr = within_correlation(q, acc_with)
    drop_ci = (paired_bootstrap(acc_with.mean(1), acc_without, n_resamples=2000, seed=seed)["ci95"] if n >= 2
               else [float("nan"), float("nan")])
    res = {"n_windows": n, "divergence": float(div_w.mean()), "divergence_ci95": _mean_ci(div_w, seed),
           "ablation_drop": float(acc_with.mean() - acc_without.mean()), "ablation_drop_ci95": drop_ci,
           "correlation": corr if math.isfinite(corr) else 0.0, "correlation_defined": math.isfinite(corr),
           "correlation_ci95": _corr_ci(q, acc_with, seed)}
    for key, flag in _PASS_KEY.items():
        res[f"{key}_verdict"] = verdict(res[f"{key}_ci95"], thresholds[key], n)
        res[flag] = res[f"{key}_verdict"] == "PASS"
    res["all_passed"] = all(res[flag] for flag in _PASS_KEY.values())
    return res
