"""Which training checkpoint a run resumes from (``ckpt_path``), and the checks that keep a wrong one from
being resumed (Cognate and each Quiet-STaR step; ``{out}.work/last.ckpt``).

The fingerprint of the config (and input) that wrote a checkpoint travels INSIDE it (``FINGERPRINT_KEY``, put
there by ``trainer.EpochCheckpoint``), so the resume decision compares the checkpoint's own fingerprint with the
current one: a ``fingerprint`` file next to it can be rewritten by a later run before that run has replaced the
checkpoint, and would then vouch for another config's weights. The work dir's ``fingerprint`` file is still
written (for people), and read only for a checkpoint written before fingerprints were embedded.

The thread count and device that wrote a checkpoint travel inside it too (``trainer.NUMERICS_KEY``), but they do not
decide anything: a resume on another machine is legitimate. A resumed run whose thread count or device differs
prints one ``warning:`` line (``trainer.numerics_warning``), since its weights will then not be bit-identical to an
uninterrupted run's (the CPU kernels split their reductions by the thread count).

``ckpt_path``:

* ``null`` / ``auto``: resume ``last.ckpt`` when it was written by the same config and input AND its weights fit
  the model (key names and shapes). Otherwise the run starts fresh and says why in one line (``not resuming:
  <file> was written by a different configuration`` / ``does not fit this model: ...`` / ``cannot be resumed
  (...)``, then ``; starting fresh``); ``start_work_dir`` removes the stale file before the new run writes
  anything. Chosen over an error: the tool found that file itself and the user asked for no checkpoint, so a
  leftover it cannot use (another config's, or one a code change made unloadable) never blocks the run; it is
  replaced, as it would be at the end of the run's first epoch.
* ``last`` / a ``.ckpt`` file: asked for by name, so resumed whatever config wrote it (a one-line note says when
  it was another); a file that is not a full training checkpoint, or whose weights do not fit the model, is a
  ``CheckpointError`` (one ``error:`` line, exit 2) naming the file and what to do: ``ckpt_path=fresh``.
* ``fresh`` / ``none``: start over; the stale ``last.ckpt`` is removed first.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

from agentforge.io import CheckpointError, write_text_atomic
from agentforge.training.trainer import FINGERPRINT_KEY, load_weights_only

LAST, MARKER = "last.ckpt", "fingerprint"
FRESH = "pass ckpt_path=fresh to start over"


def resume_path(ckpt_path, work_dir: Path, fp: str, expected: dict | None = None) -> str | None:
    """The checkpoint to resume from (None: start fresh), per the module docstring. ``expected``: the module's
    ``state_dict()``, which a checkpoint's weights must match (names and shapes); None skips that check (the
    caller has no module yet)."""
    last = Path(work_dir) / LAST
    if ckpt_path in (None, "auto"):
        if not last.is_file():
            return None
        why = _auto_problem(last, Path(work_dir), fp, expected)
        if why:
            print(f"not resuming: {last} {why}; starting fresh")
            return None
        return str(last)
    if ckpt_path in ("none", "fresh", False):
        return None
    if ckpt_path == "last":
        if not last.is_file():
            raise CheckpointError(f"ckpt_path=last: no {last} to resume from; run without ckpt_path to start")
        path = last
    else:
        path = Path(ckpt_path)
        if path.is_dir():
            raise CheckpointError(f"ckpt_path={ckpt_path}: a directory; ckpt_path takes a training checkpoint file "
                                  f"(e.g. {last}), or last / fresh")
        if not path.is_file():
            raise CheckpointError(f"ckpt_path={ckpt_path}: file not found")
    if expected is None and ckpt_path == "last":
        return str(path)
    ckpt = _load(path, last)   # a foreign, refused or unreadable file fails here, before the run starts
    if expected is not None:
        problem = fit_problem(ckpt, expected)
        if problem:
            raise CheckpointError(f"{path} {problem}; resume from a checkpoint of this model, or {FRESH}")
        stored = ckpt.get(FINGERPRINT_KEY)
        if stored is not None and stored != fp:
            print(f"note: {path} was written by a different configuration; resuming from it as ckpt_path asks")
    return str(path)


def will_resume(ckpt_path, work_dir: Path, fp: str) -> bool:
    """Whether a run would resume from ``work_dir`` (``resume_path``'s choice, made quietly and before the run's model
    exists, so the weights' fit is not checked: a run that then finds them unfit starts fresh as ever). Asked by the
    pipeline before a step runs (``pipeline.continues``)."""
    last = Path(work_dir) / LAST
    if ckpt_path in (None, "auto"):
        return last.is_file() and _auto_problem(last, Path(work_dir), fp, None) is None
    if ckpt_path in ("none", "fresh", False):
        return False
    return (last if ckpt_path == "last" else Path(ckpt_path)).is_file()


def claim_work_dir(work_dir: Path) -> None:
    """Claim ``work_dir`` for this run (``locks.claim``) before anything decides about its ``last.ckpt``; an
    ``AgentForgeError`` when another live process holds it: its checkpoint is that run's, which a run with another
    config would otherwise delete as stale (an audit: the live run's later rerun then started over)."""
    from agentforge.errors import AgentForgeError
    from agentforge.locks import claim

    if not claim(work_dir):
        raise AgentForgeError(f"{work_dir}: another agentforge process is training into it right now (its last.ckpt "
                              f"is that run's): wait for it to finish, or give this run its own outputs "
                              f"(AGENTFORGE_OUTPUTS or paths.artifacts)")


def start_work_dir(work_dir: Path, fp: str, resume: str | None) -> None:
    """Create the work dir and remove any temporary file a killed save left (``.last.ckpt.*.tmp``: never the file
    resumed from); when the run starts fresh, remove the stale ``last.ckpt`` too, BEFORE writing the new
    fingerprint, so nothing there describes another config's weights."""
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    for stale in [*work_dir.glob(f".{LAST}.*.tmp"), *([work_dir / LAST] if resume is None else [])]:
        stale.unlink(missing_ok=True)
    write_text_atomic(work_dir / MARKER, fp)


def resumed_note(prior_seconds: float, logged_in: str | None, step: int | None, run_dir: Path) -> str:
    """The line a resumed run prints: its training time before the checkpoint, and which logged steps count. The
    checkpoint was written at logger step ``step``; the killed run's rows before it count, and those it logged from
    there on were redone by this run. ``logged_in``: the killed run's run dir (the checkpoint says). A standalone
    rerun logs in a new run dir; in the same one (a pipeline step, a fixed ``paths.run_dir``) the redone rows were
    moved to ``metrics.superseded.jsonl`` (``JsonlLogger.continue_from``)."""
    from agentforge.tracking.loggers import SUPERSEDED

    head = f"resumed: {prior_seconds:.1f} s of training before this run (counted in final/total_training_time_hours)"
    at = f"step {step}" if step is not None else "its checkpoint"
    if logged_in and Path(logged_in).absolute() == Path(run_dir).absolute():
        return (f"{head}; the earlier steps are logged in this run dir (the killed run's rows before {at}; those it "
                f"logged from {at} on were redone here, and moved to {SUPERSEDED})")
    return (f"{head}; the earlier steps are logged in {logged_in or 'its run'} (its rows before {at} count; those "
            f"from {at} on were redone in this run)")


def fit_problem(ckpt, expected: dict) -> str | None:
    """Why ``ckpt`` (a loaded checkpoint) cannot be resumed into a module whose ``state_dict()`` is ``expected``,
    as a predicate of the file ("does not fit this model: ..."): not a full Lightning training checkpoint, or
    weights whose names or shapes differ. None when it fits."""
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict) \
            or "pytorch-lightning_version" not in ckpt:
        return "is not a training checkpoint this tool saved (no state_dict / pytorch-lightning_version entry)"
    if "optimizer_states" not in ckpt:
        return "holds weights only, not the full training state a run resumes from"
    got = ckpt["state_dict"]
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    shapes = [(k, _shape(got[k]), _shape(v)) for k, v in expected.items() if k in got and _shape(got[k]) != _shape(v)]
    parts = [f"its weights are named differently (missing {_few(missing)}; unexpected {_few(unexpected)})"] \
        if missing or unexpected else []
    if shapes:
        k, a, b = shapes[0]
        parts.append(f"{len(shapes)} tensor(s) have other shapes (e.g. {k}: {a} in the checkpoint, {b} in this model)")
    if parts:
        return f"does not fit this model: {'; '.join(parts)}, saved for another model size, architecture or code version"
    return None


def _auto_problem(last: Path, work_dir: Path, fp: str, expected: dict | None) -> str | None:
    """Why the auto path must not resume ``last`` (None: it may)."""
    try:
        ckpt, error = _load(last, last), None
    except CheckpointError as exc:
        ckpt, error = None, str(exc)
    if error is not None:   # a truncated or foreign file: whichever configuration wrote it, it cannot be resumed
        return f"cannot be read ({error.split(': ', 1)[-1].split(';')[0]})"
    stored = ckpt.get(FINGERPRINT_KEY) if isinstance(ckpt, dict) else None
    if stored is None:  # written before fingerprints were embedded: the work dir's marker, as then, but only a
        # marker no newer than the checkpoint (the old code rewrote it when a run started, before that run's first
        # checkpoint replaced the last one: a newer marker names a run that may not have written this checkpoint)
        marker = work_dir / MARKER
        if marker.is_file() and marker.stat().st_mtime_ns > last.stat().st_mtime_ns:
            return "was written by an unknown configuration (no fingerprint inside, and the work dir's marker is newer)"
        stored = marker.read_text().strip() if marker.is_file() else None
    if stored != fp:
        return "was written by a different configuration"
    if expected is None:
        return None
    return fit_problem(ckpt, expected)


def _load(path: Path, last: Path):
    if not zipfile.is_zipfile(path):  # before the run starts: no run dir, W&B run or work dir for a wrong file
        raise CheckpointError(f"ckpt_path={path}: not a training checkpoint this tool saved (those are torch "
                              f"zip archives, e.g. {last}); resume from one, or start fresh")
    return load_weights_only(path, mmap=True)


def _shape(v) -> list | None:
    return list(v.shape) if hasattr(v, "shape") else None


def _few(keys: list[str], n: int = 3) -> str:
    if not keys:
        return "none"
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")
