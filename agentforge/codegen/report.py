"""The codegen report: Markdown, PNG plots and the success dashboard's W&B panels (section 4):
accuracy lines (pass@k against k), the stat summary table, efficiency bars against the baseline,
training curves (loss, learning rate, gradient norm) and system health (CPU %, RAM) of both trainings."""
from __future__ import annotations

import math
from pathlib import Path

from agentforge.evals.compare import MIN_TIMING_ROUNDS
from agentforge.tracking import plots

EFFICIENCY = (("latency_ms", "latency of {n} tokens (ms)", "lower"),
              ("throughput_tokens_per_sec", "tokens/s ({n}-token generation)", "higher"),
              ("peak_memory_mb", "peak training RAM (MB)", "lower"), ("param_count", "parameters", ""))
NOT_COMPARABLE = "peak_memory_mb"   # with ``memory_shared_process``: two trainings' memory measured in one process
PER_TOKEN = ("latency_ms", "throughput_tokens_per_sec")   # with ``token_units_differ``: different amounts of text


def _comparable(key: str, kpis: dict, names: list[str]) -> bool:
    """False for the training-RAM figure when the models trained one after the other in one process
    (``memory_shared_process``: the later training's figure also holds what the earlier one left behind), so its
    ratio is no comparison; False for the per-token timings when the tokenizers differ (bytes vs BPE: a token is not
    the same text)."""
    return not ((key == NOT_COMPARABLE and any(kpis[n].get("memory_shared_process") for n in names))
                or (key in PER_TOKEN and any(kpis[n].get("token_units_differ") for n in names)))


def memory_note(kpis: dict, names: list[str]) -> str:
    """What the report's "peak train RAM" column measured: each training's own process peak (``memory_shared_process``
    False), or the largest RSS logged while the models trained one after the other in one process (not comparable)."""
    if any(kpis[n].get("memory_shared_process") for n in names):
        return ("Peak train RAM: the largest RSS (on a GPU, CUDA allocation) logged while that model trained; both "
                "trained in this one process, one after the other, so the later figure also holds what the earlier "
                "training left behind: not comparable between the models, and the memory ratio decides nothing.")
    return ("Peak train RAM: the resident-memory high-water mark (the kernel's) of the fresh process that trained that "
            "model alone, on a GPU the CUDA allocator's peak; the interpreter and its imports, the same for every "
            "model, are included: a true peak, comparable between the models; a dash where a model did not train "
            "here.")


def _f(v, digits: int = 4) -> str:
    """A table cell: '–' for a figure that was not measured (None, NaN)."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return "–" if math.isnan(v) else f"{v:.{digits}g}"
    return str(v)


def _with_ci(s: dict, name: str) -> str:
    """A model's pass@k cell with its bootstrap CI over problems beside it (``"<model>_ci95"``), where it has one."""
    ci = s.get(f"{name}_ci95")
    return _f(s.get(name)) + (f" [{ci[0]:.3g}, {ci[1]:.3g}]" if ci else "")


def _ks(stats: dict) -> list[int]:
    """The k of every ``pass_at_<k>`` entry of stats.json, ascending."""
    return sorted(int(k.rsplit("_", 1)[1]) for k in stats if k.startswith("pass_at_"))


def _aligned(trainings: dict[str, dict], names: list[str], key: str, fill) -> tuple[list[int], dict[str, list]]:
    """(steps, {model: values}) of one training curve of the models that recorded it, on the union of
    their steps (``fill`` where a model has no value at a step)."""
    series = {n: dict(trainings[n]["curves"][key]) for n in names if n in trainings and trainings[n]["curves"][key]}
    steps = sorted({s for pts in series.values() for s in pts})
    return steps, {n: [pts.get(s, fill) for s in steps] for n, pts in series.items()}


def efficiency_ratios(kpis: dict[str, dict], cand: str, base: str) -> tuple[list[str], list[float]]:
    """The efficiency bars: (labels, candidate ÷ baseline) of each measured, comparable EFFICIENCY figure."""
    labels, ratios = [], []
    for key, label, _ in EFFICIENCY:
        a, b = kpis[cand].get(key), kpis[base].get(key)
        if (_comparable(key, kpis, [cand, base]) and isinstance(a, (int, float)) and isinstance(b, (int, float))
                and b and not math.isnan(a / b)):
            ratios.append(a / b)
            labels.append(label.split(" (")[0].format(n=kpis[cand].get("latency_tokens", "?")))
    return labels, ratios


def plot_all(out_dir: Path, names: list[str], curves: dict[str, list[float]], kpis: dict[str, dict],
             trainings: dict[str, dict]) -> list[Path]:
    paths = []
    k_max = max(len(c) for c in curves.values())
    paths.append(plots.line_plot(out_dir / "pass_at_k.png", list(range(1, k_max + 1)),
                                 {n: curves[n] + [float("nan")] * (k_max - len(curves[n])) for n in names},
                                 "pass@k (unbiased estimator)", "k", "pass@k"))
    base = names[-1]
    labels, ratios = efficiency_ratios(kpis, names[0], base)
    if ratios:
        paths.append(plots.bar_plot(out_dir / "efficiency_vs_baseline.png", labels, ratios,
                                    f"{names[0]} / {base} (1 = equal)", "ratio"))
    for key, fname in (("train/loss", "training_loss.png"), ("system/ram_used_gb", "system_ram.png")):
        steps, ys = _aligned(trainings, names, key, float("nan"))
        if ys:
            paths.append(plots.line_plot(out_dir / fname, steps, ys, key, "step", key))
    return paths


def ceiling_line(ceiling: dict[str, float], max_new_tokens, target) -> str:
    """The budget ceiling as a report line: the pass@1 of the canonical solutions cut to each model's budget."""
    low = [n for n, v in ceiling.items() if target is not None and v < target]
    return (f"Budget ceiling: canonical solutions cut to max_new_tokens = {max_new_tokens} (each model's own tokens) "
            f"and the stop sequences pass@1 = " + ", ".join(f"{v:.3f} ({n})" for n, v in ceiling.items())
            + (f"; **below the pass@1 target {target} for {', '.join(low)}: even a perfect model could not meet it "
               f"under this budget** (raise phase.max_new_tokens)." if low else "."))


def efficiency_line(c: dict) -> str:
    """One efficiency check of ``stats.json`` as a report line; below ``MIN_TIMING_ROUNDS`` the order statistics are
    the range of the rounds, not a 95 % CI, and are called that."""
    if "ci95" in c and c.get("rounds", 0) >= MIN_TIMING_ROUNDS:
        ci = f" CI95 [{_f(c['ci95'][0])}, {_f(c['ci95'][1])}] over {c['rounds']} interleaved rounds"
    else:
        ci = f" (range [{_f(c['ci95'][0])}, {_f(c['ci95'][1])}] of {c.get('rounds')} rounds)" if "ci95" in c else ""
    outcome = {True: "ok", False: "not met"}.get(c["ok"], f"inconclusive{': ' + c['note'] if 'note' in c else ''}")
    return f"- efficiency {c['threshold']}: {_f(c['value'])}{ci} vs target {c['target']} -> {outcome}"


def markdown(info: dict, names: list[str], evals: dict[str, dict], kpis: dict[str, dict], stats: dict,
             trainings: dict[str, dict], plot_paths: list[Path]) -> str:
    cand, base = stats["candidate"], stats["baseline"]
    ks = _ks(stats)
    lines = [f"# Code generation: {cand} vs {base}", "",
             f"Benchmark **{info['benchmark']}**, {info['n_problems']} problems ({info['problem_range']}), "
             f"n = {info['n_samples']} samples per problem at temperature {info['temperature']}, top-p {info['top_p']}, "
             f"at most {info['max_new_tokens']} new tokens, context {info['context_tokens']}{' tokens' if isinstance(info['context_tokens'], int) else ''}; "
             f"sandbox mode `{info['sandbox']}`.", "",
             f"Baseline: {info['baseline_description']}.", "",
             f"Training corpus (data=python_code): {info['corpus']['train_files']} train / {info['corpus']['val_files']} "
             f"val files of the Python {info['python']} standard library, {info['corpus']['duplicates_dropped']} "
             f"duplicates and **{info['corpus']['contaminated_dropped']} files containing a benchmark solution or "
             f"signature dropped**.", ""]
    trunc = {n: evals[n]["prompts_truncated"] for n in names if evals[n]["prompts_truncated"]}
    if trunc:
        lines += ["Prompts that, with the new tokens, outgrow the context (left-truncated: the model loses their start): "
                  + ", ".join(f"{n} {c} of {info['n_problems']}" for n, c in trunc.items()) + ".", ""]
    if info.get("self_check"):
        sc = info["self_check"]
        lines += [f"Harness self-check: canonical solutions pass@1 = {sc['pass_at_1']:.3f} on {sc['n']} problems"
                  + (f" (failures: {[f['task_id'] for f in sc['failures']]})" if sc["failures"] else "") + ".", ""]
        if sc.get("budget_ceiling_pass_at_1"):
            lines += [ceiling_line(sc["budget_ceiling_pass_at_1"], info["max_new_tokens"],
                                   info.get("pass_at_1_target")), ""]
    if info.get("optimizers"):
        differ = len(set(info["optimizers"].values())) > 1
        lines += ["Optimizers" + (" (they differ, so a delta can come from the optimizer as well as the architecture)"
                                  if differ else "") + ": "
                  + ", ".join(f"{n} `{o}`" for n, o in info["optimizers"].items()) + ".", ""]
    if info.get("train_rows"):
        lines += ["Training rows: " + ", ".join(f"{n} {r['batch_size']} x {r['seq_len']} tokens"
                                                for n, r in info["train_rows"].items())
                  + " per step (rows as long as the evaluated context, so every position the models generate at was "
                    "trained).", ""]
    head = ["model"] + [f"pass@{k} [CI95]" for k in ks] + ["passed", "failed", "timeout", "error", "params",
                                                     "latency ms", "tok/s", "peak train RAM MB", "val loss",
                                                     "train s"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for n in names:
        oc, kp, tr = evals[n]["outcomes"], kpis[n], trainings.get(n, {})
        row = [n] + [_with_ci(stats.get(f"pass_at_{k}", {}), n) for k in ks]
        row += [str(oc[o]) for o in ("passed", "failed", "timeout", "error")]
        row += [_f(kp.get("param_count")), _f(kp.get("latency_ms")), _f(kp.get("throughput_tokens_per_sec")),
                _f(kp.get("peak_memory_mb")), _f(tr.get("final_val_loss")), _f(tr.get("seconds"))]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Characters per completion (mean / max, after the stop-sequence cut): "
              + ", ".join(f"{n} {_f(evals[n].get('completion_chars_mean'), 3)} / {_f(evals[n].get('completion_chars_max'))}"
                          for n in names) + "."]
    if any(kpis[n].get("token_units_differ") for n in names):
        lines += ["", "**The models' tokenizers differ (bytes vs BPE): max_new_tokens, the context and the timed "
                  "generation count different amounts of text, so the latency and throughput ratios are not "
                  "comparable: different token units (no decision).**"]
    lat = {n: kpis[n].get("latency_tokens") for n in names if kpis[n].get("latency_tokens")}
    if lat:
        lines += ["", "Latency and tok/s: one greedy generation of "
                  + ", ".join(f"{t} tokens = {_f(kpis[n].get('latency_chars'))} characters ({n})" for n, t in lat.items())
                  + " through the KV cache, batch 1."]
    lines += ["", memory_note(kpis, names)]
    lines += ["", "## Statistics", ""]
    for k in ks:
        s = stats[f"pass_at_{k}"]
        if "delta" in s and s.get("ci95"):
            lines.append(f"- pass@{k}: delta {s['delta']:+.4f}, CI95 [{s['ci95'][0]:+.4f}, {s['ci95'][1]:+.4f}], "
                         f"p = {_f(s['p_value'])} ({s.get('test', 'paired bootstrap')}, n = {s['n']} problems)")
        else:
            lines.append(f"- pass@{k}: {s.get('note', 'not tested')}")
    lines += ["", f"**Verdict: {stats['verdict']}**", ""] + [f"- {r}" for r in stats["reasons"]]
    lines += [efficiency_line(c) for c in stats["efficiency"]]
    lines += ["", "A tiny model trained for minutes on a 2-core CPU writes almost no working code: pass@k near 0 "
              "and a FAILURE (or INCONCLUSIVE) verdict are the honest result, not a harness fault (the self-check "
              "shows the harness passes correct code; the budget ceiling, what a perfect model could score).", ""]
    lines += [f"![{p.stem}](plots/{p.name})" for p in plot_paths]
    return "\n".join(lines) + "\n"


def log_dashboard(tr, names: list[str], evals: dict, kpis: dict, stats: dict, curves: dict, trainings: dict,
                  plot_paths: list[Path]) -> None:
    """The W&B panels (tables + charts) and the summary keys."""
    k_max = max(len(c) for c in curves.values())
    tr.line_series("dashboard/accuracy_pass_at_k", list(range(1, k_max + 1)), [curves[n] for n in names],
                   [f"{n} pass@k" for n in names], "pass@k vs k", "k")
    ks = _ks(stats)
    rows = [[f"pass@{k}", *(stats[f"pass_at_{k}"].get(n) for n in names), stats[f"pass_at_{k}"].get("delta"),
             str(stats[f"pass_at_{k}"].get("ci95")), stats[f"pass_at_{k}"].get("p_value"), stats["verdict"]]
            for k in ks]
    tr.table("dashboard/stat_summary", ["metric", *names, "delta", "ci95", "p_value", "verdict"], rows)
    tr.table("dashboard/efficiency", ["kpi", *names, "comparable"],
             [[key, *(kpis[n].get(key) for n in names), _comparable(key, kpis, names)] for key, _, _ in EFFICIENCY])
    tr.table("codegen/per_problem", ["model", "task_id", "num_samples", "num_correct", "passed", "failed", "timeout",
                                     "error"],
             [[n, p["task_id"], p["num_samples"], p["num_correct"], p["passed"], p["failed"], p["timeout"], p["error"]]
              for n in names for p in evals[n]["problems"]])
    for key, title in (("train/loss", "training loss"), ("train/learning_rate", "learning rate"),
                       ("train/gradient_norm", "gradient norm"), ("system/cpu_percent", "system: CPU %"),
                       ("system/ram_used_gb", "system: RAM GB")):
        steps, ys = _aligned(trainings, names, key, None)
        if ys:
            tr.line_series(f"dashboard/{key.replace('/', '_')}", steps, list(ys.values()), list(ys), title, "step")
    for p in plot_paths:
        tr.image(f"plots/{p.stem}", p)
    summary = {"stats/verdict": stats["verdict"], "stats/verdict_score": stats["verdict_score"],
               **({"stats/train_run_failures": stats["train_run_failures"]} if "train_run_failures" in stats else {})}
    for k in ks:
        s = stats[f"pass_at_{k}"]
        for n in names:
            if n in s:
                summary[f"{n}/pass_at_{k}"] = s[n]
        for f in ("delta", "p_value"):
            if isinstance(s.get(f), (int, float)):
                summary[f"stats/pass_at_{k}/{f}"] = s[f]
    for n in names:
        summary.update({f"{n}/{key}": v for key, v in kpis[n].items() if isinstance(v, (int, float))})
    tr.summary(summary)
