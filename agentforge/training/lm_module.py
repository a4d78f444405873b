"""The LightningModule every language-model training in the project uses (Cognate, scaling, fine-tunes).

It trains any model whose ``forward(ids, targets)`` returns an object with ``loss`` and ``logits``
(and, for Cognate models, ``lm_loss``, ``halting_steps``), logs the step metrics under the seed's keys,
and guards against non-finite losses and gradients.

``loss`` is what is optimized (for Cognate: PonderNet's halting loss + (1 + deep_supervision) x the mean per-step
cross-entropy); ``lm_loss`` is the next-token cross-entropy of the halted output. ``train/loss`` and
``train/perplexity`` (= exp(train/loss)) are that cross-entropy, in the units of ``val/loss``, whatever the
model optimizes; the optimized objective is logged as ``train/objective`` (equal to ``train/loss`` for a model
without a separate ``lm_loss``, e.g. the GPT-2 baseline), its terms, where the model reports them (``loss_terms``),
as ``train/loss/<term>`` (Cognate: ``halt``, ``ponder``, ``deep_supervision``), and the non-finite guard watches the
objective (what is backpropagated). The progress bar's ``loss`` and the per-epoch ``history["train_loss"]``
(``final/train_loss``) are the cross-entropy too. A recursive-refinement wrapper's refinement of each training batch
is logged as ``train/generation/{avg_refine_steps,commit_rate,avg_chunk_length}``
(``surgery.batch_refinement_metrics``, chunks of ``chunk_width`` positions).
"""
from __future__ import annotations

import math
import time

import lightning as L
import torch

from agentforge.errors import NonFiniteError
from agentforge.models.surgery import batch_refinement_metrics
from agentforge.optim import build_optimizer


class LMModule(L.LightningModule):
    def __init__(self, model: torch.nn.Module, optim_cfg: dict, total_steps: int, on_nonfinite: str = "stop",
                 inject_nan_at_step: int | None = None, chunk_width: int = 16):
        super().__init__()
        self.model, self.optim_cfg, self.total_steps = model, dict(optim_cfg), total_steps
        self.chunk_width = int(chunk_width)   # a recursive-refinement model's chunks (``train/generation/*``)
        self.on_nonfinite = on_nonfinite
        self.inject_nan_at_step = inject_nan_at_step  # fault-injection hook for the reliability tests
        self.skipped_steps = 0
        self.rank_weight_spread: float | None = None   # set at the end of a DDP fit (``weight_spread_across_ranks``)
        self._val_sum = self._val_count = 0.0
        self.epoch_train_losses: list[float] = []
        self.history: dict[str, list[float]] = {"train_loss": [], "val_loss": [], "epoch": []}
        # training time before this process (a resumed run: restored from the checkpoint) and the run dir that
        # logged those steps; ``run_dir`` is the current run's, set by the phase and saved with each checkpoint
        self.prior_fit_seconds, self.resumed_from_run, self.run_dir = 0.0, None, None
        self._fit_t0: float | None = None

    def forward(self, ids: torch.Tensor):
        return self.model(ids)

    # -- training ----------------------------------------------------------------------------------------
    def on_fit_start(self):
        """Train mode. Lightning keeps each module's mode as it finds it, and a model loaded from a checkpoint is in
        eval mode: trained so, QK-clip records no max logit, halting runs as at inference, ``no_grad_steps`` and the
        memory's counters are off (``phase=eval``'s fine-tune stages were trained that way). ``FrozenPair``
        modules still switch to eval mode per batch, on purpose. Also starts this process's fit clock
        (``fit_seconds``)."""
        self.model.train()
        self._fit_t0 = time.perf_counter()

    def on_train_batch_start(self, batch, batch_idx):
        for attn in getattr(self.model, "attention_modules", list)():
            attn.reset_max_logit()

    def training_step(self, batch, batch_idx):
        rows = batch[0]
        out = self.model(rows[:, :-1], rows[:, 1:])
        loss = out.loss
        if self.inject_nan_at_step is not None and self.global_step == self.inject_nan_at_step:
            loss = loss * float("nan")
        if not torch.isfinite(loss):
            return self._nonfinite(f"loss is {float(loss)}")
        lm_loss = getattr(out, "lm_loss", None)
        lm_loss = loss if lm_loss is None else lm_loss
        metrics = {
            "train/loss": lm_loss.detach(),           # cross-entropy of the halted output (as val/loss)
            "train/perplexity": torch.exp(lm_loss.detach().clamp(max=50)),
            "train/objective": loss.detach(),         # what is optimized (and checked for NaN above)
            "train/step": float(self.global_step),
            "train/epoch": float(self.current_epoch),
            "train/learning_rate": self.optimizers().param_groups[0]["lr"],
        }
        preds = getattr(out, "step_preds", None)   # a recursive-refinement wrapper: its refinement, batch by batch
        if preds is not None:
            metrics.update({f"train/generation/{k}": v
                            for k, v in batch_refinement_metrics(preds.detach(), self.chunk_width).items()})
        for name, term in (getattr(out, "loss_terms", None) or {}).items():
            metrics[f"train/loss/{name}"] = term   # train/objective's terms, summing to it (the evaluation plan's keys)
        halting = getattr(out, "halting_steps", None)
        if halting is not None:
            h = halting.float()
            metrics.update({"act/avg_halting_steps": h.mean(), "act/max_halting_steps": h.max(),
                            "act/min_halting_steps": h.min(), "act/halting_variance": h.var(unbiased=False)})
        memory = getattr(self.model, "memory", None)
        if memory is not None:
            st = memory.stats
            metrics.update({"ltm/memory_usage": memory.usage_fraction(), "ltm/write_operations": float(st["writes"]),
                            "ltm/read_operations": float(st["reads"]),
                            "ltm/avg_surprise_score": st["surprise_sum"] / max(st["surprise_count"], 1)})
            memory.reset_stats()
        self.log_dict(metrics, on_step=True, on_epoch=False)
        self.log("loss", lm_loss.detach(), prog_bar=True, logger=False)
        self.epoch_train_losses.append(float(lm_loss.detach()))
        return loss

    def _nonfinite(self, what: str):
        msg = f"non-finite value at step {self.global_step} (epoch {self.current_epoch}): {what}"
        if self.on_nonfinite == "skip":
            self._skip_step()  # no backward follows a None, but Lightning (32-bit) still calls the optimizer's step
            self.print(f"warning: {msg}; step skipped")
            return None
        raise NonFiniteError(f"{msg}; {self._kept()} — lower optimizer.lr or set phase.on_nonfinite=skip")

    def on_before_optimizer_step(self, optimizer):
        self._sync_max_logits()
        if not self._gradients_finite(self.model.parameters()):
            return
        # Lightning clips (gradient_clip_val) after this hook: filter first so the update respects the clip
        filter_gradients = getattr(optimizer, "filter_gradients_", None)
        if callable(filter_gradients):
            filter_gradients()

    def _gradients_finite(self, params) -> bool:
        """Check the raw gradients of ``params`` before the Grokfast filter and any clipping see them: log their total
        norm as ``train/gradient_norm`` and return True, or apply ``on_nonfinite`` to a non-finite norm (``stop``
        raises; ``skip`` leaves the step nothing to do, ``_skip_step``, and returns False). Before the filter because
        one inf that entered its EMA would stay there and make every later step non-finite. Every training step calls
        it: this hook in automatic optimization, ``QuietStarModule.training_step`` (model and mixing head) in manual."""
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return True
        norm = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
        if not torch.isfinite(norm):
            if self.on_nonfinite == "skip":  # the optimizer step still runs (Lightning): leave it nothing to do
                self._skip_step()
                self.print(f"warning: non-finite gradient at step {self.global_step}; step skipped")
                return False
            raise NonFiniteError(f"non-finite gradient norm at step {self.global_step} (epoch "
                                 f"{self.current_epoch}); {self._kept()} — lower optimizer.lr "
                                 f"or set phase.on_nonfinite=skip")
        self.log("train/gradient_norm", norm, on_step=True, on_epoch=False)
        return True

    def _kept(self) -> str:
        """What a stopped run leaves: the epoch checkpoints are written at each epoch's end, so none before the first
        one ends (a resumed run starts past it)."""
        if self.current_epoch > 0:
            return f"the last good checkpoint (end of epoch {self.current_epoch - 1}) is kept"
        return "no checkpoint was written (the first epoch had not ended)"

    def _skip_step(self) -> None:
        """Leave the optimizer step Lightning still runs nothing to do: no gradients (of every trained module: the
        model, and Quiet-STaR's mixing head), and no recorded attention logits (else QK-clip would rescale W_q/W_k
        from the skipped step's forward)."""
        self.skipped_steps += 1
        for p in self.parameters():
            p.grad = None
        for attn in getattr(self.model, "attention_modules", list)():
            attn.reset_max_logit()

    def _sync_max_logits(self) -> None:
        """Under DDP every rank must clip the same heads (QK-clip runs in the optimizer step), so the
        per-head max attention logits are max-reduced across ranks, as the all-reduced gradients are."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        for attn in getattr(self.model, "attention_modules", list)():
            torch.distributed.all_reduce(attn.max_logit, op=torch.distributed.ReduceOp.MAX)

    def on_train_end(self):
        self.rank_weight_spread = weight_spread_across_ranks(self.model)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        metrics_fn = getattr(self.optimizers().optimizer, "metrics", None)
        if callable(metrics_fn):
            self.log_dict({k: float(v) for k, v in metrics_fn().items()}, on_step=True, on_epoch=False)

    # -- resume: the curves survive a restart ---------------------------------------------------------------
    def fit_seconds(self) -> float:
        """Training time so far across resumes: the checkpoint's count plus this process's fit until now."""
        return self.prior_fit_seconds + (time.perf_counter() - self._fit_t0 if self._fit_t0 is not None else 0.0)

    def on_save_checkpoint(self, checkpoint):
        checkpoint["agentforge_history"] = {k: list(v) for k, v in self.history.items()}
        checkpoint["agentforge_fit_seconds"] = self.fit_seconds()
        checkpoint["agentforge_run_dir"] = None if self.run_dir is None else str(self.run_dir)

    def on_load_checkpoint(self, checkpoint):
        self.history = {k: list(v) for k, v in checkpoint.get("agentforge_history", self.history).items()}
        self.prior_fit_seconds = float(checkpoint.get("agentforge_fit_seconds") or 0.0)
        self.resumed_from_run = checkpoint.get("agentforge_run_dir")

    # -- validation --------------------------------------------------------------------------------------
    def on_validation_epoch_start(self):
        self._val_sum = self._val_count = 0.0

    def validation_step(self, batch, batch_idx):
        rows = batch[0]
        logits = self.model(rows[:, :-1]).logits.float()
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), rows[:, 1:].flatten(), reduction="sum")
        self._val_sum += float(loss)
        self._val_count += rows[:, 1:].numel()

    def on_validation_epoch_end(self):
        loss_sum, count = self._whole_set_val()
        if count == 0:
            return
        val_loss = loss_sum / count
        self.log_dict({"val/loss": val_loss, "val/perplexity": math.exp(min(val_loss, 50.0))}, prog_bar=True)
        if not self.trainer.sanity_checking:
            # validation ends each training epoch, so the epoch's curves are complete before any
            # on_train_epoch_end hook (e.g. the resume checkpoint) runs
            self.history["val_loss"].append(val_loss)
            if self.epoch_train_losses:
                self.history["train_loss"].append(sum(self.epoch_train_losses) / len(self.epoch_train_losses))
                self.history["epoch"].append(self.current_epoch)
            self.epoch_train_losses = []

    def _whole_set_val(self) -> tuple[float, float]:
        """(loss sum, token count) of the whole validation set. Under DDP each rank scores its share of the rows
        (``datamodule.ShardSampler``: no padded duplicates), so the sums and counts are all-reduced: every rank logs,
        records and early-stops on the same whole-set loss. A collective: every rank calls it, each epoch."""
        if self.trainer.world_size <= 1:
            return self._val_sum, self._val_count
        pair = torch.tensor([self._val_sum, self._val_count], dtype=torch.float64, device=self.device)
        pair = self.trainer.strategy.reduce(pair, reduce_op="sum")
        return float(pair[0]), float(pair[1])

    # -- optimizer ---------------------------------------------------------------------------------------
    def configure_optimizers(self):
        opt, sched = build_optimizer(self.model, self.optim_cfg, self.total_steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def weight_spread_across_ranks(model: torch.nn.Module) -> float | None:
    """The largest difference between ranks of any parameter tensor's float64 sum or sum of squares, after a
    DDP fit (None without a process group). DDP keeps the replicas equal only if every rank applies the same
    update: the gradients are all-reduced, and so must be everything else the optimizer step reads (QK-clip's max
    logits, ``_sync_max_logits``); a rank that drifted shows here as a spread above 0. A collective: every rank
    calls it (``on_train_end``)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return None
    params = [p.detach() for p in model.parameters()]
    if not params:
        return 0.0
    sums = torch.stack([torch.stack([p.double().sum(), p.double().square().sum()]) for p in params])
    hi, lo = sums.clone(), sums.clone()
    torch.distributed.all_reduce(hi, op=torch.distributed.ReduceOp.MAX)
    torch.distributed.all_reduce(lo, op=torch.distributed.ReduceOp.MIN)
    return float((hi - lo).max())
