"""Lightning callbacks that log the seed's system/*, time/*, curriculum/* and val/*_accuracy keys."""
from __future__ import annotations

import json
import time

import lightning as L
import psutil
import torch

from agentforge.evals import tasks
from agentforge.evals.speed import timed


class ThroughputCallback(L.Callback):
    """system/tokens_per_second and memory figures (GPU when on GPU, process CPU/RAM otherwise)."""

    def __init__(self):
        self._t0 = None
        self._proc = psutil.Process()
        self.tokens_seen = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self._t0 is None:
            return
        n_tokens = batch[0][:, :-1].numel() * trainer.world_size
        self.tokens_seen += n_tokens
        tps = n_tokens / max(time.perf_counter() - self._t0, 1e-9)
        m = {"system/tokens_per_second": tps}
        if torch.cuda.is_available() and pl_module.device.type == "cuda":
            m["system/gpu_memory_used_gb"] = torch.cuda.memory_allocated() / 1024**3
            m["system/gpu_memory_cached_gb"] = torch.cuda.memory_reserved() / 1024**3
            try:
                m["system/gpu_utilization"] = float(torch.cuda.utilization())
            except Exception:  # pynvml missing: leave the key out rather than invent it
                pass
        else:
            m["system/cpu_percent"] = self._proc.cpu_percent(interval=None)
            m["system/ram_used_gb"] = self._proc.memory_info().rss / 1024**3
        pl_module.log_dict(m, on_step=True, on_epoch=False)
        pl_module.log("tok/s", tps, prog_bar=True, logger=False)


class EpochTimeCallback(L.Callback):
    """time/epoch_duration_minutes and time/estimated_completion_hours (from the mean epoch time)."""

    def __init__(self):
        self.durations: list[float] = []
        self._t0 = None
        self.fit_start = None

    def on_fit_start(self, trainer, pl_module):
        self.fit_start = time.perf_counter()

    def on_train_epoch_start(self, trainer, pl_module):
        self._t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        d = time.perf_counter() - self._t0
        self.durations.append(d)
        left = max(trainer.max_epochs - trainer.current_epoch - 1, 0)
        mean = sum(self.durations) / len(self.durations)
        pl_module.log_dict({"time/epoch_duration_minutes": d / 60,
                            "time/estimated_completion_hours": left * mean / 3600}, on_epoch=True)


class CurriculumCallback(L.Callback):
    """Logs curriculum/stage and curriculum/dataset_mix at each epoch start (the datamodule applies it)."""

    def __init__(self, tracker):
        self.tracker = tracker

    def on_train_epoch_start(self, trainer, pl_module):
        dm = trainer.datamodule
        stage = dm.stage_of_epoch(trainer.current_epoch)
        pl_module.log("curriculum/stage", float(stage), on_epoch=True, on_step=False)
        self.tracker.log({"curriculum/dataset_mix": json.dumps(dm.mix_of_stage(stage)),
                          "curriculum/stage": stage}, step=trainer.global_step)


class TaskAccuracyCallback(L.Callback):
    """val/gsm8k_accuracy (greedy generation), val/arc_easy_accuracy and val/piqa_accuracy (choice
    log-likelihood) on held-out examples at the end of each validation. ``times`` (an ``evals.speed.PartTimes``;
    None: untimed): each ``compute`` is its part ``task_accuracy``."""

    def __init__(self, tokenizer, eval_sets: dict[str, list[dict]], gen_tokens: int, times=None):
        self.tokenizer, self.eval_sets, self.gen_tokens, self.times = tokenizer, eval_sets, gen_tokens, times
        self.last: dict[str, float] = {}

    def compute(self, model) -> dict[str, float]:
        with timed(self.times, "task_accuracy"):
            return self._compute(model)

    def _compute(self, model) -> dict[str, float]:
        was_training = model.training
        model.eval()
        try:
            out = {}
            if self.eval_sets.get("gsm8k"):
                out["gsm8k_accuracy"] = tasks.gsm8k_accuracy(model, self.tokenizer, self.eval_sets["gsm8k"],
                                                             self.gen_tokens)
            if self.eval_sets.get("arc"):
                out["arc_easy_accuracy"] = tasks.choice_accuracy(model, self.tokenizer, self.eval_sets["arc"], "arc")
            if self.eval_sets.get("piqa"):
                out["piqa_accuracy"] = tasks.choice_accuracy(model, self.tokenizer, self.eval_sets["piqa"], "piqa")
            return out
        finally:
            model.train(was_training)

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        self.last = self.compute(pl_module.model)
        pl_module.log_dict({f"val/{k}": v for k, v in self.last.items()})
