"""Baking's evidence (``reasoning.baking_evidence``): the paired gain over the unbaked model, the prompt-effect
positions and accuracy, the rescaled stratified bootstrap, the verdict and the phase summary built from them."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from test_reasoning import tiny

from agentforge.data.tokenizer import ByteTokenizer
from agentforge.reasoning import baking
from agentforge.reasoning import baking_evidence as be
from agentforge.reasoning.strategies import STRATEGIES, generate_examples
from agentforge.reasoning.tokens import add_reasoning_tokens


def _strategy_setup(n_per: int = 4, n_strategies: int = 2):
    tok = ByteTokenizer()
    add_reasoning_tokens(tok)
    strategies = STRATEGIES[:n_strategies]
    val = {s.key: [(tok.encode(e["question"]), tok.encode(e["response"])) for e in generate_examples(n_per, 0, "val")
                   if e["strategy"] == s.key] for s in strategies}
    prompts = {s.key: tok.encode(s.prompt) for s in strategies}
    b = type("B", (), {"prompt_position": "answer", "usage_tokens": 3, "temperature": 1.0, "sampled_fraction": 0.0,
                       "sample_tokens": 2})()
    return val, prompts, b


def test_baking_changes_the_prompt_effect_positions_and_the_paired_gain_shows_it():
    """The real bake_eval / bake_step path on a tiny model: before baking (student = the teacher's copy) the paired
    gain is exactly 0 and the prompt-effect accuracy is 0 by construction, although the prompt changes the top-1 at
    many positions; after a few baking steps the baked student agrees with the prompted teacher on a share of those
    positions, the paired gain's CI lies above 0, and the KL falls."""
    model = tiny(seed=2)
    teacher = copy.deepcopy(model)
    val, prompts, b = _strategy_setup()
    ev0 = be.baking_evidence(baking.bake_eval(model, teacher, val, prompts, b, base=teacher)["per"])
    assert ev0["n"] == 8 and ev0["final_accuracy"] == ev0["initial_accuracy"] and ev0["accuracy_gain"] == 0.0
    assert ev0["accuracy_gain_ci95"] == [0.0, 0.0] and ev0["prompt_effect_accuracy"] == 0.0
    assert ev0["prompt_effect_positions"] > 20 and ev0["kl_reduction"] == pytest.approx(0.0, abs=1e-6)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for i in range(40):
        key = list(val)[i % 2]
        loss, _ = baking.bake_step(model, teacher, prompts[key], val[key], b, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    ev1 = be.baking_evidence(baking.bake_eval(model, teacher, val, prompts, b, base=teacher)["per"])
    assert ev1["initial_accuracy"] == ev0["initial_accuracy"]   # the base is the frozen teacher, unprompted
    assert ev1["accuracy_gain"] == pytest.approx(ev1["final_accuracy"] - ev1["initial_accuracy"])
    assert ev1["accuracy_gain_ci95"][0] > 0 and ev1["prompt_effect_accuracy_ci95"][0] > 0.1
    assert ev1["kl_reduction_ci95"][0] > 0.1
    lo, hi = ev1["prompt_effect_accuracy_ci95"]
    assert lo <= ev1["prompt_effect_accuracy"] <= hi


def test_paired_rows_hand_case():
    """3 positions (the last masked out), vocabulary 3. Teacher top-1 [0, 1, 2], unbaked [0, 2, 2], baked [1, 1, 0]:
    baked agrees at position 1; unbaked at position 0; the prompt changes the top-1 at position 1 only (position 2
    is masked), where the baked student agrees: effect 1, effect_agree 1. KL (logits 4 x one-hot): each model is off
    the teacher at one scored position (baked at 0, unbaked at 1) by the same permuted distribution, so both sums
    equal that one position's KL."""
    def one_hot(ids):
        return torch.nn.functional.one_hot(torch.tensor([ids]), 3).float() * 4.0
    t, b_, s = one_hot([0, 1, 2]), one_hot([0, 2, 2]), one_hot([1, 1, 0])
    mask = torch.tensor([[True, True, False]])
    row = baking.paired_rows(t, s, b_, mask)[0]
    assert dict(zip(baking.PAIRED_COLUMNS, row[:5])) == {"agree": 1, "positions": 2, "agree_base": 1,
                                                           "effect_positions": 1, "effect_agree": 1}
    kl = baking.baking_kl(t[:, 1:2], b_[:, 1:2], torch.ones(1, 1, dtype=torch.bool)).item()  # position 1 only
    assert kl > 1 and row[6] == pytest.approx(kl, rel=1e-5) and row[5] == pytest.approx(kl, rel=1e-5)


def test_prompt_effect_accuracy_hand_case():
    """Two strategies. a: examples with (effect, effect_agree) = (2, 1), (0, 0); b: (1, 1), (3, 0). Pooled
    prompt-effect accuracy = (1 + 0 + 1 + 0) / (2 + 0 + 1 + 3) = 2/6; share = 6 / 40 scored positions; 3 examples
    carry effect positions. Final = mean of a's 18/20 and b's 17/20 = 0.875, initial = mean(17/20, 15/20) = 0.8."""
    per = {"a": {"paired": [[9, 10, 8, 2, 1, 0, 0], [9, 10, 9, 0, 0, 0, 0]]},
           "b": {"paired": [[9, 10, 8, 1, 1, 0, 0], [8, 10, 7, 3, 0, 0, 0]]}}
    ev = be.baking_evidence(per, n_resamples=500)
    assert ev["prompt_effect_accuracy"] == pytest.approx(2 / 6) and ev["prompt_effect_share"] == pytest.approx(6 / 40)
    assert (ev["prompt_effect_positions"], ev["prompt_effect_examples"], ev["positions"]) == (6, 3, 40)
    assert ev["final_accuracy"] == pytest.approx(0.875) and ev["initial_accuracy"] == pytest.approx(0.8)
    assert ev["accuracy_gain"] == pytest.approx(0.075)


def test_rescaled_stratified_bootstrap_variance_is_the_textbook_one():
    """McCarthy & Snowden 1985 / Rao & Wu 1988: drawing n_h - 1 of n_h with replacement per stratum makes the
    bootstrap variance of a stratified mean sum_h W_h ybar_h equal sum_h W_h^2 s_h^2 / n_h. Exact hand case: one
    stratum of 2 values y1, y2 -> each replicate is y1 or y2 (probability 1/2): variance (y1 - y2)^2 / 4 = s^2 / 2.
    Monte Carlo: 3 strata of 4 (weights 0.2, 0.3, 0.5); the plain bootstrap (n_h of n_h) gives 3/4 of it."""
    vals = []
    be.stratified_bootstrap([np.array([[1.0], [3.0]])], lambda t: vals.append(t[0, :, 0] / 2) or vals[-1], 4000)
    assert set(np.unique(vals[0])) == {1.0, 3.0} and np.var(vals[0]) == pytest.approx(1.0, rel=0.05)  # (3-1)^2/4
    one = be.stratified_bootstrap([np.array([[2.0]]), np.array([[1.0], [3.0]])], lambda t: t[0, :, 0], 100)
    assert one == {"ci95": [2.0, 2.0], "undefined_share": 0.0}      # a one-unit stratum beside others: held fixed
    alone = be.stratified_bootstrap([np.array([[2.0]]), np.array([[5.0]])], lambda t: t[0, :, 0], 100)
    assert alone["ci95"] is None         # every stratum of one unit (val_per_strategy=1): no CI, not a zero-width one
    undefined = be.stratified_bootstrap([np.array([[0.0], [1.0]])], lambda t: np.where(t[0, :, 0] > 1, 1.0, np.nan), 400)
    assert undefined["ci95"] == [1.0, 1.0] and undefined["undefined_share"] == pytest.approx(0.5, abs=0.1)  # dropped
    rng = np.random.default_rng(1)
    groups = [rng.normal(size=(4, 1)) * sd for sd in (1, 2, 3)]
    w = np.array([0.2, 0.3, 0.5])
    textbook = sum(w[h] ** 2 * groups[h][:, 0].var(ddof=1) / 4 for h in range(3))
    for rescaled, factor in ((True, 1.0), (False, 0.75)):
        got = []
        be.stratified_bootstrap(groups, lambda t: got.append((w[:, None] * t[..., 0] / 4).sum(0)) or got[-1],
                                    40000, seed=0, rescaled=rescaled)
        assert np.var(got[0]) == pytest.approx(factor * textbook, rel=0.03)   # MC sd of a variance ~ 1 %


def _fabricated(agree_after: float, agree_before: float, effect: int = 0, effect_agree: int = 0, n_per: int = 4):
    """10 strategies x n_per examples of 100 positions, with a little spread between examples."""
    per = {}
    for h in range(10):
        rows = []
        for i in range(n_per):
            d = (i - 1.5)
            rows.append([agree_after * 100 + d, 100, agree_before * 100 + d, effect, effect_agree, 1.0, 2.0])
        per[f"s{h}"] = {"paired": rows}
    return be.baking_evidence(per, seed=0)


def test_baking_verdict_is_inconclusive_when_the_unbaked_model_already_passes():
    """teacher == student before baking at the same 0.96 (gain 0 on every example): the final CI clears 0.85,
    but the row cannot say baking did it -> INCONCLUSIVE, and the reason gives the unbaked score and the gain."""
    ev = _fabricated(0.96, 0.96)
    assert ev["final_accuracy_ci95"][0] > 0.85 and ev["accuracy_gain_ci95"] == [0.0, 0.0]
    v, why = be.baking_verdict(ev["final_accuracy_ci95"], ev["accuracy_gain_ci95"], 0.85, ev["n"],
                                   be.evidence_text(ev))
    assert v == "INCONCLUSIVE" and "unbaked model already scores 0.9600" in why and "gain +0.0000" in why
    assert "none to learn" in why    # no prompt-effect positions


def test_baking_verdict_passes_when_baking_moves_the_prompt_effect_positions():
    """Baking takes agreement from 0.90 to 0.96 by agreeing with the teacher at 5 of its 6 prompt-effect positions
    per example -> the gain's CI lies above 0 -> PASS; the whole CI below 0.85 -> FAIL; a straddling CI or
    n < 30 -> INCONCLUSIVE."""
    ev = _fabricated(0.96, 0.90, effect=6, effect_agree=5)
    assert ev["prompt_effect_accuracy"] == pytest.approx(5 / 6) and ev["accuracy_gain_ci95"][0] > 0
    v, why = be.baking_verdict(ev["final_accuracy_ci95"], ev["accuracy_gain_ci95"], 0.85, ev["n"],
                                   be.evidence_text(ev))
    assert v == "PASS" and "baked agreement there 0.833" in why
    low = _fabricated(0.70, 0.60, effect=6, effect_agree=5)
    assert be.baking_verdict(low["final_accuracy_ci95"], low["accuracy_gain_ci95"], 0.85, low["n"])[0] == "FAIL"
    assert be.baking_verdict([0.84, 0.9], [0.01, 0.02], 0.85, 40)[0] == "INCONCLUSIVE"
    assert be.baking_verdict(ev["final_accuracy_ci95"], ev["accuracy_gain_ci95"], 0.85, 4)[0] == "INCONCLUSIVE"


def test_the_phase_summary_decides_converged_by_the_verdict():
    """baking_evidence.baking_summary: a 0.96 final score with no gain is not 'converged'; with a gain it is."""
    from agentforge.reasoning.baking_evidence import baking_summary

    def final(after, before):
        per = {f"s{h}": {"paired": [[after * 100 + i - 1.5, 100, before * 100 + i - 1.5, 6, 5 if after > before else 0,
                                     1.0, 2.0] for i in range(4)]} for h in range(10)}
        for v in per.values():
            v["agreement"] = sum(r[0] for r in v["paired"]) / sum(r[1] for r in v["paired"])
        return {"per": per, "overall": sum(v["agreement"] for v in per.values()) / 10}

    flat = baking_summary(final(0.96, 0.96), 0.85, 0)
    assert flat["baking/final_accuracy_verdict"] == "INCONCLUSIVE" and flat["baking/converged"] is False
    assert flat["baking/prompt_effect_accuracy"] == 0.0 and flat["baking/prompt_effect_n_positions"] == 240
    moved = baking_summary(final(0.96, 0.90), 0.85, 0)
    assert moved["baking/final_accuracy_verdict"] == "PASS" and moved["baking/converged"] is True
    assert moved["baking/accuracy_gain_n"] == 40 and moved["baking/accuracy_gain"] == pytest.approx(0.06)
    # the threshold the verdict used goes with it, for the pipeline report's row (phase.baking.convergence_threshold)
    assert moved["baking/final_accuracy_threshold"] == 0.85
    assert baking_summary(final(0.96, 0.90), 0.97, 0)["baking/final_accuracy_threshold"] == 0.97




def test_control_evidence_hand_case():
    """Baked vs the shuffled-prompt control on the same examples. Strategy a: (effect, baked hits, control hits) =
    (2, 1, 2), (0, 0, 0); b: (1, 1, 0), (3, 0, 1). Control prompt-effect accuracy (2+0+0+1)/6 = 3/6, baked 2/6,
    baked - control = -1/6. Agreement on all positions: baked a 18/20, b 17/20 -> 0.875; control a 19/20, b 16/20
    -> 0.875; margin 0. Different prompt-effect positions between the two (not the same teacher / base) refuse."""
    baked = {"a": {"paired": [[9, 10, 8, 2, 1, 0, 0], [9, 10, 9, 0, 0, 0, 0]]},
             "b": {"paired": [[9, 10, 8, 1, 1, 0, 0], [8, 10, 7, 3, 0, 0, 0]]}}
    control = {"a": {"paired": [[10, 10, 8, 2, 2, 0, 0], [9, 10, 9, 0, 0, 0, 0]]},
               "b": {"paired": [[8, 10, 8, 1, 0, 0, 0], [8, 10, 7, 3, 1, 0, 0]]}}
    ce = be.control_evidence(baked, control, n_resamples=500)
    assert ce["n"] == 4 and ce["control_prompt_effect_accuracy"] == pytest.approx(3 / 6)
    assert ce["prompt_effect_vs_control"] == pytest.approx(-1 / 6)
    assert ce["control_accuracy"] == pytest.approx(0.875) and ce["accuracy_vs_control"] == pytest.approx(0.0)
    lo, hi = ce["prompt_effect_vs_control_ci95"]
    assert lo <= -1 / 6 <= hi
    control["b"]["paired"][1][3] = 2
    with pytest.raises(ValueError, match="strategy b: the control was not scored on the same"):
        be.control_evidence(baked, control)


def test_a_pass_also_needs_the_margin_over_the_shuffled_prompt_control():
    """The same PASS case as above: with the control's margin CI above 0 it stays PASS; a margin CI that reaches 0
    (the shuffled prompt does about as well) makes it INCONCLUSIVE, and says why."""
    ev = _fabricated(0.96, 0.90, effect=6, effect_agree=5)
    args = (ev["final_accuracy_ci95"], ev["accuracy_gain_ci95"], 0.85, ev["n"])
    v, why = be.baking_verdict(*args, control_ci=[0.1, 0.3])
    assert v == "PASS" and "above the shuffled-prompt control's" in why
    v, why = be.baking_verdict(*args, control_ci=[-0.05, 0.2])
    assert v == "INCONCLUSIVE" and "shuffled-prompt control does about as well" in why
    assert be.baking_verdict(*args, control_ci=[float("nan"), float("nan")])[0] == "INCONCLUSIVE"


def test_shuffled_prompts_keep_each_prompts_tokens_in_another_order():
    prompts = {"a": [1, 2, 3, 4, 5], "b": [7, 7, 7], "c": [1, 2]}
    sh = baking.shuffled_prompts(prompts, 0)
    assert sh == baking.shuffled_prompts(prompts, 0)                       # seeded
    assert all(sorted(sh[k]) == sorted(prompts[k]) for k in prompts)
    assert sh["a"] != prompts["a"] and sh["c"] == [2, 1] and sh["b"] == [7, 7, 7]


def test_the_pipeline_decides_the_baking_row_from_its_ci():
    """Without the phase's verdict (metrics from before the paired gain) a clearing CI is not a PASS: the unbaked
    model scores the same. With it, the row shows the phase's verdict and its reason."""
    from agentforge.pipeline.thresholds import _decided

    m = {"baking/final_accuracy": 0.96, "baking/final_accuracy_n": 40, "baking/final_accuracy_ci95": [0.9, 0.99]}
    got = _decided(m, "baking/final_accuracy", True, ">=", 0.85)
    assert got.startswith("INCONCLUSIVE (n=40, 95% CI [0.9, 0.99]") and "no paired gain" in got
    why = "the unbaked model already scores 0.9595 [0.9549, 0.9639]; gain -0.0008 [-0.003, +0.002]"
    m.update({"baking/final_accuracy_verdict": "INCONCLUSIVE", "baking/final_accuracy_why": why})
    assert _decided(m, "baking/final_accuracy", True, ">=", 0.85).endswith(f"; {why})")
    m["baking/final_accuracy_verdict"], m["baking/final_accuracy_why"] = "PASS", "gain CI above 0"
    assert _decided(m, "baking/final_accuracy", True, ">=", 0.85).startswith("PASS (n=40, 95% CI [0.9, 0.99]")
    del m["baking/final_accuracy_verdict"], m["baking/final_accuracy_why"]
    m["baking/final_accuracy_ci95"] = [0.8, 0.99]
    assert _decided(m, "baking/final_accuracy", True, ">=", 0.85).startswith("INCONCLUSIVE")
    m["baking/final_accuracy_n"] = 8
    m["baking/final_accuracy_ci95"] = [0.9, 0.99]
    # n < 30, and the row says so (before: a bare INCONCLUSIVE beside a CI wholly above the threshold, against the
    # report's stated rule; a pipeline-report audit)
    assert _decided(m, "baking/final_accuracy", True, ">=", 0.85) == \
        "INCONCLUSIVE (n=8, 95% CI [0.9, 0.99]; n = 8 < 30: too few to decide)"
    m.update({"baking/final_accuracy_ci95": [float("nan")] * 2, "baking/final_accuracy_test": "stratified bootstrap"})
    assert "bootstrap" not in _decided(m, "baking/final_accuracy", True, ">=", 0.85)   # no CI made: no method named


def test_one_example_per_strategy_prints_no_ci_and_why_not_nan_brackets():
    """The audit's smoke run (10 strategies, val_per_strategy=1) printed '0.5167 [nan, nan]; gain +0.0567 [+nan,
    +nan]' on the console and in the pipeline report: each CI-less figure now says '(no CI: <why>)' — in the verdict's
    reason (both), the control's text and the per-strategy table."""
    from agentforge.reasoning.baking_evidence import baking_summary

    per = {f"s{h}": {"paired": [[57 + h, 100, 52, 40, 9, 1.0, 2.0]]} for h in range(10)}
    control = {k: {"paired": [[55, 100, 52, 40, 8, 1.0, 2.0]]} for k in per}
    s = baking_summary({"per": per, "overall": 0.6}, 0.85, 0, control={"per": control})
    why = s["baking/final_accuracy_why"]
    assert "nan" not in why and s["baking/final_accuracy_verdict"] == "INCONCLUSIVE"
    assert f"already scores 0.5200 (no CI: {be.NO_CI_ONE_EACH}); gain +0." in why
    assert why.count("(no CI: one validation example per strategy; raise phase.baking.val_per_strategy") == 5
    per["s0"].update(kl=1.0, usage=0.0, teacher_usage=0.0)
    row = be.strategy_row(type("S", (), {"key": "s0", "name": "a", "threshold": 0.85})(), per,
                          {"s0": {"agreement": 0.52, "kl": 2.0}}, 0)
    assert row[1] == f"0.570 (no CI: {be.NO_CI_ONE_EACH})" and "nan" not in str(row[5])
    assert be.fmt_ci(0.5, [float("nan"), float("nan")], 2) == "0.50 (no CI: undefined)"
    assert be.fmt_ci(0.5, [0.25, 0.75], 2, True) == "+0.50 [+0.25, +0.75]"
