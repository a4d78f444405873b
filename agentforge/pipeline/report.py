"""The cross-phase report of the seed's "Cross-Phase Dashboards", from measured figures only:

1. phase overview: status and duration of every step;
2. model performance across phases: perplexity, accuracies, size on disk, latency, from each phase
   output's ``eval`` results; every accuracy with its n and 95% exact (Clopper-Pearson) CI;
3. the seed's critical thresholds, each row decided from its CI (``pipeline.thresholds``);
4. Phase 1, what each trained Cognate model relies on (mechanisms switched off at inference): each model's ablation deltas with their paired-bootstrap
   CIs (recursion at 1 step, memory off, always-max-steps with the non-inferiority verdict of halting,
   recall items memory off), its halting (mean, std, histogram, computed digits vs letters) and the
   diversity features, beside the Phase 1 diversity and the seed's 0.3 (``phase1_rows``);
5. held-out data: the synthetic data's overlap check (``data.synthetic.overlap_check``);
6. resource usage: time, peak memory (resident set size sampled during the step) and storage per phase.

Written as Markdown with PNG plots, and returned as rows for the terminal table and W&B.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from agentforge.evals.compare import ACCURACY_FORMATS, ACCURACY_KEYS
from agentforge.evals.intervals import stage_intervals
from agentforge.evals.stats import MIN_N, exact_proportion_ci
from agentforge.io import WEIGHTS_FILE, atomic_write, write_text_atomic
from agentforge.pipeline.thresholds import cognate_diversity, cognate_metrics
from agentforge.tracking.plots import points_with_ci

PERF_COLUMNS = [("perplexity", "Perplexity"), ("reasoning_accuracy", "GSM8K acc"), ("arc_easy_accuracy", "ARC acc"),
                ("piqa_accuracy", "PIQA acc"), ("size_mb", "Weights on disk (MB)"), ("latency_ms", "Latency (ms)"),
                ("forward_tokens_per_sec", "Forward tok/s")]
TIMED = ("latency_ms", "forward_tokens_per_sec")   # each stage timed once, in its own run


def diversity_text(div: dict) -> str:
    if not div:
        return "– (needs all three models)"
    if "phase1/diversity_ci95" not in div:
        return f"{div['phase1/diversity']:.3f} (no CI: metrics without per-row features)"
    lo, hi = div["phase1/diversity_ci95"]
    return (f"{div['phase1/diversity']:.3f}, 95% CI [{lo:.3f}, {hi:.3f}] ({div['phase1/diversity_test']}, "
            f"n = {div['phase1/diversity_n']} rows per model)")


PHASE1_COLUMNS = ["Model", "Val loss", "Halting steps mean (std)", "Steps histogram",
                  "Digits − letters steps [CI]", "1 step: Δloss [CI]", "Memory off: Δloss [CI]",
                  "Always max steps: Δloss [CI]", "Halting vs max steps", "Recall, memory off: Δloss [CI]",
                  "LTM usage", "MFLOPs/token"]


def _delta(m: dict, pre: str, digits: int = 4) -> str:
    if f"{pre}_delta" not in m:
        return "–"
    return f"{m[pre + '_delta']:+.{digits}f} [{m[pre + '_delta_ci_low']:+.{digits}f}, {m[pre + '_delta_ci_high']:+.{digits}f}]"


def _halting_verdict(m: dict) -> str:
    """The Cognate phase's non-inferiority verdict (``models.ablation.halting_verdict``) with the figures behind it."""
    from agentforge.models.ablation import halting_verdict  # torch: only when a report has Cognate rows

    if "ablation/halting_noninferior" not in m:
        return "–"
    return halting_verdict(m)


def phase1_rows(artifacts: Path) -> list[list]:
    """One row per trained Cognate model (``cognate/model{i}/metrics.json``); Δ = variant − trained model."""
    rows = []
    for mid, m in cognate_metrics(artifacts).items():
        shares = sorted((int(k.rsplit("step", 1)[1]), v) for k, v in m.items() if k.startswith("diversity/halting_share_step"))
        std = m.get("diversity/halting_steps_std")
        rows.append([f"Model {mid}", m.get("final/val_loss"),
                     f"{m['diversity/avg_halting_steps']:.2f}" + (f" ({std:.2f})" if std is not None else ""),
                     " ".join(f"{n}:{v:.0%}" for n, v in shares) or "–",
                     _delta(m, "ablation/halting_digits_minus_letters", 2), _delta(m, "ablation/steps1_loss"),
                     _delta(m, "ablation/no_memory_loss"), _delta(m, "ablation/max_steps_loss"), _halting_verdict(m),
                     _delta(m, "ablation/recall_no_memory_loss"), m.get("diversity/ltm_usage"),
                     m.get("diversity/inference_mflops_per_token")])
    return rows


def _phase1_sizes(artifacts: Path) -> str:
    """The n behind the Phase 1 table's CIs (rows per model, as each model's metrics record them)."""
    ms = cognate_metrics(artifacts).values()
    parts = []
    for key, what in (("ablation/n_rows", "validation rows"), ("ablation/halting_task_n_rows", "GSM8K-format rows "
                      "(digits − letters)"), ("ablation/recall_n_rows", "recall rows (recall, memory off)")):
        ns = sorted({int(m[key]) for m in ms if isinstance(m.get(key), (int, float))})
        if ns:
            parts.append(f"{' / '.join(map(str, ns))} {what}")
    return ("n per model: " + "; ".join(parts) + ".") if parts else ""


def dir_bytes(p: Path) -> int:
    return sum(f.stat().st_size for f in Path(p).rglob("*") if f.is_file()) if Path(p).exists() else 0


def performance_rows(artifacts: Path, stages: list[tuple[str, Path]]) -> list[dict]:
    rows = []
    for stage, ckpt in stages:
        f = artifacts / "eval_results" / f"{stage}_results.json"
        if not f.is_file():
            continue
        res = json.loads(f.read_text())
        m, per = res["metrics"], res.get("per_example", {})
        # the weights file the stage's evaluation loaded: the folder also holds metrics, configs and, after Quiet-STaR,
        # the mixing head the evaluation does not load (the column read 1.347 MB beside BitNet's 1.149 for one file)
        weights = Path(ckpt) / WEIGHTS_FILE
        row = {"stage": stage, "size_mb": (weights.stat().st_size if weights.is_file() else dir_bytes(ckpt)) / 2**20}
        row.update({k: m.get(k) for k, _ in PERF_COLUMNS if k != "size_mb"}, latency_tokens=m.get("latency_tokens"))
        row.update(stage_intervals(per))   # n and the 95% CI of each accuracy and of the perplexity
        rows.append(row)
    return rows


def _perf_cell(row: dict, key: str):
    v, n = row.get(key), row.get(f"{key}_n")
    if n is None or not isinstance(v, (int, float)):
        return v
    lo, hi = row[f"{key}_ci95"]
    return f"{v:.4g} [{lo:.4g}, {hi:.4g}] n={n}" if key == "perplexity" else f"{v:.3f} [{lo:.2f}, {hi:.2f}] n={n}"


def power_note(perf: list[dict]) -> str:
    """What the accuracies' sample sizes can resolve: the 95% exact (Clopper-Pearson) half-width at accuracy 0.5
    per n."""
    ns = sorted({r[f"{k}_n"] for r in perf for _, k in ACCURACY_FORMATS if r.get(f"{k}_n")})
    if not ns:
        return ""
    parts = [f"n = {n}: ±{(hi - lo) / 2:.3f}" for n in ns for lo, hi in [exact_proportion_ci(n // 2, n)]]
    return ("Accuracies: value [95% exact (Clopper-Pearson) CI] and n examples. Half-width of the CI at accuracy 0.5: "
            + "; ".join(parts) + ". Perplexity: exp of the mean held-out row loss [95% Student t-interval over "
            "the rows] and n rows.")


STAGE_NOTE = ("Every stage is evaluated as a plain language model on the same eval test rows: phase3_reasoning "
              "without its thoughts (its mixing head is not loaded; BitNet compresses the model without it). "
              "`python -m agentforge phase=compare stages=[...]` tests any two stages paired on these examples.")


def timing_note(perf: list[dict]) -> str:
    """How the rows' timings were taken, so nobody reads a speed change into them: each stage is timed once, in its
    own eval run at a different time (no CI); BitNet's speedup is the interleaved, paired comparison."""
    if not any(isinstance(r.get(k), (int, float)) for r in perf for k in ("latency_ms", "forward_tokens_per_sec")):
        return ""
    tokens = sorted({int(r["latency_tokens"]) for r in perf if isinstance(r.get("latency_tokens"), (int, float))})
    gen = f"one greedy generation of {'/'.join(map(str, tokens)) or 'the configured'} tokens after a warm-up"
    return (f"Latency: {gen}; forward tok/s: the median of 3 forwards. Each row is timed in its own eval run, at "
            "a different time, with no CI: a difference between rows is not evidence of a speed change (the "
            "BitNet row's forward speedup, timed interleaved in one process with a CI, is).")


def data_rows(check: dict[str, dict]) -> list[list]:
    """The overlap check's counts (``synthetic.overlap_check``) as table rows."""
    return [[task, r["train_draws"], r["train_distinct"], f"{r['val']} / {r['test']}",
             f"{r['val_prompts_in_train']} / {r['test_prompts_in_train']}",
             f"{r['val_records_in_train']} / {r['test_records_in_train']}",
             f"{r.get('val_problems_in_train', '–')} / {r.get('test_problems_in_train', '–')}"]
            for task, r in check.items()]


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def markdown_table(columns: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def performance_figure(rows: list[dict]):
    """One panel per figure across the stages, each accuracy and the perplexity with its 95% CI as an error bar
    (``<key>_ci95``, as the table gives it); accuracies on the whole [0, 1] axis. Latency and tok/s have no bars:
    each stage is timed in its own run, with no CI (the table's note)."""
    keys = [k for k, _ in PERF_COLUMNS if any(isinstance(r.get(k), (int, float)) for r in rows)]
    ncols = min(4, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    fig, grid = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 3.2 * nrows), squeeze=False)
    axes = list(grid.flat)
    for ax in axes[len(keys):]:
        ax.axis("off")
    labels = [r["stage"].replace("_", "\n", 1) for r in rows]
    for ax, k in zip(axes, keys):
        vals = [r.get(k) if isinstance(r.get(k), (int, float)) else float("nan") for r in rows]
        cis = [r.get(f"{k}_ci95") for r in rows]
        bars = points_with_ci(ax, list(range(len(vals))), vals, cis, proportion=k in ACCURACY_KEYS)
        ax.set_xticks(range(len(vals)), labels, fontsize=7)
        note = " (95% CI)" if bars else " (one timing a stage, no CI)" if k in TIMED else ""
        ax.set_title(dict(PERF_COLUMNS)[k] + note, fontsize=9)
        ax.grid(alpha=0.3)
    fig.suptitle("Model performance across phases")
    fig.tight_layout()
    return fig


def plot_performance(path: Path, rows: list[dict]) -> Path | None:
    if not rows:
        return None
    fig = performance_figure(rows)
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110))
    plt.close(fig)
    return path


def plot_resources(path: Path, steps: list[dict]) -> Path | None:
    if not steps:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    names = [s["key"] for s in steps]
    for ax, key, title in zip(axes, ("duration_s", "peak_rss_mb", "storage_mb"),
                              ("time (s)", "peak memory (MB, sampled RSS)", "storage (MB)")):
        ax.bar(range(len(steps)), [s.get(key) or 0 for s in steps])
        ax.set_xticks(range(len(steps)), names, rotation=60, ha="right", fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle("Resource usage by step")
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110))
    plt.close(fig)
    return path


def write_report(out_dir: Path, name: str, steps: list[dict], perf: list[dict], checks: list[list],
                 data_check: dict[str, dict] | None = None, artifacts: Path | None = None,
                 stale: list[str] | None = None) -> dict:
    """The Markdown report and its tables; ``artifacts`` (default ``out_dir/artifacts``, the pipeline's) holds
    the Cognate models' metrics for the Phase 1 section. ``stale``: steps outside a subset run whose outputs were
    made from outputs this run replaced, or outputs outside the run that this command would not make (a warning at the
    top, instead of the line saying every figure is this pipeline's own)."""
    artifacts = Path(out_dir) / "artifacts" if artifacts is None else Path(artifacts)
    perf_png = plot_performance(out_dir / "performance_across_phases.png", perf)
    res_png = plot_resources(out_dir / "resource_usage.png", steps)
    status_cols = ["Step", "Phase", "Status", "Duration (s)"]
    status_rows = [[s["key"], s["phase"], s["status"], s.get("duration_s")] for s in steps]
    perf_cols = ["Stage"] + [t for _, t in PERF_COLUMNS]
    perf_rows = [[r["stage"]] + [_perf_cell(r, k) for k, _ in PERF_COLUMNS] for r in perf]
    res_cols = ["Step", "Time (s)", "Process peak RSS (MB)", "Published model (MB)"]   # the run dirs are not counted
    res_rows = [[s["key"], s.get("duration_s"), s.get("peak_rss_mb"), s.get("storage_mb")] for s in steps]
    total_s = sum(s.get("duration_s") or 0 for s in steps if s["status"] == "done")
    md = [f"# Agent Forge pipeline report: {name}", "",
          *([f"**Warning — stale outputs:** {'; '.join(stale)}. The rows read from them (evaluations, thresholds, "
             "Phase 1) describe another lineage until those steps run again, so the figures below are NOT all of one "
             "lineage of this pipeline's runs.", ""] if stale else
            ["All figures are measured by this pipeline's own runs, on one lineage of its outputs.", ""]),
          "## Phase overview", "", markdown_table(status_cols, status_rows), "",
          f"Time spent in steps run this time: {total_s:.1f} s." + (" A skipped step (its outputs complete and made "
          "with the same settings) shows the time and memory of the run that made them." if any(
              s["status"].startswith("skipped") for s in steps) else ""), "",
          "## Model performance across phases", "", markdown_table(perf_cols, perf_rows) if perf_rows else
          "_No evaluation results (the eval phase was not selected)._", ""]
    for note in (power_note(perf), timing_note(perf), STAGE_NOTE if perf else ""):
        if note:
            md += [note, ""]
    if perf_png:
        md += [f"![performance]({perf_png.name})", ""]
    check_cols = ["Phase", "Metric", "Threshold", "Measured", "Result"]
    md += ["## The seed's critical thresholds", "",
           markdown_table(check_cols, checks) if checks else "_No phase with a threshold ran._", "",
           "A row passes only when its whole 95% CI (for a row comparing two models, the CI of a paired test on the "
           "same examples) meets the threshold, fails when none of it does, and is INCONCLUSIVE otherwise, and below "
           f"n = {MIN_N}, where the row says so.", ""]
    phase1 = phase1_rows(artifacts)
    if phase1:
        div = cognate_diversity(artifacts)
        md += ["## Phase 1: what each trained Cognate model relies on", "", markdown_table(PHASE1_COLUMNS, phase1), "",
               "Val loss: each model's loss on the same validation rows (the last curriculum stage's tasks, uniformly, "
               "whatever the model's dataset weights). "
               "Δloss = variant − trained model in nats/token on the validation rows, paired 95% CI over rows, each "
               "row distinct documents none of which spans two rows (positive: the loss is higher with the mechanism "
               "switched off at inference, so the trained model relies on it; what training with it buys is measured by "
               "scripts/train_ablations.py). "
               "Halting passes when the CI's upper bound of its cost "
               "against always-max-steps is below the margin, fails when the whole CI is at or above it, and is "
               "INCONCLUSIVE when it straddles the margin or fewer than 30 rows were measured. Digits − letters: mean "
               "halting step on the computed "
               "result's digits minus on the letters of the same held-out GSM8K-format rows, paired by row. "
               + _phase1_sizes(artifacts), "",
               "Phase 1 diversity (mean coefficient of variation of halting steps, LTM usage and inference FLOPs "
               "across the three models): " + diversity_text(div) + " against the seed's threshold 0.3.", ""]
    data_cols = ["Task", "Training draws", "Distinct training prompts", "Held-out (val / test)",
                 "Held-out prompts seen in training (val / test)", "Identical records (val / test)",
                 "Held-out problems seen in training (val / test)"]
    data = data_rows(data_check) if data_check else []
    if data:
        md += ["## Held-out data", "", markdown_table(data_cols, data), "",
               "Synthetic train / val / test are disjoint by problem: each item's key is its underlying problem "
               "(arithmetic: operation and operands; PIQA: its computation; choice: the question's numbers), "
               "held-out keys are reserved by a hash, and training draws that hash there are redrawn.", ""]
    md += ["## Resource usage", "", markdown_table(res_cols, res_rows), "",
           "The steps run in one process: a step's peak RSS includes what the earlier steps left in it (the "
           "Python runtime, torch, the imported modules), not only the step's own memory.", ""]
    if res_png:
        md += [f"![resources]({res_png.name})", ""]
    report = write_text_atomic(out_dir / "pipeline_report.md", "\n".join(md))
    return {"report": report, "plots": [p for p in (perf_png, res_png) if p],
            "tables": {"pipeline/phase_status": (status_cols, status_rows),
                       "pipeline/thresholds": (check_cols, checks),
                       "pipeline/performance": (perf_cols, perf_rows),
                       "pipeline/heldout_data": (data_cols, data),
                       "pipeline/phase1_ablations": (PHASE1_COLUMNS, phase1),
                       "pipeline/resources": (res_cols, res_rows)}}
