"""Compare evaluation stages: a table of every metric (Markdown, CSV), PNG plots and ``stats.json``.

    python -m agentforge phase=compare stages=[baseline,after_surgery,finetuned_vanilla,finetuned_recursive]
    python scripts/compare_results.py baseline after_surgery

Reads ``{stage}_results.json`` from ``phase.results_dir`` (default ``{artifacts}/eval_results``). The table
marks a change ▲ / ▼ only where the paired 95 % CI of the difference on the same examples excludes 0 (``~``
otherwise) and gives once-per-run figures (timings, memory) their bare difference, unpaired, no test
(``evals/compare_table.py``); the statistics compare ``phase.candidate`` (default: the last stage) with
``phase.baseline`` (the first).
"""
from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from agentforge.errors import ConfigError
from agentforge.evals.collect import gate_or_raise
from agentforge.evals.compare import load_results, run_comparison
from agentforge.evals.compare_table import COLUMNS
from agentforge.evals.dashboard_verdict import run_labels
from agentforge.evals.results_file import require_two
from agentforge.phases.context import run_context
from agentforge.phases.rules import PHASE_RULES

RULES = PHASE_RULES["compare"]


def thresholds_of(th: dict) -> dict:
    """Flat config keys (min_pass_at_10: 0.45) to the verdict's form (pass_at: {10: 0.45})."""
    out = {k: v for k, v in th.items() if not k.startswith("min_pass_at_")}
    out["pass_at"] = {int(k.rsplit("_", 1)[1]): v for k, v in th.items() if k.startswith("min_pass_at_") and v is not None}
    return out


def run(cfg) -> dict:
    p = cfg.phase
    stages = cfg.get("stages") if cfg.get("stages") is not None else p.get("stages")
    if stages is not None and not (isinstance(stages, list) or OmegaConf.is_list(stages)):
        raise ConfigError(f"stages={stages} must be a list of stage names, e.g. stages=[{stages}] or "
                          f"stages=[baseline,after_surgery]")
    if stages is not None:
        stages = [str(s) for s in (OmegaConf.to_container(stages) if OmegaConf.is_config(stages) else stages)]
        if not stages:
            raise ConfigError("stages=[] is empty; name the stages to compare, e.g. stages=[baseline,after_surgery]")
        twice = sorted({st for st in stages if stages.count(st) > 1})
        if twice:
            raise ConfigError(f"stages={stages} names {', '.join(twice)} more than once; name each stage once")
        if len(stages) < 2:   # before reading any file, as stages=[] is
            require_two({stages[0]: None}, stages, "")
    if cfg.get("stage") is not None:
        raise ConfigError(f"stage={cfg.get('stage')} is phase=eval's; phase=compare takes stages=[...], e.g. "
                          f"stages=[baseline,{cfg.get('stage')}]")
    results_dir = Path(p.results_dir or Path(cfg.paths.artifacts) / "eval_results").absolute()
    thresholds = thresholds_of(OmegaConf.to_container(p.thresholds, resolve=True))
    # a missing or malformed stage, or only one, fails here, before the run dir and W&B run
    require_two(load_results(results_dir, stages), stages, results_dir)
    with run_context(cfg, run_name="compare-stages", group="evaluation", tags=["compare"], job_type="compare") as ctx:
        out = run_comparison(results_dir, stages, ctx.run_dir / "compare", baseline=p.baseline,
                             candidate=p.candidate, thresholds=thresholds, n_resamples=int(p.n_resamples),
                             seed=int(cfg.seed))
        tr = ctx.tracker
        names = out["stages"]
        by_metric: dict[str, dict] = {}
        for r in out["rows"]:
            by_metric.setdefault(r["metric"], {})[r["stage"]] = r["value"]
        tr.table("comparison/metrics", ["metric"] + names, [[m] + [v.get(s) for s in names] for m, v in by_metric.items()])
        tr.table("comparison/changes", COLUMNS, [[r[c] for c in COLUMNS] for r in out["rows"] if r["stage"] != names[0]])
        for path in out["plots"]:
            tr.image(f"comparison/{path.stem}", path)
        st = out["stats"]
        if st:
            flat = {f"stats/{k}/{kk}": vv for k, v in st.items() if isinstance(v, dict)
                    for kk, vv in v.items() if isinstance(vv, (int, float)) and not isinstance(vv, bool)}
            tr.summary({**flat, "stats/verdict": st["verdict"]})
            tr.label(run_labels(st, float(thresholds.get("alpha", 0.05))))
        print(out["markdown"])
        for path in out["plots"]:
            print(f"plot: {path}")
        if st:
            p1 = st.get("pass_at_1", {})
            print(f"verdict ({st['candidate']} vs {st['baseline']}): {st['verdict']}"
                  + (f"  pass@1 delta {p1['delta']:+.3f} CI95 [{p1['ci95'][0]:+.3f}, {p1['ci95'][1]:+.3f}] "
                     f"p={p1['p_value']:.3g} ({p1['test']}, n={p1['n']}, paired {p1['pairing']})"
                     if "delta" in p1 else "")
                  + "".join(f"\n  - {r}" for r in st["reasons"]))
    gate = OmegaConf.to_container(p.gate, resolve=True) if p.get("gate") else {}
    if gate and st:
        gate_or_raise(st, gate, f"{st['candidate']} vs {st['baseline']}")
    return {"run_dir": str(ctx.run_dir), "report": str(out["paths"]["markdown"]),
            "stats": str(out["paths"].get("stats")), "verdict": st["verdict"] if st else None}
