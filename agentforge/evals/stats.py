"""Statistics for comparing systems: paired tests and intervals, and the dashboard's verdict (pass@k, the score
they compare: ``evals.pass_at_k``).

* ``paired_bootstrap`` — the difference of two systems' mean scores on the *same* examples
  (Efron & Tibshirani 1993; Koehn 2004 for NLP): resample example indices with replacement (scipy's
  ``stats.bootstrap``, paired), take the percentile 95% CI of the mean difference, and the two-sided p-value
  that inverts that interval: the smallest alpha at which the percentile (1 - alpha) interval excludes 0,
  2 min(P*(d* <= 0), P*(d* >= 0)) over the resamples (with the +1 correction so it is never exactly 0; by hand:
  a percentile interval excludes 0 when fewer than alpha/2 of the resamples lie on 0's side, up to one resample at
  the boundary, where the +1 correction keeps p the more cautious). The
  p-value of the bootstrap shifted to the null (``|d* - d| >= |d|``), used before 2026-11-28, could contradict
  the interval beside it on skewed differences: an audit found p 0.046 beside CI [-0.088, +0.002] in a Cognate
  run's ablation, and p 0.056 beside a CI excluding 0.
* ``exact_paired_binary`` — for paired 0/1 outcomes, McNemar's exact test: the two-sided binomial
  (sign) test of the discordant pairs, wins ~ Bin(wins + losses, 1/2) (McNemar 1947; the exact form
  in Fay 2010, "Two-sided exact tests and matching confidence intervals for discrete data", R Journal
  2(1)), via ``scipy.stats.binomtest``. Its CI of the difference is conditional on the m discordant pairs
  of n: delta = (m / n)(2 pi - 1) with pi's Clopper-Pearson interval, so it excludes 0 exactly when
  the exact p-value is below 1 - confidence.
* ``sign_flip_test`` — for paired real-valued scores on few pairs, the Fisher-Pitman permutation test (Fisher
  1935; Pitman 1937): under H0 each difference d_i is as likely to have either sign, so the two-sided p-value is the
  share of the 2^n sign patterns s with |sum s_i d_i| >= |sum d_i| — exact, by enumeration, up to n = 16; a fixed
  random sample of 20 000 patterns above that, with the +1 correction. Its CI inverts the test: the shifts delta
  for which the differences d - delta are not rejected (bisection on each side of the mean; unbounded, +-inf,
  when even the most extreme pattern's p, 2^(1-n), is above 1 - confidence, i.e. n <= 5 at 95 %).
* ``paired_test`` — both on the same pairs; when every outcome is 0 or 1 the result's ``p_value`` is the
  exact test's and its ``ci95`` the hull of Tango's and the exact conditional interval (``paired_binary_ci``:
  it excludes 0 only where the exact p is below 0.05; the bootstrap is overconfident with 0/1 outcomes: n = 2 wins
  give it p = 1e-4 and CI [1, 1], the exact test p = 0.5); for other scores on fewer than ``min_n`` pairs, the sign-flip
  test's (six problems all improved by pass@k gains: bootstrap p ~ 0.001, the exact test 2/64 = 0.031);
  otherwise both are the bootstrap's; ``enough`` says n >= ``min_n``.
* ``verdict`` (``evals/dashboard_verdict.py``) — SUCCESS / PARTIAL / FAILURE of the success-metrics dashboard, section 7, and
  INCONCLUSIVE below ``MIN_N`` paired examples or where the accuracies cannot decide (no evidence either way, with
  the reason).
* ``mean_ci`` — the CI of a mean (a model's mean per-problem pass@k, for the verdict's absolute pass@k targets):
  Clopper-Pearson's where every value is 0 or 1, else the percentile bootstrap.
* ``threshold_verdict`` — PASS / FAIL / INCONCLUSIVE of a figure against a threshold from its CI:
  PASS when the whole CI is on the right side, FAIL when the whole CI is on the wrong side.
* ``wilson_ci`` — the Wilson score interval of a proportion k / n (Wilson 1927).
* ``tango_ci`` — Tango's score interval for the difference of two paired proportions (Tango 1998,
  "Equivalence test and confidence interval for the difference in proportions for the paired-sample
  design", Stat. Med. 17:891-908; recommended by Fagerland, Lydersen & Laake 2013). Unlike the
  conditional interval it keeps a width when no pair is discordant: with b = c = 0 its bounds are
  +-z^2 / (n + z^2).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats as sps
from scipy.optimize import brentq


def paired_bootstrap(a: Sequence[float], b: Sequence[float], n_resamples: int = 10_000, seed: int = 0,
                     confidence: float = 0.95) -> dict:
    """Bootstrap of mean(a) - mean(b) over paired examples: delta, CI and two-sided p-value."""
    a, b = _pairs_of(a, b, "paired bootstrap")
    if len(a) < 2:
        raise ValueError("paired bootstrap needs at least 2 examples")
    if (bad := _undefined(a, b)) is not None:
        return {**bad, "n_resamples": int(n_resamples)}
    d = a - b
    delta = float(d.mean())
    if np.all(d == d[0]):  # every resample has the same mean: the distribution is a point
        boot = np.full(n_resamples, delta)
        lo = hi = delta
    else:
        res = sps.bootstrap((d,), np.mean, n_resamples=n_resamples, confidence_level=confidence,
                            method="percentile", vectorized=True, rng=np.random.default_rng(seed))
        boot = np.asarray(res.bootstrap_distribution)
        lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    side = min(int(np.sum(boot <= 0)), int(np.sum(boot >= 0)))   # resamples on 0's side of the interval
    p = 2 * (side + 1) / (len(boot) + 1)
    return {"mean_a": float(a.mean()), "mean_b": float(b.mean()), "delta": delta, "ci95": [lo, hi],
            "p_value": min(1.0, p), "n": len(a), "n_resamples": int(n_resamples)}


MIN_N = 30  # paired examples below which no verdict is given (bootstrap / normal theory unreliable)


def _pairs_of(a, b, what: str) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"{what} needs two equal-length 1-D score lists, got {a.shape} and {b.shape}")
    return a, b


def _undefined(a: np.ndarray, b: np.ndarray) -> dict | None:
    """The result for scores with a NaN or infinity (a diverged model's loss): delta, CI and p all NaN, so no
    comparison claims significance (the bootstrap said p = 1e-4 and the sign-flip test p = 0 on such input)."""
    if np.all(np.isfinite(a)) and np.all(np.isfinite(b)):
        return None
    nan = float("nan")
    return {"mean_a": nan, "mean_b": nan, "delta": nan, "ci95": [nan, nan], "p_value": nan, "n": len(a),
            "non_finite": int(np.sum(~np.isfinite(a)) + np.sum(~np.isfinite(b)))}


def is_binary(x) -> bool:
    return bool(np.all(np.isin(np.asarray(x, dtype=float), (0.0, 1.0))))


def exact_paired_binary(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> dict:
    """McNemar's exact test of paired 0/1 outcomes a vs b and the conditional exact CI of mean(a) - mean(b)."""
    a, b = _pairs_of(a, b, "the exact paired test")
    if not (is_binary(a) and is_binary(b)):
        raise ValueError("the exact paired test needs 0/1 outcomes")
    n, wins, losses = len(a), int(np.sum((a == 1) & (b == 0))), int(np.sum((a == 0) & (b == 1)))
    m = wins + losses
    if n == 0:
        raise ValueError("the exact paired test needs at least 1 pair")
    p = float(sps.binomtest(wins, m, 0.5).pvalue) if m else 1.0
    return {"test": "mcnemar_exact", "delta": (wins - losses) / n, "wins": wins, "losses": losses,
            "ties": n - m, "p_value": min(1.0, p), "ci95": conditional_ci(wins, losses, n, confidence), "n": n}


def conditional_ci(wins: int, losses: int, n: int, confidence: float = 0.95) -> list[float]:
    """The exact conditional CI of (wins - losses) / n given the m = wins + losses discordant pairs of n:
    (m / n)(2 pi - 1) over pi's Clopper-Pearson interval; [0, 0] when m = 0."""
    m = wins + losses
    if m == 0:
        return [0.0, 0.0]
    ci = sps.binomtest(wins, m, 0.5).proportion_ci(confidence, method="exact")
    return [float(m / n * (2 * ci.low - 1)), float(m / n * (2 * ci.high - 1))]


def paired_binary_ci(wins: int, losses: int, n: int, confidence: float = 0.95) -> list[float]:
    """CI of a paired 0/1 difference (wins - losses) / n: the hull of Tango's score interval and the exact
    conditional interval. Tango's alone is the asymptotic McNemar test inverted, so it could exclude 0 where the
    exact test does not (4 wins, 0 losses of 40 pairs: Tango [0.0036, 0.2305], exact p = 0.125); the conditional
    interval alone ignores the discordant share's own variation (its upper end is the estimate when every
    discordant pair is a win) and has no width when none is discordant. The hull excludes 0 only when the exact
    p-value is below 1 - confidence (tested on every table of up to 60 pairs)."""
    t, c = tango_ci(wins, losses, n, confidence), conditional_ci(wins, losses, n, confidence)
    return [min(t[0], c[0]), max(t[1], c[1])]


def paired_test(a: Sequence[float], b: Sequence[float], n_resamples: int = 10_000, seed: int = 0,
                confidence: float = 0.95, min_n: int = MIN_N, outcomes: bool = True) -> dict:
    """paired_bootstrap's fields, plus the exact test for 0/1 outcomes or the sign-flip test for other scores on
    fewer than ``min_n`` pairs, and which of them decides. ``outcomes=False``: the scores are measurements that may
    happen to be 0 or 1 (a divergence of exactly 0), never 0/1 outcomes, so McNemar's branch is not taken. Fewer than 2 pairs test nothing: delta, CI and p are NaN
    (with the means where there is one pair) and ``enough`` is False, so no verdict rests on them."""
    xa, xb = _pairs_of(a, b, "paired test")
    if len(xa) < 2:
        nan = float("nan")
        mean_a, mean_b = (float(x.mean()) if len(x) else nan for x in (xa, xb))
        return {"mean_a": mean_a, "mean_b": mean_b, "delta": nan, "ci95": [nan, nan], "p_value": nan, "n": len(xa),
                "n_resamples": 0, "test": "none (fewer than 2 pairs)", "min_n": int(min_n), "enough": False}
    out = paired_bootstrap(a, b, n_resamples, seed, confidence)
    out.update(test="bootstrap", bootstrap={"p_value": out["p_value"], "ci95": out["ci95"]})
    if "non_finite" in out:
        out.update(test="undefined (non-finite scores)")
    elif outcomes and is_binary(a) and is_binary(b):
        ex = exact_paired_binary(a, b, confidence)
        out.update(test="mcnemar_exact + hull_ci", p_value=ex["p_value"],
                   ci95=paired_binary_ci(ex["wins"], ex["losses"], ex["n"], confidence),
                   exact={k: ex[k] for k in ("wins", "losses", "ties", "p_value", "ci95")})
    elif out["n"] < min_n:
        sf = sign_flip_test(a, b, confidence, seed=seed)
        out.update(test=sf["test"], p_value=sf["p_value"], ci95=sf["ci95"])
    out.update(min_n=int(min_n), enough=out["n"] >= min_n)
    return out


EXACT_SIGN_FLIP_MAX_N = 16          # 2^16 patterns enumerated; above, a fixed random sample of them
SIGN_FLIP_SAMPLES = 20_000


def sign_flip_test(a: Sequence[float], b: Sequence[float], confidence: float = 0.95, seed: int = 0) -> dict:
    """The Fisher-Pitman paired permutation test of mean(a) - mean(b) and its test-inversion CI (module docstring)."""
    a, b = _pairs_of(a, b, "the sign-flip test")
    d, n = a - b, len(a)
    if n == 0:
        raise ValueError("the sign-flip test needs at least 1 pair")
    if (bad := _undefined(a, b)) is not None:
        return {"test": "sign_flip_exact", "delta": bad["delta"], "p_value": bad["p_value"], "ci95": bad["ci95"],
                "n": n, "patterns": 0}
    if n <= EXACT_SIGN_FLIP_MAX_N:
        signs = (((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1) * 2 - 1).astype(float)
        exact = True
    else:
        signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=(SIGN_FLIP_SAMPLES, n))
        exact = False

    def p_at(shift: float) -> float:
        x = d - shift
        hits = int(np.sum(np.abs(signs @ x) >= abs(x.sum()) - 1e-9 * max(1.0, np.abs(x).sum())))
        return hits / len(signs) if exact else (hits + 1) / (len(signs) + 1)

    alpha, mean = 1 - confidence, float(d.mean())
    span = float(d.max() - d.min())
    lo_end, hi_end = float(d.min()) - span, float(d.max()) + span   # beyond min/max every d - shift has one sign

    def bound(far: float) -> float:
        if p_at(far) > alpha:
            return math.copysign(math.inf, far - mean) if far != mean else mean
        near = mean                                      # p(near) > alpha >= p(far): bisect the crossing
        for _ in range(60):
            mid = (near + far) / 2
            near, far = (mid, far) if p_at(mid) > alpha else (near, mid)
        return near

    if span > 0:
        ci = [bound(lo_end), bound(hi_end)]
    else:   # every d equal: any other shift leaves one sign, p = 2^(1-n); rejected only when that is <= alpha
        ci = [mean, mean] if (2.0 ** (1 - n) if exact else 1 / (len(signs) + 1)) <= alpha else [-math.inf, math.inf]
    return {"test": "sign_flip_exact" if exact else "sign_flip_monte_carlo", "delta": mean, "p_value": p_at(0.0),
            "ci95": ci, "n": n, "patterns": len(signs)}


def wilson_ci(k: int, n: int, confidence: float = 0.95) -> list[float]:
    """Wilson score interval of the proportion k / n (via scipy's binomtest)."""
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"a proportion needs 0 <= k <= n and n >= 1, got k={k}, n={n}")
    ci = sps.binomtest(int(k), int(n)).proportion_ci(confidence, method="wilson")
    return [float(ci.low), float(ci.high)]


def exact_proportion_ci(k: int, n: int, confidence: float = 0.95) -> list[float]:
    """Clopper-Pearson (1934) interval of the proportion k / n, via scipy's binomtest ("exact"): the binomial
    test inverted, so its coverage is at least ``confidence`` for every true proportion and n — the CI the accuracies
    are reported with. Wilson's score interval is narrower but not exact: its worst-case coverage at 95 % nominal is
    0.83 at n = 4 and 0.84 at n = 16, the sizes of the held-out GSM8K sets here. Hand case: k = 0 gives
    [0, 1 - (alpha / 2)^(1 / n)]."""
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"a proportion needs 0 <= k <= n and n >= 1, got k={k}, n={n}")
    ci = sps.binomtest(int(k), int(n)).proportion_ci(confidence, method="exact")
    return [float(ci.low), float(ci.high)]


def tango_ci(b: int, c: int, n: int, confidence: float = 0.95) -> list[float]:
    """CI of p1 - p2 = (b - c) / n for n pairs, b = (1, 0) pairs, c = (0, 1) pairs: every delta whose
    score statistic Z(delta) = (b - c - n delta) / sqrt(n (2 q + delta (1 - delta))) has |Z| <= z, where
    q is the MLE of the (0, 1) probability under p10 - p01 = delta, the root of
    2n q^2 + (-b - c + (2n - b + c) delta) q - c delta (1 - delta) = 0 (Tango 1998)."""
    if n <= 0 or b < 0 or c < 0 or b + c > n:
        raise ValueError(f"Tango's interval needs 0 <= b + c <= n and n >= 1, got b={b}, c={c}, n={n}")
    z = float(sps.norm.ppf(0.5 + confidence / 2))

    def score(d: float) -> float:
        aa, bb, cc = 2 * n, -b - c + (2 * n - b + c) * d, -c * d * (1 - d)
        q = (-bb + math.sqrt(max(bb * bb - 4 * aa * cc, 0.0))) / (2 * aa)
        num, var = b - c - n * d, n * (2 * q + d * (1 - d))
        if abs(num) < 1e-12:
            return 0.0
        return num / math.sqrt(var) if var > 0 else math.copysign(math.inf, num)

    est, eps = (b - c) / n, 1e-12
    lo = -1.0 if score(-1 + eps) <= z else brentq(lambda d: score(d) - z, -1 + eps, est)
    hi = 1.0 if score(1 - eps) >= -z else brentq(lambda d: score(d) + z, est, 1 - eps)
    return [float(lo), float(hi)]


def paired_ratio_ci(both: int, only_first: int, only_second: int, confidence: float = 0.95) -> list[float]:
    """CI of the ratio p1 / p2 of two paired proportions (the first and the second measurement's rate of 1s) from
    the counts of (1, 1), (1, 0) and (0, 1) pairs; (0, 0) pairs do not enter. The Bonett–Price hybrid Wilson
    score interval (Bonett & Price 2006, Statistics in Medicine 25:3039-3047; recommended for the paired ratio by
    Fagerland, Lydersen & Laake 2014, Statistics in Medicine 33:2850-2875): with n* = both + only_first +
    only_second, x1 = both + only_first and x2 = both + only_second, each of x1 / n* and x2 / n* gets a Wilson
    interval at an adjusted z' = z A / (B + C), A = sqrt((only_first + only_second + 2) / ((x1 + 1)(x2 + 1))),
    B = sqrt((1 - (x1 + 1) / (n* + 2)) / (x1 + 1)), C likewise for x2; the ratio's limits are l1 / u2 and u1 / l2.
    [0, inf] when n* = 0."""
    if min(both, only_first, only_second) < 0:
        raise ValueError(f"pair counts must be >= 0, got {both}, {only_first}, {only_second}")
    nstar, x1, x2 = both + only_first + only_second, both + only_first, both + only_second
    if nstar == 0:
        return [0.0, math.inf]
    z = float(sps.norm.ppf(0.5 + confidence / 2))
    a = math.sqrt((only_first + only_second + 2) / ((x1 + 1) * (x2 + 1)))
    b, c = (math.sqrt((1 - (x + 1) / (nstar + 2)) / (x + 1)) for x in (x1, x2))
    zz = z * a / (b + c)

    def wilson(x: int) -> tuple[float, float]:
        half = zz * math.sqrt(zz * zz + 4 * x * (1 - x / nstar))
        return ((2 * x + zz * zz - half) / (2 * (nstar + zz * zz)), (2 * x + zz * zz + half) / (2 * (nstar + zz * zz)))

    (l1, u1), (l2, u2) = wilson(x1), wilson(x2)
    return [l1 / u2, u1 / l2 if l2 > 0 else math.inf]


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979, "A simple sequentially rejective multiple test procedure",
    Scand. J. Statist. 6): with the m p-values sorted, p_(1) <= ... <= p_(m), the adjusted p_(i) is
    max_{j <= i} min(1, (m - j + 1) p_(j)); rejecting where it is below alpha keeps the chance of any false claim
    among the m tests at most alpha, whatever their dependence. Returned in the input's order."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    out, running = [0.0] * len(p_values), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * float(p_values[i])))
        out[i] = running
    return out


def mean_ci(values: Sequence[float], n_resamples: int = 10_000, seed: int = 0,
            confidence: float = 0.95) -> list[float] | None:
    """The CI of the mean of ``values``: the CI of a model's mean per-problem pass@k over problems, on which the
    verdict judges the absolute pass@k targets. Where every value is 0 or 1 (greedy decoding, or n = 1 sample) the
    mean is a proportion and the CI is Clopper-Pearson's (``exact_proportion_ci``), as for every accuracy here: the
    percentile bootstrap is not exact at these sizes and collapses to a point when every problem scores alike (an
    audit: 4 / 30 against a 0.30 target, bootstrap [0.033, 0.267] read "missed", the exact [0.038, 0.307] straddles
    it; 30 / 30 gave [1, 1]). Otherwise the percentile bootstrap (scipy's ``stats.bootstrap``, a seeded generator);
    a constant sample then gives [x, x]. Fewer than 2 values, or a non-finite one, give None (no CI)."""
    x = np.asarray(values, dtype=float)
    if x.ndim != 1 or len(x) < 2 or not np.all(np.isfinite(x)):
        return None
    if np.all((x == 0) | (x == 1)):
        return exact_proportion_ci(int(x.sum()), len(x), confidence)
    if np.all(x == x[0]):   # every resample has the same mean (scipy would warn of a degenerate distribution)
        return [float(x[0]), float(x[0])]
    res = sps.bootstrap((x,), np.mean, n_resamples=n_resamples, confidence_level=confidence, method="percentile",
                        vectorized=True, rng=np.random.default_rng(seed))
    return [float(res.confidence_interval.low), float(res.confidence_interval.high)]


def threshold_verdict(ci: Sequence[float] | None, op: str, threshold: float, n: int | None = None,
                      min_n: int = MIN_N) -> tuple[str, str]:
    """(PASS / FAIL / INCONCLUSIVE, why) for "figure ``op`` threshold" given the figure's CI."""
    if n is not None and n < min_n:
        return "INCONCLUSIVE", f"n = {n} < {min_n}: too few to decide"
    if ci is None or any(x is None or math.isnan(float(x)) for x in ci):
        return "INCONCLUSIVE", "no CI"
    lo, hi = float(ci[0]), float(ci[1])
    holds = {">": lambda x: x > threshold, ">=": lambda x: x >= threshold,
             "<": lambda x: x < threshold, "<=": lambda x: x <= threshold}[op]
    if holds(lo) and holds(hi):
        return "PASS", f"the whole CI [{lo:.4g}, {hi:.4g}] is {op} {threshold:g}"
    if not holds(lo) and not holds(hi):
        return "FAIL", f"the whole CI [{lo:.4g}, {hi:.4g}] misses {op} {threshold:g}"
    return "INCONCLUSIVE", f"the CI [{lo:.4g}, {hi:.4g}] straddles {threshold:g}"


# the dashboard verdict lives in evals/dashboard_verdict.py; re-exported here, where its callers import it from
from agentforge.evals.dashboard_verdict import _ge, paired_at_k, verdict  # noqa: E402,F401
