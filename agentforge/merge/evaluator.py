"""Evaluating merge recipes, cached by a hash of the merged weights.

Two recipes can build bit-identical models (an input's identity recipe in any of the 8 combos, a
FrankenMerge plan that restacks the same layers, a DARE recipe with lam = 0 ...). ``RecipeEvaluator``
materializes the recipe, hashes the merged state dict and config (``weights_digest``), and measures
only a model it has not seen: identical weights always get the identical measurement and therefore
the identical fitness, whatever the recipe and whatever the timing noise. The three input models are
registered first with their own measurements, so a recipe that rebuilds an input reuses the input's
figures exactly (that is what lets elitism guarantee the champion is never below the best input on
the selection set).
"""
from __future__ import annotations

import hashlib
import json

import torch

from agentforge.merge import fitness
from agentforge.merge.recipe import Recipe, materialize
from agentforge.models import CognateConfig, CognateModel


def weights_digest(state: dict[str, torch.Tensor], config: CognateConfig) -> str:
    """SHA-256 of the config (as sorted JSON) and every tensor's name, dtype, shape and raw bytes, in
    sorted key order: equal exactly when the two models compute the same function bit for bit."""
    h = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True, default=str).encode())
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous().reshape(-1)
        h.update(f"{k}|{t.dtype}|{tuple(state[k].shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def build(state: dict, config: CognateConfig, dev: torch.device | str = "cpu") -> CognateModel:
    model = CognateModel(config)
    model.load_state_dict(state)
    return model.to(dev).eval()


class RecipeEvaluator:
    """``evaluator(recipe) -> (fitness, metrics)``; ``measured`` counts the models actually measured.

    ``reference`` must be set (from the inputs' measurements) before the first call.
    """

    def __init__(self, states: list[dict], configs: list[CognateConfig], tokenizer, data: fitness.EvalData,
                 weights: dict[str, float], speed_mode: str = "flops", dare_rescale: str = "l1",
                 dev: torch.device | str = "cpu", yardstick=None):
        fitness.check_weights(weights)
        if speed_mode not in fitness.SPEED_MODES:
            raise ValueError(f"speed mode must be one of {fitness.SPEED_MODES}, got {speed_mode!r}")
        self.states, self.configs, self.tokenizer, self.data = states, configs, tokenizer, data
        self.weights, self.speed_mode, self.dare_rescale, self.dev = weights, speed_mode, dare_rescale, dev
        self.yardstick = yardstick
        self.reference: fitness.Reference | None = None
        self.cache: dict[str, dict] = {}
        self.measured = 0

    def register(self, state: dict, config: CognateConfig, metrics: dict) -> str:
        """Seed the cache with an already measured model (an input); returns its digest."""
        digest = weights_digest(state, config)
        self.cache[digest] = dict(metrics)
        return digest

    def score(self, metrics: dict) -> float:
        if self.reference is None:
            raise RuntimeError("set the evaluator's reference (the inputs' measurements) first")
        return fitness.score(metrics, self.reference, self.weights, self.speed_mode)

    def __call__(self, recipe: Recipe) -> tuple[float, dict]:
        state, config = materialize(recipe, self.states, self.configs, self.dare_rescale)
        digest = weights_digest(state, config)
        if digest not in self.cache:
            model = build(state, config, self.dev)
            self.cache[digest] = fitness.measure(model, self.tokenizer, self.data, self.yardstick)
            self.measured += 1
        metrics = {**self.cache[digest], "weights_sha256": digest[:16]}
        return self.score(metrics), metrics
