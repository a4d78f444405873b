"""The pipeline report's threshold rows: the seed's critical thresholds beside the measured figures, each row
decided the project's way (``_decided``): a row comparing two models (``_PAIRED``) only by a CI from a paired test
on the same examples — PASS when the whole CI meets the threshold, FAIL when none of it does, INCONCLUSIVE
otherwise, below ``stats.MIN_N`` examples, or without a CI; Phase 1 diversity from its bootstrap CI over the
held-out rows (``evals.diversity``); BitNet's accuracy drop recomputed, paired, from the eval results of
``phase3_reasoning`` and ``phase4_compressed`` (``evals.compare.accuracy_drop_test``); and beside some rows the
figures a reader needs to read them (``_COMPANIONS``: EvoMerge's quality, BitNet's memory and speed).
"""
from __future__ import annotations

import json
from pathlib import Path

from agentforge.errors import ConfigError
from agentforge.evals.compare import MIN_TIMING_ROUNDS, accuracy_drop_test
from agentforge.evals.diversity import phase1_diversity
from agentforge.evals.stats import threshold_verdict

# The seed's "Critical Thresholds" (phase1-4 plan, summary table): (phase, metric key, op, threshold).
THRESHOLDS = [
    ("Phase 1 Cognate", "phase1/diversity", ">", 0.3),
    ("Phase 2 EvoMerge", "final/fitness_improvement", ">", 20.0),
    ("Phase 3 baking", "baking/final_accuracy", ">=", 0.85),
    ("Phase 3 RL", "anti_theater/final_divergence", ">", 0.3),
    ("Phase 3 RL", "anti_theater/final_ablation_drop", ">", 0.02),
    ("Phase 3 RL", "anti_theater/final_correlation", ">", 0.5),
    ("Phase 4 BitNet", "final/compression_ratio", ">", 6.0),
    ("Phase 4 BitNet", "final/accuracy_drop", "<", 10.0),
]
_HEADLINE = {k for _, k, _, _ in THRESHOLDS}
UNITS = {"final/fitness_improvement": " %", "final/accuracy_drop": " %", "final/compression_ratio": "×"}   # the rest: fractions


# A headline key K decided on a sample may come with K_n, K_ci95 ([low, high]), K_verdict (PASS / FAIL /
# INCONCLUSIVE, e.g. the anti-theater checks) and K_test (what was tested); the row then shows that verdict,
# n and CI. With a CI but no verdict the row is decided from the CI (``stats.threshold_verdict``). K_why, when
# given, is the reason the phase gave for its verdict (e.g. the baking row's unbaked score, gain and prompt effect).
# K_threshold: the threshold the phase's verdict was decided against (e.g. phase.baking.convergence_threshold); the
# row shows it, and says so where it is not the seed's (a verdict at 0.7 shown as ">= 0.85" misread a CI below 0.85).
_EVIDENCE = ("_n", "_ci95", "_verdict", "_test", "_why", "_threshold")
# Rows whose PASS also needs a paired gain over the model before the step (``reasoning.baking_evidence.baking_verdict``): the
# phase writes K_verdict; without it (metrics written before the gain was measured) the row cannot pass.
_NEEDS_GAIN = {"baking/final_accuracy": "no paired gain over the unbaked model in these metrics (the unbaked model "
                                        "scores about the same); re-run phase=quietstar step=baking"}
# Rows that compare two models (or one model with and without its thoughts): no verdict without a CI.
_PAIRED = {"final/fitness_improvement", "final/test_fitness_improvement", "anti_theater/final_divergence",
           "anti_theater/final_ablation_drop", "anti_theater/final_correlation", "final/accuracy_drop"}


# Figures a threshold row shows beside its own: EvoMerge's composite fitness improvement can hide a quality loss
# (its speed and size terms), so the row also gives the champion's perplexity ratio and accuracy change against the
# best input on the same test rows and questions (``merge.heldout``), and, when the champion's weights are an input's
# unchanged (``final/champion_unchanged_input``, e.g. "model3"), that no merge won.
# BitNet's forward speedup (packed vs fp32, interleaved rounds in one process) goes beside its compression ratio.
_COMPANIONS = ("final/test_ppl_ratio", "final/test_ppl_ratio_ci95", "final/test_accuracy_delta",
               "final/test_accuracy_delta_ci95", "final/test_accuracy_delta_p", "final/inference_speedup",
               "final/inference_speedup_ci95", "final/inference_speedup_n", "final/champion_unchanged_input",
               "final/compression_ratio_vs_fp16", "final/preserved_dtype")


def headline_metrics(metrics: dict) -> dict:
    """The numeric metrics of a phase result that the threshold table reads, with their n / CI / verdict."""
    out = {k: float(v) for k, v in metrics.items() if k in _HEADLINE and isinstance(v, (int, float))}
    out.update({h + e: metrics[h + e] for h in _HEADLINE for e in _EVIDENCE if h + e in metrics})
    out.update({k: metrics[k] for k in _COMPANIONS if k in metrics})
    return out


def quality_note(m: dict) -> str:
    """The EvoMerge champion's perplexity ratio and accuracy change against the best input, with CIs, preceded by
    'no merge won' when the champion is an input unchanged; or ''."""
    same = m.get("final/champion_unchanged_input")
    won = f"no merge won: the champion is {same} unchanged" if same else ""
    if "final/test_ppl_ratio" not in m:
        return won
    lo, hi = m["final/test_ppl_ratio_ci95"]
    text = (won + "; " if won else "") + (f"quality vs the best input on the same test rows: perplexity ratio "
                                          f"{m['final/test_ppl_ratio']:.3f} [{lo:.3f}, {hi:.3f}]")
    if "final/test_accuracy_delta" in m:
        alo, ahi = m["final/test_accuracy_delta_ci95"]
        text += (f", accuracy {m['final/test_accuracy_delta']:+.3f} [{alo:+.3f}, {ahi:+.3f}] "
                 f"(McNemar p={m['final/test_accuracy_delta_p']:.3g})")
    return text


def _decided(measured: dict, key: str, ok: bool, op: str | None = None, thr: float | None = None) -> str:
    verdict, ci, n = measured.get(f"{key}_verdict"), measured.get(f"{key}_ci95"), measured.get(f"{key}_n")
    if verdict is None and ci is not None and op is not None:
        verdict, reason = threshold_verdict(ci, op, thr, None if n is None else int(n))
        if verdict == "INCONCLUSIVE" and reason.startswith("n = ") and not measured.get(f"{key}_why"):
            measured = {**measured, f"{key}_why": reason}   # "n = 4 < 30: too few to decide", not a bare verdict
        if verdict == "PASS" and key in _NEEDS_GAIN:
            verdict, measured = "INCONCLUSIVE", {**measured, f"{key}_why": _NEEDS_GAIN[key]}
    if verdict is None:
        if key in _NEEDS_GAIN:
            return f"INCONCLUSIVE ({_NEEDS_GAIN[key]})"
        if key in _PAIRED:
            return "INCONCLUSIVE (no CI from a paired test on the same examples)"
        if key == "phase1/diversity":  # metrics.json written before the per-row features were kept
            return "INCONCLUSIVE (no CI: the Cognate metrics lack per-row features; re-run phase=cognate)"
        return "PASS" if ok else "FAIL"
    lo, hi = ci or (float("nan"), float("nan"))
    test, why = measured.get(f"{key}_test"), measured.get(f"{key}_why")
    interval = f"95% CI [{lo:.3g}, {hi:.3g}]" if lo == lo and hi == hi else "no CI"
    test = test if interval != "no CI" else None   # the method of a CI that was not made names nothing
    return (f"{verdict} (n={measured.get(f'{key}_n', '?')}, {interval}"
            + (f"; {test}" if test else "") + (f"; {why}" if why else "") + ")")


def paired_accuracy_drop(artifacts: Path, before: str = "phase3_reasoning", after: str = "phase4_compressed") -> dict:
    """BitNet's accuracy drop (%) paired on the eval test sets, as headline keys; {} when not measurable."""
    files = [artifacts / "eval_results" / f"{s}_results.json" for s in (before, after)]
    if not all(f.is_file() for f in files):
        return {}
    try:
        res = accuracy_drop_test(*(json.loads(f.read_text()) for f in files))
    except (ConfigError, ValueError, KeyError):
        return {}
    if res is None:
        return {}
    chance = res.get("chance_accuracy")
    level = (f"; accuracy {res['accuracy_before']:.3f} before, {res['accuracy_after']:.3f} after, {chance:.3f} by "
             "chance" if chance is not None else "")
    return {"final/accuracy_drop": res["drop_percent"], "final/accuracy_drop_ci95": res["ci95"],
            "final/accuracy_drop_n": res["n"],
            "final/accuracy_drop_test": f"{after} vs {before}, paired {res['pairing']}; McNemar p={res['mcnemar_p']:.3g}"
                                        + level}


def cognate_metrics(artifacts: Path) -> dict[int, dict]:
    """{model id: its ``cognate/model{id}/metrics.json``} for the Cognate models (1-3) that have one."""
    files = {mid: artifacts / "cognate" / f"model{mid}" / "metrics.json" for mid in (1, 2, 3)}
    return {mid: json.loads(f.read_text()) for mid, f in files.items() if f.is_file()}


def cognate_diversity(artifacts: Path) -> dict:
    """Phase 1 diversity (``evals.diversity.phase1_diversity``: the mean coefficient of variation of avg
    halting steps, LTM usage and forward FLOPs per token across the three models, with its bootstrap CI over
    the held-out rows); {} until all three models have metrics."""
    return phase1_diversity(list(cognate_metrics(artifacts).values()))


def threshold_rows(step_metrics: dict[str, dict], artifacts: Path) -> list[list]:
    """[phase, metric, threshold, measured, passed] for every threshold that has a measurement."""
    measured: dict[str, float] = {}
    for m in step_metrics.values():
        measured.update(m)
    measured.update(cognate_diversity(artifacts))
    if "final/accuracy_drop" in measured:  # on the eval test sets, the stages every other row of the report uses
        own, own_n = measured["final/accuracy_drop"], measured.get("final/accuracy_drop_n")
        on = f" on its n={int(own_n)} validation questions" if own_n else ""
        paired = paired_accuracy_drop(artifacts)
        if paired:
            paired["final/accuracy_drop_test"] += (f"; recomputed on the eval test sets: the BitNet run's own "
                                                   f"final/accuracy_drop is {own:+.1f} %{on}")
        else:   # the phase's own figure: on the questions that chose the shipped model, so it decides nothing
            paired = {"final/accuracy_drop_verdict": "INCONCLUSIVE",
                      "final/accuracy_drop_why": f"not recomputed on the eval test sets (no paired eval results of "
                                                 f"phase3_reasoning and phase4_compressed); the BitNet run's own "
                                                 f"figure{on}, which chose the shipped model, decides nothing"}
        measured.update(paired)
    notes = {"final/compression_ratio": compression_note(artifacts) + fp16_note(measured) + speedup_note(measured),
             "final/fitness_improvement": quality_note(measured)}
    rows = []
    for phase, key, op, seed_thr in THRESHOLDS:
        if key in measured:
            v, thr = measured[key], float(measured.get(f"{key}_threshold", seed_thr))
            ok = {">": v > thr, ">=": v >= thr, "<": v < thr}[op]
            unit = UNITS.get(key, "")   # "> 20 %" beside "> 0.3" (a fraction) and "> 6×" (a pipeline-report audit)
            shown = f"{op} {thr:g}{unit}" + (f" (the run's; the seed's is {seed_thr:g}{unit})" if thr != seed_thr else "")
            rows.append([phase, key, shown, v, _decided(measured, key, ok, op, thr)
                         + (f" ({notes[key]})" if notes.get(key) else "")])
    return rows


def threshold_summary(rows: list[list]) -> dict:
    """``threshold_rows`` as run-summary keys, so a dashboard reading W&B summaries sees the figures the report decided
    from (the paired test-set accuracy drop, the diversity, which no phase's summary holds): ``pipeline/<key>`` (the
    measured figure), ``pipeline/<key>_verdict`` (PASS / FAIL / INCONCLUSIVE) and ``pipeline/<key>_threshold`` (as
    the row shows it)."""
    out: dict = {}
    for _, key, shown, value, decided in rows:
        out.update({f"pipeline/{key}": float(value), f"pipeline/{key}_verdict": decided.split(" ", 1)[0],
                    f"pipeline/{key}_threshold": shown})
    return out


def fp16_note(m: dict) -> str:
    """'; X× against an fp16 file, the tensors kept out of the ternary layers stored as D' or '': the ratio's
    numerator is an fp32 file, and the embeddings, lm_head, norms and memory are stored in ``phase.preserved_dtype``
    (fp16 by default), so part of the ratio is that cast, not the 1.58-bit weights (an audit: 5.0× instead of 8.2× on
    a tiny model with the preserved tensors in fp32)."""
    if not isinstance(m.get("final/compression_ratio_vs_fp16"), (int, float)):
        return ""
    kept = f", the tensors kept out of the ternary layers stored as {m['final/preserved_dtype']}" \
        if isinstance(m.get("final/preserved_dtype"), str) else ""
    return f"; {m['final/compression_ratio_vs_fp16']:.2f}× against an fp16 file{kept}"


def speedup_note(m: dict) -> str:
    """'; forward speedup packed ÷ fp32 X [CI] (n rounds)' from the BitNet phase's interleaved timing, or ''."""
    if not isinstance(m.get("final/inference_speedup"), (int, float)):
        return ""
    ci, n = m.get("final/inference_speedup_ci95"), m.get("final/inference_speedup_n")
    text = f"; forward speedup packed ÷ fp32 {m['final/inference_speedup']:.2f}"
    if ci and n and int(n) >= MIN_TIMING_ROUNDS:   # fewer rounds give the median no 95 % CI (``compare.median_ci``)
        text += f" [{ci[0]:.2f}, {ci[1]:.2f}], n={int(n)} interleaved rounds"
    elif n:
        text += f" (n={int(n)} rounds: no CI)"
    return text


def compression_note(artifacts: Path, before: str = "phase3_reasoning", after: str = "phase4_compressed") -> str:
    """What the compression ratio measures (bytes on disk) beside the parameter memory of both models once loaded,
    from the eval results: the packed model is unpacked to compute, so loaded it need not be smaller."""
    mem = {}
    for stage in (before, after):
        f = artifacts / "eval_results" / f"{stage}_results.json"
        try:
            mem[stage] = float(json.loads(f.read_text())["metrics"]["param_memory_mb"])
        except (OSError, ValueError, KeyError, TypeError):
            return "bytes on disk"
    return f"bytes on disk; parameter memory once loaded: {mem[after]:.3g} MB packed vs {mem[before]:.3g} MB before"
