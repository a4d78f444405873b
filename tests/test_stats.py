"""pass@k against hand-computed values, the paired bootstrap, and the dashboard's verdict."""
from __future__ import annotations

import math

import numpy as np
import pytest

from agentforge.evals.stats import mean_pass_at_k, paired_bootstrap, pass_at_k, verdict


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
    with pytest.raises(ValueError):
        pass_at_k(5, 2, 6)
    with pytest.raises(ValueError):
        pass_at_k(5, 6, 1)
    assert mean_pass_at_k(4, [0, 4, 1, 2], 1) == pytest.approx((0 + 1 + 0.25 + 0.5) / 4)


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
    ok = {"pass_at": {1: 0.35, 10: 0.5}, "delta_pass1": 0.05, "thresholds": TH}
    assert verdict(**ok, ci95=[0.01, 0.09], p_value=0.01, efficiency_ok=True) == ("SUCCESS", [])
    v, reasons = verdict(**ok, ci95=[-0.01, 0.09], p_value=0.07, efficiency_ok=True)
    assert v == "PARTIAL" and any("p-value" in r for r in reasons)
    assert verdict(**ok, ci95=[-0.05, 0.09], p_value=0.2, efficiency_ok=True)[0] == "FAILURE"
    low = {"pass_at": {1: 0.1, 10: 0.2}, "delta_pass1": 0.05, "thresholds": TH}
    assert verdict(**low, ci95=[0.01, 0.09], p_value=0.01, efficiency_ok=None)[0] == "FAILURE"
    assert verdict(**low, ci95=[0.01, 0.09], p_value=0.06, efficiency_ok=True)[0] == "PARTIAL"
    assert verdict(**ok, ci95=[0.01, 0.09], p_value=0.01, efficiency_ok=False)[0] == "PARTIAL"
    assert verdict(**ok, ci95=[0.01, 0.09], p_value=0.01, efficiency_ok=True, unstable=True)[0] == "FAILURE"
    missing = {"pass_at": {1: 0.35, 10: None}, "delta_pass1": 0.05, "thresholds": TH}
    v, reasons = verdict(**missing, ci95=[0.01, 0.09], p_value=0.01, efficiency_ok=True)
    assert v == "PARTIAL" and any("pass@10 not measured" in r for r in reasons)
