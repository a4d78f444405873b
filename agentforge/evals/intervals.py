"""The n and 95 % CI of a stage's headline figures, from its results file's per-example records: what the pipeline
report's table and ``phase=eval``'s printed line show beside each value (an accuracy of 16 questions is ±0.22)."""
from __future__ import annotations

import math

from agentforge.evals.compare_table import ACCURACY_FORMATS
from agentforge.evals.stats import paired_bootstrap, wilson_ci


def perplexity_ci(row_loss: list[float] | None) -> dict:
    """n and the 95% CI of the perplexity exp(mean row loss) (the rows have equal length, so it is the eval's
    perplexity): a percentile bootstrap of the mean over the held-out rows, exponentiated (exp is monotone)."""
    if not row_loss or len(row_loss) < 2:
        return {}
    lo, hi = paired_bootstrap(row_loss, [0.0] * len(row_loss), n_resamples=2000)["ci95"]
    return {"perplexity_n": len(row_loss), "perplexity_ci95": [math.exp(lo), math.exp(hi)]}


def stage_intervals(per_example: dict) -> dict:
    """{key_n, key_ci95} for each answer accuracy (95% Wilson) and the perplexity (bootstrap over rows)."""
    out: dict = {}
    for fmt, key in ACCURACY_FORMATS:
        c = per_example.get(f"{fmt}_correct")
        if c:
            out[f"{key}_n"], out[f"{key}_ci95"] = len(c), wilson_ci(int(sum(c)), len(c))
    out.update(perplexity_ci(per_example.get("row_loss")))
    return out
