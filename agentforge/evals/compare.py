"""Comparison of evaluation stages: the table (Markdown, CSV), the plots (PNG) and ``stats.json``.

Each ``{stage}_results.json`` (written by ``phase=eval``) holds the stage's metrics and per-example
results. The table (``compare_table.py``) shows every metric across the stages and each later stage's
change against the first (the baseline): with its paired CI, n and p where both stages have per-example
results on the same examples, ▲ / ▼ only when that CI excludes 0; the bare difference, no marker, for
once-per-run figures such as timings. The statistics compare a candidate stage with the baseline on the
same examples (``stats.py``) and give the dashboard's verdict.
"""
from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import stats as sps

from agentforge.errors import ConfigError
from agentforge.evals.compare_table import (  # noqa: F401  (re-exported: the table's names were defined here)
    ACCURACY_FORMATS,
    ACCURACY_KEYS,
    PLOT_GROUPS,
    SKIP,
    _num,
    _per_problem,
    align,
    change,
    csv_table,
    markdown_table,
    metric_names,
    table_rows,
)
from agentforge.evals.reference_fit import shortfall
from agentforge.evals.results_file import STANDARD_STAGES, load_results  # noqa: F401  (re-exported: they were defined here)
from agentforge.evals.runner import direction
from agentforge.evals.speed import memory_regime
from agentforge.evals.stats import (
    MIN_N,
    exact_paired_binary,
    mean_ci,
    paired_at_k,
    paired_ratio_ci,
    paired_test,
    threshold_verdict,
    verdict,
)
from agentforge.io import write_json_atomic, write_text_atomic


def metrics_figure(results: dict[str, dict], group: str, ms: list[str]):
    """A small line chart of each metric of ``group`` over the stages; each accuracy and the perplexity with its 95%
    CI as an error bar (``intervals.stage_intervals`` of the stage's per-example data, as the table's), accuracies on
    the whole [0, 1] axis."""
    from agentforge.evals.intervals import stage_intervals
    from agentforge.tracking.plots import plt, points_with_ci  # the module sets the headless Agg backend

    stages = list(results)
    intervals = {st: stage_intervals(results[st].get("per_example") or {}) for st in stages}
    cols = min(3, len(ms))
    nrows = math.ceil(len(ms) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.0 * nrows), squeeze=False)
    for ax, m in zip(axes.flat, ms):
        xs = [i for i, st in enumerate(stages) if _num(results[st]["metrics"].get(m))]
        ys = [results[stages[i]]["metrics"][m] for i in xs]
        bars = points_with_ci(ax, xs, ys, [intervals[stages[i]].get(f"{m}_ci95") for i in xs],
                              proportion=m in ACCURACY_KEYS)
        for x, y in zip(xs, ys):
            ax.annotate(f"{y:.3g}", (x, y), textcoords="offset points", xytext=(0, 5), ha="center", fontsize=8)
        arrow = {1: " (higher is better)", -1: " (lower is better)", 0: ""}[direction(m)]
        ax.set_title(m + arrow + (", 95% CI" if bars else ""), fontsize=9)
        ax.set_xticks(range(len(stages)), stages, rotation=20, ha="right", fontsize=8)
        ax.set_xlim(-0.5, len(stages) - 0.5)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(ms):]:
        ax.axis("off")
    return fig


def plot_metrics(results: dict[str, dict], out_dir: Path) -> list[Path]:
    """One PNG per metric group (``metrics_figure``)."""
    from agentforge.io import atomic_write
    from agentforge.tracking.plots import plt

    names, paths = set(metric_names(results)), []
    for group, metrics in PLOT_GROUPS.items():
        ms = [m for m in metrics if m in names]
        if not ms:
            continue
        fig = metrics_figure(results, group, ms)
        fig.suptitle(f"{group} metrics over stages")
        fig.tight_layout()
        path = out_dir / f"{group}_over_stages.png"
        atomic_write(path, lambda p, f=fig: f.savefig(p, format="png", dpi=110))
        plt.close(fig)
        paths.append(path)
    return paths


def _paired(cand: dict, base: dict, fmt: str, a, b, what: str, **kw) -> dict:
    a, b, verified = align(cand, base, fmt, a, b, what)
    out = paired_test(a, b, **kw)
    out["pairing"] = "by example id" if verified else "by position (no example ids in the results)"
    return out


def _summary(bs: dict, candidate: str, baseline: str) -> dict:
    keep = ("delta", "ci95", "p_value", "n", "test", "bootstrap", "exact", "enough", "pairing")
    return {candidate: bs["mean_a"], baseline: bs["mean_b"], **{k: bs[k] for k in keep if k in bs}}


def accuracy_drop_test(before: dict, after: dict, confidence: float = 0.95) -> dict | None:
    """The relative accuracy drop over every question both stages answered (paired by id, pooled over
    GSM8K / ARC / PIQA), 100 (acc_before - acc_after) / acc_before % = 100 (1 - acc_after / acc_before), with
    its CI from the Bonett–Price hybrid Wilson score interval of the paired ratio acc_after / acc_before
    (``stats.paired_ratio_ci``; the denominator's own uncertainty included — it used to be Tango's interval of
    the difference over acc_before taken as fixed), and McNemar's exact p-value. None when the stages share no
    task with per-example results."""
    pairs, verified = [], True
    for fmt, key in ACCURACY_FORMATS:
        cb, ca = before.get("per_example", {}).get(f"{fmt}_correct"), after.get("per_example", {}).get(f"{fmt}_correct")
        if cb and ca:
            a, b, v = align(after, before, fmt, ca, cb, f"accuracy drop ({key})")
            pairs.append((fmt, a, b))
            verified = verified and v
    if not pairs:
        return None
    a = np.concatenate([np.asarray(x[1], float) for x in pairs])
    b = np.concatenate([np.asarray(x[2], float) for x in pairs])
    ex = exact_paired_binary(b, a, confidence)            # wins = questions lost by ``after``
    acc_b, acc_a = float(b.mean()), float(a.mean())
    both = int((a * b).sum())
    r_lo, r_hi = paired_ratio_ci(both, ex["losses"], ex["wins"], confidence)   # after / before
    drop = 100 * (acc_b - acc_a) / acc_b if acc_b > 0 else math.nan
    ci = [100 * (1 - r_hi), 100 * (1 - r_lo)] if acc_b > 0 else [math.nan, math.nan]
    return {"drop_percent": drop, "ci95": ci, "accuracy_before": acc_b, "accuracy_after": acc_a,
            "chance_accuracy": chance_accuracy(before, [(fmt, len(x)) for fmt, x, _ in pairs]),
            "n": int(len(a)), "n_per_task": {fmt: len(x) for fmt, x, _ in pairs},
            "mcnemar_p": ex["p_value"], "lost": ex["wins"], "gained": ex["losses"],
            "pairing": "by example id" if verified else "by position (no example ids in the results)"}


def chance_accuracy(results: dict, tasks: list[tuple[str, int]]) -> float | None:
    """The pooled accuracy a guesser would get on the same examples: GSM8K's majority baseline (the best constant
    answer), 1 / the choices on ARC / PIQA (``evals.tasks.chance_rates``, stored per example); None when a task's
    rates are missing (results of older code)."""
    per, total = results.get("per_example", {}), 0.0
    for fmt, n in tasks:
        rates = per.get(f"{fmt}_chance")
        if not rates or len(rates) != n:
            return None
        total += sum(rates)
    n_all = sum(n for _, n in tasks)
    return total / n_all if n_all else None


ROUNDS = "latency_rounds_ms"   # per-round generation times of models timed interleaved in one process
SHARED_PROCESS = "memory_shared_process"   # True: the models' memory was measured one after the other in one process


def median_ci(x: Sequence[float], confidence: float = 0.95) -> list[float]:
    """Distribution-free CI of the median of x: the order statistics (k, n + 1 - k) with the largest k whose
    coverage 1 - 2 P(Bin(n, 1/2) < k) is at least ``confidence`` (the sign-test interval; e.g. Conover 1999, 3.2).
    With too few values for that coverage (n <= 5 at 95 %) the whole range, which covers less: the caller
    decides nothing from it."""
    xs = sorted(x)
    n = len(xs)
    k = max([j for j in range(1, n // 2 + 1) if 1 - 2 * sps.binom.cdf(j - 1, n, 0.5) >= confidence], default=1)
    return [float(xs[k - 1]), float(xs[n - k])]


def _regime(res: dict) -> dict:
    """How a stage's peak memory was measured (``speed.memory_regime``): as ``phase=eval`` recorded it, else (results
    of older code) from its ``device`` and ``finetune`` entries."""
    rec = res.get("memory_regime")
    return rec if isinstance(rec, dict) else memory_regime(res.get("device"), res.get("finetune"))


def _ratio_check(key: str, metric: str, op: str, target: float, cm: dict, bm: dict,
                 regimes: tuple[dict, dict] = ({}, {})) -> dict:
    """A candidate / baseline ratio target decided from a CI: the per-round ratios of the two models' generation
    times, measured interleaved in one process (``ROUNDS``), their median and its distribution-free CI; ok when the
    whole CI meets the target, not when none of it does, None (inconclusive) otherwise or without paired rounds.
    Memory has no rounds: its ratio of single values is reported and decides only when it is measured at all and
    both were measured alike (``regimes``: the candidate's and baseline's ``_regime``; a stage that fine-tuned in the
    evaluating process carries the fine-tune's leftovers, so its peak is not comparable with one that did not)."""
    rc, rb = cm.get(ROUNDS), bm.get(ROUNDS)
    if metric != "peak_memory_mb":
        if not (rc and rb and len(rc) == len(rb) and cm.get("latency_tokens") and bm.get("latency_tokens")):
            return {"threshold": key, "value": None, "target": target, "ok": None,
                    "note": "not timed interleaved in one process: no decision"}
        per_token = [(c / cm["latency_tokens"]) / (b / bm["latency_tokens"]) for c, b in zip(rc, rb)]
        ratios = per_token if metric == "latency_ms" else [1 / r for r in per_token]   # throughput = 1 / time
        value, ci = statistics.median(ratios), median_ci(ratios)
        if len(ratios) < MIN_TIMING_ROUNDS:
            return {"threshold": key, "value": value, "ci95": ci, "rounds": len(ratios), "target": target, "ok": None,
                    "note": f"{len(ratios)} rounds: the median's 95 % CI needs {MIN_TIMING_ROUNDS}: no decision"}
        ok = _met(ci, op, target)
        return {"threshold": key, "value": value, "ci95": ci, "rounds": len(ratios), "target": target, "ok": ok}
    v, b = cm.get(metric), bm.get(metric)
    if not (_num(v) and _num(b) and math.isfinite(v) and math.isfinite(b) and b):
        return {"threshold": key, "value": None, "target": target, "ok": None, "note": "not measured"}
    if cm.get(SHARED_PROCESS) or bm.get(SHARED_PROCESS):
        return {"threshold": key, "value": v / b, "target": target, "ok": None,
                "note": "both trainings measured in one process, one after the other (the second's figure holds "
                        "what the first left behind): not comparable, no decision"}
    rc_, rb_ = regimes
    differ = [f"{k} {rc_[k]} vs {rb_[k]}" for k in sorted(set(rc_) & set(rb_)) if rc_[k] != rb_[k]]
    if differ:
        return {"threshold": key, "value": v / b, "target": target, "ok": None,
                "note": f"the stages' peak memory was measured differently (candidate vs baseline: {'; '.join(differ)}"
                        f"): not comparable, no decision; evaluate both alike (e.g. both fine-tuned in the process)"}
    return {"threshold": key, "value": v / b, "target": target, "ok": (v / b <= target if op == "<=" else v / b >= target)}


MIN_TIMING_ROUNDS = 6   # the fewest values whose median has a distribution-free 95 % CI (median_ci)


def _met(ci, op: str, target: float) -> bool | None:
    """True when the whole CI meets the target, False when none of it does, None (inconclusive) otherwise."""
    return {"PASS": True, "FAIL": False}.get(threshold_verdict(ci, op, target)[0])


def round_ratios(num_s: Sequence[float], den_s: Sequence[float]) -> tuple[float, list[float], int]:
    """(median, its distribution-free CI, n) of the per-round ratios num / den of interleaved timing rounds (round r
    of each list timed in the same round, so load hits both alike): the speedups and cost ratios the phases report."""
    if len(num_s) != len(den_s) or not num_s:
        raise ValueError(f"per-round times must pair up (got {len(num_s)} and {len(den_s)} rounds)")
    ratios = [a / b for a, b in zip(num_s, den_s)]
    return statistics.median(ratios), median_ci(ratios), len(ratios)


def _absolute_check(key: str, metric: str, op: str, target: float, cm: dict, device: str | None = None) -> dict:
    """An absolute target (``max_latency_ms``, ``min_throughput_tokens_per_sec``, ``max_peak_memory_mb``) on the
    candidate alone. Timings are decided from the distribution-free CI of the median over the timed rounds (ok when
    the whole CI meets the target, not when none of it does); a single timing, or fewer than ``MIN_TIMING_ROUNDS``
    rounds, decides nothing. Peak memory, one measured value, decides by its value. The dashboard's throughput target
    is a CPU's and its memory target is RAM: measured on a GPU (``device``: ``phase=codegen``
    records it in its KPIs, ``phase=eval`` beside its metrics), they decide nothing (tokens/s of a GPU, the
    CUDA allocator's peak)."""
    v, rounds, tokens = cm.get(metric), cm.get(ROUNDS), cm.get("latency_tokens")
    timed = metric != "peak_memory_mb" and rounds and tokens
    if not (timed or (_num(v) and math.isfinite(v))):
        return {"threshold": key, "value": None, "target": target, "ok": None, "note": "not measured"}
    where = cm.get("device") or device
    if key in ("min_throughput_tokens_per_sec", "max_peak_memory_mb") and where not in (None, "cpu"):
        what = "a CPU's tokens/s" if key == "min_throughput_tokens_per_sec" else "RAM (this is the CUDA allocator's peak)"
        return {"threshold": key, "value": v, "target": target, "ok": None,
                "note": f"the target is {what}, measured on {where}: no decision"}
    if metric == "peak_memory_mb":
        return {"threshold": key, "value": v, "target": target, "ok": v <= target if op == "<=" else v >= target}
    if not (timed and len(rounds) >= MIN_TIMING_ROUNDS):
        return {"threshold": key, "value": v, "target": target, "ok": None,
                "note": f"timed {len(rounds or []) or 'once'}{' rounds' if rounds else ''}: the median's 95 % CI "
                        f"needs {MIN_TIMING_ROUNDS} rounds: no decision"}
    xs = list(rounds) if metric == "latency_ms" else [tokens / (ms / 1000) for ms in rounds]
    ci = median_ci(xs)
    ok = _met(ci, op, target)
    return {"threshold": key, "value": statistics.median(xs), "ci95": ci, "rounds": len(xs), "target": target, "ok": ok}


def efficiency_checks(cand: dict, base: dict, th: dict) -> tuple[bool | str | None, list[dict]]:
    """(True: every configured target met, False: one missed, "inconclusive": none missed but one not established,
    None: no target configured; the checks). Absolute targets (``_absolute_check``) and ratio targets
    (``_ratio_check``) on timings decide from the CI of the median over at least ``MIN_TIMING_ROUNDS`` rounds."""
    cm, bm = cand["metrics"], base["metrics"]
    specs = [("max_latency_ms", "latency_ms", "<=", None), ("max_peak_memory_mb", "peak_memory_mb", "<=", None),
             ("min_throughput_tokens_per_sec", "throughput_tokens_per_sec", ">=", None),
             ("max_latency_ratio", "latency_ms", "<=", "ratio"), ("max_memory_ratio", "peak_memory_mb", "<=", "ratio"),
             ("min_throughput_ratio", "throughput_tokens_per_sec", ">=", "ratio")]
    checks = []
    for key, metric, op, kind in specs:
        target = th.get(key)
        if target is None:
            continue
        checks.append(_ratio_check(key, metric, op, target, cm, bm, (_regime(cand), _regime(base))) if kind == "ratio"
                      else _absolute_check(key, metric, op, target, cm, cand.get("device")))
    if not checks:
        return None, checks
    if any(c["ok"] is False for c in checks):
        return False, checks
    return (True if all(c["ok"] is True for c in checks) else "inconclusive"), checks


def missed_targets(checks: list[dict]) -> str | None:
    """The efficiency targets missed (``ok`` False), each with what decided it, for the verdict's reason: a timing
    target's whole CI, a memory target's single values (one peak per stage: no CI)."""
    missed = [f"{c['threshold']} {c['value']:.4g} vs target {c['target']} ("
              + (f"missed by its whole CI [{c['ci95'][0]:.4g}, {c['ci95'][1]:.4g}]" if "ci95" in c
                 else "single values, no CI") + ")" for c in checks if c["ok"] is False]
    return "; ".join(missed) or None


def _like_for_like(c: dict, b: dict, k: int) -> tuple[list[float] | None, list[float] | None, str]:
    """(candidate's, baseline's per-problem pass@k, where they come from): both sampled (pass@k estimated from n
    samples a problem, Chen et al. 2021; n may differ) or both greedy (k = 1). A greedy side is never tested against a
    sampled one: greedy decoding alone moves pass@1 (a candidate scored greedily beat the same answers' sampled score
    by 0.30, p < 0.001), so where one side has only greedy answers both use greedy, and where that is not possible the
    comparison is refused (None and the reason)."""
    (ca, src_c), (ba, src_b) = _per_problem(c, k), _per_problem(b, k)
    if ca is None or ba is None:
        return ca, ba, f"not measured for {'candidate' if ca is None else 'baseline'}"
    if (src_c == "greedy") == (src_b == "greedy"):
        return ca, ba, src_c if src_c == src_b else f"{src_c} vs {src_b}"
    greedy = [r.get("per_example", {}).get("gsm8k_correct") for r in (c, b)]
    if k == 1 and all(g is not None for g in greedy):
        return [float(x) for x in greedy[0]], [float(x) for x in greedy[1]], "greedy (one side has no samples)"
    return None, None, (f"not compared: the candidate's pass@{k} is {src_c}, the baseline's {src_b} (a greedy score is "
                        "not comparable with a sampled one; evaluate both the same way)")


def _fit(res: dict) -> dict | None:
    """A stage's ``reference_fit`` (``evals.reference_fit``), or from its metric alone (no budget figures)."""
    rate = res["metrics"].get("gen/reference_fit_rate")
    return res.get("reference_fit") or ({"rate": rate} if _num(rate) else None)


def compute_stats(results: dict[str, dict], baseline: str, candidate: str, thresholds: dict,
                  n_resamples: int = 10_000, seed: int = 0) -> dict:
    """``stats.json``: per-metric paired tests of candidate vs baseline on the same examples (``stats.paired_test``:
    the exact McNemar test for 0/1 outcomes; for other scores the exact sign-flip test below ``min_n`` pairs, the
    bootstrap from there), pass@k like for like (``_like_for_like``) with each stage's CI of its mean per-problem pass@k
    (``stats.mean_ci``: Clopper-Pearson's for 0/1 scores, else the percentile bootstrap; ``"<stage>_ci95"``: the verdict judges the pass@k targets on the
    candidate's), and the verdict — which does not decide on the
    accuracy targets (INCONCLUSIVE, unless what does not rest on them fails) where either stage's GSM8K reference
    answers do not fit its ``phase.gen_tokens`` (``reference_fit.shortfall``): its accuracies measure the budget."""
    for key, st in (("phase.baseline", baseline), ("phase.candidate", candidate)):
        if st not in results:
            raise ConfigError(f"{key}={st}: stage {st!r} is not among the compared stages {list(results)}")
    b, c = results[baseline], results[candidate]
    out: dict = {"baseline": baseline, "candidate": candidate}
    min_n = int(thresholds.get("min_n", MIN_N))
    pass_at: dict[int, float | None] = {}
    pass_at_ci: dict[int, list[float] | None] = {}   # the candidate's CI of its mean per-problem pass@k
    ks = sorted({1, *[int(k) for k in (thresholds.get("pass_at") or {})]})
    for k in ks:
        ca, ba, src = _like_for_like(c, b, k)
        if ca is None or ba is None:
            pass_at[k] = None if ca is None else sum(ca) / len(ca)
            pass_at_ci[k] = None if ca is None else mean_ci(ca, n_resamples, seed)
            out[f"pass_at_{k}"] = {"note": src}
            continue
        bs = _paired(c, b, "gsm8k", ca, ba, f"pass@{k}", n_resamples=n_resamples, seed=seed, min_n=min_n)
        pass_at[k], pass_at_ci[k] = bs["mean_a"], mean_ci(ca, n_resamples, seed)
        out[f"pass_at_{k}"] = {**_summary(bs, candidate, baseline), "source": src, f"{candidate}_ci95": pass_at_ci[k],
                               f"{baseline}_ci95": mean_ci(ba, n_resamples, seed)}
    for fmt, key in (("arc", "arc_easy_accuracy"), ("piqa", "piqa_accuracy")):
        ca, ba = c.get("per_example", {}).get(f"{fmt}_correct"), b.get("per_example", {}).get(f"{fmt}_correct")
        if ca and ba:
            bs = _paired(c, b, fmt, ca, ba, key, n_resamples=n_resamples, seed=seed, min_n=min_n)
            out[key] = _summary(bs, candidate, baseline)
    eff_ok, checks = efficiency_checks(c, b, thresholds)
    p1 = out.get("pass_at_1", {})
    unstable = bool((c.get("finetune") or {}).get("unstable"))
    cut = [f"{st}: {why}" for st, r in ((baseline, b), (candidate, c)) if (why := shortfall(_fit(r)))]
    v, reasons = verdict(pass_at=pass_at, delta_pass1=p1.get("delta"), ci95=p1.get("ci95"),
                         p_value=p1.get("p_value"), thresholds=thresholds, efficiency_ok=eff_ok, unstable=unstable,
                         n=p1.get("n"), efficiency_missed=missed_targets(checks), undecidable=cut,
                         others=paired_at_k(out, thresholds), pass_at_ci=pass_at_ci)
    out.update({"efficiency": checks, "verdict": v, "verdict_score": {"SUCCESS": 2, "PARTIAL": 1}.get(v, 0),
                "min_n": min_n,
                "reasons": reasons,
                "thresholds": {k: (v2 if k != "pass_at" else {str(kk): vv for kk, vv in v2.items()})
                               for k, v2 in thresholds.items()}})
    return out


def run_comparison(results_dir: str | Path, stages: list[str] | None, out_dir: str | Path, *,
                   baseline: str | None = None, candidate: str | None = None, thresholds: dict | None = None,
                   n_resamples: int = 10_000, seed: int = 0) -> dict:
    """Everything ``phase=compare`` and ``scripts/compare_results.py`` produce, written under out_dir."""
    out_dir = Path(out_dir)
    results = load_results(results_dir, stages)
    names = list(results)
    stats = None
    if len(names) >= 2:   # first: a comparison that fails (e.g. different example ids) leaves no half-written output
        stats = compute_stats(results, baseline or names[0], candidate or names[-1], thresholds or {},
                              n_resamples, seed)
    # the verdict's pass@1 test, where the table holds it (candidate vs the first stage), is pre-registered: its
    # marker uses its own p, as the verdict does, not a Holm-adjusted one (compare_table._holm_markers)
    primary = stats["candidate"] if stats and stats["baseline"] == names[0] else None
    rows = table_rows(results, n_resamples=n_resamples, seed=seed, min_n=int((thresholds or {}).get("min_n", MIN_N)),
                      primary=primary)
    md = markdown_table(results, rows)
    sizes = {st: json.dumps(r.get("datasets"), sort_keys=True) for st, r in results.items()}
    if len(set(sizes.values())) > 1:
        md += ("\n**Warning:** the stages were evaluated on different example sets: "
               + "; ".join(f"{st} {v}" for st, v in sizes.items()) + "\n")
    paths = {"markdown": write_text_atomic(out_dir / "comparison.md", md),
             "csv": write_text_atomic(out_dir / "comparison.csv", csv_table(rows))}
    plots = plot_metrics(results, out_dir / "plots")
    if stats is not None:
        paths["stats"] = write_json_atomic(out_dir / "stats.json", stats)
    return {"stages": names, "rows": rows, "markdown": md, "paths": paths, "plots": plots, "stats": stats,
            "results": results}
