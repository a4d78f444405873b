"""Fitting the scaling law loss = intercept + slope · ln(params) by least squares.

Kaplan et al. 2020 ("Scaling Laws for Neural Language Models", arXiv:2001.08361) found loss to follow a
power law in parameters, L(N) = (N_c / N)^α; over the narrow range a small evaluator covers, its
log-linear form L ≈ a + b·ln N is what the seed document fits. A variant that scales better has a more
negative slope, so the fitness is −slope. R² says how well the line describes the points (it is 1 for
two sizes by construction, so use three or more to learn anything from it).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class ScalingFit:
    slope: float       # b: change of loss per unit of ln(params); negative when bigger is better
    intercept: float   # a: the line's loss at ln(params) = 0
    r2: float          # coefficient of determination of the fit
    fitness: float     # −slope

    def predict(self, params) -> np.ndarray:
        return self.intercept + self.slope * np.log(np.asarray(params, dtype=float))

    def to_dict(self) -> dict:
        return asdict(self)


def fit_scaling_law(params, losses) -> ScalingFit:
    """Least-squares line through (ln params, loss); needs ≥ 2 distinct sizes and finite losses."""
    n = np.asarray(params, dtype=float)
    y = np.asarray(losses, dtype=float)
    if n.shape != y.shape or n.ndim != 1:
        raise ValueError(f"params and losses must be equal-length lists, got {n.shape} and {y.shape}")
    if len(np.unique(n)) < 2:
        raise ValueError("a scaling fit needs at least two distinct parameter counts")
    if not (np.all(np.isfinite(y)) and np.all(n > 0)):
        # no figures in the message: a failed fit's error reaches the search (OpenEvolve's prompt), and on the test
        # set these are the test losses (an audit); which condition failed is enough to act on
        bad = [w for w, ok in (("a loss is not finite", np.all(np.isfinite(y))), ("a param count is not positive",
                                                                                  np.all(n > 0))) if not ok]
        raise ValueError(f"losses must be finite and params positive: {' and '.join(bad)}")
    res = stats.linregress(np.log(n), y)
    r2 = float(res.rvalue) ** 2 if math.isfinite(res.rvalue) else 0.0
    if np.ptp(y) == 0:  # a flat line fits flat points exactly (linregress reports r = 0 there)
        r2 = 1.0
    return ScalingFit(slope=float(res.slope), intercept=float(res.intercept), r2=r2,
                      fitness=0.0 - float(res.slope))   # 0.0 - x: a flat curve gives 0.0, not -0.0


def guarded_fitness(fit: ScalingFit, losses: dict[str, float], largest: str, reference: dict | None,
                    tolerance: float) -> dict:
    """The score OpenEvolve maximizes: the seed's slope, made impossible to game by sabotage.

    With ``reference`` = the baseline's {"fitness", "losses": {size: loss}} under the same settings:
      raw    = −slope + (baseline loss − candidate loss) at the largest size
      excess = Σ over sizes of max(0, loss − baseline loss − tolerance)
      score  = raw                          if excess == 0
             = min(raw, baseline fitness) − excess   otherwise
    so a candidate that makes any size worse than the baseline by more than ``tolerance`` nats scores
    below the baseline (whose own score is its fitness), however steep its slope; one that improves the
    largest size gains what it gains there. Without a reference the score is −slope alone.
    """
    if reference is None:
        return {"combined_score": fit.fitness, "guard_excess": 0.0, "largest_gain": 0.0}
    ref = reference["losses"]
    gain = ref[largest] - losses[largest]
    excess = sum(max(0.0, losses[k] - ref[k] - tolerance) for k in losses)
    raw = fit.fitness + gain
    score = raw if excess == 0 else min(raw, float(reference["fitness"])) - excess
    return {"combined_score": score, "guard_excess": excess, "largest_gain": gain}
