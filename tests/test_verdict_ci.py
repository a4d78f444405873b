"""The dashboard verdict judges every target on its CI (``dashboard_verdict.verdict``): met when the whole CI is at or
above the target, missed when it is wholly below, not established when it straddles. The audit's cases (stronger
evidence gave a worse verdict; noise on a point estimate decided the verdict), a monotonicity property over a grid,
and the candidate's pass@k CI (``stats.mean_ci``) that ``compute_stats`` passes in and stores."""
from __future__ import annotations

import itertools

import pytest

from agentforge.evals.stats import exact_proportion_ci, mean_ci, verdict

TH = {"pass_at": {1: 0.30}, "min_delta_pass1": 0.04, "alpha": 0.05, "failure_p": 0.1}
RANK = {"FAILURE": 0, "INCONCLUSIVE": 1, "PARTIAL": 2, "SUCCESS": 3}


# -- the audit's cases ------------------------------------------------------------------------------------
@pytest.mark.parametrize("pass1_ci,expect_failure", [([0.20, 0.29], True), ([0.17, 0.33], False)])
def test_weak_and_strong_evidence_get_the_same_verdict_class(pass1_ci, expect_failure):
    """pass@1 0.25 against 0.30, efficiency met, Δ 0.05, n 100: p 0.07 with CI [-0.01, 0.11] read PARTIAL, p 0.01
    with CI [0.01, 0.09] FAILURE. Now the pass@1 CI decides for both: wholly below 0.30, FAILURE both; straddling it,
    FAILURE for neither."""
    common = dict(pass_at={1: 0.25}, pass_at_ci={1: pass1_ci}, delta_pass1=0.05, thresholds=TH, efficiency_ok=True,
                  n=100)
    weak = verdict(**common, ci95=[-0.01, 0.11], p_value=0.07)
    strong = verdict(**common, ci95=[0.01, 0.09], p_value=0.01)
    assert (weak[0] == "FAILURE") is expect_failure and (strong[0] == "FAILURE") is expect_failure, (weak, strong)
    if expect_failure:
        assert "pass@1 0.25 < target 0.3 (its whole CI [0.2, 0.29] is below it)" in strong[1]
    else:
        assert weak[0] == strong[0] == "PARTIAL"   # the efficiency group is met
        assert "pass@1 0.25 not established: its CI [0.17, 0.33] straddles the target 0.3" in strong[1]


def test_a_delta_whose_ci_straddles_its_target_decides_neither_way():
    """Δpass@1 0.039, CI [0.005, 0.073], p 0.02 read FAILURE; Δ 0.040, CI [0.0005, 0.0795] read SUCCESS."""
    common = dict(pass_at={1: 0.40}, pass_at_ci={1: [0.35, 0.45]}, thresholds=TH, efficiency_ok=None, n=100)
    below = verdict(**common, delta_pass1=0.039, ci95=[0.005, 0.073], p_value=0.02)
    on = verdict(**common, delta_pass1=0.040, ci95=[0.0005, 0.0795], p_value=0.04)
    assert below[0] != "FAILURE" and on[0] != "SUCCESS"
    assert below[0] == on[0] == "INCONCLUSIVE"
    assert "delta pass@1 0.04 not established: its CI [0.0005, 0.0795] straddles the target 0.04" in on[1]
    # the whole CI at or above the target: met (SUCCESS); wholly below: missed (FAILURE)
    assert verdict(**{**common, "efficiency_ok": True}, delta_pass1=0.06, ci95=[0.04, 0.08],
                   p_value=0.001) == ("SUCCESS", [])
    assert verdict(**common, delta_pass1=0.02, ci95=[0.005, 0.035], p_value=0.02)[0] == "FAILURE"


def test_pass1_on_its_target_from_30_problems_is_not_success():
    """pass@1 = 0.30 from 9 of 30 problems (CI about [0.15, 0.49]) "met" 0.30."""
    v, reasons = verdict(pass_at={1: 0.30}, pass_at_ci={1: [0.147, 0.494]}, delta_pass1=0.3, ci95=[0.13, 0.47],
                         p_value=0.004, thresholds=TH, efficiency_ok=None, n=30)
    assert v != "SUCCESS" and "pass@1 0.3 not established: its CI [0.147, 0.494] straddles the target 0.3" in reasons


def test_an_unknown_n_is_not_success():
    good = dict(pass_at={1: 0.40}, pass_at_ci={1: [0.35, 0.45]}, delta_pass1=0.06, ci95=[0.045, 0.075],
                p_value=0.001, thresholds=TH, efficiency_ok=True)
    assert verdict(**good, n=100) == ("SUCCESS", [])
    v, reasons = verdict(**good)
    assert v == "INCONCLUSIVE" and reasons == ["the number of paired examples is not known; a pass@k verdict needs "
                                               "at least 30"]
    assert verdict(**{**good, "efficiency_ok": False})[0] == "FAILURE"   # what does not rest on n still decides


def test_without_a_ci_the_point_estimate_decides_and_the_reason_says_so():
    v, reasons = verdict(pass_at={1: 0.25}, delta_pass1=0.06, ci95=[0.045, 0.075], p_value=0.001, thresholds=TH,
                         efficiency_ok=True, n=100, pass_at_ci={1: None})
    assert v == "FAILURE" and reasons == ["pass@1 0.25 < target 0.3 (no CI: point estimate)"]


TH_10 = {**TH, "pass_at": {1: 0.30, 10: 0.45}}


def test_a_significantly_worse_candidate_or_a_missed_target_is_failure_not_partial():
    """Δ −5 pp with CI [−0.10, −0.01] and p 0.01 read PARTIAL (only "CI lower bound not > 0" as its reason); so did
    pass@1 0.20 < 0.30 and Δ 2 pp < 4 pp with p 0.01 and a CI above 0."""
    base = {"pass_at": {1: 0.35, 10: 0.5}, "pass_at_ci": {1: [0.31, 0.39], 10: [0.46, 0.54]}, "thresholds": TH_10,
            "n": 100}
    v, reasons = verdict(**base, delta_pass1=-0.05, ci95=[-0.10, -0.01], p_value=0.01, efficiency_ok=True)
    assert v == "FAILURE" and any("significantly worse" in r for r in reasons)
    low = {**base, "pass_at": {1: 0.2, 10: 0.5}, "pass_at_ci": {1: [0.15, 0.25], 10: [0.46, 0.54]}}
    assert verdict(**low, delta_pass1=0.05, ci95=[0.01, 0.09], p_value=0.01, efficiency_ok=True)[0] == "FAILURE"
    assert verdict(**low, delta_pass1=0.05, ci95=[-0.01, 0.11], p_value=0.07, efficiency_ok=True)[0] == "FAILURE"
    v, reasons = verdict(**base, delta_pass1=0.02, ci95=[0.005, 0.035], p_value=0.01, efficiency_ok=True)
    assert v == "FAILURE" and "delta pass@1 0.02 < target 0.04 (its whole CI [0.005, 0.035] is below it)" in reasons
    # the Δ's CI reaching the target (0.04) is not wholly below it: not established, and efficiency met: PARTIAL
    assert verdict(**base, delta_pass1=0.02, ci95=[0.005, 0.04], p_value=0.01, efficiency_ok=True)[0] == "PARTIAL"


# -- monotonicity ---------------------------------------------------------------------------------------
# each target's CI wholly below, straddling, wholly above it (value: the midpoint)
CIS = {"pass1": {"missed": [0.20, 0.28], "straddle": [0.25, 0.35], "met": [0.32, 0.40]},
       "pass10": {"missed": [0.30, 0.40], "straddle": [0.40, 0.50], "met": [0.50, 0.60]},
       "delta1": {"missed": [-0.05, 0.03], "straddle": [-0.01, 0.09], "met": [0.05, 0.09]},
       "delta10": {"missed": [-0.04, 0.02], "straddle": [0.0, 0.06], "met": [0.04, 0.08]}}
TH_ALL = {"pass_at": {1: 0.30, 10: 0.45}, "min_delta_pass1": 0.04, "min_delta_pass10": 0.03, "alpha": 0.05,
          "failure_p": 0.1}


def _grid_verdict(states: dict, p: float, eff, unstable: bool) -> str:
    ci = {t: CIS[t][s] for t, s in states.items()}
    mid = {t: (c[0] + c[1]) / 2 for t, c in ci.items()}
    return verdict(pass_at={1: mid["pass1"], 10: mid["pass10"]}, pass_at_ci={1: ci["pass1"], 10: ci["pass10"]},
                   delta_pass1=mid["delta1"], ci95=ci["delta1"], p_value=p, thresholds=TH_ALL, efficiency_ok=eff,
                   unstable=unstable, n=100,
                   others={10: {"delta": mid["delta10"], "ci95": ci["delta10"], "p_value": 0.5}})[0]


def test_moving_a_ci_above_its_target_never_makes_the_verdict_worse():
    """Over every combination of the four targets' states, p, efficiency and stability: a target's CI moved from
    straddling its target to wholly above it (or from wholly below to straddling) never lowers the verdict
    (FAILURE < INCONCLUSIVE < PARTIAL < SUCCESS)."""
    names, checked = list(CIS), 0
    for combo in itertools.product(["missed", "straddle", "met"], repeat=len(names)):
        for p, eff, unstable in itertools.product([0.001, 0.07, 0.2], [True, False, None, "inconclusive"],
                                                  [False, True]):
            states = dict(zip(names, combo))
            for t in names:
                if states[t] == "met":
                    continue
                up = {**states, t: "straddle" if states[t] == "missed" else "met"}
                before, after = _grid_verdict(states, p, eff, unstable), _grid_verdict(up, p, eff, unstable)
                assert RANK[after] >= RANK[before], (states, t, p, eff, unstable, before, after)
                checked += 1
    assert checked == 4 * 3 ** 3 * 2 * 24   # each target below met in 2 of its 3 states, the others any of 3


def test_a_missed_target_is_failure_and_success_needs_every_target_met():
    for t in CIS:
        states = {**{u: "met" for u in CIS}, t: "missed"}
        assert _grid_verdict(states, 0.001, True, False) == "FAILURE", t
        states[t] = "straddle"
        assert _grid_verdict(states, 0.001, True, False) in ("PARTIAL", "INCONCLUSIVE"), t
    assert _grid_verdict({u: "met" for u in CIS}, 0.001, True, False) == "SUCCESS"


# -- the candidate's pass@k CI ------------------------------------------------------------------------------
def test_mean_ci_by_hand():
    """``mean_ci`` of scores that are not all 0/1 is the percentile bootstrap. [0.5] + [0]*9: a resample's mean is
    0.5 k/10, k ~ Bin(10, 0.1); P(k = 0) = 0.349 > 0.025 and P(k <= 2) = 0.930 < 0.975 <= P(k <= 3) = 0.987, so the
    CI is exactly [0.0, 0.15] (the basic bootstrap, 2 * 0.05 minus the percentiles, would give [-0.05, 0.1]).
    0/1 scores give Clopper-Pearson's interval: for 0 of n, [0, 1 - 0.025^(1/n)]."""
    assert mean_ci([0.5] + [0.0] * 9) == [0.0, 0.15]
    assert mean_ci([0.3] * 5) == [0.3, 0.3]   # a constant sample: every resample's mean is 0.3
    assert mean_ci([0.0] * 30) == pytest.approx([0.0, 1 - 0.025 ** (1 / 30)])
    assert mean_ci([1.0] * 30) == pytest.approx([0.025 ** (1 / 30), 1.0])   # before: [1, 1]
    assert mean_ci([1.0] + [0.0] * 9) == exact_proportion_ci(1, 10)
    assert mean_ci([1.0]) is None and mean_ci([]) is None and mean_ci([1.0, float("nan")]) is None
    xs = [0.9] * 9 + [0.0] * 21               # 9 of 30 problems at 0.9: mean 0.27
    lo, hi = mean_ci(xs, n_resamples=2000)
    assert 0.0 <= lo < 0.3 < hi <= 1.0 and lo < 0.2 and hi > 0.4
    assert mean_ci(xs, n_resamples=2000) == [lo, hi]   # seeded: the same CI every time


def test_codegen_stats_store_each_models_ci_and_the_verdict_reads_the_candidates():
    """9 of 30 problems solved against none: pass@1 0.30 on its target, but its CI straddles it: not SUCCESS."""
    from agentforge.codegen.scoring import compute_stats

    cand = [{"num_samples": 1, "num_correct": int(i < 9)} for i in range(30)]
    base = [{"num_samples": 1, "num_correct": 0} for _ in range(30)]
    s = compute_stats({"c": cand, "b": base}, {"c": {}, "b": {}}, candidate="c", baseline="b", ks=[1],
                      thresholds=TH, n_resamples=2000)
    lo, hi = s["pass_at_1"]["c_ci95"]
    assert [lo, hi] == exact_proportion_ci(9, 30) and s["pass_at_1"]["b_ci95"] == exact_proportion_ci(0, 30)
    assert lo < 0.3 < hi
    assert s["verdict"] != "SUCCESS" and any(r.startswith("pass@1 0.3 not established") for r in s["reasons"])


def test_phase_compare_judges_the_pass1_target_on_the_candidates_ci():
    """``phase=compare`` passes the candidate's CI to the verdict (a mutation audit: without it, pass@1 0.40 from 16
    of 40 questions, CI about [0.25, 0.55], "met" 0.30 and read SUCCESS at p ~0.03)."""
    from agentforge.evals.compare import compute_stats
    from tests.test_compare_checks import _stage

    base, cand = [1] * 10 + [0] * 30, [1] * 16 + [0] * 24   # 6 gained, none lost
    st = compute_stats({"baseline": _stage(base), "cand": _stage(cand)}, "baseline", "cand",
                       {"pass_at": {1: 0.30}, "alpha": 0.05, "failure_p": 0.1}, n_resamples=2000)
    lo, hi = st["pass_at_1"]["cand_ci95"]
    assert lo < 0.30 < hi and st["pass_at_1"]["baseline_ci95"][1] < 0.45   # each model's own CI
    assert st["verdict"] != "SUCCESS" and any(r.startswith("pass@1 0.4 not established") for r in st["reasons"])


def test_a_pass1_of_four_in_thirty_is_not_established_below_the_target_on_its_exact_ci():
    """The audit's case: greedy pass@1 4 / 30 against 0.30. The percentile bootstrap's [0.033, 0.267] read the
    target "missed" (FAILURE); Clopper-Pearson's [0.038, 0.307] straddles 0.30: not established."""
    from agentforge.codegen.scoring import compute_stats

    cand = [{"num_samples": 1, "num_correct": int(i < 4)} for i in range(30)]
    base = [{"num_samples": 1, "num_correct": int(i < 3)} for i in range(30)]
    s = compute_stats({"c": cand, "b": base}, {"c": {}, "b": {}}, candidate="c", baseline="b", ks=[1],
                      thresholds=TH, n_resamples=2000)
    assert s["pass_at_1"]["c_ci95"] == pytest.approx([0.0376, 0.3072], abs=5e-4)
    assert any(r.startswith("pass@1 0.1333 not established") for r in s["reasons"]), s["reasons"]
