"""What the comparison refuses to decide from, on real results files: accuracies under a generation budget the
reference answers do not fit, peak memory measured differently, a primary test marked by another p than the
verdict's, and results files of the wrong shape (one error line, nothing written)."""
from __future__ import annotations

import importlib.util
import json
import math

import numpy as np
import pytest

from agentforge.errors import ConfigError
from agentforge.evals.compare import compute_stats, load_results, run_comparison, table_rows
from agentforge.evals.dashboard_verdict import NO_EFFICIENCY_TARGET
from agentforge.evals.pass_at_k import mean_pass_at_k
from tests.conftest import REPO

TH = {"pass_at": {1: 0.30}, "min_delta_pass1": 0.04, "alpha": 0.05, "failure_p": 0.1}
# every accuracy condition met and no latency/RAM target configured: section 7's SUCCESS is out of reach
ACCURACY_ONLY = ("PARTIAL", [NO_EFFICIENCY_TARGET])


def _stage(correct: list[int], **extra) -> dict:
    n = len(correct)
    return {"metrics": {"reasoning_accuracy": sum(correct) / n}, **extra,
            "per_example": {"gsm8k_correct": correct, "gsm8k_ids": [f"q{i}" for i in range(n)]}}


def _write(d, **stages) -> None:
    d.mkdir(exist_ok=True)
    for st, r in stages.items():
        (d / f"{st}_results.json").write_text(json.dumps(r))


# 40 questions, 20 gained and none lost: every accuracy target met wherever the accuracies can decide
BASE, CAND = [0] * 30 + [1] * 10, [0] * 10 + [1] * 30
CUT = {"rate": 0.0, "fit": 0, "n": 40, "gen_tokens": 48, "max_seq_len": 1024, "answer_tokens_p95": 482,
       "context_tokens_p95": 880}


def test_accuracies_under_a_budget_the_answers_do_not_fit_decide_nothing(tmp_path):
    """GSM8K with the old 48-token budget: no reference answer fits, yet the verdict read SUCCESS / FAILURE; now it is
    INCONCLUSIVE with the budget and the fit rate named, unless what does not rest on the accuracies fails."""
    fits = dict(CUT, rate=1.0, fit=40)
    _write(tmp_path / "ok", baseline=_stage(BASE, reference_fit=fits), cand=_stage(CAND, reference_fit=fits))
    ok = run_comparison(tmp_path / "ok", ["baseline", "cand"], tmp_path / "o1", thresholds=TH)["stats"]
    assert (ok["verdict"], ok["reasons"]) == ACCURACY_ONLY
    _write(tmp_path / "cut", baseline=_stage(BASE, reference_fit=CUT), cand=_stage(CAND, reference_fit=CUT))
    st = compute_stats(load_results(tmp_path / "cut", ["baseline", "cand"]), "baseline", "cand", TH)
    assert st["verdict"] == "INCONCLUSIVE" and len(st["reasons"]) == 2
    assert st["reasons"][0].startswith("baseline: phase.gen_tokens=48 fits 0% of the 40 GSM8K reference answers "
                                       "(gen/reference_fit_rate 0.000 < 0.95); 95 % of them need phase.gen_tokens >= 482")
    only_metric = _stage(CAND)   # a file with the rate alone, no budget figures
    only_metric["metrics"]["gen/reference_fit_rate"] = 0.5
    st = compute_stats({"baseline": _stage(BASE), "cand": only_metric}, "baseline", "cand", TH)
    assert st["verdict"] == "INCONCLUSIVE" and st["reasons"] == [
        "cand: phase.gen_tokens fits 50% of the GSM8K reference answers (gen/reference_fit_rate 0.500 < "
        "0.95): an answer cut at the budget is not credited, so its accuracies measure the budget"]
    unstable = _stage(CAND, reference_fit=CUT, finetune={"steps": 2, "unstable": True})
    st = compute_stats({"baseline": _stage(BASE), "cand": unstable}, "baseline", "cand", TH)
    assert st["verdict"] == "FAILURE" and "unstable" in st["reasons"][0]   # does not rest on the accuracies


def _memory(finetune, peak: float) -> dict:
    r = _stage([0, 1, 0, 1], finetune=finetune, device="cpu")
    r["metrics"]["peak_memory_mb"] = peak
    return r


def test_peak_memory_of_a_stage_that_fine_tuned_in_its_process_is_not_compared_with_one_that_did_not(tmp_path):
    """486 vs 520 MB, the candidate fine-tuned in the evaluating process: its RSS holds the fine-tune's leftovers, so
    max_memory_ratio 1.05 decides nothing (it read FAILURE, "missed by their whole CI", though memory has no CI);
    evaluated alike the ratio of the single values decides, and the reason says so."""
    th = dict(TH, max_memory_ratio=1.05)
    _write(tmp_path / "r", baseline=_memory(None, 486.0), cand=_memory({"steps": 2}, 520.0))
    st = compute_stats(load_results(tmp_path / "r", ["baseline", "cand"]), "baseline", "cand", th)
    check = st["efficiency"][0]
    assert check["ok"] is None and "finetuned_in_process True vs False" in check["note"]
    assert "not comparable" in check["note"] and st["verdict"] == "INCONCLUSIVE"
    assert not any("efficiency" in r for r in st["reasons"])
    _write(tmp_path / "a", baseline=_memory({"steps": 2}, 486.0), cand=_memory({"steps": 2}, 520.0))
    st = compute_stats(load_results(tmp_path / "a", ["baseline", "cand"]), "baseline", "cand", th)
    assert st["efficiency"][0]["ok"] is False and st["verdict"] == "FAILURE"
    assert st["reasons"][0] == "efficiency targets not met: max_memory_ratio 1.07 vs target 1.05 (single values, no CI)"
    assert not any("whole CI" in r for r in st["reasons"])


def _audit_case() -> dict:
    """The audit's two stages (its mk_results.py, seed 0): 40 problems, pass@1 0.3175 -> 0.39, paired bootstrap p 0.043
    (0.038 with the p that inverts the percentile interval, since 2026-11-28); Holm over the table's five tests made it
    0.129."""
    rng, n = np.random.default_rng(0), 40
    ids = [f"{i:016x}" for i in range(n)]

    def res(stage, pc, shift):
        counts = [int(rng.binomial(10, min(1, max(0, pc + shift)))) for _ in range(n)]
        greedy = [int(rng.random() < pc + shift) for _ in range(n)]
        row = list(rng.normal(2.0 - shift, 0.1, 16))
        m = {"perplexity": math.exp(np.mean(row)), "loss": float(np.mean(row)), "reasoning_accuracy": sum(greedy) / n,
             "pass_at_1": mean_pass_at_k(10, counts, 1), "pass_at_10": mean_pass_at_k(10, counts, 10)}
        return {"stage": stage, "seed": 0, "eval_rows": [16, 129], "datasets": {"gsm8k": n}, "metrics": m,
                "per_example": {"gsm8k_correct": greedy, "gsm8k_ids": ids, "gsm8k_num_correct": counts,
                                "n_samples": 10, "row_loss": row}}
    return {"baseline": res("baseline", 0.3, 0.0), "finetuned_recursive": res("finetuned_recursive", 0.3, 0.08)}


def test_the_primary_pass_at_1_marker_agrees_with_the_verdict(tmp_path):
    """The verdict tests pass@1 on its own, pre-registered p; the table marked the same comparison with Holm's p and
    showed '~ no significant change' beside 'verdict: SUCCESS'. The primary row is now out of the family. (With the
    4 pp Δ target the verdict is not SUCCESS: Δ 0.0725's CI [0.005, 0.14] straddles 0.04; without it, pass@1 0.39's
    own CI [0.34, 0.44] clears 0.30 and the verdict rests on pass@1's p alone.)"""
    _write(tmp_path / "r", **_audit_case())
    out = run_comparison(tmp_path / "r", None, tmp_path / "o", thresholds={**TH, "min_delta_pass1": None},
                         n_resamples=2000)
    st, row = out["stats"], next(r for r in out["rows"] if r["metric"] == "pass_at_1" and r["stage"] != "baseline")
    assert (st["verdict"], st["reasons"]) == ACCURACY_ONLY
    assert st["pass_at_1"]["p_value"] == pytest.approx(0.038, abs=0.005)
    assert st["pass_at_1"]["finetuned_recursive_ci95"][0] > 0.30
    with_delta = run_comparison(tmp_path / "r", None, tmp_path / "o2", thresholds=TH, n_resamples=2000)["stats"]
    assert with_delta["verdict"] == "INCONCLUSIVE" and any("straddles the target 0.04" in r
                                                           for r in with_delta["reasons"])
    assert row["p"] == row["p_holm"] == st["pass_at_1"]["p_value"] and row["change"] == "improved"
    assert "pre-registered primary test" in out["markdown"] and "n=40 ▲) | paired bootstrap (the verdict's" in \
        out["markdown"]
    family = next(r for r in table_rows(out["results"], n_resamples=2000) if r["metric"] == "pass_at_1"
                  and r["stage"] != "baseline")   # without a primary test: one of the Holm family, as before
    assert family["p_holm"] == pytest.approx(3 * row["p"]) and family["change"] == "no significant change"


@pytest.mark.parametrize("edit,message", [
    (lambda r: r.update(per_example=None), r"baseline_results.json: per_example is null, not an object; re-run "
                                           r"phase=eval stage=baseline"),
    (lambda r: r["per_example"].update(gsm8k_num_correct=[1, 12, 0, 0], n_samples=10),
     r"per_example.gsm8k_num_correct\[1\] is 12, more correct samples than per_example.n_samples = 10"),
    (lambda r: r["per_example"].update(gsm8k_ids=["q0", "q1", "q2"]),
     r"per_example.gsm8k_ids has 3 values for the 4 of per_example.gsm8k_correct"),
    (lambda r: r["per_example"].update(gsm8k_correct=[0, 1, "1", 0]), r"per_example.gsm8k_correct\[2\] is '1', not 0 or 1"),
    (lambda r: r.update(finetune=[2]), r"finetune is list, not an object or null"),
])
def test_a_results_file_of_the_wrong_shape_is_one_error_naming_the_file_and_key(tmp_path, edit, message):
    bad = _stage([0, 1, 0, 1])
    edit(bad)
    _write(tmp_path, baseline=bad)
    with pytest.raises(ConfigError, match=message):
        load_results(tmp_path, ["baseline"])


def test_a_comparison_that_fails_writes_nothing(tmp_path, capsys):
    """Stages evaluated on different questions: scripts/compare_results.py says so on one error line and leaves no
    comparison.md / .csv / plots behind (they were written before the statistics failed)."""
    other = _stage(CAND)
    other["per_example"]["gsm8k_ids"] = [f"other{i}" for i in range(40)]
    _write(tmp_path / "r", baseline=_stage(BASE), finetuned_recursive=other)
    spec = importlib.util.spec_from_file_location("compare_results", REPO / "scripts" / "compare_results.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    code = script.main(["--results-dir", str(tmp_path / "r"), "--out", str(tmp_path / "o"), "--n-resamples", "200"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "different examples" in err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").rglob("*"))


def test_one_stage_is_refused_not_compared(tmp_path, capsys):
    """`phase=compare 'stages=[base]'` exited 0 with a one-column table, no verdict, no stats.json and no message (an
    audit). One stage named, or one standard stage found without stages=, is one error line, before any output: in
    the phase (``phases/compare.run``: stages=[x] before any file is read) and in scripts/compare_results.py."""
    from agentforge.phases.compare import run
    from tests.conftest import compose_cfg

    _write(tmp_path / "r", baseline=_stage(BASE))
    for stages, msg in ((["stages=[base]"], r"stages=\[base\] names one stage; a comparison needs two or more, e\.g\. "
                                             r"stages=\[baseline,base\]$"),
                        ([], r"/r: holds the results of one standard stage \(baseline\); a comparison needs two: run "
                             r"phase=eval stage=NAME for another")):
        cfg = compose_cfg(["phase=compare", "logger=none", f"phase.results_dir={tmp_path / 'r'}", *stages],
                          tmp_path / "run")
        with pytest.raises(ConfigError, match=msg):
            run(cfg)
    assert not (tmp_path / "run" / "outputs").exists() or not any((tmp_path / "run" / "outputs").rglob("*.md"))
    spec = importlib.util.spec_from_file_location("compare_results", REPO / "scripts" / "compare_results.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    for argv in (["baseline"], []):
        assert script.main([*argv, "--results-dir", str(tmp_path / "r"), "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and "a comparison needs two" in err, err
    assert not (tmp_path / "o").exists()


def test_the_verdict_reads_pass10s_gain_target_and_fails_a_candidate_worse_at_pass10():
    """Section 2's Δ pass@10 ≥ 3 pp and section 7's "any primary KPI below target". 30 problems, 10 samples each:
    the candidate solves 20 problems always and 10 never (pass@1 0.667, pass@10 0.667); the baseline one sample in
    ten of every problem (pass@1 0.1, pass@10 1.0). pass@1 alone read SUCCESS with no reason (an audit); pass@10's
    CI lies wholly below 0, so it is FAILURE, the reasons naming pass@10."""
    from agentforge.codegen.scoring import compute_stats
    from agentforge.phases.compare import thresholds_of

    th = thresholds_of({"min_pass_at_1": 0.30, "min_pass_at_10": 0.45, "min_delta_pass1": 0.04,
                        "min_delta_pass10": 0.03, "alpha": 0.05, "failure_p": 0.1, "min_n": 30})
    cand = [{"num_samples": 10, "num_correct": 10 if i < 20 else 0} for i in range(30)]
    base = [{"num_samples": 10, "num_correct": 1} for _ in range(30)]
    s = compute_stats({"cognate": cand, "gpt2_scratch": base}, {"cognate": {}, "gpt2_scratch": {}},
                      candidate="cognate", baseline="gpt2_scratch", ks=[1, 10], thresholds=th, n_resamples=2000)
    assert s["pass_at_10"]["ci95"][1] < 0 and s["pass_at_1"]["ci95"][0] > 0
    assert s["verdict"] == "FAILURE"
    assert any("delta pass@10 -0.3333 < target 0.03 (its whole CI" in r for r in s["reasons"])
    assert any("significantly worse than the baseline at pass@10" in r for r in s["reasons"])
    # the same candidate against a baseline it beats at both k: every accuracy target met; a pass@10 gain under 3 pp alone blocks it
    base = [{"num_samples": 10, "num_correct": 0} for _ in range(30)]
    ok = compute_stats({"cognate": cand, "gpt2_scratch": base}, {"cognate": {}, "gpt2_scratch": {}},
                       candidate="cognate", baseline="gpt2_scratch", ks=[1, 10], thresholds=th, n_resamples=2000)
    assert (ok["verdict"], ok["reasons"]) == ACCURACY_ONLY
    # Δ pass@10 0.6667: its CI (20 problems gained of 30) straddles 0.7 (not established: not SUCCESS, not FAILURE)
    # and lies wholly below 0.9 (missed: FAILURE)
    high = compute_stats({"cognate": cand, "gpt2_scratch": base}, {"cognate": {}, "gpt2_scratch": {}},
                         candidate="cognate", baseline="gpt2_scratch", ks=[1, 10],
                         thresholds={**th, "min_delta_pass10": 0.7}, n_resamples=2000)
    assert high["verdict"] == "INCONCLUSIVE" and any(r.startswith("delta pass@10 0.6667 not established: its CI")
                                                     for r in high["reasons"])
    high = compute_stats({"cognate": cand, "gpt2_scratch": base}, {"cognate": {}, "gpt2_scratch": {}},
                         candidate="cognate", baseline="gpt2_scratch", ks=[1, 10],
                         thresholds={**th, "min_delta_pass10": 0.9}, n_resamples=2000)
    assert high["verdict"] == "FAILURE" and any("delta pass@10 0.6667 < target 0.9" in r for r in high["reasons"])


def test_a_pass10_gain_target_without_pass10_is_not_established():
    from agentforge.evals.stats import verdict

    th = {"pass_at": {1: 0.3}, "min_delta_pass1": 0.04, "min_delta_pass10": 0.03}
    v, reasons = verdict(pass_at={1: 0.6}, delta_pass1=0.3, ci95=[0.2, 0.4], p_value=0.001, thresholds=th,
                         efficiency_ok=None, n=30, others={10: {"delta": None, "ci95": None, "p_value": None}})
    assert v != "SUCCESS" and "delta pass@10 not measured; its target 0.03 is not established" in reasons


def test_the_cpu_throughput_and_ram_targets_decide_nothing_on_a_gpu():
    """Section 2's ">= 1 100 tokens/s (CPU)" and "peak RAM <= 12 GB": KPIs measured on cuda (codegen's ``device``) get
    no decision, on the CPU (or with no device recorded, as before) they decide."""
    from agentforge.evals.compare import efficiency_checks

    th = {"min_throughput_tokens_per_sec": 1100, "max_peak_memory_mb": 12288}
    m = {"latency_ms": 100.0, "latency_rounds_ms": [100.0 + i for i in range(7)], "latency_tokens": 64,
         "throughput_tokens_per_sec": 640.0, "peak_memory_mb": 20000.0}
    for device, ok in (("cuda", None), ("cpu", False), (None, False)):
        cm = {**m, **({"device": device} if device else {})}
        checks = {c["threshold"]: c for c in efficiency_checks({"metrics": cm}, {"metrics": m}, th)[1]}
        assert checks["min_throughput_tokens_per_sec"]["ok"] is ok and checks["max_peak_memory_mb"]["ok"] is ok
        if device == "cuda":
            assert checks["min_throughput_tokens_per_sec"]["note"] == ("the target is a CPU's tokens/s, measured on "
                                                                       "cuda: no decision")


def test_worse_at_a_k_without_a_gain_target_is_still_failure():
    """Significantly worse at pass@10 (p < alpha, the whole CI below 0) with no min_delta_pass10 set, or one it meets:
    FAILURE naming pass@10 (it read SUCCESS: the reason was built, then the SUCCESS branch came first)."""
    from agentforge.evals.stats import verdict

    worse = {10: {"delta": -0.333, "ci95": [-0.51, -0.13], "p_value": 0.002}}
    for extra in ({}, {"min_delta_pass10": -1.0}):
        th = {"pass_at": {1: 0.3, 10: 0.45}, "min_delta_pass1": 0.04, **extra}
        v, reasons = verdict(pass_at={1: 0.667, 10: 0.667}, delta_pass1=0.5667, ci95=[0.4, 0.7], p_value=2e-4, n=30,
                             thresholds=th, efficiency_ok=None, others=worse)
        assert v == "FAILURE" and any("worse than the baseline at pass@10" in r for r in reasons), (extra, v)


def test_phase_compare_reads_the_pass10_gain_target_and_the_scripts_defaults_too(tmp_path):
    """phase=compare (run_comparison) with sampled pass@k: the candidate wins pass@1 (0.667 vs 0.1) and loses pass@10
    (0.667 vs 1.0) on 30 problems: FAILURE naming pass@10, with compare.yaml's thresholds and with
    scripts/compare_results.py's defaults alike."""
    from omegaconf import OmegaConf

    from agentforge.phases.compare import thresholds_of

    ids = [f"{i:016x}" for i in range(30)]

    def res(stage, counts):
        per = {"gsm8k_correct": [int(c >= 5) for c in counts], "gsm8k_ids": ids, "gsm8k_num_correct": counts,
               "n_samples": 10}
        return {"stage": stage, "metrics": {"perplexity": 10.0}, "per_example": per}
    _write(tmp_path / "r", baseline=res("baseline", [1] * 30),
           candidate=res("candidate", [10 if i < 20 else 0 for i in range(30)]))
    conf = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "phase" / "compare.yaml").thresholds)
    spec = importlib.util.spec_from_file_location("compare_results", REPO / "scripts" / "compare_results.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    for th in ({k: v for k, v in thresholds_of(conf).items() if v is not None}, script.DEFAULT_THRESHOLDS):
        st = run_comparison(tmp_path / "r", ["baseline", "candidate"], tmp_path / "o", thresholds=th,
                            n_resamples=2000)["stats"]
        assert st["verdict"] == "FAILURE" and any(r.startswith("delta pass@10 -0.33") for r in st["reasons"]), st


def test_phase_evals_device_beside_its_metrics_counts_too():
    from agentforge.evals.compare import efficiency_checks

    m = {"latency_ms": 100.0, "latency_rounds_ms": [100.0 + i for i in range(7)], "latency_tokens": 64,
         "throughput_tokens_per_sec": 640.0, "peak_memory_mb": 20000.0}
    th = {"min_throughput_tokens_per_sec": 1100, "max_peak_memory_mb": 12288}
    for device, ok in (("cuda:0", None), ("cpu", False)):
        checks = efficiency_checks({"metrics": m, "device": device}, {"metrics": m}, th)[1]
        assert [c["ok"] for c in checks] == [ok, ok], device


def test_paired_at_k_by_hand():
    """The k > 1 comparisons stats.json holds, and any k a min_delta_pass<k> target names ({} where not measured)."""
    from agentforge.evals.stats import paired_at_k

    stats = {"pass_at_1": {"delta": 0.1}, "pass_at_10": {"delta": -0.2, "ci95": [-0.3, -0.1], "p_value": 0.01, "n": 30},
             "pass_at_curve": [0.1, 0.2]}
    got = paired_at_k(stats, {"min_delta_pass1": 0.04, "min_delta_pass5": 0.1, "min_delta_pass10": None, "alpha": 0.05})
    assert got == {5: {"delta": None, "ci95": None, "p_value": None},
                   10: {"delta": -0.2, "ci95": [-0.3, -0.1], "p_value": 0.01}}


@pytest.mark.parametrize("per,key", [
    ({"gsm8k_correct": [0, 2]}, r"per_example.gsm8k_correct\[1\] is 2, not 0 or 1"),
    ({"gsm8k_correct": [0, 0.5]}, r"per_example.gsm8k_correct\[1\] is 0.5, not 0 or 1"),
    ({"gsm8k_ids": ["a"], "gsm8k_num_correct": [5], "n_samples": 4}, r"per_example.gsm8k_num_correct\[0\] is 5"),
    ({"n_samples": -1}, "per_example.n_samples is -1, not a count >= 0"),
    ({"row_loss": [1.5, "x"]}, r"per_example.row_loss\[1\] is 'x', not a number"),
    ({"gsm8k_correct": [1, 0], "gsm8k_ids": ["a", "a"]}, "per_example.gsm8k_ids repeats the id 'a'"),
])
def test_per_example_values_outside_their_range_are_refused(per, key):
    """Values the comparison would count as they are (an outcome of 2 or 0.5 inflates an accuracy; a count above the
    samples taken, a negative sample count, a loss that is text): each refused naming the file and key (the checks
    were there, untested; the mutation audit's mutants of them survived)."""
    from agentforge.evals.results_file import check_results

    with pytest.raises(ConfigError, match=f"f.json: {key}"):
        check_results({"metrics": {"loss": 1.0}, "per_example": per}, "f.json")
    check_results({"metrics": {"loss": 1.0}, "per_example": {"gsm8k_correct": [0, 1], "n_samples": 4,
                                                               "gsm8k_num_correct": [0, 4], "gsm8k_ids": ["a", "b"],
                                                               "row_loss": [1.5, 2]}}, "f.json")   # in range: fine
