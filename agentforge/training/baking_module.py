"""Phase 3 step 1, prompt baking (``reasoning/baking.py``), as a LightningModule trained by ``build_trainer``.

It is an ``LMModule`` with another training step: the student (``model``) is trained on
KL(prompted teacher || unprompted student) over the response tokens; the teacher is frozen. The
optimizer and scheduler, the gradient-norm / NaN policy, QK-clip's rank sync, the optimizer metrics and
the curves kept in the resume checkpoint are LMModule's, so baking behaves like every other training.

Each epoch is ``steps_per_epoch`` optimizer steps; step s bakes strategy s mod (number of strategies) on
a batch drawn with generators seeded by (seed, s, rank): a run resumed from an epoch checkpoint draws
exactly what an uninterrupted run draws, and under DDP each rank draws its own batch. Validation (once
per epoch, before the epoch checkpoint is written) measures the held-out agreement and KL.

Keys: each step logs ``baking/accuracy_overall`` (the agreement of that step's training batch, whatever strategy it
baked) and ``baking/accuracy_<key>`` of the one strategy it baked, and no other strategy's: that key is written
straight to the loggers (``_log_measured``), because Lightning would repeat a key logged earlier in the epoch at
every later step. Validation logs the held-out agreement of every strategy under ``baking/val_accuracy_<key>``,
their mean under ``baking/val_accuracy``; the per-strategy thresholds (the strategy table) and
``baking/final_accuracy`` are decided on the held-out evaluation, never on training batches.
"""
from __future__ import annotations

import random

import torch
from torch.utils.data import DataLoader

from agentforge.evals.speed import timed
from agentforge.optim import record_max_logits
from agentforge.reasoning import baking as bk
from agentforge.training.lm_module import LMModule


def gpu_memory() -> dict:
    return {"system/gpu_memory_gb": torch.cuda.memory_allocated() / 1024**3} if torch.cuda.is_available() else {}


def step_seed(seed: int, step: int, rank: int) -> int:
    """A distinct generator seed per (run seed, optimizer step, rank < 1000)."""
    return (seed * 1_000_003 + step) * 1000 + rank


class FrozenPair(LMModule):
    """An LMModule whose ``model`` is trained against a frozen ``frozen`` copy (teacher / reference), run
    in eval mode: the Cognate model has no dropout, so gradients are unchanged, but its surprise memory
    is not written, so the long-term memory bank stays the input's (a write would move the student away
    from the frozen model for reasons no gradient can correct).

    ``part_times`` (an ``evals.speed.PartTimes``, set by the phase; None: untimed) times the module's evaluations
    as parts of the step (``part``)."""

    part_times = None

    def __init__(self, model, frozen, optim_cfg: dict, total_steps: int, on_nonfinite: str, seed: int,
                 inject_nan_at_step: int | None = None):
        super().__init__(model, optim_cfg, total_steps, on_nonfinite, inject_nan_at_step)
        self.frozen, self.seed = frozen.eval(), seed
        for p in self.frozen.parameters():
            p.requires_grad_(False)
        record_max_logits(self.frozen, False)   # no optimizer reads the frozen copy's attention logits

    def part(self, name: str):
        """``part_times(name)``, or a no-op context where the module is not timed."""
        return timed(self.part_times, name)

    def on_train_batch_start(self, batch, batch_idx):
        super().on_train_batch_start(batch, batch_idx)
        self.model.eval()
        self.frozen.eval()

    def generators(self, batch_idx: int, steps_per_epoch: int) -> tuple[int, random.Random, torch.Generator]:
        """(step index, rng, generator) of this batch; the index counts batches, not optimizer steps, so a
        skipped step (``on_nonfinite=skip``) does not make the next batch repeat its draw."""
        step = self.current_epoch * steps_per_epoch + batch_idx
        s = step_seed(self.seed, step, self.global_rank)
        return step, random.Random(s), torch.Generator().manual_seed(s)

    def steps_loader(self, steps: int) -> DataLoader:
        """``steps`` items per rank (the distributed sampler splits ``steps * world_size``); only their count matters."""
        return DataLoader(list(range(steps * self.trainer.world_size)), batch_size=1)


class BakingModule(FrozenPair):
    def __init__(self, model, teacher, train: dict, val: dict, prompts: dict, b, optim_cfg: dict, on_nonfinite: str,
                 seed: int, inject_nan_at_step: int | None = None):
        """train / val: strategy key -> [(question ids, response ids)]; prompts: key -> prompt ids; b: phase.baking."""
        super().__init__(model, teacher, optim_cfg, int(b.epochs) * int(b.steps_per_epoch), on_nonfinite, seed,
                         inject_nan_at_step)
        self.train_pairs, self.val_pairs, self.prompts, self.b = train, val, prompts, b
        self.keys = list(train)
        self.history = {"epoch": [], "train_acc": [], "val_acc": [], "val_loss": []}
        self.epoch_accs: list[float] = []
        self.last_eval: dict | None = None

    def train_dataloader(self):
        return self.steps_loader(int(self.b.steps_per_epoch))

    def val_dataloader(self):
        return self.steps_loader(1)

    def training_step(self, batch, batch_idx):
        step, rng, gen = self.generators(batch_idx, int(self.b.steps_per_epoch))
        key = self.keys[step % len(self.keys)]
        pool = self.train_pairs[key]
        pairs = rng.sample(pool, min(int(self.b.batch_size), len(pool)))
        loss, acc = bk.bake_step(self.model, self.frozen, self.prompts[key], pairs, self.b, gen)
        if self.inject_nan_at_step is not None and step == self.inject_nan_at_step:
            loss = loss * float("nan")
        if not torch.isfinite(loss):
            return self._nonfinite(f"baking loss is {float(loss)}")
        self.epoch_accs.append(acc)
        self.log_dict({"baking/step": float(step + 1), "baking/epoch": float(self.current_epoch),
                       "baking/loss": loss.detach(), "baking/learning_rate": self.optimizers().param_groups[0]["lr"],
                       "baking/accuracy_overall": acc, **gpu_memory()}, on_step=True, on_epoch=False)
        self._log_measured({f"baking/accuracy_{key}": acc})
        self.log("loss", loss.detach(), prog_bar=True, logger=False)
        return loss

    def _log_measured(self, metrics: dict) -> None:
        """Metrics measured at this step only, written to the loggers at the step Lightning logs this step's other
        keys under (the optimizer steps done before it). Not through ``self.log``: Lightning keeps every on_step key
        logged in an epoch and writes its last value again at each later step of the epoch, so a strategy baked at
        step 1 would read its step-1 agreement at steps 2, 3, ... Rank 0 writes, as for every logged key."""
        if self.trainer.is_global_zero:
            for lg in self.loggers:
                lg.log_metrics(metrics, step=self.global_step)

    # validation ends each training epoch, before the epoch checkpoint (a callback hook) is written
    def on_validation_epoch_start(self):
        pass

    def validation_step(self, batch, batch_idx):
        with self.part("validation"):
            ev = bk.bake_eval(self.model, self.frozen, self.val_pairs, self.prompts, self.b)
        self.last_eval = ev
        self.log_dict({**{f"baking/val_accuracy_{k}": v["agreement"] for k, v in ev["per"].items()},
                       "baking/val_loss": ev["val_loss"], "baking/val_accuracy": ev["overall"],
                       "baking/convergence_progress": ev["overall"] / float(self.b.convergence_threshold)},
                      on_step=False, on_epoch=True, rank_zero_only=True)

    def on_validation_epoch_end(self):
        if self.trainer.sanity_checking or self.last_eval is None or not self.epoch_accs:
            return
        self.history["epoch"].append(self.current_epoch + 1)
        self.history["train_acc"].append(sum(self.epoch_accs) / len(self.epoch_accs))
        self.history["val_acc"].append(self.last_eval["overall"])
        self.history["val_loss"].append(self.last_eval["val_loss"])
        self.epoch_accs = []
