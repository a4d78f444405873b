"""Training a code model (Cognate or the GPT-2 baseline) on the ``python_code`` corpus with the project's
Lightning loop (``LMModule`` + ``build_trainer``), both models on the same rows, steps and batch size.

Each model's steps go to its own ``metrics.jsonl`` (``{run_dir}/train_{name}/``), which the report reads
back for the training curves, the system-health panel and the peak training RAM (the largest
``system/ram_used_gb``, the process's RSS, the run recorded; on a GPU, the largest
``system/gpu_memory_used_gb``: memory allocated by CUDA tensors at a logged step, not the allocator's
true peak between steps).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import psutil
import torch

from agentforge.codegen.corpus import CodeCorpus, CodePool
from agentforge.data.datamodule import LMDataModule
from agentforge.data.tokenizer import ByteTokenizer
from agentforge.tracking.callbacks import ThroughputCallback
from agentforge.tracking.loggers import JsonlLogger
from agentforge.training.lm_module import LMModule
from agentforge.training.trainer import build_trainer

CURVE_KEYS = ("train/loss", "train/learning_rate", "train/gradient_norm", "val/loss", "system/tokens_per_second",
              "system/cpu_percent", "system/ram_used_gb", "system/gpu_memory_used_gb")


def code_datamodule(corpus: CodeCorpus, data_cfg: dict, *, seed: int, steps_per_epoch: int, val_rows: int,
                    epochs: int) -> LMDataModule:
    return LMDataModule(ByteTokenizer(), [{"epochs": epochs, "mix": {"code": 1.0}}], seq_len=int(data_cfg["seq_len"]),
                        batch_size=int(data_cfg["batch_size"]), steps_per_epoch=steps_per_epoch, val_rows=val_rows,
                        seed=seed, pool=CodePool(corpus))


def read_curves(path: Path) -> dict[str, list[tuple[int, float]]]:
    """{key: [(step, value), ...]} of the CURVE_KEYS in a metrics.jsonl."""
    out: dict[str, list] = {k: [] for k in CURVE_KEYS}
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        for k in CURVE_KEYS:
            v = rec.get(k)
            if isinstance(v, (int, float)):
                out[k].append((int(rec.get("_step") or 0), float(v)))
    return out


def peak_train_ram_mb(curves: dict[str, list[tuple[int, float]]]) -> float:
    """The peak training RAM (MB) from a run's curves (``read_curves``): the largest logged
    ``system/gpu_memory_used_gb`` where any was logged (a GPU run), else the largest ``system/ram_used_gb``;
    NaN when neither was logged."""
    gpu, ram = curves.get("system/gpu_memory_used_gb") or [], curves.get("system/ram_used_gb") or []
    values = gpu or ram
    return max(v for _, v in values) * 1024 if values else float("nan")


def train(name: str, model: torch.nn.Module, corpus: CodeCorpus, *, data_cfg: dict, optim_cfg: dict, hw_cfg: dict,
          run_dir: Path, seed: int, max_epochs: int, steps_per_epoch: int, val_rows: int,
          gradient_clip: float) -> dict:
    """Fit ``model``; returns its history, final val loss, peak RAM and time (the model is trained in place)."""
    out_dir = Path(run_dir) / f"train_{name}"
    dm = code_datamodule(corpus, data_cfg, seed=seed, steps_per_epoch=steps_per_epoch, val_rows=val_rows,
                         epochs=max_epochs)
    module = LMModule(model, optim_cfg, max_epochs * steps_per_epoch)
    trainer = build_trainer(hw_cfg, loggers=[JsonlLogger(out_dir)], callbacks=[ThroughputCallback()],
                            max_epochs=max_epochs, default_root_dir=out_dir, gradient_clip_val=gradient_clip or None,
                            enable_checkpointing=False, enable_progress_bar=False)
    rss0 = psutil.Process().memory_info().rss / 2**20
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    seconds = time.perf_counter() - t0
    model.eval()
    curves = read_curves(out_dir / "metrics.jsonl")
    ram, gpu = curves["system/ram_used_gb"], curves["system/gpu_memory_used_gb"]
    peak = peak_train_ram_mb(curves)
    h = module.history
    return {"name": name, "seconds": seconds, "steps": int(trainer.global_step),
            "tokens": int(trainer.global_step) * int(data_cfg["batch_size"]) * int(data_cfg["seq_len"]),
            "seq_len": int(data_cfg["seq_len"]), "batch_size": int(data_cfg["batch_size"]),
            "final_train_loss": h["train_loss"][-1] if h["train_loss"] else float("nan"),
            "final_val_loss": h["val_loss"][-1] if h["val_loss"] else float("nan"),
            "peak_train_ram_mb": peak, "rss_before_train_mb": rss0,
            "train_ram_growth_mb": (peak - rss0) if ram and not gpu else float("nan"),
            "history": h, "curves": curves, "metrics_path": str(out_dir / "metrics.jsonl"),
            "unstable": bool(module.skipped_steps)}
