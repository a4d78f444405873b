"""Multirun bookkeeping: each job records its outcome; at the end of the sweep a Hydra callback prints
which jobs failed and exits non-zero when any did (the other jobs still ran). A sweep that Hydra refuses
before any job starts (an unknown option in a value list, e.g. ``model=m1,m9``: the sweeper composes every
job first) leaves nothing behind: the sweeper has by then written ``multirun.yaml``, overrides and all, and
``discard_unstarted_sweep`` removes it. A value a job would refuse (``optimizer.lr=0.01,-1``) is found the same way,
before any job starts (``check_sweep_values``): a sweep no longer spends its first jobs' hours before job 7 says
its learning rate is negative."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from agentforge.tracking.redaction import credential_values, redact_args, scrub

STATUS_FILE = "sweep_status.jsonl"
_started: list[Path] = []   # the sweep dir of this process's multirun, once Hydra has begun it


def record_job(cfg: DictConfig, ok: bool, error: str | None = None, published: str | list[str] | None = None,
               metrics: dict | None = None) -> None:
    """Append the job's outcome to the sweep's ``sweep_status.jsonl``, with what it published outside its run dir
    (``published``: a model directory, or a list of them and results files, as phase=eval's results JSON) and its
    numeric results (``metrics``) for the sweep's table (``sweep_table``)."""
    hc = HydraConfig.get()
    sweep_dir = Path(hc.sweep.dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    args = list(hc.overrides.task)
    multirun_yaml = sweep_dir / "multirun.yaml"  # Hydra's sweeper wrote it, overrides and all, before any job ran
    if multirun_yaml.is_file() and credential_values(args):
        text = multirun_yaml.read_text()
        clean = scrub(text, args)
        if clean != text:  # atomically: jobs of a parallel launcher may read it while another rewrites it (not
            # io.write_text_atomic: agentforge.io imports torch, which this start-up path must not load)
            tmp = multirun_yaml.with_name(f".multirun.yaml.{os.getpid()}.tmp")
            tmp.write_text(clean)
            os.replace(tmp, multirun_yaml)
    row = {"job": hc.job.num, "overrides": redact_args(args), "ok": ok, "error": error and scrub(error, args),
           "run_dir": hc.runtime.output_dir, "published": published,
           "metrics": {k: v for k, v in (metrics or {}).items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool)}}
    with open(sweep_dir / STATUS_FILE, "a") as f:
        f.write(json.dumps(row) + "\n")


def shared_publications(rows: list[dict]) -> list[str]:
    """A warning per artifact directory that several jobs of the sweep published to (``-m ... seed=1,2`` on one
    model): each job overwrote the last, so the directory the next phase reads holds the model of the job that
    finished last (rows are in finishing order), and the others' weights are only in their run dirs."""
    by_target: dict[str, list[dict]] = {}
    for r in rows:
        published = r.get("published") if r.get("ok") else None
        for target in [published] if isinstance(published, str) else published or []:
            by_target.setdefault(target, []).append(r)
    return [f"warning: jobs {', '.join(str(r['job']) for r in rs)} of this sweep all published to {target}: it "
            f"holds job {rs[-1]['job']}'s {'results' if target.endswith('.json') else 'model'} (the last to finish); "
            f"the others' are in their run dirs ({', '.join(str(r['run_dir']) for r in rs[:-1])})"
            for target, rs in by_target.items() if len(rs) > 1]


def discard_unstarted_sweep() -> None:
    """After Hydra refused a sweep: remove its directory when it holds only ``multirun.yaml`` (no job ran), and
    its date folder when that is left empty. A sweep in which any job ran keeps everything."""
    for sweep_dir in _started:
        if sweep_dir.is_dir() and [p.name for p in sweep_dir.iterdir()] == ["multirun.yaml"]:
            (sweep_dir / "multirun.yaml").unlink()
            sweep_dir.rmdir()
            try:
                sweep_dir.parent.rmdir()
            except OSError:
                pass


BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def sweep_jobs(config: DictConfig) -> list[list[str]]:
    """Every job's overrides, as Hydra's basic sweeper will launch them (its own expansion of the value lists and
    of ``hydra.sweeper.params``); [] under another sweeper (Optuna proposes its values within declared ranges)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if config.hydra.sweeper.get("_target_") != BASIC_SWEEPER:
        return []
    params = config.hydra.sweeper.get("params") or {}
    args = [f"{k}={v}" for k, v in params.items()] + list(config.hydra.overrides.task)
    parsed = OverridesParser.create().parse_overrides(args)
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def check_sweep_values(config: DictConfig) -> str | None:
    """The first job whose composed config breaks a start-up rule (the shared groups, the model, the phase's own
    keys, a GPU asked for and absent: the checks ``agentforge.main.run`` makes first), as one line; else None."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    from agentforge.config import select
    from agentforge.errors import ConfigError
    from agentforge.main import check_start
    from agentforge.pipeline import pipeline_dir

    loader = GlobalHydra.instance().config_loader()
    jobs = sweep_jobs(config)
    pipelines: dict[str, list[int]] = {}   # a pipeline's directory -> the jobs that would run into it
    for num, job in enumerate(jobs):
        try:
            job_config = loader.load_sweep_config(master_config=config, sweep_overrides=job)
        except HydraException:   # an option Hydra cannot compose (model=m9): its sweeper says so, in its own words
            return None
        try:
            check_start(job_config)
        except ConfigError as exc:
            return (f"job {num} of {len(jobs)} [{' '.join(redact_args(job))}]: {scrub(str(exc), job)}; no job was "
                    f"started (fix the value list and run the sweep again)")
        if str(job_config.phase.name) == "pipeline":
            pipelines.setdefault(str(pipeline_dir(select(job_config, "paths.outputs"),
                                                  select(job_config, "phase.run_name"))), []).append(num)
    return shared_pipeline_problem(pipelines, len(jobs))


def shared_pipeline_problem(pipelines: dict[str, list[int]], n_jobs: int) -> str | None:
    """Why a sweep of phase=pipeline cannot run, or None: two of its jobs would use one pipeline directory (the same
    ``phase.run_name``, e.g. ``seed=1,2,3``), each redoing the steps over the previous job's outputs, and the sweep
    left only the last job's models and report while it said every job succeeded."""
    for where, nums in pipelines.items():
        if len(nums) > 1:
            name = os.path.basename(where)
            return (f"jobs {', '.join(map(str, nums))} of {n_jobs} would all run phase=pipeline as "
                    f"phase.run_name={name} (in {where}): each would redo the pipeline over the last one's outputs; "
                    f"give each job its own phase.run_name (e.g. 'phase.run_name=seed${{seed}}' when sweeping seed) "
                    f"or run them one by one; no job was started")
    return None


SLURM_LAUNCHER = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"


def launcher_problem(config: DictConfig) -> str | None:
    """Why the sweep's launcher cannot start its jobs here, or None: ``hydra/launcher=slurm`` without ``srun`` on PATH
    (submitit raised ``RuntimeError: Could not detect "srun"`` after the sweep dir and its multirun.yaml were made)."""
    import shutil

    if config.hydra.launcher.get("_target_") == SLURM_LAUNCHER and shutil.which("srun") is None:
        return ("hydra/launcher=slurm needs a SLURM cluster: srun was not found on PATH; run the sweep where SLURM is "
                "installed (a login node), or leave hydra/launcher out to run the jobs here one after another; no job "
                "was started")
    return None


def sweep_table(rows: list[dict], path: Path, first: str | None = None, shown: int = 3) -> list[str]:
    """Write the finished jobs' results side by side to ``path`` (CSV: job, the overrides that differ between jobs,
    every metric all of them report) and return the console lines: one per job with its differing overrides and
    ``shown`` metrics (``first``, the sweep's ``optimized_metric``, when given, then the ``final/*`` keys in order).
    Nothing when fewer than two jobs finished."""
    import csv

    done = [r for r in rows if r.get("ok") and r.get("metrics")]
    if len(done) < 2:
        return []
    given = [dict(o.partition("=")[::2] for o in r["overrides"]) for r in done]   # each job's key -> value
    varied = [k for k in dict.fromkeys(k for g in given for k in g) if len({g[k] for g in given if k in g}) > 1]
    keys = sorted(set.intersection(*(set(r["metrics"]) for r in done)))
    picked = ([first] if first in keys else []) + [k for k in keys if k.startswith("final/") and k != first]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["job", *varied, *keys])
        for r, g in zip(done, given):
            w.writerow([r["job"], *(g.get(k, "") for k in varied), *(r["metrics"][k] for k in keys)])
    lines = [f"sweep table: {len(done)} jobs x {len(keys)} metrics in {path}"]
    for r, g in zip(done, given):
        cells = ", ".join(f"{k} {r['metrics'][k]:.6g}" for k in picked[:shown])
        lines.append(f"  job {r['job']} [{' '.join(f'{k}={g.get(k, chr(8212))}' for k in varied)}]: {cells}")
    return lines


class SweepSummary(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        problem = launcher_problem(config) or check_sweep_values(config)
        if problem:   # before the sweeper writes anything: nothing to clean up
            print(f"error: {problem}", file=sys.stderr)
            sys.exit(2)
        _started.append(Path(config.hydra.sweep.dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        rows = summarize(Path(config.hydra.sweep.dir), config.get("optimized_metric"))
        if any(not r["ok"] for r in rows):
            sys.exit(1)


def summarize(sweep_dir: Path, metric: str | None = None) -> list[dict]:
    """Print the sweep's summary (jobs succeeded, the table, shared publications, a ``FAILED job`` line per failed
    job) from its ``sweep_status.jsonl``; return its rows ([] with a warning when no job recorded its outcome)."""
    path = sweep_dir / STATUS_FILE
    if not path.is_file():   # no job recorded its outcome here: say so rather than end as if all went well
        print(f"warning: no job of this sweep recorded its outcome in {path} (each job's own output says how it "
              f"ended); the sweep cannot say which jobs failed", file=sys.stderr)
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    failed = [r for r in rows if not r["ok"]]
    print(f"sweep: {len(rows) - len(failed)} of {len(rows)} jobs succeeded ({path})")
    for line in sweep_table(rows, path.with_name("sweep_table.csv"), metric):
        print(line)
    for line in shared_publications(rows):
        print(line, file=sys.stderr)
    for r in failed:
        print(f"  FAILED job {r['job']} [{' '.join(r['overrides'])}]: {r['error']}", file=sys.stderr)
    return rows


NO_TRIAL = "No trials are completed yet"   # what Optuna raises for the best trial of a study none finished


def all_trials_failed(exc: BaseException) -> str | None:
    """When an Optuna sweep ended because none of its trials finished (Optuna's ``ValueError: No trials are completed
    yet``, a traceback, raised before the sweep's summary): print the summary and return the error line's text;
    None for any other exception."""
    if not (isinstance(exc, ValueError) and NO_TRIAL in str(exc) and _started):
        return None
    rows = summarize(_started[-1])
    n = len(rows) or "the"
    return f"all {n} trials failed; see the FAILED lines" if rows else f"all {n} trials failed"
