"""What every phase needs at its start: the run directory, the artifacts directory, the loggers and the
tracker, and the saved (secret-free) config and provenance (``provenance.json``: ``tracking/provenance.py``).
``run_context`` closes the loggers (``wandb.finish()``) however the phase ends, so each job of a multirun gets its own
W&B run."""
from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import lightning as L
from omegaconf import DictConfig, OmegaConf

from agentforge.errors import ConfigError
from agentforge.io import write_json_atomic, write_text_atomic
from agentforge.tracking import provenance
from agentforge.tracking.loggers import build_loggers, finish
from agentforge.tracking.redaction import redact, redact_args
from agentforge.tracking.spec_config import wandb_config
from agentforge.tracking.tracker import Tracker

PROVENANCE = "provenance.json"   # in every run dir, beside config_resolved.yaml and overrides.yaml


@dataclass
class RunContext:
    cfg: DictConfig
    run_dir: Path
    artifacts_dir: Path
    loggers: list
    tracker: Tracker

    def container(self) -> dict:
        return redact(OmegaConf.to_container(self.cfg, resolve=True))


def _task_overrides() -> list[str]:
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except ValueError:  # called outside a Hydra app (tests composing the config)
        return []


def _config_source() -> str:
    """' (FILE)': the primary config file of this Hydra run when it was given with --config-path/--config-name."""
    from agentforge.cli_errors import saved_config_path

    path = saved_config_path(sys.argv[1:])
    return f" ({path})" if path else ""


def resolved_paths(cfg: DictConfig) -> tuple[Path, Path]:
    for key in ("paths.run_dir", "paths.artifacts"):
        if not isinstance(OmegaConf.select(cfg, key, default=None, throw_on_missing=False), str):
            raise ConfigError(f"{key}: missing from the config{_config_source()}; a config that does not come from "
                              f"conf/ (a saved config_resolved.yaml) must keep its paths section — restore the line "
                              f"or rerun with the overrides instead")
    run_dir = Path(cfg.paths.run_dir).absolute()
    artifacts = Path(cfg.paths.artifacts).absolute()
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir, artifacts


@contextlib.contextmanager
def timed_run_context(cfg: DictConfig, times, **kw):
    """``run_context`` whose opening (seeds, dirs, config files, the loggers' init) is the part ``open`` of ``times``
    (an ``evals.speed.PartTimes``); what runs inside is not in it. The CUDA-graph counts start from zero here, so
    ``report_times`` reports this run's (``models.graphs.counts``)."""
    from agentforge.models import graphs

    graphs.reset_counts()
    with contextlib.ExitStack() as stack:
        with times("open"):
            ctx = stack.enter_context(run_context(cfg, **kw))
        yield ctx


@contextlib.contextmanager
def run_context(cfg: DictConfig, *, run_name: str, group: str | None, tags: list[str], job_type: str | None = None,
                spec: dict | None = None):
    """Set seeds, make the dirs, save the config, open the loggers; close them at the end. ``spec``: the seed plan's
    flat keys for this run (``tracking.spec_config.flat_config``), added to the W&B config only."""
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    run_dir, artifacts = resolved_paths(cfg)
    name = cfg.get("run_name") or run_name
    config = redact(OmegaConf.to_container(cfg, resolve=True))
    write_text_atomic(run_dir / "config_resolved.yaml", OmegaConf.to_yaml(OmegaConf.create(config)))
    write_text_atomic(run_dir / "overrides.yaml", OmegaConf.to_yaml(redact_args(_task_overrides())))
    prov = provenance.collect()
    write_json_atomic(run_dir / PROVENANCE, {**prov, "status": "running"})   # a run killed outright stays "running"
    logger_cfg = dict(OmegaConf.to_container(cfg.logger, resolve=True))
    logger_cfg.setdefault("job_type", job_type)
    loggers = build_loggers(logger_cfg, run_dir, name, group, tags, {**wandb_config(config, spec), "provenance": prov})
    ctx = RunContext(cfg, run_dir, artifacts, loggers, Tracker(loggers, run_dir))
    status = "failed"
    try:
        yield ctx
        status = "success"
    finally:
        _record_end(run_dir, prov, status)
        finish(loggers, status)


def _record_end(run_dir: Path, prov: dict, status: str) -> None:
    """``provenance.json`` at the run's end: its ``status`` (``finished`` or ``failed``; a run killed outright stays
    ``running``), the end time, and the thread count it ran with when the phase set it after the run opened
    (``hardware.threads``, applied when the Trainer is built: ``provenance.with_final_threads``). Never raises: the
    run's own outcome (or error) is what the user needs to see."""
    final = provenance.with_final_threads(prov) or prov
    end = {"status": "finished" if status == "success" else "failed",
           "ended_utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    with contextlib.suppress(OSError):
        write_json_atomic(run_dir / PROVENANCE, {**final, **end})
