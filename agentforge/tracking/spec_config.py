"""The seed plan's flat W&B run config for each phase (docs: phase1-4-wandb-integration-plan.md, the
``wandb.init(config={...})`` of Phases 1, 2, 3 step 1, 3 step 2 and 4), beside the nested Hydra tree.

A run's W&B config is the composed config (nested: ``phase.max_epochs``, ``optimizer.lr``, ...) plus the
plan's flat keys for that run (``phase: 1``, ``model_id``, ``architecture``, ``optimizer: "Muon-Grokfast"``,
``muon_lr``, ...), so the plan's dashboard filters (``phase == 1``, ``optimizer == "Muon-Grokfast"``) find
the runs. Every flat value is read from the composed config (or, where only the phase knows it when the
run opens, measured by the phase: Phase 2's ``input_models``, step 1's ``num_strategies`` and
``training_examples``), never copied from the plan: ``muon_lr`` is the run's ``optimizer.lr`` (for Quiet-STaR
the step's ``phase.<step>.optimizer`` merged over it), ``num_epochs`` its ``phase.max_epochs``.

Collisions: the flat ``phase``, ``optimizer`` and ``step`` are also top-level keys of the nested tree (the
phase group, the optimizer group, the Quiet-STaR ``step`` shortcut). In the W&B config of these runs the flat
key wins and the nested value moves to ``<key>_config`` (``phase_config.max_epochs``,
``optimizer_config.lr``), in every phase's run alike, so one key has one type across the four phases. Only
W&B sees this: ``config_resolved.yaml`` in the run dir keeps the nested tree unchanged (tests and resume
read it), and no code reads the W&B config back except the tests.

Left out (the plan's key, and why):

* Phase 1 ``target_params``: there is no parameter target; the ``size`` preset sets the dimensions and the
  run logs the real count as ``final/total_params``.
* ``kl_coef`` in Phase 1 and step 1: their losses have no KL-to-reference term (baking's loss is itself a
  KL to the prompted teacher), so ``optimizer.kl_coef`` is not read there; step 2 reports it.
* ``muon_lr`` / ``grokfast_lambda`` / ``qk_clip`` where the run's optimizer has no Muon / Grokfast filter /
  QK-clip (``optimizer=adamw``, ``grokfast_adamw``, ``muon``, ``optimizer.grokfast=none``,
  ``optimizer.qk_clip=null``): the setting did nothing.
* step 1 ``examples_per_strategy`` with ``phase.baking.examples_path`` (the user's file decides).
* Phase 4 ``target_compression``: the phase has no target ratio; ``phase.min_compression`` (a threshold that
  is reported, not enforced) is in ``phase_config``.

``batch_size`` is ``data.batch_size``, the rows per process per step (DDP: times ``hardware.devices``).
``method`` and ``reward_type`` name the code the step runs (no setting chooses another); ``merge_techniques``,
``special_tokens`` and ``coherence_weights`` are the code's own tables (``merge.combos``, ``reasoning.tokens``,
``reasoning.coherence``).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf

# the optimizer group's ``name`` (agentforge.optim.BUILDERS) as the plan writes it
OPTIMIZER_NAMES = {"adamw": "AdamW", "grokfast_adamw": "Grokfast-AdamW", "muon": "Muon",
                   "muon_grokfast": "Muon-Grokfast"}
MOVED = ("phase", "optimizer", "step")   # flat keys that are also top-level keys of the nested tree (in every run)
SUFFIX = "_config"                       # where the nested value of a MOVED key goes


def _plain(node) -> Any:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def step_optimizer(cfg: DictConfig, step: str) -> dict:
    """The optimizer a Quiet-STaR step runs with: ``phase.<step>.optimizer`` merged over the optimizer group."""
    return {**_plain(cfg.optimizer), **_plain(cfg.phase[step].optimizer)}


def optimizer_keys(ocfg: dict, kl: bool = False) -> dict:
    """``optimizer`` and, where this optimizer has them, ``muon_lr``, ``grokfast_lambda``, ``qk_clip`` (and
    ``kl_coef`` when the run's loss reads it), as ``agentforge.optim.BUILDERS`` uses them."""
    name = str(ocfg["name"])
    muon, grokfast = name in ("muon", "muon_grokfast"), name in ("grokfast_adamw", "muon_grokfast")
    out: dict[str, Any] = {"optimizer": OPTIMIZER_NAMES.get(name, name)}
    if muon:
        out["muon_lr"] = float(ocfg["lr"])
    if grokfast and ocfg.get("grokfast", "ema") != "none":
        out["grokfast_lambda"] = float(ocfg["grokfast_lambda"])
    if muon and ocfg.get("qk_clip") is not None:
        out["qk_clip"] = float(ocfg["qk_clip"])
    if kl:
        out["kl_coef"] = float(ocfg["kl_coef"])
    return out


def _cognate(cfg: DictConfig) -> dict:
    from agentforge.artifacts import ARCHITECTURE

    m, p = cfg.model, cfg.phase
    return {"phase": 1, "model_id": int(m.model_id), "architecture": ARCHITECTURE,
            "act_threshold": float(m.act_threshold), "ltm_slots": int(m.ltm_slots),
            "dataset_weights": _plain(m.dataset_weights), **optimizer_keys(_plain(cfg.optimizer)),
            "batch_size": int(cfg.data.batch_size), "num_epochs": int(p.max_epochs),
            "curriculum_stages": len(p.curriculum)}


def _evomerge(cfg: DictConfig) -> dict:
    from agentforge.merge.combos import PRETTY, STAGES

    p = cfg.phase
    return {"phase": 2, "population_size": int(p.population_size), "num_generations": int(p.generations),
            "mutation_rate": float(p.mutation_rate), "mutation_sigma": float(p.mutation_sigma),
            "elite_count": int(p.elite_count), "fitness_weights": _plain(p.fitness_weights),
            "merge_techniques": [PRETTY[t] for stage in STAGES for t in stage],
            "early_stopping_patience": int(p.early_stopping_patience),
            "early_stopping_threshold": float(p.early_stopping_threshold)}


def _baking(cfg: DictConfig) -> dict:
    from agentforge.reasoning.tokens import SPECIAL_TOKENS

    b = cfg.phase.baking
    generated = {} if b.examples_path else {"examples_per_strategy": int(b.examples_per_strategy)}
    return {"phase": 3, "step": 1, "method": "prompt-baking", "num_special_tokens": len(SPECIAL_TOKENS),
            "special_tokens": list(SPECIAL_TOKENS), **generated, **optimizer_keys(step_optimizer(cfg, "baking")),
            "num_epochs": int(b.epochs), "convergence_threshold": float(b.convergence_threshold)}


def _rl(cfg: DictConfig) -> dict:
    from agentforge.reasoning.coherence import WEIGHTS

    r = cfg.phase.rl
    return {"phase": 3, "step": 2, "method": "quiet-star-rl", "num_thoughts": int(r.num_thoughts),
            "thought_length": int(r.thought_length), **optimizer_keys(step_optimizer(cfg, "rl"), kl=True),
            "num_episodes": int(r.num_episodes), "reward_type": "reinforce", "coherence_weights": dict(WEIGHTS)}


def _bitnet(cfg: DictConfig) -> dict:
    p = cfg.phase
    return {"phase": 4, "method": "bitnet-1.58bit", "sparsity_threshold": float(p.sparsity_threshold),
            "preserved_layers": _plain(p.preserved_layers), "calibration_samples": int(p.calibration_samples),
            "fine_tune_epochs": int(p.fine_tune_epochs), "fine_tune_lr": float(p.fine_tune_lr)}


RUNS: dict[str, Callable[[DictConfig], dict]] = {"cognate": _cognate, "evomerge": _evomerge, "baking": _baking,
                                                  "rl": _rl, "bitnet": _bitnet}


def flat_config(cfg: DictConfig, run: str, **measured: Any) -> dict:
    """The plan's flat keys of ``run`` (a key of ``RUNS``), plus ``measured``: values the phase knows only when
    the run opens."""
    return {**RUNS[run](cfg), **measured}


def wandb_config(nested: dict, flat: dict | None) -> dict:
    """What W&B receives: ``nested`` (the composed config) with ``flat`` on top; the nested value of each ``MOVED``
    key, and of any other top-level key a flat key shadows (a user's ``+model_id=...``), under ``<key>_config``.
    ``flat=None`` (a run the plan gives no config): ``nested`` unchanged."""
    if flat is None:
        return nested
    moved = set(MOVED) | set(flat)
    return {**{f"{k}{SUFFIX}" if k in moved else k: v for k, v in nested.items()}, **flat}
