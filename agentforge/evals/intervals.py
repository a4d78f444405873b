"""The n and 95 % CI of a stage's headline figures, from its results file's per-example records: what the pipeline
report's table and ``phase=eval``'s printed line show beside each value (an accuracy of 16 questions is ±0.22)."""
from __future__ import annotations

import math

import numpy as np
from scipy import stats

from agentforge.evals.compare_table import ACCURACY_FORMATS
from agentforge.evals.stats import exact_proportion_ci


def perplexity_ci(row_loss: list[float] | None) -> dict:
    """n and the 95% CI of the perplexity exp(mean row loss) (the rows have equal length, so it is the eval's
    perplexity): Student's t-interval of the mean row loss, mean +- t(0.975, n-1) * s / sqrt(n) (Student 1908),
    exponentiated (exp is monotone). Not a percentile bootstrap: on the few rows a stage has (default 16) that
    undercovers (simulated on normal row losses: 80 % at n = 4, 93.5 % at n = 16; the t-interval is exact there)."""
    if not row_loss or len(row_loss) < 2:
        return {}
    x = np.asarray(row_loss, dtype=float)
    if not np.isfinite(x).all():   # a row of infinite loss: no interval (the perplexity itself says inf)
        return {}
    half = float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    with np.errstate(over="ignore"):
        ci = [float(np.exp(x.mean() - half)), float(np.exp(x.mean() + half))]
    if not all(math.isfinite(v) for v in ci):   # past float range (a loss above ~709): no interval
        return {}
    return {"perplexity_n": len(x), "perplexity_ci95": ci}


def stage_intervals(per_example: dict) -> dict:
    """{key_n, key_ci95} for each answer accuracy (95% exact, Clopper-Pearson) and the perplexity (t-interval over
    rows)."""
    out: dict = {}
    for fmt, key in ACCURACY_FORMATS:
        c = per_example.get(f"{fmt}_correct")
        if c:
            out[f"{key}_n"], out[f"{key}_ci95"] = len(c), exact_proportion_ci(int(sum(c)), len(c))
    out.update(perplexity_ci(per_example.get("row_loss")))
    return out
