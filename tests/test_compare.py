"""The stage comparison: table marks, CSV, readable PNG plots and stats.json in the dashboard's format."""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import matplotlib.image as mpimg
import pytest

from agentforge.errors import ConfigError
from agentforge.evals.compare import change, load_results, run_comparison
from agentforge.evals.dashboard_verdict import NO_EFFICIENCY_TARGET
from agentforge.phases.compare import thresholds_of

TH = {"pass_at": {1: 0.30, 10: 0.45}, "min_delta_pass1": 0.04, "alpha": 0.05, "failure_p": 0.1}


def _results(stage: str, ppl: float, correct: list[int], counts: list[int], latency: float) -> dict:
    return {"stage": stage, "metrics": {"perplexity": ppl, "reasoning_accuracy": sum(correct) / len(correct),
                                        "latency_ms": latency, "param_count": 1000, "peak_memory_mb": 100.0},
            "per_example": {"gsm8k_correct": correct, "gsm8k_num_correct": counts, "n_samples": 10,
                            "arc_correct": correct[::-1]}}


@pytest.fixture
def results_dir(tmp_path):
    d = tmp_path / "eval_results"
    d.mkdir()
    n = 40
    stages = {"baseline": _results("baseline", 20.0, [0] * 30 + [1] * 10, [0] * 30 + [3] * 10, 100.0),
              "after_surgery": _results("after_surgery", 20.0, [0] * 30 + [1] * 10, [0] * 30 + [3] * 10, 110.0),
              "finetuned_recursive": _results("finetuned_recursive", 12.0, [0] * 10 + [1] * 30,
                                              [0] * 5 + [8] * 35, 120.0)}
    stages["finetuned_recursive"]["metrics"]["avg_refine_steps"] = 1.5
    for st, r in stages.items():
        assert len(r["per_example"]["gsm8k_correct"]) == n
        (d / f"{st}_results.json").write_text(json.dumps(r))
    return d


def test_change_marks_follow_the_metric_direction():
    assert change("perplexity", 20, 12) == "improved" and change("perplexity", 12, 20) == "regressed"
    assert change("reasoning_accuracy", 0.2, 0.5) == "improved" and change("latency_ms", 1, 2) == "regressed"
    assert change("pass_at_10", 0.2, 0.2) == "same" and change("param_count", 1, 2) == ""


def test_comparison_outputs(results_dir, tmp_path):
    out = run_comparison(results_dir, ["baseline", "after_surgery", "finetuned_recursive"], tmp_path / "cmp",
                         thresholds=TH, n_resamples=2000)
    md = (tmp_path / "cmp" / "comparison.md").read_text()
    # no per-row losses in these files: perplexity has nothing to pair, and timings never get a direction
    assert "| perplexity | lower | 20 | 20 (+0) | 12 (-8) | unpaired: no test (no per-example results) |" in md
    assert "| latency_ms | lower | 100 | 110 (+10) | 120 (+20) | unpaired: no test |" in md
    assert "| reasoning_accuracy | higher | 0.25 | 0.25 (+0 [-0.0876, +0.0876], n=40 ~) | 0.75 (+0.5 [" in md
    assert "| avg_refine_steps |  | – | – | 1.5 |  |" in md
    rows = list(csv.DictReader(io.StringIO((tmp_path / "cmp" / "comparison.csv").read_text())))
    r = next(x for x in rows if x["metric"] == "reasoning_accuracy" and x["stage"] == "finetuned_recursive")
    assert float(r["value"]) == 0.75 and float(r["delta_vs_first"]) == pytest.approx(0.5) and r["change"] == "improved"
    assert float(r["p"]) == pytest.approx(2 * 0.5 ** 20) and r["n"] == "40" and float(r["ci_low"]) > 0  # 20 gains
    for p in out["plots"]:
        img = mpimg.imread(p)
        assert p.read_bytes()[:4] == b"\x89PNG" and img.shape[0] >= 250 and img.shape[1] >= 400
        assert img[..., :3].std() > 0.05  # not a blank canvas
    st = json.loads((tmp_path / "cmp" / "stats.json").read_text())
    p1 = st["pass_at_1"]
    assert st["candidate"] == "finetuned_recursive" and st["baseline"] == "baseline"
    assert p1["finetuned_recursive"] == pytest.approx(35 * 0.8 / 40) and p1["baseline"] == pytest.approx(0.075)
    assert p1["ci95"][0] > 0 and p1["p_value"] < 0.05 and p1["source"] == "sampled (n=10)"
    assert p1["test"] == "bootstrap" and p1["pairing"].startswith("by position")  # fractions; no ids in the files
    assert st["pass_at_10"]["finetuned_recursive"] == pytest.approx(35 / 40)
    # every accuracy condition met; no latency/RAM target configured (compare's default), so not section 7's SUCCESS
    assert st["verdict"] == "PARTIAL" and st["reasons"] == [NO_EFFICIENCY_TARGET]
    assert "arc_easy_accuracy" in st


def test_identical_stages_are_a_failure_verdict(results_dir, tmp_path):
    out = run_comparison(results_dir, ["baseline", "after_surgery"], tmp_path / "c2", thresholds=TH, n_resamples=500)
    st = out["stats"]
    assert st["pass_at_1"]["delta"] == 0 and st["pass_at_1"]["p_value"] == 1.0 and st["verdict"] == "FAILURE"


def test_efficiency_thresholds_enter_the_verdict(results_dir, tmp_path):
    th = dict(TH, max_latency_ratio=1.1)
    st = run_comparison(results_dir, None, tmp_path / "c3", thresholds=th, n_resamples=500)["stats"]
    # separate phase=eval runs time each stage once, minutes apart: a ratio of those decides nothing
    assert st["efficiency"][0]["ok"] is None and "not timed interleaved" in st["efficiency"][0]["note"]
    assert st["verdict"] == "PARTIAL" and any("not established" in r for r in st["reasons"])


def test_missing_stage_and_config_thresholds(results_dir):
    with pytest.raises(ConfigError, match="phase=eval stage=nope"):
        load_results(results_dir, ["baseline", "nope"])
    assert list(load_results(results_dir, None)) == ["baseline", "after_surgery", "finetuned_recursive"]
    assert thresholds_of({"min_pass_at_1": 0.3, "min_pass_at_10": None, "alpha": 0.05}) == \
        {"alpha": 0.05, "pass_at": {1: 0.3}}


def test_compare_phase_gate(results_dir, tmp_path):
    from agentforge.evals.collect import KPIGateError
    from agentforge.main import run
    from tests.conftest import compose_cfg

    base = ["phase=compare", "logger=none", f"phase.results_dir={results_dir}", "phase.n_resamples=500",
            'phase.gate={verdict_score:">=2"}', "phase.thresholds.max_memory_ratio=1.1"]
    out = run(compose_cfg(base + ["stages=[baseline,finetuned_recursive]"], tmp_path))
    # the memory target (peaks 100 and 100 MB: ratio 1.0 <= 1.1) is the latency/RAM condition SUCCESS needs
    assert out["verdict"] == "SUCCESS"
    assert json.loads(Path(out["stats"]).read_text())["efficiency"][0]["ok"] is True
    with pytest.raises(KPIGateError, match="verdict_score = 1"):   # the same without it: PARTIAL
        run(compose_cfg([*base[:-1], "stages=[baseline,finetuned_recursive]"], tmp_path))
    with pytest.raises(KPIGateError, match="verdict_score = 0"):
        run(compose_cfg(base + ["stages=[baseline,after_surgery]"], tmp_path))


def _with_ids(stage: str, correct: list[int], ids: list[str]) -> dict:
    r = _results(stage, 20.0, correct, [0] * len(correct), 100.0)
    r["per_example"].update(gsm8k_ids=ids, arc_ids=ids[::-1], n_samples=0)
    return r


def test_pairing_is_by_example_id(tmp_path):
    from agentforge.evals.compare import compute_stats

    ids = [f"ex{i}" for i in range(40)]
    base = _with_ids("baseline", [0] * 40, ids)
    cand = _with_ids("cand", [1] * 10 + [0] * 30, ids)
    # the same examples in another order: paired by id, not by position
    order = list(range(40))[::-1]
    shuffled = _with_ids("cand", [cand["per_example"]["gsm8k_correct"][i] for i in order], [ids[i] for i in order])
    shuffled["per_example"]["arc_correct"] = cand["per_example"]["arc_correct"][::-1]
    shuffled["per_example"]["arc_ids"] = ids
    a = compute_stats({"baseline": base, "cand": cand}, "baseline", "cand", {"pass_at": {1: 0.2}})
    b = compute_stats({"baseline": base, "cand": shuffled}, "baseline", "cand", {"pass_at": {1: 0.2}})
    assert a["pass_at_1"]["pairing"] == "by example id" and a["pass_at_1"]["test"] == "mcnemar_exact + hull_ci"
    assert a["pass_at_1"]["p_value"] == pytest.approx(2 / 1024)                 # 10 wins, 0 losses
    for key in ("pass_at_1", "arc_easy_accuracy"):   # the exact test does not depend on the order
        assert {k: a[key][k] for k in ("delta", "exact", "p_value", "ci95")} == \
            {k: b[key][k] for k in ("delta", "exact", "p_value", "ci95")}
    other = _with_ids("cand", [1] * 10 + [0] * 30, [f"other{i}" for i in range(40)])
    with pytest.raises(ConfigError, match="different examples .*40 only in the candidate"):
        compute_stats({"baseline": base, "cand": other}, "baseline", "cand", {})


def test_too_few_examples_are_inconclusive(tmp_path):
    from agentforge.evals.compare import compute_stats

    ids = ["a", "b"]
    res = {"baseline": _with_ids("baseline", [0, 0], ids), "cand": _with_ids("cand", [1, 1], ids)}
    st = compute_stats(res, "baseline", "cand", {"pass_at": {1: 0.3}})
    assert st["pass_at_1"]["p_value"] == pytest.approx(0.5) and st["pass_at_1"]["bootstrap"]["p_value"] < 0.01
    assert st["verdict"] == "INCONCLUSIVE" and "only 2 paired examples" in st["reasons"][0]
    assert st["verdict_score"] == 0


def test_ratio_targets_are_decided_from_the_ci_of_interleaved_rounds():
    """Met when the whole CI of the per-round ratio meets the target, missed when none of it does, inconclusive
    when it straddles; memory's single values decide only when both are measured (a NaN is 'not measured')."""
    from agentforge.evals.compare import efficiency_checks, median_ci

    def kpi(rounds, tokens=100, memory=float("nan")):
        return {"metrics": {"latency_rounds_ms": rounds, "latency_tokens": tokens, "peak_memory_mb": memory}}

    base = kpi([100.0] * 7, memory=200.0)
    slow = kpi([120, 110, 130, 125, 115, 120, 118])                   # ratios 1.1-1.3: the CI is above 0.54
    ok, checks = efficiency_checks(slow, base, {"max_latency_ratio": 0.54})
    assert ok is False and checks[0]["ok"] is False and checks[0]["ci95"] == [1.1, 1.3]
    straddle = kpi([40, 60, 50, 70, 45, 55, 52])                      # ratios 0.4-0.7 around 0.54
    ok, checks = efficiency_checks(straddle, base, {"max_latency_ratio": 0.54, "min_throughput_ratio": 3.0})
    assert ok is False and [c["ok"] for c in checks] == [None, False]  # throughput 1/0.7-1/0.4: all below 3
    assert checks[1]["ci95"] == pytest.approx([100 / 70, 100 / 40])
    ok, checks = efficiency_checks(straddle, base, {"max_latency_ratio": 0.54})   # alone the latency straddles
    assert ok == "inconclusive" and checks[0]["ok"] is None
    ok, checks = efficiency_checks(slow, base, {"max_memory_ratio": 0.5})
    assert ok == "inconclusive" and checks[0]["note"] == "not measured"
    a, b = kpi([100.0] * 7, memory=46.3), kpi([100.0] * 7, memory=1.25)
    assert efficiency_checks(a, b, {"max_memory_ratio": 0.5})[1][0]["ok"] is False   # separate processes: decided
    a["metrics"]["memory_shared_process"] = True   # codegen: both trainings in one process, one after the other
    ok, checks = efficiency_checks(a, b, {"max_memory_ratio": 0.5})
    assert ok == "inconclusive" and checks[0]["ok"] is None and "not comparable" in checks[0]["note"]
    assert median_ci([3, 1, 2, 5, 4]) == [1, 5]             # n = 5: no order statistics reach 95 %: the range
    ok, checks = efficiency_checks(kpi([300.0] * 5), kpi([100.0] * 5), {"max_latency_ratio": 0.54})
    assert ok == "inconclusive" and "needs 6" in checks[0]["note"]   # 5 rounds: the range covers < 95 %: no decision
    assert median_ci(list(range(1, 21))) == [6, 15]         # n = 20: P(Bin(20, 1/2) <= 5) = 0.0207 -> k = 6


def test_absolute_timing_targets_are_decided_from_the_ci_of_the_rounds():
    """max_latency_ms / min_throughput_tokens_per_sec: the whole CI of the candidate's median round must meet the
    target; one timing (no rounds) decides nothing; peak memory, a single measured value, decides by it."""
    from agentforge.evals.compare import efficiency_checks

    rounds = {"latency_rounds_ms": [100, 90, 110, 100, 95, 105, 100], "latency_tokens": 100, "latency_ms": 100.0,
              "peak_memory_mb": 300.0}
    ok, checks = efficiency_checks({"metrics": rounds}, {"metrics": {}}, {"max_latency_ms": 150, "max_peak_memory_mb": 250})
    assert [c["ok"] for c in checks] == [True, False] and checks[0]["ci95"] == [90, 110]   # 7 rounds: k = 1
    ok, checks = efficiency_checks({"metrics": rounds}, {"metrics": {}}, {"min_throughput_tokens_per_sec": 1000})
    assert checks[0]["ok"] is None and checks[0]["ci95"] == pytest.approx([100 / 0.11, 100 / 0.09])   # straddles
    once = {"latency_ms": 100.0, "latency_tokens": 100, "throughput_tokens_per_sec": 1000.0}
    ok, checks = efficiency_checks({"metrics": once}, {"metrics": {}}, {"max_latency_ms": 150})
    assert ok == "inconclusive" and checks[0]["ok"] is None and "no decision" in checks[0]["note"]


def test_results_of_the_wrong_shape_and_no_standard_stage_are_one_clear_error(tmp_path):
    """A results file that parses but is not an eval result (no "metrics" object, a list) is a ConfigError naming
    it; a directory holding only other stages (the pipeline's phase1_model1, ...) names them and how to ask."""
    d = tmp_path / "er"
    d.mkdir()
    (d / "baseline_results.json").write_text('{"stage": "baseline"}')
    with pytest.raises(ConfigError, match=r"baseline_results.json: not a phase=eval results file"):
        load_results(d, ["baseline"])
    (d / "baseline_results.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match=r"not a phase=eval results file"):
        load_results(d, None)
    (d / "baseline_results.json").unlink()
    for st in ("phase1_model1", "phase2_champion"):
        (d / f"{st}_results.json").write_text(json.dumps(_results(st, 10.0, [0, 1], [0, 1], 1.0)))
    with pytest.raises(ConfigError, match=r"it holds phase1_model1, phase2_champion: name them, e\.g\. "
                                          r"stages=\[phase1_model1,phase2_champion\]"):
        load_results(d, None)


def test_stages_from_different_source_checkpoints_are_named_under_the_table(results_dir, tmp_path):
    """after_surgery evaluated from another checkpoint than baseline: its change includes the checkpoints' difference,
    and the table says so; from the same checkpoint there is no such note."""
    for st in ("baseline", "after_surgery"):
        r = json.loads((results_dir / f"{st}_results.json").read_text())
        r["checkpoint"] = "/ckpt/model1"
        (results_dir / f"{st}_results.json").write_text(json.dumps(r))
    run_comparison(results_dir, ["baseline", "after_surgery"], tmp_path / "same", thresholds=TH, n_resamples=200)
    assert "different checkpoints" not in (tmp_path / "same" / "comparison.md").read_text()
    r["checkpoint"] = "/ckpt/finetuned_vanilla"
    (results_dir / "after_surgery_results.json").write_text(json.dumps(r))
    run_comparison(results_dir, ["baseline", "after_surgery"], tmp_path / "diff", thresholds=TH, n_resamples=200)
    md = (tmp_path / "diff" / "comparison.md").read_text()
    assert ("**The stages start from different checkpoints** — baseline: `/ckpt/model1`; after_surgery: "
            "`/ckpt/finetuned_vanilla`: a change between them includes") in md


def test_a_baseline_that_is_not_a_compared_stage_names_its_key(results_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"phase.baseline=foo: stage 'foo' is not among the compared stages"):
        run_comparison(results_dir, ["baseline", "after_surgery"], tmp_path / "c", baseline="foo", thresholds=TH)


def test_different_choice_example_counts_name_choice_examples(tmp_path):
    """ARC / PIQA counts come from phase.choice_examples, not phase.eval_examples: the error names the right key."""
    from agentforge.evals.compare_table import align

    with pytest.raises(ConfigError, match=r"same phase.choice_examples"):
        align({}, {}, "arc", [1, 0], [1], "arc_easy_accuracy")
    with pytest.raises(ConfigError, match=r"same phase.eval_examples"):
        align({}, {}, "gsm8k", [1, 0], [1], "reasoning_accuracy")


def test_pass_at_1_is_compared_like_for_like_never_greedy_against_sampled():
    """A candidate scored greedily against a baseline scored by sampling: the same answers (24 of 40 right greedily)
    read as a +0.30 pass@1 gain at p < 0.001 when the baseline's sampled estimate (3 of 10 a problem) stood in for its
    greedy one. Where both have greedy answers both use them (delta 0); where one side has only samples and the other
    only greedy answers, pass@1 is not compared."""
    from agentforge.evals.compare import compute_stats

    greedy = [1] * 24 + [0] * 16
    cand = {"metrics": {}, "per_example": {"gsm8k_correct": greedy}}
    base = {"metrics": {}, "per_example": {"gsm8k_correct": greedy, "gsm8k_num_correct": [3] * 40, "n_samples": 10}}
    st = compute_stats({"base": base, "cand": cand}, "base", "cand", {"pass_at": {1: 0.3}, "min_delta_pass1": 0.1},
                       n_resamples=500)
    p1 = st["pass_at_1"]
    assert p1["source"] == "greedy (one side has no samples)" and p1["delta"] == 0.0 and st["verdict"] != "SUCCESS"
    sampled_only = {"metrics": {}, "per_example": {"gsm8k_num_correct": [3] * 40, "n_samples": 10}}
    st = compute_stats({"base": sampled_only, "cand": cand}, "base", "cand", {"pass_at": {1: 0.3}}, n_resamples=500)
    assert st["pass_at_1"]["note"].startswith("not compared: the candidate's pass@1 is greedy, the baseline's sampled")
    assert st["verdict"] != "SUCCESS"


def test_one_paired_example_is_inconclusive_not_an_error():
    from agentforge.evals.compare import compute_stats
    from agentforge.evals.stats import paired_test

    one = {name: {"metrics": {}, "per_example": {"gsm8k_correct": [v]}} for name, v in (("a", 0), ("b", 1))}
    st = compute_stats(one, "a", "b", {}, n_resamples=200)
    assert st["pass_at_1"]["n"] == 1 and st["verdict"] == "INCONCLUSIVE"
    res = paired_test([0.5], [0.25])
    assert res["n"] == 1 and res["mean_a"] == 0.5 and math.isnan(res["p_value"]) and not res["enough"]


def test_phase_compare_labels_its_run_with_the_verdict_at_the_configured_alpha(results_dir, tmp_path, capsys,
                                                                               monkeypatch):
    """phase=compare hands the W&B run the section-6 labels of ITS stats and alpha (``run_labels``): with
    phase.thresholds.alpha=0.3 a p of about 0.02 labels nothing INCONCLUSIVE on its account, at 0.01 it does."""
    from agentforge.evals.dashboard_verdict import run_labels
    from agentforge.tracking.tracker import Tracker
    from tests.conftest import run_in_process

    given = []
    monkeypatch.setattr(Tracker, "label", lambda self, labels: given.append(list(labels)))
    (results_dir / "finetuned_recursive_results.json").unlink()
    base = json.loads((results_dir / "baseline_results.json").read_text())
    cand = json.loads((results_dir / "after_surgery_results.json").read_text())
    cand["per_example"]["gsm8k_correct"] = [0] * 26 + [1] * 14   # 4 more right than the baseline, none fewer
    cand["per_example"]["gsm8k_num_correct"] = [0] * 26 + [3] * 14   # pass@1 from these samples: 4 pairs differ
    (results_dir / "after_surgery_results.json").write_text(json.dumps(cand))
    assert sum(base["per_example"]["gsm8k_correct"]) == 10
    args = ["phase=compare", "logger=none", f"phase.results_dir={results_dir}", "phase.n_resamples=500",
            "stages=[baseline,after_surgery]"]
    for alpha in (0.3, 0.01):
        ran = run_in_process([*args, f"phase.thresholds.alpha={alpha}"], tmp_path / f"a{alpha}", capsys)
        stats = json.loads(Path(ran.result["stats"]).read_text())
        p = stats["pass_at_1"]["p_value"]
        assert 0.01 < p < 0.3   # 4 of 40 problems better, none worse (a paired bootstrap: p about 0.02)
        assert given[-1] == run_labels(stats, alpha)
        assert ("INCONCLUSIVE" in given[-1]) == (alpha == 0.01 or stats["verdict"] == "INCONCLUSIVE")
