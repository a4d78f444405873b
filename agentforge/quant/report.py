"""Phase 4's comparisons with their evidence, and its printed summary.

* Accuracy drop, packed model vs the model it was compressed from, on the same held-out questions: each question's
  1/0 correctness before and after, paired by example id and pooled over GSM8K / ARC / PIQA, through
  ``evals.compare.accuracy_drop_test`` (the function the pipeline report recomputes the drop with): the relative
  drop 100 (acc_before - acc_after) / acc_before %, McNemar's exact p, and the CI of the paired ratio
  acc_after / acc_before (Bonett-Price, ``stats.paired_ratio_ci``) as a drop. Undefined (no CI) when acc_before is 0.
  The drop in accuracy units has the hull of Tango's and the exact conditional CI (``stats.paired_binary_ci``).
* Per task, the change after - before in accuracy units, with the same hull CI and McNemar's exact p.
* Speedup: fp32 over packed forward time, the median of the per-round ratios of interleaved rounds
  (``evals.speed.interleaved_forward_times``) with the distribution-free CI of that median
  (``evals.compare.median_ci``, the sign-test interval; the whole range with 5 rounds or fewer, which covers
  less than 95 %).

The keys follow the pipeline report's convention (K, K_n, K_ci95, K_test). No ``K_verdict`` is written for
``final/accuracy_drop``: the report decides it from the CI (``stats.threshold_verdict``), and replaces the phase's
drop with its own paired recomputation when both models have eval results — a verdict logged here would then be
stale.
"""
from __future__ import annotations

import math

from agentforge.data.ids import example_ids
from agentforge.evals.compare import MIN_TIMING_ROUNDS, accuracy_drop_test, round_ratios
from agentforge.evals.stats import MIN_N, exact_paired_binary, paired_binary_ci, threshold_verdict

TASKS = ("gsm8k", "arc", "piqa")


def pooled_accuracy(correct: dict[str, list[int]]) -> float:
    """The share of all questions (every task together) answered right; with sets of the same size (the
    default: ``phase.eval_examples`` each) the mean of the task accuracies."""
    total = sum(len(c) for c in correct.values())
    return sum(sum(c) for c in correct.values()) / max(total, 1)


def _results(correct: dict[str, list[int]], evals: dict[str, list[dict]]) -> dict:
    """An eval-results-shaped dict (``per_example``: ``{fmt}_correct`` and ``{fmt}_ids``), what
    ``accuracy_drop_test`` reads."""
    per = {}
    for fmt, c in correct.items():
        per[f"{fmt}_correct"], per[f"{fmt}_ids"] = list(c), example_ids(evals[fmt])
    return {"per_example": per}


def accuracy_evidence(before: dict[str, list[int]], after: dict[str, list[int]], evals: dict[str, list[dict]],
                      drop: float) -> dict:
    """n, 95 % CI and test of the relative accuracy drop ``drop`` (``final/accuracy_drop``, %), of the absolute
    drop and of each task's change, from per-question correctness ({task: [1/0 per record of evals[task]]})."""
    res = accuracy_drop_test(_results(before, evals), _results(after, evals))
    if res is None:
        return {}
    test = (f"McNemar exact p={res['mcnemar_p']:.3g} ({res['lost']} lost, {res['gained']} gained of {res['n']} "
            f"questions, paired {res['pairing']}); CI: Bonett-Price hybrid Wilson score interval of the paired ratio "
            f"after / before")
    out = {"final/accuracy_drop_n": res["n"], "final/accuracy_drop_test": test,
           "evaluation/accuracy_drop_n": res["n"], "evaluation/accuracy_drop_percent_n": res["n"]}
    lo, hi = paired_binary_ci(res["lost"], res["gained"], res["n"])
    out["evaluation/accuracy_drop_ci95"] = [lo, hi]          # acc_before - acc_after, accuracy units
    if res["accuracy_before"] > 0 and math.isfinite(drop):
        out["final/accuracy_drop_ci95"] = out["evaluation/accuracy_drop_percent_ci95"] = res["ci95"]
    else:
        out["final/accuracy_drop_test"] = test + "; accuracy before is 0: no relative drop to bound"
    for fmt in TASKS:
        b, a = before.get(fmt), after.get(fmt)
        if not b or not a:
            continue
        ex = exact_paired_binary(a, b)                         # wins = questions gained by ``after``
        out.update({f"evaluation/{fmt}_diff": ex["delta"], f"evaluation/{fmt}_diff_n": ex["n"],
                    f"evaluation/{fmt}_diff_ci95": paired_binary_ci(ex["wins"], ex["losses"], ex["n"]),
                    f"evaluation/{fmt}_diff_test": f"McNemar exact p={ex['p_value']:.3g} ({ex['losses']} lost, "
                                                   f"{ex['wins']} gained); CI: hull of Tango's and the exact "
                                                   "conditional interval"})
    return out


def speedup_evidence(before_s: list[float], after_s: list[float]) -> dict:
    """``final/inference_speedup`` (fp32 / packed forward time) as the median of the per-round ratios of
    interleaved rounds, with its n (rounds), distribution-free CI and what it is."""
    value, ci, n = round_ratios(before_s, after_s)
    rounds = f"{n} round" + "s" * (n != 1)
    note = "" if n >= MIN_TIMING_ROUNDS else f"; only {rounds}: the CI is their range and covers less than 95 %"
    return {"value": value, "ci95": ci, "n": n,
            "test": f"median of the per-round ratios of {rounds} of interleaved forward timings, sign-test CI of "
                    f"the median" + note}


def _ci(x) -> str:
    return f"[{x[0]:.3g}, {x[1]:.3g}]" if x else "[no CI]"


def drop_line(drop: float, evidence: dict) -> str:
    """'12.5% (n=72, 95% CI [..]; McNemar exact p=..)' for the printed summary."""
    n, ci = evidence.get("final/accuracy_drop_n"), evidence.get("final/accuracy_drop_ci95")
    if n is None:
        return f"{drop:.1f}% (no per-question results)"
    p = evidence["final/accuracy_drop_test"].split(" (", 1)[0]
    return f"{drop:.1f}% (n={n}, 95% CI {_ci(ci)}; {p})"


def breakdown(layer_rows: list[dict]) -> list[list]:
    """The seed's compression-breakdown rows, one per layer type (compression = fp32 / stored bytes)."""
    out = []
    for kind in dict.fromkeys(r["kind"] for r in layer_rows):
        rs = [r for r in layer_rows if r["kind"] == kind]
        out.append([kind, sum(r["original_params"] for r in rs), sum(r["quantized_params"] for r in rs),
                    sum(r["preserved_params"] for r in rs),
                    sum(r["fp32_bytes"] for r in rs) / max(sum(r["stored_bytes"] for r in rs), 1)])
    return out


def print_summary(p, ev, final, fp16_bytes, fp32_bytes, packed_bytes) -> None:
    """The phase's closing lines: sizes, before -> after, the speedup and the seed's thresholds. The compression
    ratio is a deterministic count of bytes (PASS / FAIL); the accuracy drop is decided from its CI
    (``stats.threshold_verdict``: PASS when the whole CI is below the threshold, INCONCLUSIVE below ``MIN_N``
    questions or when the CI straddles it)."""
    ratio, drop = final["final/compression_ratio"], final["final/accuracy_drop"]
    print(f"packed file {packed_bytes:,} B vs fp32 {fp32_bytes:,} B ({ratio:.2f}x) and fp16 {fp16_bytes:,} B "
          f"({ev['evaluation/compression_ratio_vs_fp16']:.2f}x); {ev['evaluation/total_params']:,} parameters, of "
          f"which {ev['evaluation/zero_params_ternary'] + ev['evaluation/nonzero_params_ternary']:,} ternary; zeros "
          f"(sparsity): {final['final/sparsity']:.3f} of the whole model, {final['final/sparsity_ternary']:.3f} of the "
          f"ternary weights")
    print(f"perplexity {ev['evaluation/perplexity_before']:.2f} -> {ev['evaluation/perplexity_after']:.2f}; "
          f"accuracy {ev['evaluation/accuracy_before']:.3f} -> {ev['evaluation/accuracy_after']:.3f}; "
          f"forward {ev['evaluation/inference_time_before_ms']:.1f} ms -> {ev['evaluation/inference_time_after_ms']:.1f} ms "
          f"(ACT steps {ev['evaluation/avg_halting_steps_before']:.2f} -> {ev['evaluation/avg_halting_steps_after']:.2f})")
    n_rounds, ci = final["final/inference_speedup_n"], _ci(final["final/inference_speedup_ci95"])
    print(f"inference speedup (fp32 / packed forward time) {final['final/inference_speedup']:.2f}x "
          + (f"(n={n_rounds} interleaved rounds, 95% CI {ci})" if n_rounds >= MIN_TIMING_ROUNDS else
             f"(range {ci} of {n_rounds} interleaved round{'s' * (n_rounds != 1)}: no 95% CI below "
             f"{MIN_TIMING_ROUNDS})"))
    print(f"threshold compression > {float(p.min_compression):g}x (whole model, bytes on disk vs fp32): "
          f"measured {ratio:.2f}x  {'PASS' if ratio > float(p.min_compression) else 'FAIL'} ("
          f"{final['final/compression_ratio_vs_fp16']:.2f}x against an fp16 file: the tensors kept out of the ternary "
          f"layers are stored as {final['final/preserved_dtype']})")
    verdict, why = threshold_verdict(final.get("final/accuracy_drop_ci95"), "<", float(p.max_accuracy_drop),
                                     final.get("final/accuracy_drop_n"), MIN_N)
    print(f"threshold accuracy drop < {float(p.max_accuracy_drop):g}%: measured {drop_line(drop, final)}  "
          f"{verdict} ({why}; fine-tuning {'ran' if final['final/fine_tuning_needed'] else 'not needed'})")
