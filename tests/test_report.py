"""The pipeline report's statistics: accuracies with n and CI, threshold rows decided by paired tests,
the held-out data check. Its functions run on small fabricated results (it is a formatter)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from agentforge.evals.compare import accuracy_drop_test
from agentforge.evals.stats import paired_ratio_ci
from agentforge.pipeline.report import performance_rows, write_report
from agentforge.pipeline.thresholds import headline_metrics, threshold_rows


def _results(gsm: list[int], arc: list[int], piqa: list[int], tag: str = "") -> dict:
    per = {}
    for fmt, c in (("gsm8k", gsm), ("arc", arc), ("piqa", piqa)):
        per[f"{fmt}_correct"], per[f"{fmt}_ids"] = c, [f"{tag}{fmt}{i}" for i in range(len(c))]
    return {"metrics": {"perplexity": 9.0, "reasoning_accuracy": sum(gsm) / len(gsm),
                        "arc_easy_accuracy": sum(arc) / len(arc), "piqa_accuracy": sum(piqa) / len(piqa)},
            "per_example": per}


def _write(art, stage: str, res: dict) -> None:
    (art / "eval_results").mkdir(parents=True, exist_ok=True)
    (art / "eval_results" / f"{stage}_results.json").write_text(json.dumps(res))


def test_accuracy_drop_hand_case():
    before = _results([0] * 16, [1] * 100 + [0] * 100, [1] * 120 + [0] * 80)
    after = _results([0] * 16, [1] * 95 + [0] * 105, [1] * 118 + [0] * 82)
    r = accuracy_drop_test(before, after)
    # pooled: 220 / 416 right before, 213 / 416 after: drop 100 * 7 / 220 %; 7 questions lost, none gained
    assert r["drop_percent"] == pytest.approx(100 * 7 / 220) and r["n"] == 416
    assert (r["lost"], r["gained"]) == (7, 0) and r["mcnemar_p"] == pytest.approx(2 / 128)
    # 100 (1 - R) over the paired ratio R = 213 / 220's interval: 213 both right, 0 gained, 7 lost
    lo, hi = paired_ratio_ci(213, 0, 7)
    assert r["ci95"] == pytest.approx([100 * (1 - hi), 100 * (1 - lo)])
    assert r["ci95"][0] > 0 and r["pairing"] == "by example id"
    same = accuracy_drop_test(before, before)
    assert same["drop_percent"] == 0 and same["mcnemar_p"] == 1.0
    assert same["ci95"][0] < 0 < same["ci95"][1]  # no discordant pair is not proof of no difference


def test_bitnet_row_is_paired_on_the_eval_results(tmp_path):
    bitnet = {"bitnet": {"final/accuracy_drop": 40.0, "final/compression_ratio": 8.0}}  # the unpaired figure
    before = _results([0] * 16, [1] * 100 + [0] * 100, [1] * 120 + [0] * 80)
    _write(tmp_path, "phase3_reasoning", before)
    _write(tmp_path, "phase4_compressed", _results([0] * 16, [1] * 99 + [0] * 101, [1] * 120 + [0] * 80))
    row = next(r for r in threshold_rows(bitnet, tmp_path) if r[1] == "final/accuracy_drop")
    assert row[3] == pytest.approx(100 / 220)                                # 1 ARC question lost of 220 right
    assert row[4].startswith("PASS (n=416, 95% CI [") and "McNemar p=1" in row[4]
    assert "by chance" not in row[4]                                          # results without per-example rates
    # with the rates the real eval stores (4-choice ARC, 2-choice PIQA, GSM8K's majority baseline: the modal answer
    # is 3 of the 16 references): chance (3 + 200/4 + 200/2) / 416
    for stage, arc_right in (("phase3_reasoning", 100), ("phase4_compressed", 99)):
        res = _results([0] * 16, [1] * arc_right + [0] * (200 - arc_right), [1] * 120 + [0] * 80)
        res["per_example"].update(arc_chance=[0.25] * 200, piqa_chance=[0.5] * 200,
                                  gsm8k_chance=[1.0] * 3 + [0.0] * 13)
        _write(tmp_path, stage, res)
    row = next(r for r in threshold_rows(bitnet, tmp_path) if r[1] == "final/accuracy_drop")
    assert f"accuracy 0.529 before, 0.526 after, {153 / 416:.3f} by chance" in row[4]
    assert "the BitNet run's own final/accuracy_drop is +40.0 %" in row[4]   # the phase's key, on its own questions
    for stage, mb in (("phase3_reasoning", 1.21), ("phase4_compressed", 1.65)):
        res = json.loads((tmp_path / "eval_results" / f"{stage}_results.json").read_text())
        res["metrics"]["param_memory_mb"] = mb
        _write(tmp_path, stage, res)
    row = next(r for r in threshold_rows(bitnet, tmp_path) if r[1] == "final/compression_ratio")
    assert row[4] == "PASS (bytes on disk; parameter memory once loaded: 1.65 MB packed vs 1.21 MB before)"
    bitnet["bitnet"].update(headline_metrics({"final/inference_speedup": 0.891, "final/inference_speedup_n": 9,
                                              "final/inference_speedup_ci95": [0.880, 0.930]}))
    row = next(r for r in threshold_rows(bitnet, tmp_path) if r[1] == "final/compression_ratio")
    assert row[4].endswith("; forward speedup packed ÷ fp32 0.89 [0.88, 0.93], n=9 interleaved rounds)")
    bitnet["bitnet"]["final/inference_speedup_n"] = 1   # one round: the median has no CI, none is shown
    row = next(r for r in threshold_rows(bitnet, tmp_path) if r[1] == "final/compression_ratio")
    assert row[4].endswith("; forward speedup packed ÷ fp32 0.89 (n=1 rounds: no CI))")
    # part of the ratio is the preserved tensors' fp16 cast: the ratio against an fp16 file goes beside it
    bitnet["bitnet"].update(headline_metrics({"final/compression_ratio_vs_fp16": 4.09, "final/preserved_dtype": "float16"}))
    row = next(r for r in threshold_rows(bitnet, tmp_path) if r[1] == "final/compression_ratio")
    assert "1.21 MB before; 4.09× against an fp16 file, the tensors kept out of the ternary layers stored as float16; " \
           "forward speedup" in row[4]
    # a large drop: the whole CI above 10 %
    _write(tmp_path, "phase4_compressed", _results([0] * 16, [1] * 40 + [0] * 160, [1] * 60 + [0] * 140))
    row = next(r for r in threshold_rows(bitnet, tmp_path) if r[1] == "final/accuracy_drop")
    assert row[3] > 40 and row[4].startswith("FAIL")
    # too few examples for a verdict
    _write(tmp_path, "phase3_reasoning", _results([0] * 2, [1] * 4, [1] * 4))
    _write(tmp_path, "phase4_compressed", _results([0] * 2, [1] * 4, [1] * 4))
    row = next(r for r in threshold_rows(bitnet, tmp_path) if r[1] == "final/accuracy_drop")
    assert row[3] == 0 and row[4].startswith("INCONCLUSIVE (n=10,")
    # different examples cannot be paired: the BitNet phase's own figure, undecided, also where the phase gave a CI
    # and n on its validation questions (they chose the shipped model: an audit saw that case read PASS)
    _write(tmp_path, "phase4_compressed", _results([0] * 2, [1] * 4, [1] * 4, tag="other"))
    row = next(r for r in threshold_rows(bitnet, tmp_path) if r[1] == "final/accuracy_drop")
    assert row[3] == 40.0 and row[4].startswith("INCONCLUSIVE (") and row[4].endswith("decides nothing)")
    own = {"bitnet": {**bitnet["bitnet"], "final/accuracy_drop": -27.0, "final/accuracy_drop_ci95": [-72.6, 6.15],
                      "final/accuracy_drop_n": 36}}
    row = next(r for r in threshold_rows(own, tmp_path) if r[1] == "final/accuracy_drop")
    assert row[4].startswith("INCONCLUSIVE (n=36, 95% CI [-72.6, 6.15]; not recomputed on the eval test sets")
    assert "figure on its n=36 validation questions, which chose the shipped model" in row[4]


def test_the_baking_row_shows_the_threshold_its_verdict_was_decided_against(tmp_path):
    """phase.baking.convergence_threshold=0.7: the phase's verdict is at 0.7, so the row says 0.7 (and that the seed's
    is 0.85); a CI wholly below 0.85 read as INCONCLUSIVE beside ">= 0.85" in an audit. The default: 0.85, no note."""
    base = {"baking/final_accuracy": 0.773, "baking/final_accuracy_ci95": [0.761, 0.786], "baking/final_accuracy_n": 30,
            "baking/final_accuracy_verdict": "INCONCLUSIVE", "baking/final_accuracy_why": "no established gain"}
    for thr, shown in ((0.7, ">= 0.7 (the run's; the seed's is 0.85)"), (0.85, ">= 0.85")):
        metrics = headline_metrics({**base, "baking/final_accuracy_threshold": thr})
        row = next(r for r in threshold_rows({"x": metrics}, tmp_path) if r[1] == "baking/final_accuracy")
        assert row[2] == shown and row[4].startswith("INCONCLUSIVE (n=30, 95% CI [0.761, 0.786]")


def test_evomerge_and_bitnet_rows_decide_at_the_runs_thresholds(tmp_path):
    """phase.improvement_threshold=10 with a test CI [12, 18]: the phase said PASS, so must the row (it said FAIL
    against the seed's 20 in an audit); the same for BitNet's phase.min_compression and phase.max_accuracy_drop."""
    m = headline_metrics({"final/fitness_improvement": 15.0, "final/fitness_improvement_ci95": [12.0, 18.0],
                          "final/fitness_improvement_n": 64, "final/fitness_improvement_threshold": 10.0,
                          "final/compression_ratio": 5.0, "final/compression_ratio_threshold": 4.0,
                          "final/accuracy_drop": 3.0, "final/accuracy_drop_threshold": 12.0})
    rows = {r[1]: r for r in threshold_rows({"x": m}, tmp_path)}
    assert rows["final/fitness_improvement"][2] == "> 10 % (the run's; the seed's is 20 %)"
    assert rows["final/fitness_improvement"][4].startswith("PASS (n=64, 95% CI [12, 18]")
    assert rows["final/compression_ratio"][2] == "> 4× (the run's; the seed's is 6×)"
    assert rows["final/compression_ratio"][4].startswith("PASS")
    assert rows["final/accuracy_drop"][2] == "< 12 % (the run's; the seed's is 10 %)"


def test_the_threshold_rows_reach_the_pipelines_run_summary(tmp_path):
    from agentforge.pipeline.thresholds import threshold_summary

    m = headline_metrics({"final/fitness_improvement": 15.0, "final/fitness_improvement_ci95": [12.0, 18.0],
                          "final/fitness_improvement_n": 64})
    got = threshold_summary(threshold_rows({"x": m}, tmp_path))
    assert got == {"pipeline/final/fitness_improvement": 15.0, "pipeline/final/fitness_improvement_verdict": "FAIL",
                   "pipeline/final/fitness_improvement_threshold": "> 20 %"}


def test_rows_with_a_ci_are_decided_by_it(tmp_path):
    metrics = headline_metrics({"final/fitness_improvement": 25.0, "final/fitness_improvement_ci95": [-3.0, 50.0],
                                "final/fitness_improvement_n": 64, "baking/final_accuracy": 0.9,
                                "final/compression_ratio": 5.0, "unrelated": 1.0})
    assert "unrelated" not in metrics
    got = {r[1]: r[4] for r in threshold_rows({"x": metrics}, tmp_path)}
    assert got["final/fitness_improvement"] == "INCONCLUSIVE (n=64, 95% CI [-3, 50])"   # the point alone says PASS
    assert got["final/compression_ratio"] == "FAIL (bytes on disk)"   # no eval results: what the ratio measures
    # a baking score alone, with no paired gain over the unbaked model, is not a PASS (the unbaked model scores alike)
    assert got["baking/final_accuracy"].startswith("INCONCLUSIVE (no paired gain over the unbaked model")
    metrics["final/fitness_improvement_ci95"] = [21.0, 30.0]
    assert threshold_rows({"x": metrics}, tmp_path)[0][4].startswith("PASS (n=64")
    # the composite can hide a quality loss: the row gives the champion's perplexity ratio and accuracy change too
    metrics = headline_metrics({**metrics, "final/test_ppl_ratio": 1.383, "final/test_ppl_ratio_ci95": [1.333, 1.442],
                                "final/test_accuracy_delta": -0.141, "final/test_accuracy_delta_ci95": [-0.269, -0.0005],
                                "final/test_accuracy_delta_p": 0.049})
    assert threshold_rows({"x": metrics}, tmp_path)[0][4].endswith(
        "(quality vs the best input on the same test rows: perplexity ratio 1.383 [1.333, 1.442], accuracy -0.141 "
        "[-0.269, -0.001] (McNemar p=0.049))")


def test_the_size_column_is_the_weights_file_the_evaluation_loaded(tmp_path):
    """A Quiet-STaR stage's folder also holds its mixing head and metrics: the column read the whole folder (1.347 MB
    for a 1.149 MB model, so the model seemed to grow 17 % and shrink 7.2x where the compression row said 6.3x)."""
    art, ckpt = tmp_path / "artifacts", tmp_path / "ckpt"
    _write(art, "phase3_reasoning", _results([0] * 16, [1] * 10, [1] * 10))
    ckpt.mkdir()
    for name, size in (("model.safetensors", 3000), ("mixing_head.safetensors", 700), ("metrics.json", 50)):
        (ckpt / name).write_bytes(b"x" * size)
    assert performance_rows(art, [("phase3_reasoning", ckpt)])[0]["size_mb"] == 3000 / 2**20


def test_report_shows_n_ci_power_and_the_data_check(tmp_path):
    art = tmp_path / "artifacts"
    _write(art, "phase1_model1", _results([0] * 16, [1] * 100 + [0] * 100, [1] * 10 + [0] * 6))
    perf = performance_rows(art, [("phase1_model1", tmp_path)])
    assert perf[0]["arc_easy_accuracy_n"] == 200 and perf[0]["piqa_accuracy_ci95"][0] < 0.625
    check = {"piqa": {"train_draws": 1000, "train_distinct": 900, "val": 20, "test": 20, "val_prompts_in_train": 0,
                      "test_prompts_in_train": 0, "val_records_in_train": 0, "test_records_in_train": 0,
                      "val_problems_in_train": 0, "test_problems_in_train": 1}}
    steps = [{"key": "eval-phase1_model1", "phase": "eval", "status": "done", "duration_s": 1.0}]
    out = write_report(tmp_path, "t", steps, perf, [], check)
    md = out["report"].read_text()
    assert "| 0.500 [0.43, 0.57] n=200 |" in md and "| 0.625 [0.35, 0.85] n=16 |" in md   # exact (Clopper-Pearson)
    assert "n = 16: ±0.253" in md and "n = 200: ±0.071" in md  # half the Clopper-Pearson width at k = n / 2
    assert "## Held-out data" in md and "| piqa | 1000 | 900 | 20 / 20 | 0 / 0 | 0 / 0 | 0 / 1 |" in md
    assert "disjoint by problem" in md
    assert "Latency:" not in md   # no timing in these results: no timing note


def test_perplexity_has_its_n_and_a_t_interval_over_rows(tmp_path):
    """exp of the mean row loss, and exp of the t-interval of that mean: equal losses give a point, spread ones
    an interval around the estimate; by hand for 4 rows, and 95 % coverage at n = 4 where a percentile bootstrap
    covered 80 %."""
    import math

    from agentforge.evals.intervals import perplexity_ci

    assert perplexity_ci([2.0] * 8) == {"perplexity_n": 8, "perplexity_ci95": [math.exp(2.0), math.exp(2.0)]}
    assert perplexity_ci([1.0]) == {} and perplexity_ci(None) == {}
    losses = [1.5, 2.5, 2.0, 1.8, 2.2, 1.9, 2.1, 2.0]
    lo, hi = perplexity_ci(losses)["perplexity_ci95"]
    assert lo < math.exp(sum(losses) / 8) < hi and lo > math.exp(1.5) and hi < math.exp(2.5)
    # by hand: rows 1, 2, 3, 4 -> mean 2.5, s = sqrt(5/3) = 1.29099, t(0.975, 3) = 3.18245, half = 3.18245 * 1.29099 / 2
    lo4, hi4 = perplexity_ci([1.0, 2.0, 3.0, 4.0])["perplexity_ci95"]
    assert math.log(lo4) == pytest.approx(2.5 - 2.05426, abs=1e-4) and math.log(hi4) == pytest.approx(2.5 + 2.05426, abs=1e-4)
    rng = np.random.default_rng(0)
    true_ppl = math.exp(2.0)
    cover = [perplexity_ci(list(rng.normal(2.0, 0.5, 4)))["perplexity_ci95"] for _ in range(600)]
    assert sum(lo <= true_ppl <= hi for lo, hi in cover) / 600 >= 0.93
    art = tmp_path / "artifacts"
    res = _results([0] * 16, [1] * 10 + [0] * 10, [1] * 10 + [0] * 10)
    res["metrics"]["perplexity"], res["per_example"]["row_loss"] = math.exp(2.0), losses
    _write(art, "phase1_model1", res)
    md = write_report(tmp_path, "t", [], performance_rows(art, [("phase1_model1", tmp_path)]), [], {})["report"].read_text()
    assert f"| 7.389 [{lo:.4g}, {hi:.4g}] n=8 |" in md and "Perplexity: exp of the mean held-out row loss" in md


def test_report_says_how_the_rows_timings_were_taken(tmp_path):
    art = tmp_path / "artifacts"
    for stage, lat in (("phase3_reasoning", 175.0), ("phase4_compressed", 167.6)):
        res = _results([0] * 16, [1] * 10 + [0] * 10, [1] * 10 + [0] * 10)
        res["metrics"].update(latency_ms=lat, latency_tokens=512, forward_tokens_per_sec=4e4)
        _write(art, stage, res)
    perf = performance_rows(art, [("phase3_reasoning", tmp_path), ("phase4_compressed", tmp_path)])
    md = write_report(tmp_path, "t", [], perf, [], {})["report"].read_text()
    assert "one greedy generation of 512 tokens" in md and "not evidence of a speed change" in md
    assert "phase3_reasoning without its thoughts" in md and "phase=compare" in md


def test_report_shows_phase1_ablations_halting_and_diversity(tmp_path):
    """Three models' metrics.json: the Phase 1 section lists each one's ablation deltas with CIs, halting and the
    non-inferiority verdict (model 1's cost CI [−0.002, +0.004] is under the 0.01 margin, model 2's +0.03 is not),
    and the diversity beside 0.3."""
    from agentforge.pipeline.thresholds import cognate_diversity

    art = tmp_path / "artifacts"
    for mid, (h, lo) in zip((1, 2, 3), [(3.0, -0.004), (2.0, -0.03), (1.5, -0.001)]):
        d = art / "cognate" / f"model{mid}"
        d.mkdir(parents=True)
        m = {"final/val_loss": 1.9, "diversity/avg_halting_steps": h, "diversity/halting_steps_std": 0.5,
             "diversity/halting_share_step1": 0.25, "diversity/halting_share_step2": 0.75, "diversity/ltm_usage": 0.1 * mid,
             "diversity/inference_mflops_per_token": float(mid), "ablation/halting_noninferiority_margin": 0.01,
             "ablation/halting_noninferior": float(lo > -0.01),  # as models.ablation decides it
             "ablation/n_rows": 32.0, "ablation/halting_task_n_rows": 62.0 if mid < 3 else 60.0}
        for pre, v in (("steps1_loss", 0.1), ("no_memory_loss", 0.002), ("max_steps_loss", lo / 2),
                       ("halting_digits_minus_letters", 0.4)):
            m.update({f"ablation/{pre}_delta": v, f"ablation/{pre}_delta_ci_low": min(v, lo) if pre.startswith("max")
                      else v / 2, f"ablation/{pre}_delta_ci_high": 0.002 if pre.startswith("max") else 2 * v})
        (d / "metrics.json").write_text(json.dumps(m))
    out = write_report(tmp_path, "t", [], [], [])
    md = out["report"].read_text()
    assert "## Phase 1: what each trained Cognate model relies on" in md
    assert "| Model 1 | 1.9 | 3.00 (0.50) | 1:25% 2:75% | +0.40 [+0.20, +0.80] | +0.1000 [+0.0500, +0.2000] |" in md
    assert "PASS (cost CI [-0.0020, +0.0040] vs margin 0.01, n=32)" in md
    assert "FAIL (cost CI [-0.0020, +0.0300] vs margin 0.01, n=32)" not in md   # the CI straddles the margin:
    assert "INCONCLUSIVE (cost CI [-0.0020, +0.0300] vs margin 0.01, n=32)" in md   # not shown, not refuted
    div = cognate_diversity(art)["phase1/diversity"]
    assert f"{div:.3f} (no CI: metrics without per-row features) against the seed's threshold 0.3" in md
    assert len(out["tables"]["pipeline/phase1_ablations"][1]) == 3
    assert "n per model: 32 validation rows; 60 / 62 GSM8K-format rows (digits − letters)." in md
    # the three models' validation rows are the same (tests/test_heldout_rows.py): the report says so, not that
    # each model had its own rows from its own data mix
    assert "on the same validation rows" in md and "own data mix" not in md


def test_phase3_rows_show_the_phases_reason_and_the_correlations_informative_n(tmp_path):
    """The baking row carries the phase's verdict and its reason (unbaked score, gain, prompt effect) through
    headline_metrics; the correlation row's n is the informative windows, and an undefined correlation reads
    INCONCLUSIVE with its reason, not FAIL with CI [0, 0]."""
    why = "the unbaked model already scores 0.9595 [0.9549, 0.9639]; gain -0.0008 [-0.0030, +0.0020]"
    summary = {"baking/final_accuracy": 0.9588, "baking/final_accuracy_n": 40, "baking/final_accuracy_ci95": [0.955, 0.962],
               "baking/final_accuracy_verdict": "INCONCLUSIVE", "baking/final_accuracy_why": why,
               "anti_theater/final_correlation": float("nan"), "anti_theater/final_correlation_n": 0,
               "anti_theater/final_correlation_ci95": [float("nan"), float("nan")],
               "anti_theater/final_correlation_verdict": "INCONCLUSIVE",
               "anti_theater/final_correlation_why": "undefined: nothing varies within any window"}
    got = {r[1]: r[4] for r in threshold_rows({"q": headline_metrics(summary)}, tmp_path)}
    assert got["baking/final_accuracy"] == f"INCONCLUSIVE (n=40, 95% CI [0.955, 0.962]; {why})"
    assert got["anti_theater/final_correlation"] == ("INCONCLUSIVE (n=0, no CI; undefined: nothing "
                                                     "varies within any window)")


def test_a_subset_runs_report_keeps_the_steps_it_left_alone(tmp_path):
    """A phase.phases subset run reported only its own steps: five of eight threshold rows and every evaluation
    vanished without a word, over the full report (a pipeline-report audit). The steps it left alone are shown, in
    pipeline order, marked, with their figures."""
    from agentforge.phases.pipeline import report_steps
    from agentforge.pipeline.thresholds import threshold_rows

    order = ["cognate-m1", "evomerge", "bitnet", "eval-phase4_compressed"]
    records = [{"key": "bitnet", "phase": "bitnet", "status": "skipped (complete)", "metrics": {}}]
    kept = [{"key": "eval-phase4_compressed", "phase": "eval", "status": "done", "metrics": {}},
            {"key": "evomerge", "phase": "evomerge", "status": "done",
             "metrics": {"final/fitness_improvement": 25.0}}]
    shown = report_steps(records, kept, order)
    assert [(s["key"], s["status"]) for s in shown] == [("evomerge", "not run this time (last: done)"),
                                                         ("bitnet", "skipped (complete)"),
                                                         ("eval-phase4_compressed", "not run this time (last: done)")]
    rows = threshold_rows({s["key"]: s.get("metrics", {}) for s in shown}, tmp_path)
    assert [r[:4] for r in rows] == [["Phase 2 EvoMerge", "final/fitness_improvement", "> 20 %", 25.0]]


def _bars(ax) -> list[tuple[float, float, float]]:
    """(x, lo, hi) of each error bar matplotlib drew on ``ax``."""
    from matplotlib.container import ErrorbarContainer
    out = []
    for c in ax.containers:
        if isinstance(c, ErrorbarContainer):
            for seg in c.lines[2][0].get_segments():
                out.append((float(seg[0][0]), float(min(seg[0][1], seg[1][1])), float(max(seg[0][1], seg[1][1]))))
    return out


def test_the_performance_plot_draws_each_accuracy_with_its_table_ci_on_the_whole_unit_axis():
    import matplotlib.pyplot as plt

    from agentforge.pipeline.report import performance_figure
    rows = [{"stage": "cognate", "reasoning_accuracy": 0.25, "reasoning_accuracy_ci95": [0.10, 0.45],
             "reasoning_accuracy_n": 20, "latency_ms": 30.0},
            {"stage": "bitnet", "reasoning_accuracy": 0.30, "reasoning_accuracy_ci95": [0.12, 0.54],
             "reasoning_accuracy_n": 20, "latency_ms": 20.0}]
    rows[0]["forward_tokens_per_sec"], rows[1]["forward_tokens_per_sec"] = 900.0, 1200.0
    rows[0]["perplexity"], rows[1]["perplexity"] = 9.0, 12.0
    fig = performance_figure(rows)
    ppl, acc, lat, tps = (ax for ax in fig.axes if ax.get_title())
    assert sorted(_bars(acc)) == pytest.approx([(0, 0.10, 0.45), (1, 0.12, 0.54)])
    assert acc.get_ylim() == pytest.approx((-0.02, 1.02)) and "95% CI" in acc.get_title()
    assert _bars(lat) == [] and "no CI" in lat.get_title()   # timed once per stage: no interval, no bar
    assert _bars(tps) == [] and "no CI" in tps.get_title()
    lo, hi = ppl.get_ylim()   # not a proportion: its own scale, and no CI in these rows, so no bar and no claim of one
    assert lo < 9.0 and hi > 12.0 and _bars(ppl) == [] and "CI" not in ppl.get_title()
    plt.close(fig)


def test_the_compare_plot_draws_the_accuracy_ci_from_the_stage_per_example_data():
    import matplotlib.pyplot as plt

    from agentforge.evals.compare import metrics_figure
    from agentforge.evals.stats import exact_proportion_ci
    res = {"a": _results([1] * 3 + [0] * 7, [1] * 5 + [0] * 5, [1] * 5 + [0] * 5),
           "b": _results([1] * 6 + [0] * 4, [1] * 5 + [0] * 5, [1] * 5 + [0] * 5)}
    fig = metrics_figure(res, "quality", ["perplexity", "reasoning_accuracy"])
    ppl, acc = fig.axes[:2]
    assert sorted(_bars(acc)) == pytest.approx([(0, *exact_proportion_ci(3, 10)), (1, *exact_proportion_ci(6, 10))])
    assert acc.get_ylim() == pytest.approx((-0.02, 1.02)) and "95% CI" in acc.get_title()
    assert _bars(ppl) == [] and "CI" not in ppl.get_title()   # no per-row losses in these results: no interval
    assert ppl.get_ylim()[1] > 9.0   # its own scale, not the accuracies' [0, 1]
    plt.close(fig)


def test_compare_plots_one_panel_for_each_metric_present(tmp_path, monkeypatch):
    """plot_metrics hands ``metrics_figure`` every metric of a group that some stage has, in the group's order."""
    import agentforge.evals.compare as compare
    from agentforge.evals.compare_table import PLOT_GROUPS

    seen = {}
    real = compare.metrics_figure

    def spy(results, group, ms):
        seen[group] = list(ms)
        return real(results, group, ms)
    monkeypatch.setattr(compare, "metrics_figure", spy)
    res = {"a": _results([1, 0] * 5, [1, 0] * 5, [1, 0] * 5), "b": _results([1] * 10, [0] * 10, [1, 0] * 5)}
    res["b"]["metrics"]["latency_ms"] = 12.0
    paths = compare.plot_metrics(res, tmp_path)
    quality = [m for m in PLOT_GROUPS["quality"] if m in res["a"]["metrics"]]
    assert seen == {"quality": quality, "efficiency": ["latency_ms"]} and len(paths) == 2
