"""Training a code model (Cognate or the GPT-2 baseline) on the ``python_code`` corpus with the project's
Lightning loop (``LMModule`` + ``build_trainer``), both models on the same rows, steps and batch size.

Each model's steps go to its own ``metrics.jsonl`` (``{run_dir}/train_{name}/``), which the report reads
back for the training curves and the system-health panel. ``train`` fits in this process; its peak training RAM
is the largest ``system/ram_used_gb`` (the process's RSS) the run logged (on a GPU, the largest
``system/gpu_memory_used_gb``: memory allocated by CUDA tensors at a logged step, not the allocator's true peak
between steps). When two models train one after the other in one process, that figure also holds whatever the
first left behind, so ``phase=codegen`` trains each in a fresh process (``train_isolated``), whose own high-water
mark is a true, comparable peak.
"""
from __future__ import annotations

import importlib
import io
import json
import multiprocessing as mp
import os
import pickle
import random
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import psutil
import torch

from agentforge.codegen.corpus import CodeCorpus, CodePool
from agentforge.data.datamodule import LMDataModule
from agentforge.data.tokenizer import ByteTokenizer
from agentforge.tracking.callbacks import ThroughputCallback
from agentforge.tracking.loggers import JsonlLogger
from agentforge.training import trainer as trainer_module
from agentforge.training.lm_module import LMModule
from agentforge.training.trainer import build_trainer, compile_regions, set_threads, trains_on_gpu

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
    """Fit ``model`` in this process; returns its history, final val loss, peak RAM (``peak_train_ram_mb``, the
    largest logged value, ``peak_train_ram_mb()``), the RSS just before the fit and the growth from it (CPU only),
    and the time; the model is trained in place. ``train_isolated`` runs this in a fresh process."""
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
            "unstable": bool(module.skipped_steps), "isolated": False}


# -- one training in a fresh process ------------------------------------------------------------------------------
# what a training process imports before it reads its job, whichever model it trains, so that the imports in its
# peak are the same for both (unpickling only the GPT-2 baseline would import transformers' GPT-2 alone: ~11 MB)
CHILD_IMPORTS = ("agentforge.models.cognate", "transformers.models.gpt2.modeling_gpt2")
JOIN_S = 60.0   # how long a child that has sent its result may take to exit before it is terminated


def peak_rss_mb() -> tuple[float, str]:
    """(this process's resident-memory high-water mark in MB, its source): ``VmHWM`` of ``/proc/self/status``
    (Linux: the kernel's high-water mark of this process's own memory map, not a sampled value), else
    ``ru_maxrss``. Not ``ru_maxrss`` on Linux: in a child started with "spawn" (fork + exec) it carried the
    parent's peak over (measured on Linux 6.18: a parent that had peaked at 814 MB spawned a child whose
    ``ru_maxrss`` read 814 MB and its ``VmHWM`` 16 MB)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024, "VmHWM"
    except OSError:
        pass
    import resource  # POSIX only

    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss   # bytes on macOS, kilobytes on Linux
    return (kb / 2**20 if sys.platform == "darwin" else kb / 1024), "ru_maxrss"


def rng_state() -> dict:
    """The global random states a training draws from (torch, CUDA once initialised, numpy, ``random``)."""
    out = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "random": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["random"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def _dumps(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _loads(blob: bytes):
    # only bytes this module wrote: the parent's job (the model object itself) or its own child's reply
    return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=False)


class ChildTraceback(Exception):
    """The traceback of an exception raised in the training process, chained as the re-raised exception's cause."""

    def __str__(self) -> str:
        return "\n" + str(self.args[0])


def _error_reply(exc: BaseException) -> dict:
    try:
        pickled = pickle.dumps(exc)
    except Exception:
        pickled = None
    return {"type": f"{type(exc).__module__}.{type(exc).__qualname__}", "message": str(exc), "pickled": pickled,
            "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))}


def _child(conn) -> None:
    """The training process: ``CHILD_IMPORTS``, its RSS then (``rss_after_imports_mb``), the job from ``conn``, the
    parent's thread count and random states, ``train``; then its peak memory, read as soon as the fit ends (before
    the weights are copied out), the trained weights (CPU) and the random states after training, or the error, back
    through ``conn``."""
    try:
        for mod in CHILD_IMPORTS:
            importlib.import_module(mod)
        rss_imports = psutil.Process().memory_info().rss / 2**20
        job = _loads(conn.recv_bytes())
        torch.set_num_threads(job["threads"])
        trainer_module.STARTUP_THREADS = job["threads"]   # the parent's count is this training's "unset" (set_threads)
        set_rng_state(job["rng"])
        model = job["model"]
        result = train(job["name"], model, job["corpus"], **job["kw"])
        rss_peak, source = peak_rss_mb()
        gpu = trains_on_gpu(job["kw"]["hw_cfg"])
        peak = torch.cuda.max_memory_allocated() / 2**20 if gpu else rss_peak
        result.update(peak_train_ram_mb=peak, peak_rss_mb=rss_peak, rss_after_imports_mb=rss_imports, isolated=True,
                      peak_memory_source="torch.cuda.max_memory_allocated" if gpu else source,
                      train_ram_growth_mb=float("nan") if gpu else rss_peak - result["rss_before_train_mb"])
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        reply = {"result": result, "state_dict": state, "rng": rng_state()}
    except BaseException as exc:   # noqa: BLE001 - every failure goes back to the parent, which re-raises it
        reply = {"error": _error_reply(exc)}
    conn.send_bytes(_dumps(reply))
    conn.close()


def _reraise(name: str, err: dict):
    exc = None
    if err["pickled"] is not None:
        try:
            exc = pickle.loads(err["pickled"])
        except Exception:
            exc = None
    if not isinstance(exc, BaseException):
        exc = RuntimeError(f"training {name!r} in its own process failed: {err['type']}: {err['message']}")
    raise exc from ChildTraceback(err["traceback"])


def train_isolated(name: str, model: torch.nn.Module, corpus: CodeCorpus, **kw) -> dict:
    """``train`` (same arguments, same result keys) in a fresh process started with "spawn" (not fork: this process
    has used torch's OpenMP thread pool), so that the training's peak memory is its own. Added or replaced in the
    result: ``peak_train_ram_mb``, that process's resident-memory high-water mark (``peak_rss_mb``; the interpreter
    and its imports, ``CHILD_IMPORTS``, included, the same for every model; on a GPU
    ``torch.cuda.max_memory_allocated``), ``peak_memory_source``, ``rss_after_imports_mb``, ``rss_before_train_mb``
    (its RSS just before the fit), ``train_ram_growth_mb`` (peak - before; NaN on a GPU) and ``isolated`` True.

    The child starts from this process's thread count and random states and hands back the trained weights (loaded
    into ``model``, which ``train`` would have trained in place) and its random states after training (set here), so
    the weights, and what this process draws next, are those ``train`` gives here; attributes outside the state dict
    (diagnostic counters) stay as they were. An exception in the child is raised here, the same type and message
    where it unpickles (else a RuntimeError naming it), the child's traceback as its cause; a child that dies
    without a reply (e.g. killed for memory) is a RuntimeError naming its exit code, not a hang. As with any
    "spawn", a script calling this needs the ``if __name__ == "__main__":`` guard (the CLI has it)."""
    ctx = mp.get_context("spawn")
    here, there = ctx.Pipe()
    proc = ctx.Process(target=_child, args=(there,), name=f"train_{name}")
    proc.start()
    there.close()
    reply = None
    try:
        try:
            here.send_bytes(_dumps({"name": name, "model": model, "corpus": corpus, "kw": kw, "rng": rng_state(),
                                    "threads": torch.get_num_threads()}))
            reply = _loads(here.recv_bytes())
        except (EOFError, OSError) as exc:
            proc.join(JOIN_S)
            code = proc.exitcode
            how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            raise RuntimeError(f"training {name!r} in its own process: the process ended without a result ({how}; "
                               f"e.g. killed for memory)") from exc
    finally:
        if reply is None and proc.is_alive():   # this side gave up (an error, an interrupt): no orphaned training
            proc.terminate()
        proc.join(JOIN_S)
        if proc.is_alive():
            proc.kill()
            proc.join()
        here.close()
    if "error" in reply:
        _reraise(name, reply["error"])
    model.load_state_dict(reply["state_dict"])
    model.eval()
    set_rng_state(reply["rng"])
    _as_after_train(model, kw.get("hw_cfg") or {})
    return reply["result"]


def _as_after_train(model: torch.nn.Module, hw: dict) -> None:
    """What ``train`` run here leaves behind besides the weights, so that what follows (sampling, the timed
    generations) runs as before: ``hardware.threads`` (``set_threads``), the deterministic-algorithms flag the Trainer
    sets process-wide (``hardware.deterministic``), and the model's blocks compiled in place (``hardware.compile``)."""
    set_threads(hw)
    deterministic = bool(hw.get("deterministic", False))
    torch.use_deterministic_algorithms(deterministic)
    if deterministic:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
    if hw.get("compile"):
        compile_regions(model, hw["compile"] if isinstance(hw["compile"], str) else "inductor")
