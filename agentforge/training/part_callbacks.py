"""Lightning callbacks that time parts of a fit as parts of a phase's ``evals.speed.PartTimes`` (nested in the part
around ``trainer.fit``, which then holds the training alone): the epoch checkpoints' saves and the validation loops."""
from __future__ import annotations

import lightning as L

from agentforge.evals.speed import PartTimes, timed
from agentforge.training.trainer import EpochCheckpoint


class TimedEpochCheckpoint(EpochCheckpoint):
    """``EpochCheckpoint`` whose saves are the part ``checkpoint`` of ``times`` (``evals.speed.PartTimes``; None:
    untimed, a plain ``EpochCheckpoint``)."""

    def __init__(self, path, fingerprint, times: PartTimes | None):
        super().__init__(path, fingerprint)
        self.times = times

    def on_train_epoch_end(self, trainer, pl_module):
        with timed(self.times, "checkpoint"):
            super().on_train_epoch_end(trainer, pl_module)


class TimedValidation(L.Callback):
    """Each validation loop as the part ``name`` of ``times``: from Lightning's ``on_validation_start`` to its
    ``on_validation_end``, so the module's validation steps and every callback's ``on_validation_epoch_end`` (e.g.
    ``TaskAccuracyCallback``'s generation) are in it; loading the loop's dataloader, just before, is not. A loop that
    raises is closed in ``on_exception``, so the part around the fit resumes where it should."""

    def __init__(self, times: PartTimes, name: str = "validation"):
        self.times, self.name = times, name
        self._part = None

    def on_validation_start(self, trainer, pl_module):
        self._close()
        self._part = self.times(self.name)
        self._part.__enter__()

    def on_validation_end(self, trainer, pl_module):
        self._close()

    def on_exception(self, trainer, pl_module, exception):
        self._close()

    def _close(self):
        if self._part is not None:
            part, self._part = self._part, None
            part.__exit__(None, None, None)
