"""Anti-theater checks: do the thoughts actually change and improve the predictions, or are they show?

On N held-out windows (one per held-out document, the documents distinct test-split problems drawn without
replacement, ``rl.document_windows``, so the windows are the CIs' units), each with K sampled thoughts
and n true tokens, the mixed prediction ("with thoughts") is compared with the model's own prediction without
any thought (the thoughts ablated):

* divergence:    per window, the mean total-variation distance between the two next-token
                 distributions; the check's figure is the mean over windows (pass > 0.3)
* ablation_drop: per window, top-1 accuracy on the true tokens with thoughts (mean over the K thoughts)
                 minus without them; the mean over windows (pass > 0.02)
* correlation:   Pearson correlation between a thought's *prior* quality and the accuracy of the
                 predictions made with it, *within* positions: both are centred on their mean over the
                 K thoughts of the same window before pooling, so easy and hard windows cannot make a
                 correlation on their own (pass > 0.5). The quality must be computable before the
                 future is seen — the ``prior`` of ``rl.coherence_scores`` (``coherence.prior``) uses only
                 the context and the thought, never the true tokens it is scored against.
                 Pooling (a definitional choice, kept): every window enters the sums, so a window whose
                 accuracy is the same for all K thoughts adds quality variance and no covariance and pulls
                 r toward 0 — r answers "over all windows, does a better thought predict better?", not
                 "where thoughts matter". The information is in the *informative* windows only, where both
                 quality and accuracy vary across the thoughts: their number,
                 ``correlation_n_informative``, is the n of the correlation's verdict
                 (``MIN_CORRELATION_WINDOWS`` applies to it). Undefined (NaN) when either side is constant
                 within every window: then the verdict is INCONCLUSIVE ("undefined: nothing varies within any window"), with a NaN CI.

Each figure comes with n and a 95 % CI over windows. Divergence and drop (``_paired_ci``): the exact sign-flip
test's CI (``evals.stats.sign_flip_test``) below ``stats.MIN_N`` = 30 windows (a percentile bootstrap over 20 skewed
windows missed the mean on the upper side 6.5 % of the time against a nominal 2.5 %, so a FAIL could rest on it; for
the drop's paired differences the sign-flip CI holds, for the divergence it does not either, hence its verdict needs
30 windows) and the percentile bootstrap (Efron & Tibshirani 1993) from there; ``*_ci_method`` says which. The correlation: its own
percentile bootstrap over windows, in which a resample whose correlation is undefined — none of its windows varies —
is dropped, not counted as 0, and the dropped share is reported as ``correlation_undefined_share``; having no exact
alternative, it gives a verdict only from ``MIN_CORRELATION_WINDOWS`` = 30 informative windows. n is the number of
windows (``n_windows``) for divergence and drop, ``correlation_n_informative`` for the correlation. The verdict is
PASS when the whole CI is above the threshold, FAIL when the whole CI is at or below it, otherwise (or with n below
``MIN_VERDICT_WINDOWS``: 20 windows for the drop, 30 for the divergence, whose sign-flip CI below 30 assumes a
symmetry a mean of non-negative values lacks, and 30 informative windows for the correlation) INCONCLUSIVE;
``*_passed`` is True only for PASS.

A model whose thoughts are ignored (mixing weight 0) has divergence 0 and drop 0, so it fails those two; its
correlation is undefined (the accuracy never varies across thoughts), so that check is INCONCLUSIVE.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from agentforge.evals.stats import MIN_N, paired_test, threshold_verdict

THRESHOLDS = {"divergence": 0.3, "ablation_drop": 0.02, "correlation": 0.5}
MIN_WINDOWS = 20  # below this many held-out windows no verdict is given (INCONCLUSIVE)
MIN_CORRELATION_WINDOWS = MIN_N  # the correlation's CI is a bootstrap only: no verdict on fewer informative windows
# the divergence is a one-sample mean of non-negative, skewed values: the sign-flip CI assumes a symmetry it lacks (its
# upper end missed the mean 5.8-7.4 % of the time at 20-25 exponential windows, nominal 2.5 %, in an audit) and the
# bootstrap under-covers there too, so no verdict below MIN_N windows; the drop's paired differences keep MIN_WINDOWS
MIN_VERDICT_WINDOWS = {"divergence": MIN_N, "ablation_drop": MIN_WINDOWS, "correlation": MIN_CORRELATION_WINDOWS}
_PASS_KEY = {"divergence": "divergence_passed", "ablation_drop": "ablation_passed", "correlation": "correlation_passed"}


def within_correlation(quality: np.ndarray, accuracy: np.ndarray) -> float:
    """Pearson r of [N, K] quality and accuracy after centring each row (window) on its mean; nan if undefined."""
    q = quality - quality.mean(1, keepdims=True)
    a = accuracy - accuracy.mean(1, keepdims=True)
    if q.size == 0 or q.shape[1] < 2 or np.ptp(q) < 1e-12 or np.ptp(a) < 1e-12:   # no window: undefined, no crash
        return float("nan")
    return float(np.sum(q * a) / math.sqrt(np.sum(q * q) * np.sum(a * a)))


def _paired_ci(a: np.ndarray, b: np.ndarray, seed: int) -> tuple[list[float], str]:
    """(95 % CI of mean(a - b) over windows, how): the exact sign-flip test's CI below ``MIN_N`` windows, the
    percentile bootstrap from there (``paired_test``); NaN with fewer than 2 windows. Never its 0/1 branch: a divergence that is 0 in every window is not a 0/1 outcome (McNemar's CI with no
    discordant pair of 24 is [-0.14, +0.14], where the figure is exactly 0)."""
    res = paired_test(a, b, n_resamples=2000, seed=seed, outcomes=False)
    return [float(x) for x in res["ci95"]], res["test"]


def informative_windows(quality: np.ndarray, accuracy: np.ndarray) -> np.ndarray:
    """[N] bool: windows where both the quality and the accuracy vary across the K thoughts."""
    return (np.ptp(quality, axis=1) > 1e-12) & (np.ptp(accuracy, axis=1) > 1e-12)


def _corr_ci(quality: np.ndarray, accuracy: np.ndarray, seed: int, n_resamples: int = 2000) -> tuple[list[float], float]:
    """(95 % percentile CI of ``within_correlation`` over windows resampled with replacement, share of resamples
    where it is undefined). Undefined resamples (no window varying on a side) are dropped, not scored 0; a NaN CI
    when the correlation itself is undefined, fewer than 2 windows are informative, or no resample is defined. The centring is per window, so a resample's
    r comes from per-window sums: sum q*a, sum q*q, sum a*a of the centred rows."""
    n = len(quality)
    if informative_windows(quality, accuracy).sum() < 2 or not math.isfinite(within_correlation(quality, accuracy)):
        return [float("nan"), float("nan")], float("nan")   # one informative window: resampling it is no CI
    q = quality - quality.mean(1, keepdims=True)
    a = accuracy - accuracy.mean(1, keepdims=True)
    sums = np.stack([(q * a).sum(1), (q * q).sum(1), (a * a).sum(1)], 1)                        # [N, 3]
    varies = np.stack([np.ptp(q, axis=1) > 1e-12, np.ptp(a, axis=1) > 1e-12], 1).astype(float)  # [N, 2]
    idx = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
    s, v = sums[idx].sum(1), varies[idx].sum(1)
    ok = (v > 0).all(1)
    if not ok.any():
        return [float("nan"), float("nan")], 1.0
    r = s[ok, 0] / np.sqrt(s[ok, 1] * s[ok, 2])
    lo, hi = np.quantile(r, [0.025, 0.975])
    return [float(lo), float(hi)], float(1 - ok.mean())


def verdict(ci: list[float], threshold: float, n: int, min_n: int = MIN_WINDOWS) -> str:
    """PASS / FAIL / INCONCLUSIVE for "figure > threshold": the shared CI rule, with ``min_n``."""
    lo, hi = ci
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "INCONCLUSIVE"
    return threshold_verdict(ci, ">", threshold, n=n, min_n=min_n)[0]


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
    div_ci, div_how = _paired_ci(div_w, np.zeros_like(div_w), seed)
    drop_ci, drop_how = _paired_ci(acc_with.mean(1), acc_without, seed)
    corr_ci, undefined_share = _corr_ci(q, acc_with, seed)
    res = {"n_windows": n, "divergence": float(div_w.mean()), "divergence_ci95": div_ci,
           "divergence_ci_method": div_how,
           "ablation_drop": float(acc_with.mean() - acc_without.mean()), "ablation_drop_ci95": drop_ci,
           "ablation_drop_ci_method": drop_how,
           "correlation": corr, "correlation_defined": math.isfinite(corr), "correlation_ci95": corr_ci,
           "correlation_n_informative": int(informative_windows(q, acc_with).sum()),
           "correlation_undefined_share": undefined_share}
    n_of = {"divergence": n, "ablation_drop": n, "correlation": res["correlation_n_informative"]}
    for key, flag in _PASS_KEY.items():
        res[f"{key}_verdict"] = verdict(res[f"{key}_ci95"], thresholds[key], n_of[key], MIN_VERDICT_WINDOWS[key])
        res[flag] = res[f"{key}_verdict"] == "PASS"
    if not res["correlation_defined"]:
        res["correlation_why"] = "undefined: nothing varies within any window"
    res["all_passed"] = all(res[flag] for flag in _PASS_KEY.values())
    return res
