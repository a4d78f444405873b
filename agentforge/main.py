"""``python -m agentforge``: validate the config, look up the phase, run it, report where outputs are.

A user error (bad config value, missing checkpoint, malformed data) prints one ``error:`` line and
exits non-zero. In a multirun a failing job is recorded and the sweep goes on; the sweep's summary
(``agentforge.tracking.sweep.SweepSummary``) names the failures and makes the exit status non-zero.
"""
from __future__ import annotations

import errno
import logging
import os
import shutil
import signal
import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from agentforge.config import check, check_shortcuts, select, validate
from agentforge.errors import AgentForgeError, ConfigError, no_gpu_error
from agentforge.phases import get_phase
from agentforge.tracking.console_log import stdout_into_log
from agentforge.tracking.sweep import record_job

log = logging.getLogger("agentforge")
CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")  # the repo's conf/ (editable install)
_UID: dict[str, str] = {}
NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # disk full, quota, file-size limit
NO_WRITE = (errno.EROFS, errno.EACCES, errno.EPERM)  # a read-only file system, no permission


def _uid() -> str:
    """A short id unique to this process, so jobs started in the same second get separate run dirs."""
    if "v" not in _UID:
        _UID["v"] = f"{os.getpid():x}{os.urandom(2).hex()}"
    return _UID["v"]


# use_cache: the value is kept in the config (Hydra copies a sweep's resolver cache into each job's config, and a
# pickled config carries it), so a job started in another process (hydra/launcher=submitit_local, slurm) resolves
# ${af_uid:} in hydra.sweep.dir to the sweep's id, not its own: each job's record landed in a sweep dir of its own
OmegaConf.register_new_resolver("af_uid", _uid, replace=True, use_cache=True)


def check_start(cfg: DictConfig) -> None:
    """The start-up checks, before Lightning loads (~5 s): a ConfigError for the first bad value. A sweep makes
    them on every job before starting any (``tracking.sweep.check_sweep_values``)."""
    _check_added_keys(cfg)
    _check_chdir(cfg)
    validate(cfg)  # the shared groups and the model first
    check_shortcuts(cfg)
    from agentforge.phases.rules import PHASE_CHECKS, PHASE_RULES  # then the phase's own keys, then across keys

    check(cfg, PHASE_RULES.get(str(cfg.phase.name), ()))
    for check_across in PHASE_CHECKS.get(str(cfg.phase.name), ()):
        check_across(cfg)
    _check_artifacts_writable(cfg)
    _check_gpu_visible(cfg)


def run(cfg: DictConfig) -> dict:
    """The plain entry point tests call: validate, dispatch, return the phase's result."""
    check_start(cfg)
    import lightning as L  # here, not at the top: `--help` and `--cfg job` need no torch / Lightning

    from agentforge.training.trainer import set_threads

    _route_lightning_logs()
    phase = get_phase(str(cfg.phase.name))
    set_threads(cfg.hardware)   # before any model is built: an init's numbers depend on the thread count
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)  # before any model is built
    apply_cuda_graphs(cfg)
    return phase.run(cfg)


WRITES_ARTIFACTS = ("bitnet", "codegen", "cognate", "eval", "evomerge", "quietstar", "scaling")  # publish there


def _check_added_keys(cfg: DictConfig) -> None:
    """``cli_errors.added_key_problem`` on the command line's overrides (none known outside a Hydra app)."""
    from agentforge.cli_errors import added_key_problem

    try:
        overrides = list(HydraConfig.get().overrides.task)
    except ValueError:
        return
    problem = added_key_problem(cfg, overrides, _without_forced(overrides))
    if problem:
        raise ConfigError(problem)


def _check_chdir(cfg: DictConfig) -> None:
    """``hydra.job.chdir=true`` is refused (also caught on the command line, before Hydra makes the run dir:
    ``cli_errors.chdir_problem``): ``paths.outputs`` and every relative data or checkpoint path were read from inside
    the run dir, so a phase published its artifacts there and the next phase could not find them."""
    from agentforge.cli_errors import CHDIR

    try:
        chdir = cfg.hydra.job.chdir if "hydra" in cfg else HydraConfig.get().job.chdir
    except (ValueError, AttributeError):   # outside a Hydra app
        return
    if chdir:
        raise ConfigError(CHDIR)


def _without_forced(overrides: list[str]):
    """The config composed without the ``++KEY`` overrides of config groups (None when there are none, or when it does
    not compose, e.g. a sweep's value list): what ``added_key_problem`` checks their keys against."""
    from agentforge.cli_errors import closed

    forced = [o for o in overrides if o.startswith("++") and closed(o[2:].split("=", 1)[0])]
    if not forced:
        return None
    from hydra import compose

    try:
        return compose(config_name="config", overrides=[o for o in overrides if o not in forced])
    except Exception:
        return None


def _check_artifacts_writable(cfg: DictConfig) -> None:
    """``paths.artifacts`` of a phase that publishes there: created if missing and written to (a probe file), so a
    read-only or mistyped path is refused before the work rather than after it, when the results were lost."""
    from agentforge.cli_errors import writable_problem

    if str(cfg.phase.name) not in WRITES_ARTIFACTS:
        return
    path = select(cfg, "paths.artifacts")
    problem = writable_problem(str(path)) if isinstance(path, str) else None
    if problem:
        raise ConfigError(f"paths.artifacts = {path!r} {problem}: point paths.artifacts (or paths.outputs / "
                          f"AGENTFORGE_OUTPUTS, which it defaults under) at a writable directory")


def _check_gpu_visible(cfg: DictConfig) -> None:
    """hardware=gpu on a machine without one fails here, before the run dir and the W&B run exist (the Trainer's
    own check, ``trainer.resolve_hardware``, comes after both)."""
    if str((cfg.get("hardware") or {}).get("accelerator", "auto")) in ("gpu", "cuda"):
        import torch

        if not torch.cuda.is_available():
            raise no_gpu_error()


def apply_cuda_graphs(cfg: DictConfig) -> None:
    """``hardware.cuda_graphs`` (default true) as the process-wide switch of the CUDA graphs (``graphs.ENABLED``: the
    memory's scan, the KV decoder's step): every phase's models, in Lightning or in its own loop, see it."""
    from agentforge.models import graphs

    graphs.ENABLED = bool((cfg.get("hardware") or {}).get("cuda_graphs", True))


def _route_lightning_logs() -> None:
    """Lightning adds its own console handler *and* propagates to the root logger that Hydra set up
    (console + agentforge.log), so every line printed twice: keep only Hydra's handlers."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        lg = logging.getLogger(name)
        lg.handlers = [h for h in lg.handlers if type(h) is not logging.StreamHandler]
        lg.propagate = True


def _log_to_file(msg: str) -> None:
    """The error into the run's ``agentforge.log`` only: the console already has its one ``error:`` line (Hydra's
    console handler would print it a second time, on stdout)."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, msg, None, None)
    for handler in (*log.handlers, *logging.getLogger().handlers):
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


# what every run dir starts with (run_context writes all but the log)
BOOKKEEPING = {"agentforge.log", "config_resolved.yaml", "overrides.yaml", "provenance.json"}


def _remove_run_dir(always: bool) -> None:
    """After a user error: remove this run's directory when nothing ran (``always``: a config error) or when it
    holds only the bookkeeping every run starts with (a missing checkpoint or bad data file found before any work),
    and its date folder and ``runs/`` if they are left empty. A directory with anything else (a W&B run, metrics, checkpoints) is
    kept: it records work that did happen."""
    try:
        run_dir = Path(HydraConfig.get().runtime.output_dir)
    except ValueError:
        return
    files = [p for p in run_dir.rglob("*") if p.is_file() and ".hydra" not in p.relative_to(run_dir).parts]
    if always or all(p.parent == run_dir and p.name in BOOKKEEPING for p in files):
        shutil.rmtree(run_dir, ignore_errors=True)
        for folder in (run_dir.parent, run_dir.parent.parent):   # the date folder, then runs/: only when empty
            try:
                folder.rmdir()
            except OSError:
                break


def _reused_run_dir(cfg: DictConfig) -> str | None:
    """``cli_errors.earlier_run_problem`` for this job's ``paths.run_dir``. Hydra made its own output directory
    before this runs: when that is another one (a saved config has no ``hydra:`` section, so Hydra's default
    ``outputs/<date>/<time>`` was made) and holds only what Hydra put there, it is removed."""
    from agentforge.cli_errors import earlier_run_problem
    from agentforge.locks import claim

    try:
        run_dir = os.path.abspath(str(select(cfg, "paths.run_dir")))
    except ConfigError:   # unresolvable: the start-up checks report it in their own words
        return None
    problem = earlier_run_problem(run_dir)
    if not problem and os.path.isdir(run_dir) and not claim(run_dir):   # two runs started together both pass the check
        return (f"the run directory {run_dir} is being written by another agentforge process right now: wait for it, "
                f"or leave hydra.run.dir and paths.run_dir unset (each run gets a new directory)")
    if problem:
        try:
            made = Path(HydraConfig.get().runtime.output_dir).absolute()
        except ValueError:
            return problem
        files = [p for p in made.rglob("*") if p.is_file()]
        if made != Path(run_dir) and all(".hydra" in p.parts or p.suffix == ".log" for p in files):
            shutil.rmtree(made, ignore_errors=True)
            for folder in made.parents:   # its date folder, then outputs/: only when empty
                try:
                    folder.rmdir()
                except OSError:
                    break
    return problem


def _multirun() -> bool:
    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:
        return False


_SIGINT = {"seen": False}
_SIGTERM = {"seen": False}
RESUME = ("run the same command again to continue — Cognate and Quiet-STaR resume from their last epoch checkpoint, "
          "the pipeline skips the steps that finished")
INTERRUPTED = f"interrupted (Ctrl-C): {RESUME}"
TERMINATED = f"terminated (SIGTERM): {RESUME}"
SWEEP_RERUN = ("; the same -m command reruns every job of the sweep, the finished ones too (each from its start): to "
               "run only the unfinished ones, give only their values (e.g. model=m2); the sweep's sweep_status.jsonl "
               "lists the jobs that finished")


class Terminated(BaseException):
    """Raised by the SIGTERM handler: a BaseException, so no ``except Exception`` in a phase swallows it; Lightning
    passes it through its shutdown (``on_exception`` callbacks, teardown) as it does any exception."""


def _on_sigint(signum, frame) -> None:
    """Note the Ctrl-C, then raise KeyboardInterrupt as Python does (Lightning catches it, shuts down and exits
    1: the note lets ``main`` say what happened and how to continue instead of a bare exit or a traceback)."""
    _SIGINT["seen"] = True
    signal.default_int_handler(signum, frame)


def _on_sigterm(signum, frame) -> None:
    """SIGTERM (``timeout``, SLURM preemption, ``docker stop``): Lightning's own handler only notes it and raises a
    bare ``SystemExit`` (exit 0, nothing said) at the next batch, and outside a fit the default handler kills the
    process with nothing recorded. Note it and raise ``Terminated`` at once, like a Ctrl-C; a repeat while the run
    shuts down is ignored (the shutdown is what it asks for). A forked child (a multiprocessing pool worker inherits
    the handler) is not the run, and outside a job's ``run`` (Hydra composing the next job of a sweep, exit-time
    cleanup) there is nothing to shut down cleanly: both die of the signal as they would have without this handler."""
    child = os.getpid() != _SIGTERM.get("pid")
    if not child and _SIGTERM["seen"]:
        return   # a repeat while the run shuts down
    if child or not _SIGTERM.get("active"):   # a forked child, or outside a job's run
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    _SIGTERM["seen"] = True
    raise Terminated()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig):
    with stdout_into_log():   # the results a phase prints are kept in the run's agentforge.log as well
        return _run_job(cfg)


def _run_job(cfg: DictConfig):
    multirun = _multirun()
    reused = _reused_run_dir(cfg)
    if reused:
        print(f"error: {reused}", file=sys.stderr)   # not into its agentforge.log: that is the earlier run's
        if multirun:
            record_job(cfg, ok=False, error=reused)
            return None
        sys.exit(2)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_sigint)
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):   # left alone when the caller ignores it
        _SIGTERM["pid"] = os.getpid()
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        _SIGTERM["active"] = True
        try:
            result = run(cfg)
        finally:
            _SIGTERM["active"] = False
    except (KeyboardInterrupt, SystemExit, Terminated) as exc:
        term = _SIGTERM["seen"] or isinstance(exc, Terminated) or type(exc).__name__ == "SIGTERMException"
        if not term and not _SIGINT["seen"] and not isinstance(exc, KeyboardInterrupt):
            raise
        msg, code = (TERMINATED, 143) if term else (INTERRUPTED, 130)   # 128 + the signal, as shells report it
        if multirun:
            msg += SWEEP_RERUN
        print(f"error: {msg}", file=sys.stderr)
        _log_to_file(msg)
        if multirun:   # the sweep stops (it was asked to); its record says which job was cut short
            record_job(cfg, ok=False, error=msg.split(":")[0])
        sys.exit(code)
    except AgentForgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        _log_to_file(str(exc))
        if isinstance(exc, ConfigError) or not multirun:  # a sweep keeps the dirs of jobs that ran into bad input
            _remove_run_dir(always=isinstance(exc, ConfigError))
        if multirun:
            record_job(cfg, ok=False, error=f"{type(exc).__name__}: {exc}")
            return None
        sys.exit(2)
    except OSError as exc:
        if exc.errno not in NO_ROOM + NO_WRITE:
            raise
        where = exc.filename or "the output"
        if exc.errno in NO_ROOM:
            msg = (f"no room to write {where} ({os.strerror(exc.errno)}): free disk space or point "
                   f"AGENTFORGE_OUTPUTS / paths.outputs / paths.artifacts at a disk with room; partial files were removed")
        else:
            msg = (f"cannot write {where} ({os.strerror(exc.errno)}): make it writable or point paths.artifacts / "
                   f"paths.outputs (AGENTFORGE_OUTPUTS) at a writable directory; partial files were removed")
        print(f"error: {msg}", file=sys.stderr)   # not into agentforge.log: its disk may be the one that is full
        if multirun:
            record_job(cfg, ok=False, error=msg)
            return None
        sys.exit(2)
    except Exception as exc:
        if not multirun:
            raise
        traceback.print_exc()
        record_job(cfg, ok=False, error=f"{type(exc).__name__}: {exc}")
        return None
    if multirun:
        res = result if isinstance(result, dict) else {}
        record_job(cfg, ok=True, published=res.get("published") or res.get("checkpoint"), metrics=res.get("metrics"))
    if result:
        for key in ("checkpoint", "run_dir", "report"):
            if result.get(key):
                print(f"{key}: {result[key]}")
    metric = cfg.get("optimized_metric")
    if metric and isinstance(result, dict):
        value = (result.get("metrics") or {}).get(metric)
        if value is None:
            print(f"error: optimized_metric={metric!r} is not among the phase's metrics", file=sys.stderr)
        return value
    return None
