"""A pipeline step's run directory (``runs/<key>``) across reruns, and the pipeline directory of a run that did nothing.

The run directory has a fixed name, and its ``metrics.jsonl`` is appended to (``JsonlLogger``): a rerun of a step
used to add its rows to the previous run's, so the eval step's ``run_summary.json`` summarised two models (count 2,
their perplexities averaged). A step that runs again now starts in an empty directory, the previous run's moved to
``runs/<key>.previous`` (one generation kept: its W&B offline run may not be synced yet), unless it continues an
interrupted run: the same fingerprint and inputs, and its phase resumes that run's checkpoint
(``pipeline.continues``); then the history it continues stays (the rows the killed run logged after its checkpoint
are set aside as the resumed run starts: ``JsonlLogger.continue_from``), and the temporary files of writes the kill
cut short are removed. ``pipeline_attempt.json`` in the run directory says which fingerprint and inputs its run had
and whether it finished, so a run killed before any record was saved (SIGKILL) is still known to be interrupted.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from agentforge.io import sweep_temporaries, write_json_atomic

ATTEMPT = "pipeline_attempt.json"
PREVIOUS_SUFFIX = ".previous"
# what a step's run directory holds before its phase did any work: the attempt marker and run_context's config files
BOOKKEEPING = {ATTEMPT, "config_resolved.yaml", "overrides.yaml", "provenance.json"}


def interrupted(run_dir: Path, prev: dict | None) -> dict | None:
    """The ``fingerprint`` and ``inputs`` (the digests of the outputs it read) of the unfinished run whose history
    ``run_dir`` holds; None: none, or it finished. A run directory from before the marker existed: the step's record
    says (status ``failed``)."""
    marker = Path(run_dir) / ATTEMPT
    if not marker.is_file():
        return {k: prev.get(k) for k in ("fingerprint", "inputs")} if prev and prev.get("status") == "failed" else None
    try:
        attempt = json.loads(marker.read_text())
        return None if attempt.get("finished") else {k: attempt.get(k) for k in ("fingerprint", "inputs")}
    except (OSError, ValueError, AttributeError):
        return None


def start_attempt(run_dir: Path, fp: str, prev: dict | None, inputs: dict | None = None,
                  continues: bool = False) -> Path | None:
    """Before a step runs: keep ``run_dir`` when it holds an interrupted run with this fingerprint and these inputs
    and the step ``continues`` it (its phase will resume that run's checkpoint: ``pipeline.continues``), removing the
    temporary files the kill left there (``io.sweep_temporaries``); else move it to ``runs/<key>.previous``
    (replacing an older one). Then mark the attempt unfinished. Returns where the previous run's directory went
    (None: kept, or there was none)."""
    run_dir = Path(run_dir)
    moved = None
    same = continues and interrupted(run_dir, prev) == {"fingerprint": fp, "inputs": inputs}
    if run_dir.exists() and not same:
        moved = run_dir.with_name(run_dir.name + PREVIOUS_SUFFIX)
        shutil.rmtree(moved, ignore_errors=True)
        run_dir.rename(moved)
    elif same:
        sweep_temporaries(run_dir)
    write_json_atomic(run_dir / ATTEMPT, {"fingerprint": fp, "inputs": inputs, "finished": False})
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
