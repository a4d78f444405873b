"""Checkpoints of surgery-wrapped models (architecture tag ``Cognate-Recursive``).

The state dict is the wrapper's (``base.*`` plus ``refine_*``); config.json's ``model`` holds the base
Cognate config and the refiner's. Importing this module registers the loader with
``agentforge.artifacts.load_any``.
"""
from __future__ import annotations

from pathlib import Path

import torch

from agentforge import artifacts
from agentforge.data.tokenizer import ByteTokenizer
from agentforge.io import WEIGHTS_FILE, CheckpointError, check_dtypes, load_checkpoint, save_checkpoint
from agentforge.models import CognateModel
from agentforge.models.surgery import ARCHITECTURE, RecursiveRefiner


def save_recursive(directory: str | Path, model: RecursiveRefiner, tokenizer: ByteTokenizer,
                   meta: dict | None = None) -> Path:
    return save_checkpoint(directory, model.state_dict(), architecture=ARCHITECTURE,
                           model_config={"base": model.config.to_dict(), "refiner": model.refiner_config()},
                           tokenizer=tokenizer.to_dict(), meta=meta)


def load_recursive(directory: str | Path, map_location: str | torch.device = "cpu"):
    """(wrapped model in eval mode, tokenizer, checkpoint config dict)."""
    state, cfg = load_checkpoint(directory)
    if cfg.get("architecture") != ARCHITECTURE:
        raise CheckpointError(f"{directory}: architecture {cfg.get('architecture')!r} is not {ARCHITECTURE!r}")
    model_cfg = cfg.get("model") if isinstance(cfg.get("model"), dict) else {}
    base_cfg = artifacts.checked_model_config(directory, model_cfg.get("base"))
    artifacts.check_config_fits(directory, base_cfg, state, prefix="base.")
    tokenizer = artifacts.checked_tokenizer(directory, cfg)
    try:
        ref = model_cfg["refiner"]
        model = RecursiveRefiner(CognateModel(base_cfg), int(ref["max_inner_steps"]), int(ref["hidden"]))
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{directory}: not a recursive-refiner config ({exc})") from exc
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{directory}: weights do not match the config "
                              f"({str(exc).splitlines()[0][:200]})") from exc
    check_dtypes(Path(directory) / WEIGHTS_FILE, state, model.state_dict())
    return model.to(map_location).eval(), tokenizer, cfg


artifacts.LOADERS.setdefault(ARCHITECTURE, f"{__name__}:load_recursive")
