"""The edges of the verdict arithmetic (stats.verdict, stats.threshold_verdict, the sign-flip test, compare's
efficiency checks): each case sits exactly on a boundary a one-character change of the code would move, with its
expected value derived by hand. A mutation-testing audit found every one of these changes survived the suite."""
from __future__ import annotations

import pytest

from agentforge.evals.compare import ROUNDS, efficiency_checks, missed_targets
from agentforge.evals.stats import (
    MIN_N,
    SIGN_FLIP_SAMPLES,
    paired_test,
    sign_flip_test,
    threshold_verdict,
    verdict,
)


# -- threshold_verdict and verdict ------------------------------------------------------------------------
def test_a_ci_bound_exactly_on_an_inclusive_threshold_meets_it():
    # ">=" and "<=" include the threshold: a CI [0.3, 0.5] lies wholly >= 0.3, [0.5, 0.7] wholly <= 0.7
    # (a strict comparison would leave the bound on the line outside: INCONCLUSIVE)
    assert threshold_verdict([0.3, 0.5], ">=", 0.3)[0] == "PASS"
    assert threshold_verdict([0.5, 0.7], "<=", 0.7)[0] == "PASS"
    # the strict operators exclude it: the bound on the line misses, the other meets -> straddles
    assert threshold_verdict([0.3, 0.5], ">", 0.3)[0] == "INCONCLUSIVE"


def test_n_equal_to_the_minimum_is_enough():
    # "below min_n decides nothing": n = min_n is not below it, so a CI wholly above 20 passes
    assert threshold_verdict([25, 40], ">", 20, n=MIN_N)[0] == "PASS"
    assert threshold_verdict([25, 40], ">", 20, n=5, min_n=5)[0] == "PASS"
    assert threshold_verdict([25, 40], ">", 20, n=4, min_n=5)[0] == "INCONCLUSIVE"


def test_the_verdict_uses_the_configured_min_n_not_the_default():
    # every condition met (pass@1 0.4 >= 0.3, CI above 0, p < 0.05, the efficiency targets); 25 pairs are below the
    # default MIN_N = 30 but not below the configured min_n = 20, so the verdict is decided: SUCCESS
    assert MIN_N == 30
    args = dict(pass_at={1: 0.4}, delta_pass1=0.1, ci95=[0.05, 0.2], p_value=0.001, efficiency_ok=True, n=25)
    assert verdict(**args, thresholds={"pass_at": {1: 0.3}, "min_n": 20}) == ("SUCCESS", [])
    assert verdict(**args, thresholds={"pass_at": {1: 0.3}})[0] == "INCONCLUSIVE"   # default 30 > 25


def test_a_ci_whose_lower_bound_is_exactly_zero_is_not_success():
    # SUCCESS needs the CI lower bound > 0: at exactly 0 the CI includes "no change", section 7's PARTIAL row
    # ("p < 0.05 but the CI includes 0"); targets met and p 0.01 < failure_p, so not FAILURE either
    v, reasons = verdict(pass_at={1: 0.4}, pass_at_ci={1: [0.35, 0.45]}, delta_pass1=0.05, ci95=[0.0, 0.1],
                         p_value=0.01, thresholds={"pass_at": {1: 0.3}}, efficiency_ok=True, n=100)
    assert v == "PARTIAL" and reasons == ["CI95 lower bound 0.0 is not > 0"]


# -- the sign-flip test -----------------------------------------------------------------------------------
def test_the_monte_carlo_sign_flip_p_value_is_never_zero():
    # 29 pairs (< MIN_N = 30, real-valued: the sign-flip test; > 16: sampled patterns), every difference positive:
    # only the all-plus and all-minus patterns reach |sum|, 2 of 2^29, so the chance that any of the 20 000 seeded
    # draws is one of them is 20 000 * 2 / 2^29 < 1e-4: zero hits, and the p-value is (0 + 1) / (R + 1)
    # (a sampled p-value counts the observed pattern itself; Phipson & Smyth 2010), never 0
    r = paired_test([1 + 0.01 * i for i in range(29)], [0.0] * 29)
    assert r["test"] == "sign_flip_monte_carlo"
    assert r["p_value"] == 1 / (SIGN_FLIP_SAMPLES + 1) == 1 / 20_001


def test_sixteen_pairs_are_still_enumerated_exactly():
    # EXACT_SIGN_FLIP_MAX_N = 16 pairs with positive differences: the exact test enumerates all 2^16 sign patterns,
    # of which only all-plus and all-minus reach |sum|: p = 2 / 65 536 exactly (sampled patterns: 1 / 20 001)
    r = sign_flip_test([1 + 0.01 * i for i in range(16)], [0.0] * 16)
    assert r["test"] == "sign_flip_exact" and r["patterns"] == 2 ** 16 and r["p_value"] == 2 / 2 ** 16


# -- compare's efficiency checks --------------------------------------------------------------------------
def _timed(rounds, tokens, **extra):
    return {"metrics": {ROUNDS: rounds, "latency_tokens": tokens, **extra}}


def test_one_target_straddled_next_to_one_met_is_inconclusive_not_met():
    # per-round latency ratios (100 tokens each): [0.40, 0.60, 0.50, 0.70, 0.45, 0.55, 0.52]; with 7 rounds the
    # median's CI is the min and max ([0.40, 0.70]: k = 1, coverage 1 - 2/128 = 0.984 >= 0.95, k = 2 gives 0.875),
    # which straddles 0.54 -> None; throughput ratios are the inverses, CI [1/0.7, 1/0.4] = [1.43, 2.5], wholly
    # >= 1.2 -> True. One met and one undecided is "inconclusive", not True
    cand, base = _timed([40, 60, 50, 70, 45, 55, 52], 100), _timed([100] * 7, 100)
    ok, checks = efficiency_checks(cand, base, {"max_latency_ratio": 0.54, "min_throughput_ratio": 1.2})
    assert ok == "inconclusive" and [c["ok"] for c in checks] == [None, True]
    assert checks[0]["ci95"] == [0.4, 0.7] and checks[1]["ci95"] == pytest.approx([1 / 0.7, 2.5])


def test_the_latency_ratio_is_per_token():
    # the same 100 ms a round for half the tokens (50 vs 100) is twice the time per token: ratio 2.0 in every round,
    # CI [2, 2], which misses max_latency_ratio 1.5 (the raw times' ratio, 1.0, would meet it)
    ok, checks = efficiency_checks(_timed([100] * 7, 50), _timed([100] * 7, 100), {"max_latency_ratio": 1.5})
    assert ok is False and checks[0]["value"] == 2.0 and checks[0]["ci95"] == [2.0, 2.0]


def test_peak_memory_exactly_on_its_target_meets_it():
    # max_* targets are "at most": 100 MB against max 100 MB, and 150 / 100 = 1.5 (exact in binary) against max
    # ratio 1.5, both meet their targets
    cand, base = {"metrics": {"peak_memory_mb": 150.0}}, {"metrics": {"peak_memory_mb": 100.0}}
    ok, checks = efficiency_checks(cand, base, {"max_peak_memory_mb": 150.0, "max_memory_ratio": 1.5})
    assert ok is True and [(c["value"], c["ok"]) for c in checks] == [(150.0, True), (1.5, True)]


def test_missed_targets_lists_only_the_missed_ones():
    # a check left undecided (ok None: its CI straddles) is not missed; only the ok-False one is listed
    checks = [{"threshold": "max_latency_ratio", "value": 0.52, "ci95": [0.4, 0.7], "target": 0.54, "ok": None},
              {"threshold": "max_peak_memory_mb", "value": 120.0, "target": 100.0, "ok": False}]
    assert missed_targets(checks) == "max_peak_memory_mb 120 vs target 100.0 (single values, no CI)"
    assert missed_targets(checks[:1]) is None


def test_a_p_value_exactly_at_alpha_is_not_success():
    """SUCCESS needs p < alpha, strictly: an exact test can give p = 0.05 exactly (a '<=' survived the mutation
    audit)."""
    args = dict(pass_at={1: 0.4}, delta_pass1=0.1, ci95=[0.05, 0.2], efficiency_ok=True, n=100,
                thresholds={"pass_at": {1: 0.3}})
    assert verdict(**args, p_value=0.049)[0] == "SUCCESS"
    v, reasons = verdict(**args, p_value=0.05)
    assert v == "PARTIAL" and reasons == ["p-value 0.05 is not < 0.05"]
