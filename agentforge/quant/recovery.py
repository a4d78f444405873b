"""The recovery curve of BitNet's straight-through fine-tune (``phases/bitnet.py``): after each epoch, the accuracy
composite of the ternary model as it would ship, and the ``finetune/*`` keys."""
from __future__ import annotations

import copy

from lightning.pytorch.callbacks import Callback

from agentforge.quant import convert


class RecoveryCallback(Callback):
    """finetune/* keys and the recovery curve: the accuracy composite after each fine-tuning epoch.

    Every point is the accuracy of the ternary model as it would ship: after an intermediate epoch, a
    frozen copy of the training model (ternary codes and scales only, ``convert.freeze``: the packed
    model's computation: the frozen kernels, not the training copy's straight-through forward);
    after the last epoch, the packed model reloaded from the file (``finish``), whose evaluation the
    phase needs anyway — evaluating the training copy as well would cost one more full evaluation."""

    def __init__(self, tracker, evaluate_fn, base_accuracy: float, epochs: int):
        self.tracker, self.evaluate_fn, self.base, self.epochs = tracker, evaluate_fn, base_accuracy, epochs
        self.curve = {"epoch": [0], "accuracy": [base_accuracy], "loss": [float("nan")]}
        self.step = 0

    def on_train_epoch_end(self, trainer, pl_module):
        losses, h = pl_module.epoch_train_losses, pl_module.history  # LMModule moves the epoch's losses
        if losses:                                                   # into history at validation end
            loss = sum(losses) / len(losses)
        elif h["epoch"] and h["epoch"][-1] == trainer.current_epoch:
            loss = h["train_loss"][-1]
        else:
            loss = float("nan")
        # the epoch's last step, where Lightning logs its val/loss (global_step is already the next epoch's first)
        epoch, self.step = trainer.current_epoch + 1, max(trainer.global_step - 1, 0)
        self.curve["epoch"].append(epoch)
        self.curve["loss"].append(loss)
        if epoch < self.epochs:
            frozen = copy.deepcopy(pl_module.model)
            convert.freeze(frozen)
            self.record(self.evaluate_fn(frozen)["accuracy"])

    def finish(self, packed_accuracy: float) -> None:
        """The packed model's accuracy as the last epoch's point — unless that epoch has one already
        (training stopped before its last epoch, e.g. on a non-finite loss)."""
        if len(self.curve["accuracy"]) < len(self.curve["epoch"]):
            self.record(packed_accuracy)

    def record(self, acc: float) -> None:
        """The accuracy of the latest epoch (the packed model's, for the last one): curve and finetune/* keys."""
        self.curve["accuracy"].append(acc)
        self.tracker.log({"finetune/epoch": self.curve["epoch"][-1], "finetune/loss": self.curve["loss"][-1],
                          "finetune/accuracy": acc, "finetune/accuracy_recovery": acc - self.base}, step=self.step)
