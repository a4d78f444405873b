"""The seed plan's flat W&B run config (agentforge/tracking/spec_config.py): per phase, every flat key is the
composed config's value (overridden values included, so none is a copy of the plan's numbers); the nested tree
keeps every value, the colliding ones under ``<key>_config``. The offline W&B run that carries them: test_cli.py."""
from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from agentforge.artifacts import ARCHITECTURE
from agentforge.merge.combos import PRETTY
from agentforge.optim import BUILDERS
from agentforge.reasoning.coherence import WEIGHTS
from agentforge.reasoning.tokens import SPECIAL_TOKENS
from agentforge.tracking.spec_config import MOVED, OPTIMIZER_NAMES, flat_config, optimizer_keys, wandb_config
from tests.conftest import compose_cfg

CONF = Path(__file__).resolve().parent.parent / "conf"


def test_cognate_keys_are_the_runs_values(tmp_path):
    cfg = compose_cfg(["model=m2", "optimizer.lr=0.003", "optimizer.grokfast_lambda=0.5", "optimizer.qk_clip=20",
                       "phase.max_epochs=4", "data.batch_size=8"], tmp_path)
    flat = flat_config(cfg, "cognate")
    assert flat == {"phase": 1, "model_id": 2, "architecture": ARCHITECTURE, "act_threshold": cfg.model.act_threshold,
                    "ltm_slots": cfg.model.ltm_slots,
                    "dataset_weights": OmegaConf.to_container(cfg.model.dataset_weights),
                    "optimizer": "Muon-Grokfast", "muon_lr": 0.003, "grokfast_lambda": 0.5, "qk_clip": 20.0,
                    "batch_size": 8, "num_epochs": 4, "curriculum_stages": len(cfg.phase.curriculum)}
    assert "kl_coef" not in flat and "target_params" not in flat   # no KL term, no parameter target (docstring)


def test_evomerge_keys_are_the_runs_values(tmp_path):
    cfg = compose_cfg(["phase=evomerge", "phase.generations=5", "phase.mutation_rate=0.05"], tmp_path)
    p = cfg.phase
    assert flat_config(cfg, "evomerge", input_models=3) == {
        "phase": 2, "population_size": p.population_size, "num_generations": 5, "mutation_rate": 0.05,
        "mutation_sigma": p.mutation_sigma, "elite_count": p.elite_count,
        "fitness_weights": OmegaConf.to_container(p.fitness_weights), "merge_techniques": list(PRETTY.values()),
        "early_stopping_patience": p.early_stopping_patience,
        "early_stopping_threshold": p.early_stopping_threshold, "input_models": 3}


def test_quietstar_steps_read_their_own_optimizer(tmp_path):
    cfg = compose_cfg(["phase=quietstar", "phase.rl.optimizer.lr=7e-4", "optimizer.grokfast_lambda=0.9",
                       "phase.baking.epochs=2", "phase.rl.num_episodes=5"], tmp_path)
    b, r = cfg.phase.baking, cfg.phase.rl
    baking = flat_config(cfg, "baking", num_strategies=10, training_examples=160)
    assert baking == {"phase": 3, "step": 1, "method": "prompt-baking", "num_special_tokens": 12,
                      "special_tokens": list(SPECIAL_TOKENS), "examples_per_strategy": b.examples_per_strategy,
                      "optimizer": "Muon-Grokfast", "muon_lr": b.optimizer.lr,
                      "grokfast_lambda": b.optimizer.grokfast_lambda, "qk_clip": b.optimizer.qk_clip,
                      "num_epochs": 2, "convergence_threshold": b.convergence_threshold,
                      "num_strategies": 10, "training_examples": 160}
    assert flat_config(cfg, "rl") == {
        "phase": 3, "step": 2, "method": "quiet-star-rl", "num_thoughts": r.num_thoughts,
        "thought_length": r.thought_length, "optimizer": "Muon-Grokfast", "muon_lr": 7e-4,
        "grokfast_lambda": r.optimizer.grokfast_lambda, "qk_clip": r.optimizer.qk_clip, "kl_coef": r.optimizer.kl_coef,
        "num_episodes": 5, "reward_type": "reinforce", "coherence_weights": WEIGHTS}
    cfg.phase.baking.examples_path = "mine.jsonl"     # the user's file decides the examples per strategy
    assert "examples_per_strategy" not in flat_config(cfg, "baking")


def test_bitnet_keys_are_the_runs_values(tmp_path):
    cfg = compose_cfg(["phase=bitnet", "phase.fine_tune_lr=3e-5", "phase.calibration_samples=64"], tmp_path)
    p = cfg.phase
    assert flat_config(cfg, "bitnet") == {
        "phase": 4, "method": "bitnet-1.58bit", "sparsity_threshold": p.sparsity_threshold,
        "preserved_layers": list(p.preserved_layers), "calibration_samples": 64,
        "fine_tune_epochs": p.fine_tune_epochs, "fine_tune_lr": 3e-5}


@pytest.mark.parametrize("group,keys", [("adamw", {"optimizer": "AdamW"}),
                                        ("grokfast_adamw", {"optimizer": "Grokfast-AdamW", "grokfast_lambda": 0.3}),
                                        ("muon", {"optimizer": "Muon", "muon_lr": 1e-3, "qk_clip": 30.0})])
def test_an_optimizer_reports_only_what_it_has(group, keys):
    """The real group files: no muon_lr without Muon, no grokfast_lambda without the filter, no qk_clip without QK-clip."""
    assert optimizer_keys(OmegaConf.to_container(OmegaConf.load(CONF / "optimizer" / f"{group}.yaml"))) == keys
    assert set(OPTIMIZER_NAMES) == set(BUILDERS)


def test_wandb_config_keeps_the_nested_tree_and_moves_what_the_flat_keys_shadow(tmp_path):
    nested = OmegaConf.to_container(compose_cfg(["phase=quietstar"], tmp_path), resolve=True)
    nested["model_id"] = "a user's +model_id"
    flat = {"phase": 3, "step": 1, "model_id": 7}
    out = wandb_config(nested, flat)
    assert {k: out[k] for k in flat} == flat
    moved = {*MOVED, "model_id"}
    assert {k: out[f"{k}_config"] for k in moved} == {k: nested[k] for k in moved}
    assert {k: v for k, v in out.items() if k not in flat and not k.endswith("_config")} == \
        {k: v for k, v in nested.items() if k not in moved}
    assert wandb_config(nested, None) is nested   # runs the plan gives no config (eval, compare, ...): unchanged


class _Opened(Exception):
    pass


@pytest.mark.parametrize("module,opener,args,runs", [
    ("evomerge", "run_context", ["phase=evomerge"], ["evomerge"]),
    ("quietstar", "timed_run_context", ["phase=quietstar", "step=baking"], ["baking"]),
    ("quietstar", "timed_run_context", ["phase=quietstar", "step=rl"], ["rl"]),
    ("bitnet", "run_context", ["phase=bitnet"], ["bitnet"])])
def test_each_phase_opens_its_run_with_its_flat_keys(tmp_path, monkeypatch, module, opener, args, runs):
    """The phase itself, on a tiny checkpoint, up to the moment it opens its run (then stopped: what follows is the
    phases' own tests'): the ``spec`` it passes is ``flat_config`` of its run. Cognate's: test_cli.py's W&B run."""
    import importlib

    import torch

    from agentforge.artifacts import save_model
    from agentforge.data.tokenizer import ByteTokenizer
    from agentforge.models import CognateConfig, CognateModel

    torch.manual_seed(0)
    ck = str(save_model(tmp_path / "ck", CognateModel(CognateConfig(d_model=16, n_heads=2, ffn_hidden=24, n_layers=2,
                                                                      window=8, max_seq_len=64, ltm_key_dim=8)),
                        ByteTokenizer()) or tmp_path / "ck")
    if module == "evomerge":   # three different dirs: the same one three times is refused (phase.inputs)
        import shutil

        copies = [shutil.copytree(ck, tmp_path / f"ck{i}") for i in (2, 3)]
        inputs = f"phase.inputs=[{ck},{copies[0]},{copies[1]}]"
    else:
        inputs = f"phase.input={ck}"
    cfg = compose_cfg(["experiment=smoke", *args, inputs], tmp_path)
    mod, seen = importlib.import_module(f"agentforge.phases.{module}"), []

    def opened(*a, spec=None, **k):
        seen.append(spec)
        raise _Opened

    monkeypatch.setattr(mod, opener, opened)
    with pytest.raises(_Opened):
        mod.run(cfg)
    measured = {"input_models": 3} if module == "evomerge" else {}
    if runs == ["baking"]:   # the generated examples: 10 strategies
        measured = {"num_strategies": 10, "training_examples": 10 * int(cfg.phase.baking.examples_per_strategy)}
    assert seen == [flat_config(cfg, r, **measured) for r in runs]
