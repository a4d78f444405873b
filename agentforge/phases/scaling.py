"""The scaling-law evaluator as a phase: score one attention variant by how its loss falls with size.

    python -m agentforge phase=scaling                                  # the softmax baseline, CPU sizes
    python -m agentforge phase=scaling phase.variant=matrix_mixer       # a framework's starting program
    python -m agentforge phase=scaling phase.program=path/to/candidate.py

Trains every size of ``phase.presets[phase.preset]`` with the variant's attention in the sandbox
(``phase.sandbox=bwrap``; ``process`` is the weaker mode, announced on every run and recorded in the
results), scores what comes back on the trusted side, fits loss = a + b·ln(params) (params: the baseline
architecture's count at each size, so a candidate cannot move the x-axis; its own count, shown as
``params_returned``, must be within ``phase.trust.max_param_ratio`` of it) and reports fitness
= −b, R² and the guarded combined score twice: on the selection set (``scaling/<key>``: what OpenEvolve
maximizes, so a search's winner is chosen on it) and on the test set (``scaling/test_<key>``: drawn apart,
disjoint by content, never shown to the search — the figures to report a winner by, with the improvement
over the baseline and its 95 % interval ``scaling/test_improvement_ci95``: over the test rows (paired
bootstrap) and, with ``phase.seeds`` K >= 2, over training seeds — the baseline reference is the mean of K
seeds, the candidate trains at ``phase.candidate_seeds`` (default 1); ``test_improvement_ci_covers`` says
"rows" or "rows+seeds", ``scaling/uncertainty.py``).
The logits scored are recomputed from the returned weights in a second, inference-only sandbox
(``scaling/rescore.py``). Outputs: ``fitness.json``, the
table of sizes and ``plots/scaling_law.png`` in the run directory; results are cached under
``{artifacts}/scaling_cache/`` by (code, settings, the project's own code: ``cache.source_digest``), so
repeating a run costs nothing. A rejected
candidate (non-causal, NaN, hang, crash, edit outside its EVOLVE block) leaves its ``fitness.json`` with
the reason and exits with status 2. OpenEvolve reaches the same evaluator through ``openevolve/evaluator.py``.
"""
from __future__ import annotations

import math
import re
import sys
from pathlib import Path

from omegaconf import OmegaConf

from agentforge.errors import AgentForgeError, ConfigError
from agentforge.phases.context import run_context
from agentforge.phases.rules import PHASE_RULES
from agentforge.sandbox import require_sandbox
from agentforge.scaling import childinfo
from agentforge.scaling.evaluator import TRUST_DEFAULTS, evaluate
from agentforge.scaling.fit import ScalingFit
from agentforge.scaling.plot import scaling_plot
from agentforge.scaling.variants import variant_path

RULES = PHASE_RULES["scaling"]
TASKS = ("plain_text", "arithmetic", "choice", "piqa")


class CandidateRejected(AgentForgeError):
    """The variant failed a check or its evaluation; fitness.json holds the reason."""


def sizes_of(cfg) -> list[dict]:
    """The size list of ``phase.preset``, validated (≥ 2 sizes, heads of even size, unique names)."""
    presets = OmegaConf.to_container(cfg.phase.presets, resolve=True) or {}
    preset = str(cfg.phase.preset)
    if preset not in presets:
        raise ConfigError(f"phase.preset={preset!r} is not one of phase.presets {sorted(presets)}")
    sizes = presets[preset]
    if not isinstance(sizes, list) or len(sizes) < 2:
        raise ConfigError(f"phase.presets.{preset} must list at least two sizes for a scaling fit")
    for i, s in enumerate(sizes):
        where = f"phase.presets.{preset}[{i}]"
        if not isinstance(s, dict) or set(s) != {"name", "d_model", "n_layers", "n_heads"}:
            raise ConfigError(f"{where} needs exactly name, d_model, n_layers, n_heads; got {s!r}")
        if not re.fullmatch(r"[A-Za-z0-9_]+", str(s["name"])):
            raise ConfigError(f"{where}.name must be letters, digits or _, got {s['name']!r}")
        d, n_layers, h = s["d_model"], s["n_layers"], s["n_heads"]
        if not all(isinstance(v, int) and v >= 1 for v in (d, n_layers, h)) or d % h or (d // h) % 2:
            raise ConfigError(f"{where}: d_model ({d}) must split into n_heads ({h}) heads of even size and "
                              f"n_layers ({n_layers}) must be >= 1")
    if len({s["name"] for s in sizes}) != len(sizes):
        raise ConfigError(f"phase.presets.{preset}: size names must be unique")
    check_distinct_params(sizes, preset, str(cfg.phase.get("fit_params") or "total"))
    return sizes


def check_distinct_params(sizes: list[dict], preset: str, fit_params: str = "total") -> None:
    """Every size must have its own parameter count on the fit's x-axis (the baseline architecture's count,
    ``trust.reference_params``, which depends on the size config alone): found here, before anything trains,
    rather than after training every size, when the fit fails and the candidate would be scored as a crash."""
    from agentforge.scaling.trust import reference_params

    which = 1 if fit_params == "non_embedding" else 0
    seen: dict[int, str] = {}
    for s in sizes:
        n = reference_params(s)[which]
        if n in seen:
            raise ConfigError(f"phase.presets.{preset}: sizes {seen[n]!r} and {s['name']!r} have the same "
                              f"{'non-embedding' if which else 'total'} parameter count ({n:,}), the scaling "
                              f"fit's x-axis (phase.fit_params={fit_params}); give every size its own count by "
                              f"changing d_model or n_layers (n_heads does not change it), or drop one of them")
        seen[n] = s["name"]


def settings_from_cfg(cfg) -> dict:
    """Everything that shapes an evaluation's result (and so its cache key), as plain JSON."""
    p = cfg.phase
    train = OmegaConf.to_container(p.train, resolve=True)
    mix = OmegaConf.to_container(p.mix, resolve=True)
    bad = [t for t, w in mix.items() if t not in TASKS or not isinstance(w, (int, float)) or w < 0]
    if bad or not any(w > 0 for w in mix.values()):
        raise ConfigError(f"phase.mix must weight the tasks {list(TASKS)} (non-negative, one positive); bad: {bad}")
    from agentforge.optim import BUILDERS

    if p.optimizer.name not in BUILDERS:
        raise ConfigError(f"phase.optimizer.name={p.optimizer.name!r} is not available; choose from {sorted(BUILDERS)}")
    optimizer = {"kl_coef": 0.0, **OmegaConf.to_container(p.optimizer, resolve=True), "lr": float(train["lr"]),
                 "warmup_steps": int(train["warmup_steps"])}
    trust = OmegaConf.to_container(p.trust, resolve=True)
    test_rows = trust.get("test_rows")
    if not isinstance(test_rows, int) or isinstance(test_rows, bool) or test_rows < 16:
        raise ConfigError(f"phase.trust.test_rows must be an integer >= 16 (rows of the test set the result is "
                          f"reported on), got {test_rows!r}")
    spot = trust.get("spot_rows")
    if spot != "all" and (isinstance(spot, bool) or not isinstance(spot, int) or spot < 1):
        raise ConfigError(f"phase.trust.spot_rows must be 'all' (every held-out row recomputed alone, the default) or "
                          f"an integer >= 1 (that many secret rows), got {spot!r}")
    for key, low, kind in (("bootstrap", 100, int), ("infer_timeout_s", 1, (int, float)),
                           ("logit_tol", 0, (int, float))):  # the re-scoring (scaling/rescore.py) and the CI
        v = trust.get(key)
        if isinstance(v, bool) or not isinstance(v, kind) or v < low:
            raise ConfigError(f"phase.trust.{key} must be {'an integer' if kind is int else 'a number'} >= {low}, "
                              f"got {v!r}")
    # how far a candidate's parameter count may be from the baseline architecture's at any size (trust.py)
    ratio = trust.setdefault("max_param_ratio", TRUST_DEFAULTS["max_param_ratio"])
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio) or ratio < 1:
        raise ConfigError(f"phase.trust.max_param_ratio must be a finite number >= 1 (how many times more or fewer "
                          f"parameters than the baseline architecture a candidate may have at a size), got {ratio!r}")
    seeds, cand = p.get("seeds", 1), p.get("candidate_seeds", 1)  # K baseline / m candidate training seeds
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ConfigError(f"phase.seeds must be an integer >= 1 (training seeds of the baseline reference: seed, "
                          f"seed+1, ...; >= 2 for an interval that covers training randomness), got {seeds!r}")
    if isinstance(cand, bool) or not isinstance(cand, int) or not 1 <= cand <= seeds:
        raise ConfigError(f"phase.candidate_seeds must be an integer from 1 to phase.seeds ({seeds}) (the first "
                          f"seeds of the baseline's the candidate trains at), got {cand!r}")
    return {"sizes": sizes_of(cfg), "train": train, "optimizer": optimizer, "mix": mix,
            "hardware": OmegaConf.to_container(cfg.hardware, resolve=True),
            "check": OmegaConf.to_container(p.check, resolve=True), "seed": int(cfg.seed),
            "seeds": seeds, "candidate_seeds": cand,
            "fit_params": str(p.fit_params), "trust": trust,
            "fitness": OmegaConf.to_container(p.fitness, resolve=True)}


def sandbox_mode(cfg) -> str:
    """phase.sandbox, checked (bwrap must work here) and, for the weaker mode, announced on every run."""
    mode = str(cfg.phase.sandbox)
    require_sandbox(mode)
    if mode == "process":
        print("warning: phase.sandbox=process runs candidate code WITHOUT isolation (no namespaces: it can read "
              "and write your files, use the network and leave processes behind); use it only for code you "
              "trust. The results record sandbox=process.", file=sys.stderr)
    return mode


def evaluate_cfg(cfg, program: Path, work_dir: Path | None = None, mode: str | None = None) -> dict:
    """``evaluate`` with the settings, limits, cache and sandbox mode of a composed phase=scaling config
    (``mode``: an already checked phase.sandbox, so the warning is printed once per run)."""
    lim = cfg.phase.limits
    key_dir = Path(cfg.paths.artifacts).absolute() / "scaling_cache"   # the held-out salt, kept with the cache off too
    return evaluate(program, settings_from_cfg(cfg), timeout_s=float(lim.timeout_s),
                    memory_mb=None if lim.memory_mb is None else int(lim.memory_mb),
                    cache_dir=key_dir if cfg.phase.cache else None, key_dir=key_dir, work_dir=work_dir,
                    sandbox=mode or sandbox_mode(cfg))


def program_of(cfg) -> tuple[Path, str]:
    """(candidate file, short name for the run) from phase.program or phase.variant."""
    if cfg.phase.get("program"):
        path = Path(str(cfg.phase.program)).expanduser().absolute()
        if not path.is_file():
            raise ConfigError(f"phase.program={cfg.phase.program}: no such file")
        return path, path.stem
    return variant_path(str(cfg.phase.variant)), str(cfg.phase.variant)


def run(cfg) -> dict:
    program, name = program_of(cfg)
    settings = settings_from_cfg(cfg)
    mode = sandbox_mode(cfg)  # refuse (no bwrap) before a run dir is made
    with run_context(cfg, run_name=f"scaling-{name}", group="scaling", tags=["scaling", name],
                     job_type="scaling") as ctx:
        n = len(settings["sizes"])
        print(f"scaling: {program} over {n} sizes x {settings['train']['steps']} steps; run dir {ctx.run_dir}")
        result = evaluate_cfg(cfg, program, ctx.run_dir / "sandbox", mode)
        fitness_json = ctx.tracker.write_json("fitness.json", {"program": str(program), **result})
        state = "hit" if result.get("cached") else ("miss" if cfg.phase.cache else "off (phase.cache=false)")
        print(f"cache: {state}" + (f" ({str(result['key'])[:16]})" if result.get("key") else ""))
        if not result["valid"]:
            ctx.tracker.summary({"scaling/valid": 0.0, "scaling/error_kind": result["error_kind"],
                                 "scaling/error": result["error"], "scaling/sandbox": mode})
            raise CandidateRejected(f"{program}: candidate rejected ({result['error_kind']}): {result['error']} "
                                    f"— see {fitness_json}")
        metrics = report(ctx, result, name)
    return {"run_dir": str(ctx.run_dir), "report": str(fitness_json), "metrics": metrics,
            "objective": result["combined_score"]}


def report(ctx, result: dict, name: str) -> dict:
    """Per-size losses, the fit, the table, the curves and the plot: the selection set's figures under the
    scaling/* keys, the test set's under scaling/test_*."""
    tr, sizes = ctx.tracker, result["sizes"]
    pkey = "non_embedding_params" if ctx.cfg.phase.fit_params == "non_embedding" else "params"
    metrics = {f"scaling/loss_{s['name']}": s["loss"] for s in sizes}
    metrics.update({f"scaling/params_{s['name']}": float(s[pkey]) for s in sizes})
    metrics.update({f"scaling/{k}": result[k] for k in ("slope", "intercept", "r2", "fitness", "combined_score",
                                                         "largest_gain", "guard_excess", "improvement",
                                                         "baseline_seed_count", "candidate_seed_count")
                    if k in result})
    metrics.update({f"scaling/{k}": float(v) for k, v in result.items()
                    if k.startswith("test_") and isinstance(v, (int, float)) and not isinstance(v, bool)})
    ci = result.get("test_improvement_ci95")
    if isinstance(ci, (list, tuple)) and len(ci) == 2:  # the pair (the JSONL keeps it) and each end as a scalar
        metrics.update({"scaling/test_improvement_ci95": [float(ci[0]), float(ci[1])],
                        "scaling/test_improvement_ci95_lo": float(ci[0]), "scaling/test_improvement_ci95_hi": float(ci[1])})
    metrics.update({"scaling/valid": 1.0, "scaling/cached": float(bool(result.get("cached")))})
    strings = {f"scaling/{k}": result[k] for k in ("sandbox", "fit_params", "test_improvement_ci_covers")
               if isinstance(result.get(k), str)}
    tr.summary({**metrics, **strings})
    # params: the baseline architecture's count the fit uses; params_returned: the candidate's own weights'.
    # train_seconds and val_curve come from the child: checked again here (childinfo), as a stored result
    # may predate the checks, and dropped when malformed rather than crash the report
    tr.table("scaling/sizes", ["size", "d_model", "n_layers", "n_heads", "params", "non_embedding_params",
                               "params_returned", "selection_loss", "test_loss", "train_seconds"],
             [[s["name"], s["d_model"], s["n_layers"], s["n_heads"], s["params"], s["non_embedding_params"],
               s.get("params_returned"), s["loss"], s.get("test_loss"), childinfo.seconds(s.get("train_seconds"))]
              for s in sizes])
    curves = [childinfo.curve_points(s.get("val_curve")) for s in sizes]
    if curves and all(c and len(c) == len(curves[0]) for c in curves):
        tr.line_series("scaling/val_curves", [pt[0] for pt in curves[0]], [[pt[1] for pt in c] for c in curves],
                       [s["name"] for s in sizes], "Validation loss per size", "step")
    fit = ScalingFit(result["slope"], result["intercept"], result["r2"], result["fitness"])
    test = [s["test_loss"] for s in sizes] if all("test_loss" in s for s in sizes) else None
    png = scaling_plot(ctx.run_dir / "plots" / "scaling_law.png", [s[pkey] for s in sizes],
                       [s["loss"] for s in sizes], [s["name"] for s in sizes], fit,
                       f"Scaling law: {name} ({result['framework']})", test_losses=test)
    tr.image("scaling/plot", png)
    tr.artifact(f"scaling-{name}-fitness", "result", [ctx.run_dir / "fitness.json", png],
                f"Scaling-law fitness of {name}", {"fitness": result["fitness"], "r2": result["r2"]})
    print("  ".join(f"{s['name']}: {s[pkey]:,} params loss {s['loss']:.4f}"
                    + (f" (test {s['test_loss']:.4f})" if "test_loss" in s else "") for s in sizes))
    print(f"fit: loss = {fit.intercept:.4f} {'-' if fit.slope < 0 else '+'} {abs(fit.slope):.4f}·ln(params)  "
          f"R² = {fit.r2:.4f}{' (2 sizes: 1 by construction)' if len(sizes) < 3 else ''}  "
          f"fitness = {fit.fitness:.4f}  combined_score = {result['combined_score']:.4f} "
          f"(sandbox: {result['sandbox']})")
    print(axis_line(str(result.get("fit_params") or ctx.cfg.phase.fit_params)))
    for line in set_lines(result):
        print(line)
    return metrics


def axis_line(fit_params: str) -> str:
    """The fit's x-axis convention, said on every run (it moves the fitness: the baseline's 0.8101 with the
    tied embedding counted is 0.7476 without it)."""
    what = ("non-embedding parameters (the tied embedding left out, Kaplan et al. 2020's convention)"
            if fit_params == "non_embedding" else "total parameters (the tied embedding counted once)")
    return f"x-axis: {what}: phase.fit_params={fit_params}"


def interval_text(result: dict, prefix: str = "test_") -> str:
    """The improvement's 95 % interval and what it covers: rows only (K = 1) or rows and training seeds."""
    ci = result.get(f"{prefix}improvement_ci95")
    if not ci:
        return ""
    rows = int(result.get(f"{prefix}improvement_n") or 0)
    verdict = ("excludes 0" if ci[0] > 0 or ci[1] < 0 else "contains 0: no significant difference")
    if result.get(f"{prefix}improvement_ci_covers") == "rows+seeds":
        k, m = int(result[f"{prefix}baseline_seed_count"]), int(result.get(f"{prefix}candidate_seed_count") or 1)
        return (f" (95% CI [{ci[0]:+.4f}, {ci[1]:+.4f}], {verdict}; covers rows+seeds: t-interval, "
                f"{int(result[prefix + 'improvement_ci_df'])} df, on the paired bootstrap over {rows} rows and the "
                f"seed-to-seed sd {result[prefix + 'baseline_seed_sd']:.4f} of K={k} baseline seeds, candidate at "
                f"m={m}; assumes the candidate's seed variance is the baseline's)")
    return (f" (95% CI [{ci[0]:+.4f}, {ci[1]:+.4f}], {verdict}; covers rows only: paired bootstrap over {rows} "
            f"rows, NOT training randomness — one baseline seed (phase.seeds=1); use phase.seeds>=2)")


def seed_line(result: dict) -> str | None:
    """The baseline reference's seeds and each one's fitness."""
    if not result.get("baseline_seeds"):
        return None
    by_seed = "selection " + ", ".join(f"{v:.4f}" for v in result["baseline_fitness_by_seed"])
    if result.get("test_baseline_fitness_by_seed"):
        by_seed += "; test " + ", ".join(f"{v:.4f}" for v in result["test_baseline_fitness_by_seed"])
    sd = result.get("test_baseline_seed_sd")
    return (f"baseline reference: mean of K={len(result['baseline_seeds'])} training seeds "
            f"{result['baseline_seeds']} (fitness by seed: {by_seed})"
            + ("" if sd is None else f", seed-to-seed sd of the test improvement {sd:.4f}")
            + f"; candidate trained at m={int(result.get('candidate_seed_count') or 1)} seed(s) "
              f"{result.get('candidate_seeds', [])}")


def set_lines(result: dict) -> list[str]:
    """Which held-out set chose and which one is the report, with each set's figures."""
    def figures(prefix: str) -> str:
        gain = result.get(f"{prefix}improvement")
        return (f"fitness = {result[prefix + 'fitness']:.4f}  R² = {result[prefix + 'r2']:.4f}  combined_score = "
                f"{result[prefix + 'combined_score']:.4f}"
                + ("" if gain is None else f"  improvement over the baseline = {gain:+.4f}")
                + interval_text(result, prefix))

    lines = [f"selection set (chooses: the combined_score OpenEvolve maximizes): {figures('')}"]
    if seed_line(result):
        lines.insert(0, seed_line(result))
    if "test_fitness" in result:
        lines.append(f"test set (the report: {int(result.get('test_n', 0))} rows disjoint by content from the "
                     f"selection set and training, played no part in selection): {figures('test_')}")
    else:
        lines.append("test set: none in this result; the figures above are the selection set's")
    return lines
