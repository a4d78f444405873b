"""The whole pipeline in one command: cognate m1, m2, m3 -> evomerge -> quietstar -> bitnet -> eval.

    python -m agentforge phase=pipeline
    python -m agentforge phase=pipeline phase.run_name=exp1 phase.phases=[cognate,evomerge]

Every phase reads the previous one's outputs from ``{paths.outputs}/pipeline/{run_name}/artifacts``.
Each step runs in this process as an ordinary phase run (its own run dir ``runs/<key>``, its own W&B run). A rerun
with the same name skips complete steps made with the same settings, inputs and data files, and continues an
interrupted one (Cognate and Quiet-STaR resume from their last epoch checkpoint, and their run dir's history with
it, counting each step once); a step that runs again for another reason, or that will not resume (no checkpoint it
accepts; the other phases never resume), starts in a fresh run dir, the last one moved to ``runs/<key>.previous``
(``pipeline.rundirs``, ``pipeline.continues``). A step that fails before replacing its outputs keeps its record, and
a new pipeline dir where nothing ran is removed. A subset (``phase.phases`` / ``phase.models``) is refused when a step it runs reads outputs of
a step outside it that this command would not reuse (``pipeline.lineage``: one lineage of models, never new model1
merged with old model2), and its report warns about the outputs outside it that it reads or made stale. At the end:
the cross-phase report (Markdown + PNG + W&B tables); the previous one is moved to ``pipeline_report.previous.md``
when a step of a run first replaces an output it describes.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from hydra import compose
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf, open_dict

from agentforge.artifacts import on_publish
from agentforge.data import synthetic
from agentforge.errors import AgentForgeError, ConfigError
from agentforge.evals.speed import PeakMemory
from agentforge.io import read_checkpoint_config, write_json_atomic
from agentforge.phases.context import run_context
from agentforge.phases.rules import PHASE_RULES, override_key
from agentforge.pipeline import pipeline_dir
from agentforge.pipeline.continues import will_continue
from agentforge.pipeline.lineage import FINISHED, Lineage, refusal, retire_report, state_rows
from agentforge.pipeline.lineage import skip_reason as _skip_reason
from agentforge.pipeline.lineage import stale as _stale
from agentforge.pipeline.plan import (
    MODEL_IDS,
    build_plan,
    fingerprint_of,
    forget_file_digests,
    given_input_digests,
    given_inputs,
    is_complete,
    made_with,
    outputs_digest,
)
from agentforge.pipeline.report import dir_bytes, performance_rows, write_report
from agentforge.pipeline.rundirs import abandon_attempt, finish_attempt, interrupted, remove_if_untouched, start_attempt
from agentforge.pipeline.thresholds import headline_metrics, threshold_rows, threshold_summary

PHASE_ORDER = ("cognate", "evomerge", "quietstar", "bitnet", "eval")
RULES = PHASE_RULES["pipeline"]


def _forwarded_overrides() -> list[str]:
    """The user's overrides that apply to every phase (group choices, seed, ...), minus pipeline ones."""
    try:
        from hydra.core.hydra_config import HydraConfig

        task = list(HydraConfig.get().overrides.task)
    except ValueError:
        return []
    return [o for o in task if not o.lstrip("+~").startswith(("phase", "paths.run_dir", "paths.artifacts"))]


def check_no_model_choice(overrides: list[str]) -> None:
    """``model=m2`` on the pipeline's command line: each Cognate step sets its own ``model=`` after the forwarded
    overrides, so the choice was silently dropped (m1, m2 and m3 trained); a ConfigError pointing to phase.models."""
    given = [o for o in overrides if override_key(o) == "model"]
    if given:
        raise ConfigError(f"{given[0]} does not apply to phase=pipeline, which trains one Cognate model per entry of "
                          f"phase.models; choose them with phase.models=[...] (e.g. phase.models=[m2])")


def _compose(overrides: list[str]):
    if GlobalHydra.instance().is_initialized():
        return compose(config_name="config", overrides=overrides)
    from hydra import initialize_config_dir

    from agentforge.main import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def _checked_child(step, overrides: list[str], user: bool):
    """A step's composed config, checked by its phase's rules; a bad ``phase.overrides.<phase>`` entry (a misspelled
    key, a bad value) is one ConfigError naming it, raised before any step runs rather than when that step starts."""
    from hydra.errors import HydraException

    from agentforge.cli_errors import hydra_error_line
    from agentforge.config import check, validate

    where = f"phase.overrides.{step.phase} (pipeline step {step.key})" if user else f"pipeline step {step.key}"
    try:
        child = _compose(overrides)
        validate(child)
        check(child, PHASE_RULES.get(step.phase, ()))
    except HydraException as exc:
        raise ConfigError(f"{where}: {hydra_error_line(exc)}") from None
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return child


def _previous_records(state_file: Path) -> dict[str, dict]:
    """Each step's record from the last run of this pipeline: its settings' fingerprint, and the metrics, time and
    memory of the run that made its outputs (kept when a step is skipped)."""
    try:
        return {s["key"]: s for s in json.loads(state_file.read_text())["steps"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _reads(step, child, order: list[str]) -> list[str]:
    """The steps whose outputs ``step`` reads: ``step.needs`` (its phase's default input), or every earlier step when
    an override points it at another input (``phase.input``/``phase.inputs``: followed conservatively)."""
    return order[:order.index(step.key)] if given_inputs(child) else list(step.needs)


def _default_reads(step, child) -> list[str]:
    """The steps outside a subset that ``step`` must find current: its default inputs (``step.needs``); none when an
    override points it at another input (the user chose what it reads)."""
    return [] if given_inputs(child) else list(step.needs)


def _step_overrides(step, base: list[str], artifacts: Path, pipe_dir: Path) -> list[str]:
    return [*base, f"phase={step.phase}", f"paths.artifacts={artifacts}", f"paths.run_dir={pipe_dir / 'runs' / step.key}",
            *step.overrides]


def _check_outside_reads(lineage: Lineage, steps, children, digests: dict, ran: set, phases, models,
                         error: type[AgentForgeError] = ConfigError) -> None:
    """``error`` when ``steps`` read outputs of a step outside this run that are not what this command would
    make (``Lineage.not_current``): running them would mix two lineages (new model1 merged with old model2).
    Before any step runs it is a ConfigError (nothing ran: the run dir goes); once steps have run, a plain
    AgentForgeError, so ``main`` keeps the run dir and its log of the work that did happen."""
    wanted = {k for step, child in zip(steps, children) for k in _default_reads(step, child)}
    lines = lineage.not_current(wanted, digests, ran) if wanted - lineage.planned else []
    if lines:
        raise error(refusal(phases, models, lines))


def _will_run(steps, children, previous: dict, artifacts: Path, order: list, digests: dict) -> set[str]:
    """The steps of this run that will run rather than be skipped, predicted in order with the loop's own rule
    (``skip_reason``; a step that reads a step predicted to run will run too), so the refusal of a subset whose
    outside inputs this run makes stale comes before the first step trains, not after the Cognate models did."""
    will: set[str] = set()
    for step, child in zip(steps, children):
        if _decide(step, child, previous, artifacts, order, digests, will)[0] is not None:
            will.add(step.key)
    return will


def _decide(step, child, previous: dict, artifacts: Path, order: list, digests: dict, ran: set) -> tuple:
    """(why ``step`` runs, None when it is skipped; the start of its state record; the digest of its outputs now,
    None when incomplete): ``skip_reason`` on its fingerprint (settings, data files, version: ``plan.made_with``),
    its previous record, its outputs and the digests of what it reads now (``ran``: the steps that ran, or will,
    before it). The one rule the loop and ``_will_run`` apply."""
    made = made_with(child, artifacts)
    fp = fingerprint_of(made)
    reads = _reads(step, child, order)
    inputs = {k: digests[k] for k in reads if k in digests}   # the digests of what it reads, now
    inputs.update(given_input_digests(child))   # and of an input an override names (phase.input / phase.inputs)
    done = outputs_digest(step) if is_complete(step) else None
    killed = interrupted(Path(child.paths.run_dir), previous.get(step.key)) is not None   # its last run did not finish
    why = _skip_reason(step, fp, previous.get(step.key), [k for k in reads if k in ran], done, inputs, made, killed)
    return why, {"key": step.key, "phase": step.phase, "fingerprint": fp, "made_with": made, "inputs": inputs}, done


def report_steps(records: list[dict], kept: list[dict], order: list[str]) -> list[dict]:
    """The steps the report shows, in pipeline order: this run's records and those of the steps it left alone (a
    ``phase.phases`` subset), marked ``not run this time``, whose figures stay in the report (before, a subset run's
    report dropped five of eight threshold rows and every evaluation without a word, over the full report; an
    audit). Kept steps made from outputs this run replaced are named stale at the report's top."""
    return state_rows(records, [{**r, "status": f"not run this time (last: {r.get('status')})"} for r in kept], order)


def run(cfg) -> dict:
    from agentforge.main import run as run_phase

    p = cfg.phase
    phases = list(p.phases)
    bad = [x for x in phases if x not in PHASE_ORDER]
    if bad:
        raise ConfigError(f"phase.phases has unknown phases {bad}; choose from {list(PHASE_ORDER)}")
    models = list(p.models)
    if [m for m in models if m not in MODEL_IDS]:
        raise ConfigError(f"phase.models must be a subset of {list(MODEL_IDS)}, got {models}")
    pipe_dir = pipeline_dir(cfg.paths.outputs, p.run_name)
    artifacts = pipe_dir / "artifacts"
    forget_file_digests()   # this run hashes the data files afresh
    steps = build_plan(phases, models, artifacts, OmegaConf.to_container(p.overrides, resolve=True) or {})
    base = _forwarded_overrides()
    check_no_model_choice(base)
    state_file = pipe_dir / "pipeline_state.json"
    previous = _previous_records(state_file)
    records, ran = [], set()
    user = {k for k, v in (OmegaConf.to_container(p.overrides, resolve=True) or {}).items() if v}
    children = [_checked_child(step, _step_overrides(step, base, artifacts, pipe_dir), step.phase in user)
                for step in steps]   # every step's config composed and checked before the first one runs
    planned = {s.key for s in steps}
    # every step of the whole pipeline (all three models: EvoMerge reads them all), for the order and the inputs
    every = {s.key: s for s in build_plan(list(PHASE_ORDER), list(MODEL_IDS), artifacts,
                                          OmegaConf.to_container(p.overrides, resolve=True) or {})}
    order = list(every)
    # the outputs of the steps this run leaves alone (a phase.phases subset), as they are on disk now
    digests: dict[str, str] = {k: outputs_digest(s) for k, s in every.items() if k not in planned and is_complete(s)}
    kept = [r for k, r in previous.items() if k not in planned]   # a subset run keeps the other steps' records
    lineage = Lineage(every, planned, previous,
                      compose=lambda st: _checked_child(st, _step_overrides(st, base, artifacts, pipe_dir),
                                                        st.phase in user),
                      made_with=lambda c: made_with(c, artifacts), reads=lambda st, c: _reads(st, c, order))
    # a subset whose steps read outputs of another lineage (an interrupted run's new model1 beside old model2) is
    # refused before any step runs; outside steps that read a step of this run are checked again when reached
    _check_outside_reads(lineage, steps, children, digests, _will_run(steps, children, previous, artifacts, order, digests),
                         phases, models)
    print(f"pipeline {p.run_name}: {len(steps)} steps in {pipe_dir}")
    fresh, retired = not pipe_dir.exists(), []

    def save(recs, unreached=()):
        write_json_atomic(state_file, {"name": str(p.run_name),
                                       "steps": state_rows([*unreached, *recs], kept, order)})

    def retire(key: str) -> None:   # the last report describes outputs this run now replaces: once per run
        if not retired:
            retired.append(key)
            if (old := retire_report(pipe_dir, key)) is not None:
                print(f"the previous report is now {old.name} (superseded: {key} is replacing outputs it describes)")

    for i, (step, child) in enumerate(zip(steps, children), 1):
        _check_outside_reads(lineage, [step], [child], digests, ran, phases, models,
                             AgentForgeError if ran else ConfigError)
        prev = previous.get(step.key)
        why, rec, before = _decide(step, child, previous, artifacts, order, digests, ran)
        if why is None:   # the time and memory of the run that made these outputs, not 0
            rec.update(status="skipped (complete)", duration_s=prev.get("duration_s"),
                       peak_rss_mb=prev.get("peak_rss_mb"), metrics=prev.get("metrics", {}))
            print(f"[{i}/{len(steps)}] {step.key}: outputs complete, same settings, inputs and data files, skipped")
        else:
            ran.add(step.key)
            print(f"[{i}/{len(steps)}] {step.key}: running ({why})")
            run_dir = pipe_dir / "runs" / step.key
            # the last run's dir moves aside, unless this run continues it (resumes its checkpoint)
            moved = start_attempt(run_dir, rec["fingerprint"], prev, rec["inputs"],
                                  run_dir.exists() and will_continue(step.phase, child))
            t0 = time.perf_counter()
            try:
                with PeakMemory(interval=0.05) as mem, on_publish(lambda _dst, key=step.key: retire(key)):
                    result = run_phase(child) or {}   # the process's peak RSS while the step ran
            except BaseException:
                abandon_attempt(run_dir, moved)
                now = outputs_digest(step) if is_complete(step) else None
                if now != before:   # it replaced (or removed) outputs without publishing them
                    retire(step.key)
                if prev and prev.get("status") in FINISHED and now is not None and now == prev.get("outputs_digest"):
                    rec = prev   # its outputs are still the ones its record describes (a bad input found first)
                else:
                    rec.update(status="failed", duration_s=time.perf_counter() - t0)
                if not (fresh and not records and remove_if_untouched(pipe_dir)):   # a new dir where nothing ran goes
                    # the steps not reached keep their records: they still describe what is on disk
                    save([*records, rec], [previous[s.key] for s in steps[i:] if s.key in previous])
                raise
            retire(step.key)   # a phase that wrote its outputs without publish()
            finish_attempt(run_dir, rec["fingerprint"])
            rec.update(status="done", duration_s=time.perf_counter() - t0, peak_rss_mb=mem.peak_mb,
                       metrics=headline_metrics(result.get("metrics") or {}))
        digests[step.key] = rec["outputs_digest"] = outputs_digest(step)
        rec["storage_mb"] = sum(dir_bytes(d) for d in step.checkpoints) / 2**20
        records.append(rec)
        save(records, [previous[s.key] for s in steps[i:] if s.key in previous])
    stale = _stale({k: r for k, r in previous.items() if k not in planned}, digests,
                   {r["key"] for r in records if r["status"] == "done"})
    named = {line.split(" ", 1)[0] for line in stale}
    stale += [f"{line} is not what this command would make" for line in
              lineage.not_current([k for k in lineage.report_reads() if k not in named], digests, ran)]
    for line in stale:
        print(f"warning: {line}: its outputs and the report rows read from them are not of this run's lineage until "
              f"those steps run again (the full pipeline reruns them)", file=sys.stderr)
    shown = report_steps(records, kept, order)
    stages = [(s.key.removeprefix("eval-"), Path(s.overrides[0].split("=", 1)[1])) for s in every.values()
              if s.phase == "eval"]
    perf = performance_rows(artifacts, stages)
    checks = threshold_rows({r["key"]: r.get("metrics", {}) for r in shown}, artifacts)
    data_check = (synthetic.overlap_check(int(cfg.seed), int(p.overlap_train_draws), int(p.overlap_heldout))
                  if int(p.get("overlap_train_draws") or 0) > 0 else None)
    rep = write_report(pipe_dir, str(p.run_name), shown, perf, checks, data_check, stale=stale)
    with open_dict(cfg):
        cfg.paths.artifacts = str(artifacts)
    with run_context(cfg, run_name=f"pipeline-{p.run_name}", group="pipeline", tags=["pipeline", "report"],
                     job_type="pipeline") as ctx:
        for key, (cols, rows) in rep["tables"].items():
            if rows:
                ctx.tracker.table(key, cols, rows)
        for png in rep["plots"]:
            ctx.tracker.image(f"charts/{png.stem}", png)
        ctx.tracker.summary({"pipeline/steps_run": sum(r["status"] == "done" for r in records),
                             "pipeline/steps_skipped": sum(r["status"].startswith("skipped") for r in records),
                             "pipeline/total_time_s": sum(r.get("duration_s") or 0 for r in records
                                                             if r["status"] == "done"),
                             **threshold_summary(checks)})
    _print_tables(rep["tables"])
    final = artifacts / "bitnet" / "compressed"
    return {"report": str(rep["report"]), "run_dir": str(pipe_dir),
            "checkpoint": str(final) if final.exists() and read_checkpoint_config(final) else None}


def _print_tables(tables: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 150))
    for title, (cols, rows) in tables.items():
        if not rows:
            continue
        t = Table(title=title)
        for c in cols:
            t.add_column(c)
        for r in rows:
            t.add_row(*[f"{v:.4g}" if isinstance(v, float) else str(v) for v in r])
        console.print(t)
