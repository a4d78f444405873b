"""Quiet-STaR RL's optimizer step (``training/rl_module.py``, manual optimization) on a tiny Cognate model: the real
``QuietStarModule`` in a real Lightning fit (no validation), one non-finite gradient injected."""
from __future__ import annotations

import copy
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import Logger

from agentforge.models import CognateConfig, CognateModel
from agentforge.reasoning.rl import ThoughtConfig
from agentforge.reasoning.thoughts import MixingHead
from agentforge.training.rl_module import QuietStarModule

MG = {"name": "muon_grokfast", "lr": 1e-2, "weight_decay": 0.01, "warmup_steps": 0, "min_lr_ratio": 1.0,
      "kl_coef": 0.0, "grokfast": "ema", "grokfast_alpha": 0.9, "grokfast_lambda": 0.3, "qk_clip": 30.0}
EPISODES, POISONED, CLIP = 4, 1, 0.05   # episode index 1 gets one inf gradient entry


class Rows(Logger):
    name, version = "rows", 0

    def __init__(self):
        super().__init__()
        self.rows: list[tuple[int, dict]] = []

    def log_hyperparams(self, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        self.rows.append((step, dict(metrics)))


class Watch(L.Callback):
    """The raw gradient norm of model + head at each backward (post-accumulate hooks: before anything else touches
    the gradients), and every weight (head included) before and after each episode."""

    def __init__(self, params):
        self.params, self.raw, self.moved = params, [], []
        self._sq = []
        for p in params:
            p.register_post_accumulate_grad_hook(lambda p: self._sq.append(p.grad.double().square().sum()))

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self._before = [p.detach().clone() for p in self.params]
        self._sq = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.raw.append(float(torch.stack(self._sq).sum().sqrt()) if self._sq else float("nan"))   # nan: no backward
        self.moved.append(any(not torch.equal(a, p) for a, p in zip(self._before, self.params)))


def test_rl_skips_one_bad_gradient_step_keeps_the_grokfast_ema_finite_and_logs_the_raw_norm(tmp_path):
    """One inf gradient entry in 4 episodes: exactly that episode is skipped (the old code ran the Grokfast filter
    before the check, the inf entered the EMA and every later episode was skipped too), no weight moves in it, the
    mixing head's included, and the episode still counts as an optimizer step. ``train/gradient_norm`` is the raw norm
    of model + head, before the filter and the clip (the old code logged the clipped one: exactly CLIP each step)."""
    torch.manual_seed(0)
    model = CognateModel(CognateConfig(vocab_size=272, d_model=32, n_layers=1, n_heads=2, ffn_hidden=64, window=64,
                                       max_steps=2, ltm_slots=8, ltm_key_dim=8))
    head = MixingHead(32)
    calls = {"n": 0}

    def poison(g):   # the lm_head's gradient at the POISONED episode's backward gets one inf entry
        calls["n"] += 1
        if calls["n"] == POISONED + 1:
            g = g.clone()
            g[0, 0] = float("inf")
        return g
    model.lm_head.weight.register_hook(poison)
    r = SimpleNamespace(num_episodes=EPISODES, anti_theater_every=EPISODES, batch_size=1, seq_len=12,
                        thought_positions=1, gen_tokens=1)
    tc = ThoughtConfig(num_thoughts=2, thought_length=2, n_true=2, context_len=8, kl_coef=0.1)
    tids = {"start": 259, "end": 260, "banned": [256, 257, 259, 260]}
    stream = torch.randint(0, 256, (200,), generator=torch.Generator().manual_seed(0))
    module = QuietStarModule(model, copy.deepcopy(model), head, stream, torch.empty(0), {}, None, tc, tids, r, MG, CLIP,
                             "skip", seed=0)
    watch, rows = Watch([*model.parameters(), *head.parameters()]), Rows()
    trainer = L.Trainer(max_epochs=QuietStarModule.epochs(r), logger=rows, callbacks=[watch], accelerator="cpu",
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, limit_val_batches=0, log_every_n_steps=1, default_root_dir=str(tmp_path))
    trainer.fit(module)

    assert calls["n"] == EPISODES and module.skipped_steps == 1
    assert trainer.global_step == EPISODES   # the skipped episode counts, as a skipped LMModule step does
    assert watch.moved == [i != POISONED for i in range(EPISODES)]      # nothing moved in it, the head included
    emas = [st["grokfast_ema"] for st in trainer.optimizers[0].state.values() if "grokfast_ema" in st]
    assert emas and all(bool(torch.isfinite(e).all()) for e in emas)
    logged = {step: m["train/gradient_norm"] for step, m in rows.rows if "train/gradient_norm" in m}
    good = [i for i in range(EPISODES) if i != POISONED]
    assert watch.raw[POISONED] == float("inf")
    for i in good:   # logged under the episode's index (0-based: global_step before its optimizer step)
        assert logged[i] == pytest.approx(watch.raw[i], rel=1e-5) and logged[i] > CLIP
