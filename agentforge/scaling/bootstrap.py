"""A paired percentile bootstrap over held-out rows (Efron & Tibshirani 1993, "An Introduction to the
Bootstrap", ch. 13: percentile intervals).

The test-set figures of a scaling evaluation are functions of per-size mean losses over the same M test
rows, for the candidate and for the baseline, so the rows are the sampling unit and the two models are
paired by row. A replicate draws M row indices with replacement once, recomputes every size's mean loss
for both models from those rows and applies the statistic (the caller's, e.g. the improvement over the
baseline computed exactly as the point figure is); the interval is the replicates' 2.5 and 97.5
percentiles. The replicates' standard deviation is the row-sampling standard error that
``uncertainty.seed_interval`` combines with the seed-to-seed variance.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

Statistic = Callable[[dict[str, float], dict[str, float]], float]


def bootstrap_replicates(candidate: dict[str, list[float]], baseline: dict[str, list[float]], statistic: Statistic,
                         reps: int = 1000, seed: int = 0) -> tuple[np.ndarray, int]:
    """(the ``reps`` replicate values of ``statistic``, rows per size). ``candidate`` and ``baseline`` map each
    size to its per-row losses on the same rows, in the same order; ``statistic(cand_means, base_means)``
    takes {size: mean loss} for each model."""
    names = list(candidate)
    if set(names) != set(baseline) or not names:
        raise ValueError(f"the candidate's sizes {sorted(candidate)} and the baseline's {sorted(baseline)} differ")
    cand = np.asarray([candidate[k] for k in names], dtype=float)
    base = np.asarray([baseline[k] for k in names], dtype=float)
    if cand.ndim != 2 or cand.shape != base.shape or cand.shape[1] == 0:
        raise ValueError(f"per-row losses must be one equal-length list per size, got {cand.shape} and {base.shape}")
    rng, m = np.random.default_rng(seed), cand.shape[1]
    values = np.empty(int(reps))
    for r in range(int(reps)):
        idx = rng.integers(0, m, m)  # one resample of the rows for every size and both models
        values[r] = statistic(dict(zip(names, cand[:, idx].mean(axis=1).tolist())),
                              dict(zip(names, base[:, idx].mean(axis=1).tolist())))
    return values, m


def percentile_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    low, high = np.percentile(values, [50 * (1 - level), 50 * (1 + level)])
    return float(low), float(high)


def paired_bootstrap(candidate: dict[str, list[float]], baseline: dict[str, list[float]], statistic: Statistic,
                     reps: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[tuple[float, float], int]:
    """((low, high) percentile interval of ``statistic``, rows per size): ``bootstrap_replicates``' values'
    2.5 and 97.5 percentiles (at ``level`` = 0.95)."""
    values, m = bootstrap_replicates(candidate, baseline, statistic, reps, seed)
    return percentile_interval(values, level), m
