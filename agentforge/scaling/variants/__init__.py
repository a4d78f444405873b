"""The attention variant files: the softmax baseline and the three framework templates OpenEvolve starts
from. Each is a standalone Python file (never imported by the evaluator process itself: the sandbox loads
it in a child process) whose first line names its framework and whose evolvable part lies between the
``# EVOLVE-BLOCK-START`` / ``# EVOLVE-BLOCK-END`` markers."""
from __future__ import annotations

from pathlib import Path

VARIANTS_DIR = Path(__file__).resolve().parent
FRAMEWORKS = ("baseline", "coefficient_dynamics", "test_time_regression", "matrix_mixer")


def variant_path(name: str) -> Path:
    return VARIANTS_DIR / f"{name}.py"
