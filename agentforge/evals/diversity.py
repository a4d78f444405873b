"""Phase 1 diversity of the three Cognate models, with a CI.

The seed's Phase 1 threshold is "diversity > 0.3" over three features: average halting steps, long-term
memory usage and inference cost. The figure is the mean, over the features, of their coefficient of
variation across the models (population std / mean, so 0 means identical models). Inference cost is the
forward FLOPs per token counted on the steps each model runs (deterministic), not a latency, which across
separate runs on a loaded machine would vary by timing noise alone.

Each feature of each model is a mean over the held-out rows it was measured on, so the figure carries
sampling noise from those rows. ``per_row_features`` measures every row on its own, and ``diversity_ci``
gives a percentile bootstrap CI (Efron & Tibshirani 1993, *An Introduction to the Bootstrap*, ch. 13):
the rows are resampled with replacement and the figure is recomputed from the resampled means. The Cognate
models are measured on the same validation rows (their datamodules draw them from the last curriculum stage's
tasks whatever the model's dataset weights; ``ROWS_DIGEST`` records them), so one resample of row indices serves all
three models, paired: resampling each model's rows independently added between-model noise that is not there and
moved the CI up (three copies of one model, diversity 0, got [0.0015, 0.0069]; paired it is [0, 0]). Rows that
differ between the models are resampled independently per model. Each row holds distinct documents, none
spanning two rows (``datamodule.heldout_rows``), so the rows are independent units. The CI covers the
measurement on these rows only. The three models are fixed; the variation between training runs is not
in it, and three models cannot estimate it.
"""
from __future__ import annotations

import hashlib
import math

import numpy as np
import torch

from agentforge.evals.flops import counting_flops

FEATURES = ("halting_steps", "ltm_usage", "mflops_per_token")
PER_ROW_KEY = "diversity/per_row"  # metrics.json key of per_row_features' output
ROWS_DIGEST = "rows_sha256"        # per_row_features' key for the sha256 of the rows it measured
# the features' model-level keys in a Cognate model's metrics.json, in FEATURES order
MEAN_KEYS = ("diversity/avg_halting_steps", "diversity/ltm_usage", "diversity/inference_mflops_per_token")


@torch.no_grad()
def per_row_features(model, rows: torch.Tensor) -> dict:
    """Per held-out row of ``rows`` [N, T+1], each measured in a forward pass of that row alone (eval mode):
    its tokens' mean ACT halting step, the share of the memory's slots filled at the row's end, and the
    forward MFLOPs per token (``evals.flops``: matmuls and attention, on the steps the model runs for that row);
    and ``ROWS_DIGEST``, the rows' sha256, which tells ``diversity_ci`` whether models saw the same rows."""
    device = next(model.parameters()).device
    model.eval()
    out: dict = {f: [] for f in FEATURES}
    out[ROWS_DIGEST] = hashlib.sha256(rows.detach().cpu().long().numpy().tobytes()).hexdigest()
    for row in rows[:, :-1]:
        x = row[None].to(device)
        with counting_flops(model) as fc:
            steps = model(x).halting_steps
        out["halting_steps"].append(float(steps.float().mean()))
        out["ltm_usage"].append(model.memory.usage_fraction())
        out["mflops_per_token"].append(fc.get_total_flops() / x.numel() / 1e6)
    return out


def diversity(means: np.ndarray) -> float:
    """Mean over features of the coefficient of variation across models; ``means`` [models, features].
    A feature that is 0 in every model (no memory used by any) counts as CV 0 — the models are identical there, as a
    mean of 1e-9 in all of them already gave — and a non-finite value makes the figure NaN (no verdict). Until
    2026-11-28 such a feature was left out, so all-zero usage read 1.5× the figure of usage 1e-9, and a NaN feature
    was averaged away unseen (an audit). The features are non-negative, so a mean of 0 means all 0. The CV uses the
    population SD (ddof = 0): the three models are all there is, not a sample of models; the sample SD
    (ddof = 1) would give sqrt(3 / 2) = 1.22 times the figure, which the report states beside it (the seed does
    not say which, and at 0.264 against 0.3 the choice decides the row)."""
    means = np.asarray(means, dtype=np.float64)
    if not np.isfinite(means).all():
        return float("nan")
    return float(_feature_cvs(means, axis=0).mean())


def _feature_cvs(means: np.ndarray, axis: int) -> np.ndarray:
    """Each feature's CV (population SD / mean) over the models, ``axis`` of ``means``; 0 for a feature that is 0 in
    every model (``diversity`` and its bootstrap alike)."""
    mu = means.mean(axis=axis)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(mu > 0, means.std(axis=axis) / np.where(mu > 0, mu, 1.0), 0.0)


def same_rows(per_row: list[dict]) -> bool:
    """Whether every model's per-row features were measured on the same rows (equal ``ROWS_DIGEST``)."""
    digests = {r.get(ROWS_DIGEST) for r in per_row}
    return len(digests) == 1 and None not in digests


def diversity_ci(per_row: list[dict[str, list[float]]], n_boot: int = 2000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of ``diversity`` over the models' rows: one resample of row indices for all models
    when every model's ``ROWS_DIGEST`` is the same (the same rows, paired), else independently per model."""
    rng = np.random.default_rng(seed)
    shared = None
    if same_rows(per_row):
        n = len(per_row[0][FEATURES[0]])
        shared = rng.integers(0, n, size=(n_boot, n))
    boot = []  # per model: [n_boot, features] means of resampled rows
    for rows in per_row:
        x = np.stack([np.asarray(rows[f], dtype=np.float64) for f in FEATURES], axis=1)  # [N, F]
        idx = shared if shared is not None else rng.integers(0, len(x), size=(n_boot, len(x)))
        boot.append(x[idx].mean(axis=1))
    stacked = np.stack(boot, axis=1)  # [n_boot, models, F]
    vals = _feature_cvs(stacked, axis=1).mean(axis=1)
    if not np.isfinite(vals).all():   # a non-finite row feature: no CI, as diversity gives no figure
        return (math.nan, math.nan)
    if not len(vals):
        return (math.nan, math.nan)
    a = (1 - level) / 2
    return float(np.quantile(vals, a)), float(np.quantile(vals, 1 - a))


def phase1_diversity(metrics: list[dict], n_boot: int = 2000, seed: int = 0) -> dict:
    """``phase1/diversity`` from three Cognate models' metrics.json, with ``_ci95``, ``_n`` (the fewest rows
    a model was measured on) and ``_test`` when every model has its per-row features (metrics written before
    they were kept give the figure alone: the report then has no CI to decide on). The figure is computed from
    the model-level means, which are the means of the per-row features (tested), with one exception: where a
    whole row halts before the last step inside a batch, the batched pass still runs the halting head on it at
    the later steps, so its FLOPs per token are a little above the per-row mean (0.06831 against 0.06826 MFLOPs
    in tests/test_diversity.py's model with 10 of 12 rows halting at step 1; the default 128-token rows never
    halt whole)."""
    if len(metrics) != 3:
        return {}
    cost = "diversity/inference_mflops_per_token"
    if all(cost in m for m in metrics):
        keys = MEAN_KEYS
    else:  # metrics written before FLOPs were counted: the latency (no CI either)
        keys = (*MEAN_KEYS[:2], "diversity/inference_time_ms")
    out = {"phase1/diversity": diversity(np.array([[float(m[k]) for k in keys] for m in metrics]))}
    rows = [m.get(PER_ROW_KEY) for m in metrics]
    if keys == MEAN_KEYS and all(isinstance(r, dict) and all(r.get(f) for f in FEATURES) for r in rows):
        n = min(len(r[FEATURES[0]]) for r in rows)
        out.update({"phase1/diversity_ci95": list(diversity_ci(rows, n_boot, seed)), "phase1/diversity_n": n,
                    "phase1/diversity_test": f"percentile bootstrap over the held-out rows ({n_boot} resamples; "
                                             + ("the same rows for the 3 models, paired" if same_rows(rows) else
                                                "each model's rows resampled apart")
                                             + "); covers these rows' noise, not training-run variation; "
                                             "CV with the population SD over the 3 models (with the sample SD: "
                                             f"{out['phase1/diversity'] * math.sqrt(1.5):.3f})"})
    return out
