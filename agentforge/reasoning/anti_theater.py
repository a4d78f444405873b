"""Anti-theater checks: do the thoughts actually change and improve the predictions, or are they show?

On held-out windows, with the mixed prediction ("with thoughts") against the model's own prediction
without any thought (the thoughts ablated):

* divergence:    mean total-variation distance between the two next-token distributions (pass > 0.3)
* ablation_drop: top-1 accuracy on the true tokens with thoughts minus with them ablated (pass > 0.02)
* correlation:   Pearson correlation, over thoughts, between a thought's quality (its coherence) and
                 the accuracy of the predictions made with it (pass > 0.5; undefined when either is
                 constant, which counts as 0 and fails)

A model whose thoughts are ignored (mixing weight 0) has divergence 0 and drop 0, so it fails.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from scipy.stats import pearsonr

THRESHOLDS = {"divergence": 0.3, "ablation_drop": 0.02, "correlation": 0.5}


def theater_metrics(mixed_logits: torch.Tensor, without_logits: torch.Tensor, true: torch.Tensor,
                    quality: torch.Tensor, thresholds: dict[str, float] = THRESHOLDS) -> dict:
    """mixed [N, K, n, V], without [N, n, V], true [N, n], quality [N, K] -> metrics and pass flags."""
    p_with = F.softmax(mixed_logits.float(), -1)
    p_without = F.softmax(without_logits.float(), -1)[:, None]
    divergence = float(0.5 * (p_with - p_without).abs().sum(-1).mean())
    correct_with = (mixed_logits.argmax(-1) == true[:, None]).float()        # [N, K, n]
    correct_without = (without_logits.argmax(-1) == true).float()            # [N, n]
    drop = float(correct_with.mean() - correct_without.mean())
    acc = correct_with.mean(-1).flatten().double().cpu().numpy()
    q = quality.detach().flatten().double().cpu().numpy()
    corr = float("nan")
    if len(q) > 2 and q.std() > 0 and acc.std() > 0:
        corr = float(pearsonr(q, acc).statistic)
    corr_value = corr if math.isfinite(corr) else 0.0
    res = {"divergence": divergence, "ablation_drop": drop, "correlation": corr_value,
           "correlation_defined": math.isfinite(corr)}
    res["divergence_passed"] = divergence > thresholds["divergence"]
    res["ablation_passed"] = drop > thresholds["ablation_drop"]
    res["correlation_passed"] = corr_value > thresholds["correlation"]
    res["all_passed"] = res["divergence_passed"] and res["ablation_passed"] and res["correlation_passed"]
    return res
