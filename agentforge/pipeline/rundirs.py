"""A pipeline step's run directory (``runs/<key>``) across reruns, and the pipeline directory of a run that did nothing.

The run directory has a fixed name, and its ``metrics.jsonl`` is appended to (``JsonlLogger``): a rerun of a step
used to add its rows to the previous run's, so the eval step's ``run_summary.json`` summarised two models (count 2,
their perplexities averaged). A step that runs again now starts in an empty directory, the previous run's moved to
``runs/<key>.previous`` (one generation kept: its W&B offline run may not be synced yet), unless it resumes an
interrupted run with the same fingerprint: then the history it continues stays. ``pipeline_attempt.json`` in the
run directory says which fingerprint its run had and whether it finished, so a run killed before any record was
saved (SIGKILL) is still known to be interrupted.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from agentforge.io import write_json_atomic

ATTEMPT = "pipeline_attempt.json"
PREVIOUS_SUFFIX = ".previous"
# what a step's run directory holds before its phase did any work: the attempt marker and run_context's config files
BOOKKEEPING = {ATTEMPT, "config_resolved.yaml", "overrides.yaml", "provenance.json"}


def interrupted_fingerprint(run_dir: Path, prev: dict | None) -> str | None:
    """The fingerprint of the unfinished run whose history ``run_dir`` holds (None: none, or it finished). A run
    directory from before the marker existed: the step's record says (status ``failed``)."""
    marker = Path(run_dir) / ATTEMPT
    if not marker.is_file():
        return prev.get("fingerprint") if prev and prev.get("status") == "failed" else None
    try:
        attempt = json.loads(marker.read_text())
        return None if attempt.get("finished") else attempt.get("fingerprint")
    except (OSError, ValueError, AttributeError):
        return None


def start_attempt(run_dir: Path, fp: str, prev: dict | None) -> Path | None:
    """Before a step runs: keep ``run_dir`` when it holds an interrupted run with this fingerprint (the step resumes
    it and continues its history), else move it to ``runs/<key>.previous`` (replacing an older one); then mark the
    attempt unfinished. Returns where the previous run's directory went (None: kept, or there was none)."""
    run_dir = Path(run_dir)
    moved = None
    if run_dir.exists() and interrupted_fingerprint(run_dir, prev) != fp:
        moved = run_dir.with_name(run_dir.name + PREVIOUS_SUFFIX)
        shutil.rmtree(moved, ignore_errors=True)
        run_dir.rename(moved)
    write_json_atomic(run_dir / ATTEMPT, {"fingerprint": fp, "finished": False})
    return moved


def finish_attempt(run_dir: Path, fp: str) -> None:
    """The step's run finished: a later run of it starts afresh rather than resuming this one."""
    write_json_atomic(Path(run_dir) / ATTEMPT, {"fingerprint": fp, "finished": True})


def abandon_attempt(run_dir: Path, moved: Path | None) -> bool:
    """After a step failed: when its phase never opened its run (``run_dir`` holds only the attempt marker: a bad
    input found before any work), remove ``run_dir`` and put the previous run's directory (``moved``) back, so the
    history of the outputs on disk stays where it was. True when it did."""
    run_dir = Path(run_dir)
    if [p.name for p in run_dir.rglob("*")] not in ([ATTEMPT], []):
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    if moved is not None and moved.is_dir():
        moved.rename(run_dir)
    return True


def remove_if_untouched(pipe_dir: Path) -> bool:
    """After a failure in a pipeline directory this run created: remove it (and ``pipeline/`` if left empty) when it
    holds nothing but the failed step's bookkeeping, so a typo'd input leaves no half-made pipeline behind (a
    ``pipeline_state.json`` with one failed step and an empty ``artifacts/``). True when it did."""
    pipe_dir = Path(pipe_dir)
    files = [p for p in pipe_dir.rglob("*") if not p.is_dir()]
    if any(p.parent.parent != pipe_dir / "runs" or p.name not in BOOKKEEPING for p in files):
        return False
    shutil.rmtree(pipe_dir, ignore_errors=True)
    try:
        pipe_dir.parent.rmdir()
    except OSError:
        pass
    return True
