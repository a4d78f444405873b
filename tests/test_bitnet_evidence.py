"""Phase 4's comparisons with their evidence (``agentforge/quant/report.py``): the accuracy drop paired on the same
questions (McNemar's exact p, Tango's CI scaled to the relative drop), each task's change, and the speedup as the
median of per-round ratios with its distribution-free CI — on hand cases whose answers are derived here."""
from __future__ import annotations

import math

import pytest
from scipy.stats import binomtest

from agentforge.evals.stats import tango_ci
from agentforge.phases.bitnet import relative_drop
from agentforge.quant.report import accuracy_evidence, drop_line, pooled_accuracy, speedup_evidence


def _evals(sizes: dict[str, int]) -> dict[str, list[dict]]:
    return {fmt: [{"question": f"{fmt} {i}", "answer": "#### 1"} for i in range(n)] for fmt, n in sizes.items()}


# 10 questions: 5 GSM8K, 3 ARC, 2 PIQA. Before right on 8, after on 6: 3 lost (q1, q6, q8), 1 gained (q4).
BEFORE = {"gsm8k": [1, 1, 1, 0, 1], "arc": [1, 1, 1], "piqa": [1, 0]}
AFTER = {"gsm8k": [1, 0, 1, 1, 1], "arc": [1, 0, 1], "piqa": [0, 0]}


def test_paired_drop_by_hand():
    evals = _evals({"gsm8k": 5, "arc": 3, "piqa": 2})
    acc_b, acc_a = pooled_accuracy(BEFORE), pooled_accuracy(AFTER)
    assert (acc_b, acc_a) == (0.8, 0.6)
    drop = relative_drop(acc_b, acc_a)
    assert drop == pytest.approx(25.0)                        # 100 (0.8 - 0.6) / 0.8
    ev = accuracy_evidence(BEFORE, AFTER, evals, drop)
    assert ev["final/accuracy_drop_n"] == 10
    # McNemar exact: 4 discordant pairs, 3 of them lost; two-sided P(X <= 1 or X >= 3), X ~ Bin(4, 1/2) = 10/16
    assert binomtest(3, 4, 0.5).pvalue == pytest.approx(10 / 16)
    assert "McNemar exact p=0.625 (3 lost, 1 gained of 10 questions, paired by example id)" in ev["final/accuracy_drop_test"]
    # the absolute drop's CI: the hull of Tango's interval of the paired difference (3 - 1) / 10 = 0.2 and the exact
    # conditional one, (4 / 10)(2 pi - 1) over pi's Clopper-Pearson interval for 3 of 4
    from scipy.stats import binomtest as bt
    cp = bt(3, 4).proportion_ci(method="exact")
    t = tango_ci(3, 1, 10)
    lo, hi = min(t[0], 0.4 * (2 * cp.low - 1)), max(t[1], 0.4 * (2 * cp.high - 1))
    assert ev["evaluation/accuracy_drop_ci95"] == pytest.approx([lo, hi])
    # the relative drop's: 100 (1 - R) over the Bonett-Price interval of R = acc_after / acc_before, by hand in
    # tests/test_stats.py: R in [0.41020, 1.37130] for 5 both-right, 1 gained, 3 lost
    assert ev["final/accuracy_drop_ci95"] == pytest.approx([100 * (1 - 1.37130), 100 * (1 - 0.41020)], abs=2e-3)
    assert ev["evaluation/accuracy_drop_percent_ci95"] == ev["final/accuracy_drop_ci95"]
    low, high = ev["final/accuracy_drop_ci95"]
    assert low < 0 < drop < high                              # p = 0.625: the CI takes in no drop at all
    # per task, after - before: GSM8K 1 lost 1 gained, ARC 1 lost, PIQA 1 lost
    assert ev["evaluation/gsm8k_diff"] == 0.0 and ev["evaluation/gsm8k_diff_n"] == 5
    assert ev["evaluation/arc_diff"] == pytest.approx(-1 / 3) and ev["evaluation/arc_diff_n"] == 3
    assert ev["evaluation/piqa_diff"] == pytest.approx(-1 / 2) and ev["evaluation/piqa_diff_n"] == 2
    assert ev["evaluation/arc_diff_ci95"] == pytest.approx(tango_ci(0, 1, 3))   # (gained, lost) = (0, 1)
    assert "McNemar exact p=1 (1 lost, 0 gained)" in ev["evaluation/piqa_diff_test"]  # P(X != 0.5) for Bin(1, 1/2)
    assert "McNemar exact p=1 (1 lost, 1 gained)" in ev["evaluation/gsm8k_diff_test"]
    line = drop_line(drop, ev)
    assert line.startswith("25.0% (n=10, 95% CI [") and line.endswith("; McNemar exact p=0.625)")


def test_a_significant_drop_excludes_zero():
    """40 questions, 10 lost and none gained: exact p = 2 / 2^10; the whole CI is a drop."""
    before = {"gsm8k": [1] * 20 + [0] * 20}
    after = {"gsm8k": [0] * 10 + [1] * 10 + [0] * 20}
    drop = relative_drop(pooled_accuracy(before), pooled_accuracy(after))
    ev = accuracy_evidence(before, after, _evals({"gsm8k": 40}), drop)
    assert drop == pytest.approx(50.0) and ev["final/accuracy_drop_n"] == 40
    assert f"p={2 / 2 ** 10:.3g}" in ev["final/accuracy_drop_test"]
    low, high = ev["final/accuracy_drop_ci95"]
    assert 0 < low < drop < high <= 100


def test_no_accuracy_before_means_no_relative_ci():
    before, after = {"arc": [0, 0, 0]}, {"arc": [0, 1, 0]}
    drop = relative_drop(0.0, pooled_accuracy(after))
    ev = accuracy_evidence(before, after, _evals({"arc": 3}), drop)
    assert drop == 0.0 and ev["final/accuracy_drop_n"] == 3 and "final/accuracy_drop_ci95" not in ev
    assert "accuracy before is 0" in ev["final/accuracy_drop_test"]
    assert ev["evaluation/arc_diff"] == pytest.approx(1 / 3)


def test_speedup_is_the_median_of_per_round_ratios_with_the_sign_test_ci():
    """9 rounds with ratios 1..9: median 5; at 95 % the sign-test interval is (x(2), x(8)), since
    1 - 2 P(Bin(9, 1/2) <= 1) = 1 - 20/512 >= 0.95 > 1 - 2 P(Bin(9, 1/2) <= 2) = 1 - 92/512."""
    after = [0.01 * (r + 1) for r in range(9)]
    ratios = [9, 1, 4, 7, 2, 8, 3, 6, 5]                      # rounds in any order
    before = [a * k for a, k in zip(after, ratios)]
    s = speedup_evidence(before, after)
    assert s["n"] == 9 and s["value"] == pytest.approx(5.0) and s["ci95"] == pytest.approx([2.0, 8.0])
    one = speedup_evidence([0.02], [0.01])                    # one round: a point, said to cover less
    assert one["value"] == one["ci95"][0] == one["ci95"][1] == pytest.approx(2.0) and "covers less" in one["test"]
    with pytest.raises(ValueError, match="pair up"):
        speedup_evidence([1.0, 2.0], [1.0])
    assert math.isfinite(s["value"])


def test_pipeline_report_reads_the_phase_evidence(tmp_path):
    """Without eval results to recompute it from, the pipeline's threshold row shows the phase's own drop with its n,
    CI and test (keys K_n, K_ci95, K_test) but decides nothing from it: those are the validation questions that chose
    the shipped model (an audit; it read PASS when the whole CI was < 10 %), so INCONCLUSIVE, saying why."""
    from agentforge.pipeline.thresholds import headline_metrics, threshold_rows

    evals = _evals({"gsm8k": 5, "arc": 3, "piqa": 2})
    drop = relative_drop(0.8, 0.6)
    metrics = headline_metrics({"final/accuracy_drop": drop, **accuracy_evidence(BEFORE, AFTER, evals, drop)})
    [row] = threshold_rows({"bitnet": metrics}, tmp_path)
    assert row[1] == "final/accuracy_drop" and row[4].startswith("INCONCLUSIVE (n=10, 95% CI [")
    assert "McNemar exact p=0.625" in row[4]
    same = {"gsm8k": [1] * 60}                                # 60 questions, none changed: CI about +-6 %
    ev = accuracy_evidence(same, same, _evals({"gsm8k": 60}), 0.0)
    [row] = threshold_rows({"bitnet": headline_metrics({"final/accuracy_drop": 0.0, **ev})}, tmp_path)
    assert row[4].startswith("INCONCLUSIVE (n=60, 95% CI [") and row[4].endswith("decides nothing)")
