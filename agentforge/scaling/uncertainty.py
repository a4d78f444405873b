"""Training seeds and the uncertainty of the test-set improvement over the baseline.

A scaling evaluation trains each size once per seed; the test rows it scores are a sample too. Two sources
of chance therefore move ``test_improvement`` (candidate's guarded score − the baseline's fitness):

* **rows**: which test rows were drawn. The paired bootstrap (``bootstrap.py``) resamples them and gives the
  replicates' standard deviation ``se_rows``;
* **seeds**: the random init and data order of training. A red team scored a candidate that differs from the
  baseline only in the order of two ``nn.Linear`` constructions at −0.163 [−0.192, −0.132] (seed 0) and
  −0.037 [−0.074, −0.008] (seed 1): a rows-only interval claims significance for init luck.

So the baseline is trained at K seeds (``phase.seeds``: seed, seed + 1, ..., seed + K − 1; computed once and
cached) and the reference is their mean; the candidate is trained at the first m of them
(``phase.candidate_seeds``, default 1: the cost per candidate is unchanged) and its losses are averaged.
Each baseline seed k, scored against the K-seed mean exactly as a candidate is, gives a value v_k of the
statistic; s² = their sample variance (ddof 1) estimates the seed-to-seed variance σ².

**Assumption**: the candidate's seed variance is the baseline's (nothing else estimates it at m = 1).

Then Var(improvement) ≈ se_rows² + s²·(1/m + 1/K) and the 95 % interval is a Student t-interval
point ± t_{0.975, K−1} · se with K − 1 degrees of freedom (the seed variance is estimated from K values;
the row part, from hundreds of rows, is taken as known — using K − 1 rather than the Welch–Satterthwaite
df (Satterthwaite 1946, "An approximate distribution of estimates of variance components") is the
conservative choice: it is never narrower). With K = 1 there is no seed variance to estimate: the interval
is the bootstrap's percentile interval and covers row sampling only (``improvement_ci_covers = "rows"``).
"""
from __future__ import annotations

import math

import numpy as np


def training_seeds(settings: dict) -> list[int]:
    """The K training seeds of the baseline reference: ``seed``, ``seed + 1``, ... (``settings["seeds"]`` = K,
    default 1). The held-out and test rows depend on ``seed`` alone (the test rows on K only through a
    row dropped for equalling a seed's validation row, rare), so every seed is scored on the same rows."""
    seed, k = int(settings.get("seed") or 0), int(settings.get("seeds") or 1)
    return [seed + i for i in range(k)]


def candidate_seeds(settings: dict) -> list[int]:
    """The seeds a candidate trains at: ``train_seed`` when one is set (one baseline seed of the reference),
    else the first m = ``settings["candidate_seeds"]`` (default 1) of ``training_seeds``."""
    if "train_seed" in settings:
        return [int(settings["train_seed"])]
    return training_seeds(settings)[:int(settings.get("candidate_seeds") or 1)]


def train_seed(settings: dict) -> int:
    """The seed the child trains with (init, data order): ``train_seed`` or, by default, ``seed``."""
    return int(settings.get("train_seed", settings.get("seed") or 0))


def mean_sizes(runs: list[list[dict]]) -> list[dict]:
    """Per-size results of several seeds averaged: the losses (and per-row test losses) are means over the
    seeds; everything else (params, counts, the child's curve) is the first seed's."""
    first = runs[0]
    if len(runs) == 1:
        return first
    out = []
    for i, s in enumerate(first):
        row = dict(s)
        for key in ("loss", "test_loss"):
            if all(key in r[i] for r in runs):
                row[key] = float(np.mean([r[i][key] for r in runs]))
        if all("test_row_losses" in r[i] for r in runs):
            row["test_row_losses"] = np.mean([r[i]["test_row_losses"] for r in runs], axis=0).tolist()
        out.append(row)
    return out


def seed_interval(point: float, se_rows: float, seed_values: list[float], m: int = 1,
                  level: float = 0.95) -> dict:
    """The combined interval of the module docstring from ``seed_values`` (the K ≥ 2 baseline seeds' values of
    the statistic), the bootstrap's ``se_rows`` and m candidate seeds: {"ci": [lo, hi], "se", "df", "seed_sd"}."""
    k = len(seed_values)
    if k < 2:
        raise ValueError(f"a seed variance needs at least 2 baseline seeds, got {k}")
    if m < 1:
        raise ValueError(f"the candidate needs at least 1 seed, got {m}")
    s2 = float(np.var(np.asarray(seed_values, dtype=float), ddof=1))
    se = math.sqrt(se_rows ** 2 + s2 * (1.0 / m + 1.0 / k))
    from scipy import stats  # here: the sandboxed child imports this module for train_seed

    q = float(stats.t.ppf(0.5 + level / 2, k - 1))
    return {"ci": [point - q * se, point + q * se], "se": se, "df": float(k - 1), "seed_sd": math.sqrt(s2)}
