"""OpenEvolve's evaluator file for the scaling-law search: ``evaluate(program_path) -> metrics``.

    openevolve-run agentforge/scaling/variants/matrix_mixer.py openevolve/evaluator.py \
        --config openevolve/config_matrix_mixer.yaml --iterations 35

A thin wrapper over ``agentforge.phases.scaling.evaluate_cfg``, so the candidate runs in the same
sandbox (bubblewrap; ``phase.sandbox=process`` is the weaker mode and warns on every call) and gets the
same trusted metrics: the settings (sizes, steps, lr, sandbox mode and limits, held-out set, fitness
guard, cache) are those of ``python -m agentforge phase=scaling``, i.e. ``conf/phase/scaling.yaml``,
plus Hydra overrides from the environment variable ``AGENTFORGE_SCALING_OVERRIDES``, e.g.
``AGENTFORGE_SCALING_OVERRIDES="phase.preset=seed phase.train.steps=100000 hardware=gpu"``.
Results are cached under ``{paths.artifacts}/scaling_cache`` (``$AGENTFORGE_OUTPUTS/artifacts`` or
``outputs/artifacts`` in the working directory). ``combined_score`` (the guarded fitness of
``agentforge.scaling.fit.guarded_fitness``, or −1000 for a rejected candidate) is what OpenEvolve maximizes; the rejection reason goes to the artifacts, which
OpenEvolve shows the LLM in the next prompt.

Every figure that reaches OpenEvolve comes from the selection set: the evaluator's test-set figures
(``test_*``, the sizes' ``test_loss``) are removed here (``selection_only``), so the search never sees, and
never chooses on, the data a winner is reported on (``python -m agentforge phase=scaling
phase.program=winner.py`` prints both).
"""
from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # OpenEvolve loads this file by path, from any working directory
    sys.path.insert(0, str(REPO))


def compose_scaling_cfg(overrides: list[str] | None = None):
    """The project's config with ``phase=scaling`` and the given (or environment's) overrides."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from agentforge.main import CONF_DIR

    if overrides is None:
        overrides = shlex.split(os.environ.get("AGENTFORGE_SCALING_OVERRIDES", ""))
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            return compose(config_name="config", overrides=["phase=scaling", *overrides])
    finally:
        GlobalHydra.instance().clear()


def evaluate_metrics(program_path: str, overrides: list[str] | None = None) -> dict:
    """The package evaluator's result dict (numbers, plus error_kind/error/framework strings) without its
    test-set figures."""
    from agentforge.config import validate
    from agentforge.phases import scaling
    from agentforge.scaling.evaluator import selection_only

    cfg = compose_scaling_cfg(overrides)
    validate(cfg, scaling.RULES)
    return selection_only(scaling.evaluate_cfg(cfg, Path(program_path)))


def evaluate(program_path: str):
    """OpenEvolve's contract: a program path in, metrics out (an EvaluationResult when OpenEvolve is
    installed, so the reason for a rejection reaches the LLM as an artifact; a plain dict otherwise)."""
    from agentforge.scaling.evaluator import TEST_PREFIX

    result = evaluate_metrics(program_path)
    metrics = {k: float(v) for k, v in result.items() if isinstance(v, (int, float)) and not k.startswith(TEST_PREFIX)}
    notes = {k: str(result[k]) for k in ("error_kind", "error", "framework", "sandbox") if result.get(k)}
    try:
        from openevolve.evaluation_result import EvaluationResult
    except ImportError:
        return {**metrics, **notes}
    return EvaluationResult(metrics=metrics, artifacts=notes)
