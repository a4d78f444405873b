"""pass@k against hand-computed values, the paired bootstrap, and the dashboard's verdict."""
from __future__ import annotations

import math

import numpy as np
import pytest

from agentforge.evals.pass_at_k import mean_pass_at_k, pass_at_k
from agentforge.evals.stats import (
    MIN_N,
    exact_paired_binary,
    exact_proportion_ci,
    paired_binary_ci,
    paired_bootstrap,
    paired_test,
    tango_ci,
    threshold_verdict,
    verdict,
    wilson_ci,
)


@pytest.mark.parametrize("n,c,k,expected", [
    (5, 2, 1, 0.4),             # c/n
    (5, 2, 2, 1 - 3 / 10),      # 1 - C(3,2)/C(5,2)
    (4, 1, 3, 1 - 1 / 4),       # 1 - C(3,3)/C(4,3)
    (10, 3, 5, 1 - 21 / 252),   # 1 - C(7,5)/C(10,5)
    (3, 0, 3, 0.0),             # n = k, nothing correct
    (3, 1, 3, 1.0),             # n = k, one correct: every k-subset holds it
    (10, 0, 10, 0.0),
    (10, 0, 1, 0.0),            # c = 0
    (7, 7, 2, 1.0),
])
def test_pass_at_k_hand_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_matches_the_combinatorial_formula():
    for n in range(1, 12):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), abs=1e-12)


def test_pass_at_k_rejects_impossible_inputs():
    """k > n, c > n and k = 0 are ValueErrors (k = 0 would read 1 - prod(1 - 0/i) = 0, a pass@0 of nothing); the mean
    over no problems is NaN, not a 0 % that reads like a measured failure."""
    with pytest.raises(ValueError):
        pass_at_k(5, 2, 6)
    with pytest.raises(ValueError):
        pass_at_k(5, 6, 1)
    with pytest.raises(ValueError, match="k >= 1"):
        pass_at_k(5, 2, 0)
    assert mean_pass_at_k(4, [0, 4, 1, 2], 1) == pytest.approx((0 + 1 + 0.25 + 0.5) / 4)
    assert math.isnan(mean_pass_at_k(5, [], 1))


def test_bootstrap_identical_systems():
    a = np.random.default_rng(1).integers(0, 2, 60)
    r = paired_bootstrap(a, a.copy(), n_resamples=10_000)
    assert r["delta"] == 0 and r["ci95"] == [0.0, 0.0] and r["p_value"] == 1.0


def test_bootstrap_equal_accuracy_different_examples():
    a = np.array([1, 0] * 30)
    b = np.array([0, 1] * 30)
    r = paired_bootstrap(a, b, n_resamples=10_000, seed=3)
    assert r["delta"] == 0
    assert r["ci95"][0] < 0 < r["ci95"][1]
    assert r["p_value"] > 0.5


def test_bootstrap_clearly_different_systems():
    a = np.array([1] * 40 + [0] * 10)
    b = np.array([1] * 10 + [0] * 40)
    r = paired_bootstrap(a, b, n_resamples=10_000, seed=0)
    assert r["delta"] == pytest.approx(0.6)
    assert r["p_value"] < 0.05 and r["ci95"][0] > 0
    # percentile CI close to the normal approximation delta +- 1.96 sd/sqrt(n)
    d = a - b
    half = 1.96 * d.std() / math.sqrt(len(d))
    assert r["ci95"][0] == pytest.approx(0.6 - half, abs=0.04)
    assert r["ci95"][1] == pytest.approx(0.6 + half, abs=0.04)


def test_bootstrap_needs_paired_lists():
    with pytest.raises(ValueError):
        paired_bootstrap([1, 0, 1], [1, 0])


TH = {"pass_at": {1: 0.30, 10: 0.45}, "min_delta_pass1": 0.04, "alpha": 0.05, "failure_p": 0.1}


def test_verdict_success_partial_failure():
    """Every target judged on its CI (``dashboard_verdict.verdict``): met when the whole CI clears it."""
    ok = {"pass_at": {1: 0.35, 10: 0.5}, "pass_at_ci": {1: [0.31, 0.39], 10: [0.46, 0.54]}, "delta_pass1": 0.06,
          "thresholds": TH, "n": 100}
    assert verdict(**ok, ci95=[0.045, 0.075], p_value=0.001, efficiency_ok=True) == ("SUCCESS", [])
    v, reasons = verdict(**ok, ci95=[-0.01, 0.13], p_value=0.07, efficiency_ok=True)
    assert v == "PARTIAL" and any("p-value" in r for r in reasons)   # efficiency met, the Δ not established
    assert "delta pass@1 0.06 not established: its CI [-0.01, 0.13] straddles the target 0.04" in reasons
    assert verdict(**ok, ci95=[-0.05, 0.17], p_value=0.2, efficiency_ok=True)[0] == "FAILURE"       # p >= 0.1
    low = {"pass_at": {1: 0.1, 10: 0.2}, "pass_at_ci": {1: [0.05, 0.15], 10: [0.12, 0.28]}, "delta_pass1": 0.06,
           "thresholds": TH, "n": 100}
    assert verdict(**low, ci95=[0.045, 0.075], p_value=0.001, efficiency_ok=None)[0] == "FAILURE"
    # a target missed by its whole CI is FAILURE whatever the evidence (it read PARTIAL with p 0.06)
    v, reasons = verdict(**low, ci95=[-0.01, 0.13], p_value=0.06, efficiency_ok=True)
    assert v == "FAILURE" and "pass@1 0.1 < target 0.3 (its whole CI [0.05, 0.15] is below it)" in reasons
    # an efficiency target missed: FAILURE, decisive evidence or not (the weak one read PARTIAL)
    assert verdict(**ok, ci95=[0.045, 0.075], p_value=0.001, efficiency_ok=False)[0] == "FAILURE"
    assert verdict(**ok, ci95=[-0.01, 0.13], p_value=0.06, efficiency_ok=False)[0] == "FAILURE"
    assert verdict(**ok, ci95=[0.045, 0.075], p_value=0.001, efficiency_ok=True, unstable=True)[0] == "FAILURE"
    missing = {**ok, "pass_at": {1: 0.35, 10: None}}
    v, reasons = verdict(**missing, ci95=[0.045, 0.075], p_value=0.001, efficiency_ok=True)
    assert v == "PARTIAL" and any("pass@10 not measured" in r for r in reasons)
    # pass@10 not measured is not pass@10 below target: no efficiency group met -> INCONCLUSIVE, not FAILURE
    v, reasons = verdict(**missing, ci95=[0.429, 0.737], p_value=1e-7, efficiency_ok=None)
    assert v == "INCONCLUSIVE" and any("pass@10 not measured" in r and "not established" in r for r in reasons)
    assert verdict(**missing, ci95=[0.045, 0.075], p_value=0.5, efficiency_ok=None)[0] == "FAILURE"   # p >= 0.1
    both = {**low, "pass_at": {1: 0.1, 10: None}}                                                   # one missed
    assert verdict(**both, ci95=[0.045, 0.075], p_value=0.001, efficiency_ok=None)[0] == "FAILURE"


def test_a_figure_exactly_on_its_target_meets_it():
    """30 problems, 10 samples each, 90 right: pass@1 is 0.30 exactly but sums to 0.29999999999999993; the verdict
    read 'pass@1 0.300 < target 0.3'. The same rounding on a CI's lower bound, or on a point estimate (no CI)."""
    cs = [1, 0, 3, 1, 3, 6, 3, 5, 4, 7, 0, 3, 1, 0, 3, 6, 7, 8, 4, 1, 2, 6, 4, 0, 2, 1, 6, 0, 1, 2]
    assert sum(cs) == 90
    p1 = mean_pass_at_k(10, cs, 1)
    assert p1 < 0.3 and p1 == pytest.approx(0.3)   # the float rounding this guards against
    th = {"pass_at": {1: 0.3}, "min_delta_pass1": 0.04}
    d = 0.04 - 6e-18
    assert verdict(pass_at={1: 0.35}, pass_at_ci={1: [p1, 0.4]}, delta_pass1=0.05, ci95=[d, 0.1], p_value=0.01,
                   thresholds=th, efficiency_ok=True, n=100) == ("SUCCESS", [])
    assert verdict(pass_at={1: p1}, delta_pass1=d, ci95=[d, 0.1], p_value=0.01, thresholds=th,   # no pass@k CI
                   efficiency_ok=True, n=100) == ("SUCCESS", [])
    v, reasons = verdict(pass_at={1: 0.2999}, delta_pass1=0.05, ci95=[0.01, 0.1], p_value=0.01,
                         thresholds={"pass_at": {1: 0.3}}, efficiency_ok=None, n=100)
    assert v == "FAILURE" and "pass@1 0.2999 < target 0.3 (no CI: point estimate)" in reasons   # a real margin


def test_no_pass_at_1_comparison_is_inconclusive_not_failure():
    """phase=compare of stages with only ARC/PIQA results: no p-value and no Δ for pass@1 -> nothing was tested."""
    v, reasons = verdict(pass_at={1: None}, delta_pass1=None, ci95=None, p_value=None,
                         thresholds={"pass_at": {1: 0.3}}, efficiency_ok=None)
    assert v == "INCONCLUSIVE" and any("pass@1 not measured (no per-problem results)" in r for r in reasons)
    assert verdict(pass_at={1: None}, delta_pass1=None, ci95=None, p_value=None, thresholds={"pass_at": {1: 0.3}},
                   efficiency_ok=None, unstable=True)[0] == "FAILURE"


# -- small samples: the exact test, the minimum n, the threshold verdict ----------------------------------
def test_two_wins_are_inconclusive_and_the_sign_test_gives_one_half():
    r = paired_test([1, 1], [0, 0], n_resamples=2000)
    assert r["bootstrap"]["p_value"] < 0.01 and r["bootstrap"]["ci95"] == [1.0, 1.0]  # the overconfident one
    assert r["test"] == "mcnemar_exact + hull_ci" and r["p_value"] == pytest.approx(0.5) and not r["enough"]
    assert r["ci95"] == paired_binary_ci(2, 0, 2) and r["ci95"][0] < 0 < r["ci95"][1]
    v, reasons = verdict(pass_at={1: 1.0}, delta_pass1=r["delta"], ci95=r["ci95"], p_value=r["p_value"],
                         thresholds={"pass_at": {1: 0.3}}, efficiency_ok=None, n=r["n"])
    assert v == "INCONCLUSIVE" and f"at least {MIN_N}" in reasons[0]


def test_few_examples_still_fail_on_what_does_not_rest_on_them():
    """Section 7's FAILURE rows "training unstable" and a missed efficiency target do not depend on the n examples:
    6 problems with every efficiency target missed by its whole CI read INCONCLUSIVE, now FAILURE."""
    base = dict(pass_at={1: 1.0}, delta_pass1=0.5, ci95=[-0.2, 1.0], p_value=0.5, thresholds={"pass_at": {1: 0.3}},
                n=6, size_key="phase.num_problems")
    v, reasons = verdict(**base, efficiency_ok=False)
    assert v == "FAILURE" and "efficiency targets not met" in reasons[0] and "phase.num_problems" in reasons[-1]
    v, reasons = verdict(**base, efficiency_ok=True, unstable=True)
    assert v == "FAILURE" and "unstable" in reasons[0]
    for unsettled in (True, None, "inconclusive"):   # met, none configured, or its CI straddles: n decides
        assert verdict(**base, efficiency_ok=unsettled)[0] == "INCONCLUSIVE"


def test_three_wins_of_four_is_p_quarter_and_not_success():
    r = paired_test([1, 1, 1, 0], [0, 0, 0, 0], n_resamples=2000)
    assert r["p_value"] == pytest.approx(0.25)                                    # 2 * (1/2)^3
    assert r["exact"]["wins"] == 3 and r["exact"]["ties"] == 1
    th = {"pass_at": {1: 0.3}, "min_n": 1}                                      # even with no minimum n
    v, _ = verdict(pass_at={1: 0.75}, delta_pass1=r["delta"], ci95=r["ci95"], p_value=r["p_value"],
                   thresholds=th, efficiency_ok=None, n=r["n"])
    assert v != "SUCCESS"


@pytest.mark.parametrize("wins,losses,ties,p", [(8, 0, 0, 2 / 256), (6, 1, 3, 2 * 8 / 128), (0, 0, 5, 1.0),
                                                (1, 4, 0, 2 * 6 / 32)])
def test_exact_test_hand_values(wins, losses, ties, p):
    a = [1] * wins + [0] * losses + [1] * ties
    b = [0] * wins + [1] * losses + [1] * ties
    r = exact_paired_binary(a, b)
    assert (r["wins"], r["losses"], r["ties"]) == (wins, losses, ties)
    assert r["p_value"] == pytest.approx(min(1.0, p)) and r["delta"] == pytest.approx((wins - losses) / len(a))


def test_exact_ci_excludes_zero_exactly_when_p_is_below_alpha():
    for n in (10, 30):
        for wins in range(n + 1):
            for losses in range(n + 1 - wins):
                a = [1] * wins + [0] * losses + [0] * (n - wins - losses)
                b = [0] * wins + [1] * losses + [0] * (n - wins - losses)
                r = exact_paired_binary(a, b)
                excludes = r["ci95"][0] > 0 or r["ci95"][1] < 0
                assert excludes == (r["p_value"] < 0.05), (n, wins, losses, r)
                assert r["ci95"][0] <= r["delta"] <= r["ci95"][1]


def _hull_agrees_with_the_exact_p(ns) -> None:
    for n in ns:
        for wins in range(n + 1):
            for losses in range(n + 1 - wins):
                p = exact_paired_binary([1] * wins + [0] * (n - wins), [0] * wins + [1] * losses + [0] * (n - wins - losses))["p_value"]
                lo, hi = paired_binary_ci(wins, losses, n)
                t = tango_ci(wins, losses, n)
                assert ((lo > 0 or hi < 0) == (p < 0.05)) and lo <= t[0] and hi >= t[1], (n, wins, losses)


def test_the_paired_binary_ci_agrees_with_the_exact_p_value():
    """4 wins, 0 losses of 40 pairs: the exact p is 2 * 0.5^4 = 0.125, and Tango's interval alone, [0.0036, 0.2305],
    excluded 0. The hull with the exact conditional interval does not; on every table of 10 and of 40 pairs (every
    n up to 60 in the slow tier) the hull excludes 0 exactly when the exact p is below 0.05, and it always contains
    Tango's interval."""
    a, b = [1] * 4 + [0] * 36, [0] * 40
    r = paired_test(a, b)
    assert r["p_value"] == pytest.approx(0.125) and tango_ci(4, 0, 40)[0] > 0 and r["ci95"][0] < 0 < r["ci95"][1]
    _hull_agrees_with_the_exact_p([10, 40])


@pytest.mark.slow
def test_the_paired_binary_ci_agrees_with_the_exact_p_value_on_every_table_up_to_60_pairs():
    _hull_agrees_with_the_exact_p(range(1, 61))


def test_non_finite_scores_claim_nothing():
    """A NaN loss (a diverged merge) gave the bootstrap p = 1e-4 and the sign-flip test p = 0."""
    from agentforge.evals.stats import sign_flip_test

    for r in (paired_test([1, float("nan"), 0.5, 0.2], [0] * 4), paired_bootstrap([1, float("inf"), 3], [0, 0, 0]),
              sign_flip_test([1, float("nan"), 0.5], [0, 0, 0])):
        assert math.isnan(r["p_value"]) and all(math.isnan(x) for x in r["ci95"])
    assert threshold_verdict(paired_test([1, float("nan")] * 20, [0] * 40)["ci95"], ">", 0.0)[0] == "INCONCLUSIVE"
    v, reasons = verdict(pass_at={1: 0.5}, delta_pass1=0.1, ci95=[float("nan")] * 2, p_value=float("nan"),
                         thresholds={"pass_at": {1: 0.3}}, efficiency_ok=True, n=40)
    assert v == "FAILURE" and "p-value None" in " ".join(reasons)   # a NaN p is no evidence, as a missing one


def test_non_binary_scores_use_the_bootstrap():
    a = np.linspace(0, 1, 40)
    r = paired_test(a, a * 0.5, n_resamples=2000)
    assert r["test"] == "bootstrap" and "exact" not in r and r["enough"]
    with pytest.raises(ValueError, match="0/1"):
        exact_paired_binary(a, a)


def test_wilson_interval_hand_value():
    lo, hi = wilson_ci(5, 10)      # centre (5 + 1.96^2/2) / (10 + 1.96^2) = 0.5, half-width 0.2634
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    assert wilson_ci(0, 20)[0] == 0.0 and wilson_ci(0, 20)[1] == pytest.approx(0.1611, abs=1e-4)
    with pytest.raises(ValueError):
        wilson_ci(3, 2)


def test_threshold_verdict():
    assert threshold_verdict([0.31, 0.5], ">", 0.3, n=100)[0] == "PASS"
    assert threshold_verdict([0.1, 0.29], ">", 0.3, n=100)[0] == "FAIL"
    assert threshold_verdict([0.2, 0.4], ">", 0.3, n=100)[0] == "INCONCLUSIVE"
    assert threshold_verdict([2.0, 8.0], "<", 10.0)[0] == "PASS"
    assert threshold_verdict([0.31, 0.5], ">", 0.3, n=5) == ("INCONCLUSIVE", f"n = 5 < {MIN_N}: too few to decide")
    assert threshold_verdict([float("nan"), 1.0], ">", 0.3)[0] == "INCONCLUSIVE"
    nan32 = np.float32("nan")   # a numpy float32 is not a Python float: it read as a whole CI below 0.3 (FAIL)
    assert threshold_verdict([nan32, nan32], ">", 0.3)[0] == "INCONCLUSIVE"


def test_tango_interval():
    z2 = 1.959964 ** 2
    lo, hi = tango_ci(0, 0, 30)                       # b = c = 0: +-z^2 / (n + z^2) by hand
    assert hi == pytest.approx(z2 / (30 + z2), abs=1e-6) and lo == pytest.approx(-hi, abs=1e-9)
    # checked against the score statistic with the restricted MLE found by numerical maximisation
    assert tango_ci(1, 7, 21) == pytest.approx([-0.5172, -0.0260], abs=2e-4)
    assert tango_ci(20, 5, 400) == pytest.approx([0.0141, 0.0651], abs=2e-4)
    lo, hi = tango_ci(3, 0, 4)
    assert lo < 0 < hi <= 1 and tango_ci(4, 0, 4)[1] == 1.0
    with pytest.raises(ValueError):
        tango_ci(3, 2, 4)


def test_sign_flip_test_by_hand():
    """Six pairs. All six differences +1: of the 2^6 sign patterns only all-plus and all-minus reach |sum| = 6, so
    p = 2/64; every shift but 1 is rejected, CI [1, 1]. Five +1 and one -1 (sum 4): |sum| >= 4 for the patterns with
    sum +-4 or +-6, 6 + 6 + 1 + 1 = 14 of 64; shifted beyond [-1, 1] all differences share a sign (p = 2/64), so
    the CI is [-1, 1]. Five pairs: even the extreme patterns give p = 2/32 > 0.05, so the CI is unbounded."""
    from agentforge.evals.stats import sign_flip_test

    r = sign_flip_test([1.0] * 6, [0.0] * 6)
    assert r["test"] == "sign_flip_exact" and r["p_value"] == 2 / 64 and r["ci95"] == [1.0, 1.0]
    r = sign_flip_test([1, 1, 1, 1, 1, 0], [0, 0, 0, 0, 0, 1])
    assert r["p_value"] == 14 / 64 and r["ci95"] == pytest.approx([-1.0, 1.0], abs=1e-6)
    r = sign_flip_test([0.3, 0.2, 0.1, 0.25, 0.15, 0.05], [0.0] * 6)   # all positive: 0 is rejected, p = 2/64
    assert r["p_value"] == 2 / 64 and r["ci95"] == pytest.approx([0.05, 0.30], abs=1e-6)
    r = sign_flip_test([0.3, 0.2, 0.1, 0.25, 0.15], [0.0] * 5)
    assert r["p_value"] == 2 / 32 and r["ci95"] == [-math.inf, math.inf]
    r = sign_flip_test([0.25] * 5, [0.0] * 5)   # equal differences, five pairs: no shift is rejected either
    assert r["p_value"] == 2 / 32 and r["ci95"] == [-math.inf, math.inf]
    r = sign_flip_test([0.25] * 3, [0.0] * 3)   # it was [0.25, 0.25] at p = 0.25
    assert r["p_value"] == 2 / 8 and r["ci95"] == [-math.inf, math.inf]


def test_sign_flip_test_equals_scipys_exact_permutation_test():
    from scipy import stats as sps

    from agentforge.evals.stats import sign_flip_test

    rng = np.random.default_rng(3)
    a, b = rng.normal(0.3, 1, 12), rng.normal(0, 1, 12)
    ref = sps.permutation_test((a - b,), np.mean, permutation_type="samples", n_resamples=np.inf).pvalue
    assert sign_flip_test(a, b)["p_value"] == pytest.approx(ref, rel=1e-12)


def test_paired_test_uses_the_sign_flip_test_below_min_n_for_real_valued_scores():
    """Six problems whose pass@k all improve by 0.05-0.3: the bootstrap calls it p ~ 1e-4 (every resample of six
    positive numbers is positive); the exact test's p is 2/64. From min_n pairs on, the bootstrap decides."""
    from agentforge.evals.stats import paired_test

    gains = [0.3, 0.2, 0.1, 0.25, 0.15, 0.05]
    small = paired_test(gains, [0.0] * 6)
    assert small["test"] == "sign_flip_exact" and small["p_value"] == 2 / 64
    assert small["bootstrap"]["p_value"] <= 2e-4 and not small["enough"]   # the README: "~1e-4"
    big = paired_test(gains * 5, [0.0] * 30)
    assert big["test"] == "bootstrap" and big["enough"]


def test_paired_ratio_interval_by_hand():
    """Bonett & Price (2006) hybrid Wilson score interval for p1 / p2, worked by hand for 5 (1,1), 1 (1,0) and
    3 (0,1) pairs: n* = 9, x1 = 6, x2 = 8; A = sqrt(6 / 63), B = sqrt((4/11) / 7), C = sqrt((2/11) / 9),
    z' = 1.959964 A / (B + C) = 1.634506; Wilson limits at z': x1 [0.399778, 0.857257], x2 [0.625140, 0.974604];
    ratio [0.399778 / 0.974604, 0.857257 / 0.625140] = [0.410195, 1.371304] (to the hand arithmetic's 6 digits)."""
    from agentforge.evals.stats import paired_ratio_ci

    assert paired_ratio_ci(5, 1, 3) == pytest.approx([0.410195, 1.371304], abs=1e-5)
    assert paired_ratio_ci(0, 0, 0) == [0.0, math.inf]
    lo, hi = paired_ratio_ci(40, 5, 5)           # equal rates: the interval holds 1, symmetric on the log scale
    assert lo < 1 < hi and math.log(hi) == pytest.approx(-math.log(lo), rel=1e-9)
    with pytest.raises(ValueError):
        paired_ratio_ci(-1, 0, 0)


def test_paired_ratio_interval_covers_the_true_ratio():
    """Coverage on simulated paired 0/1 data (n = 150 pairs, p(1,1) = .35, p(1,0) = .10, p(0,1) = .20, so
    p1 / p2 = .45 / .55): near the nominal 95 % (Fagerland et al. 2014 report it close to nominal)."""
    from agentforge.evals.stats import paired_ratio_ci

    rng = np.random.default_rng(0)
    counts = rng.multinomial(150, [0.35, 0.10, 0.20, 0.35], size=2000)
    true = 0.45 / 0.55
    hits = [lo <= true <= hi for lo, hi in (paired_ratio_ci(int(c[0]), int(c[1]), int(c[2])) for c in counts)]
    assert 0.93 <= float(np.mean(hits)) <= 0.975


def test_exact_proportion_ci_hand_values_and_coverage():
    """Clopper-Pearson: k = 0 gives [0, 1 - 0.025^(1/n)], k = n its mirror; the interval inverts the binomial test, so
    its coverage is >= 95 % at every true p (computed exactly from the binomial pmf for n = 4 and 16), where Wilson's
    falls to ~0.83."""
    from scipy.stats import beta, binom  # beta: the definition, its quantiles (Clopper & Pearson 1934)

    for n in (1, 4, 16):
        assert exact_proportion_ci(0, n) == pytest.approx([0.0, 1 - 0.025 ** (1 / n)])
        assert exact_proportion_ci(n, n) == pytest.approx([0.025 ** (1 / n), 1.0])
    for k, n in ((4, 16), (8, 16), (100, 200), (1, 3)):
        assert exact_proportion_ci(k, n) == pytest.approx([beta.ppf(0.025, k, n - k + 1), beta.ppf(0.975, k + 1, n - k)])
    lo, hi = exact_proportion_ci(4, 16)
    assert lo < wilson_ci(4, 16)[0] and hi > wilson_ci(4, 16)[1]     # wider than Wilson's: exact, conservative
    for n in (4, 16):
        cis = [exact_proportion_ci(k, n) for k in range(n + 1)]
        wil = [wilson_ci(k, n) for k in range(n + 1)]
        cover = lambda ivs, p: sum(binom.pmf(k, n, p) for k, (a, b) in enumerate(ivs) if a <= p <= b)  # noqa: E731
        grid = np.linspace(0.001, 0.999, 999)
        assert min(cover(cis, p) for p in grid) >= 0.95 - 1e-9
        assert min(cover(wil, p) for p in grid) < 0.9
    with pytest.raises(ValueError):
        exact_proportion_ci(3, 2)


def test_the_bootstraps_p_value_agrees_with_its_interval():
    """p < 0.05 exactly when the percentile 95 % CI excludes 0, over 300 skewed samples of 40 differences (the
    shifted-null p used before disagreed on some: p 0.046 beside a CI holding 0); a point mass at 0 gives p = 1."""
    disagree = []
    for seed in range(300):
        rng = np.random.default_rng(seed)
        d = rng.exponential(1, 40) - rng.uniform(0.5, 1.5) + rng.normal(0, 0.05, 40)
        r = paired_bootstrap(d, [0.0] * 40, n_resamples=2000, seed=0)
        if (r["p_value"] < 0.05) != (r["ci95"][0] > 0 or r["ci95"][1] < 0):
            disagree.append(seed)
    assert disagree == []
    assert paired_bootstrap([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])["p_value"] == 1.0
    # every resample above 0: the +1 correction keeps p off 0, at 2 / (B + 1)
    assert paired_bootstrap([1.0, 2.0, 3.0], [0.0] * 3, n_resamples=999)["p_value"] == pytest.approx(2 / 1000)
