"""The pipeline's plan, its state file and its cross-phase report (wired by ``phases/pipeline.py``)."""
from __future__ import annotations

from pathlib import Path


def pipeline_dir(outputs: str | Path, run_name: str) -> Path:
    """Where ``phase=pipeline`` with ``phase.run_name`` keeps its artifacts, runs, state and report (the phase, and a
    sweep's check that no two jobs share one, ``tracking.sweep.check_sweep_values``)."""
    return Path(outputs).absolute() / "pipeline" / str(run_name)
