"""Building a Lightning Trainer from the ``hardware`` group, with checkpoints that are written
atomically and loaded without unpickling code (``torch.load(weights_only=True)``)."""
from __future__ import annotations

import io
import os
import pickle
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from agentforge.io import CheckpointError, atomic_write
from agentforge.tracking.loggers import JsonlLogger

FINGERPRINT_KEY = "agentforge_fingerprint"   # the config (and input) that wrote a checkpoint: training/resume.py
NUMERICS_KEY = "agentforge_numerics"   # torch's thread count and the device that wrote it: numerics_warning


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoints: write-fsync-rename on save; weights-only (no code) on load."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        buf = io.BytesIO()
        torch.save(checkpoint, buf)  # serialize first: a full disk then surfaces as a plain OSError
        atomic_write(path, lambda p: p.write_bytes(buf.getbuffer()))

    def load_checkpoint(self, path, map_location=lambda storage, loc: storage, weights_only=None):
        return load_weights_only(path, map_location)


def load_weights_only(path, map_location="cpu", mmap: bool = False):
    """``torch.load(weights_only=True)`` with one clear CheckpointError for a missing, refused or unreadable
    file. ``mmap=True`` maps the tensors instead of reading them: a cheap check that a checkpoint will load,
    made before a run starts (``training.resume.resume_path``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: resume checkpoint not found (ckpt_path)")
    try:
        with warnings.catch_warnings():  # torch warns about a foreign pickle protocol before refusing the file
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{path}: refused: the training checkpoint holds objects other than tensors and "
                              f"plain data (loading it could run code); only weights-only checkpoints are "
                              f"loaded — resume from a checkpoint this tool saved, or start fresh") from exc
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise CheckpointError(f"{path}: unreadable training checkpoint ({type(exc).__name__}: "
                              f"{first.split('. ')[0][:200]}); resume from a checkpoint this tool saved, or "
                              f"start fresh") from exc


def resolve_hardware(hw: dict) -> dict:
    """accelerator / devices / strategy / precision for the Trainer; 'auto' picks the GPU when visible."""
    accel = hw.get("accelerator", "auto")
    has_gpu = torch.cuda.is_available()
    if accel == "auto":
        accel = "gpu" if has_gpu else "cpu"
    if accel in ("gpu", "cuda") and not has_gpu:
        from agentforge.errors import no_gpu_error

        raise no_gpu_error()
    precision = hw.get("precision", "auto")
    if precision == "auto":
        precision = "bf16-mixed" if accel == "gpu" else "32-true"
    return {"accelerator": accel, "devices": hw.get("devices", 1), "strategy": hw.get("strategy", "auto"),
            "precision": precision}


def trains_on_gpu(hw: dict) -> bool:
    """Whether the ``hardware`` group's Trainer runs on a GPU (``resolve_hardware``'s accelerator)."""
    return resolve_hardware(hw)["accelerator"] in ("gpu", "cuda")


SINGLE_PROCESS_STRATEGIES = ("auto", "single_device")


def device_count(hw: dict) -> int:
    """How many devices (so processes) ``hardware.devices`` asks Lightning for: a list's length, a "0,1" string's
    entries, an integer; "auto" or -1: every visible GPU on a GPU, one on the CPU."""
    d, gpu = resolve_hardware(hw)["devices"], trains_on_gpu(hw)
    if isinstance(d, (list, tuple)):
        return len(d)
    if isinstance(d, str) and "," in d:
        return len([x for x in d.split(",") if x.strip()])
    if str(d) in ("auto", "-1"):
        return torch.cuda.device_count() if gpu else (1 if str(d) == "auto" else os.cpu_count() or 1)
    return int(d)


def trains_in_one_process(hw: dict) -> bool:
    """True when the ``hardware`` group trains in one process (one device, strategy ``auto`` or ``single_device``),
    so a caller may move the training into a child process (``codegen.training.train_isolated``); False for DDP /
    FSDP / DeepSpeed or several devices: Lightning then starts the other ranks itself (``ddp`` re-runs the command
    line for each)."""
    return str(resolve_hardware(hw)["strategy"]) in SINGLE_PROCESS_STRATEGIES and device_count(hw) == 1


STARTUP_THREADS = torch.get_num_threads()   # torch's own count when this process started (cores or OMP_NUM_THREADS)


def set_threads(hw) -> None:
    """``hardware.threads`` (e.g. 1 on a shared CPU) as torch's CPU thread count; unset: the count torch started with
    (``STARTUP_THREADS``), so a multirun job does not inherit an earlier job's setting. ``main.run`` applies it before
    any model is built: an orthogonal init (the memory's) is a QR whose result depends on the thread count, so it
    applied only at the Trainer left the initial weights to the machine's core count whatever the setting (a
    reproducibility audit), and ``phase=eval`` / ``bitnet`` without a fit never applied it at all."""
    n = int(hw.get("threads") or 0) or STARTUP_THREADS
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def loop_device(hw) -> torch.device:
    """Where a phase that runs its own loop instead of a Trainer (evomerge, grokking) puts its models: the GPU
    when ``hardware.accelerator`` asks for one (gpu, cuda or auto) and one is visible, else the CPU."""
    want = str(hw.get("accelerator"))
    return torch.device("cuda" if want in ("auto", "gpu", "cuda") and torch.cuda.is_available() else "cpu")


def to_eval_device(hw, *modules: torch.nn.Module) -> torch.device:
    """Moves ``modules`` to where a phase evaluates them outside a Trainer's fit, and returns that device:
    ``loop_device`` (the GPU when the fit used one) with ``hardware.eval_device=fit`` (the default), the CPU with
    ``cpu``. Lightning's teardown returns a module to the CPU when ``trainer.fit`` ends, so without this move every
    evaluation after a GPU fit ran on the CPU (found on an H100 and an H200). Used by the Cognate phase (Quiet-STaR's
    docstring says why not there); the FSDP preset keeps ``cpu``: the move is untested with sharded fits (no
    multi-GPU machine here)."""
    dev = loop_device(hw) if str(hw.get("eval_device", "fit")) == "fit" else torch.device("cpu")
    for m in modules:
        m.to(dev)
    return dev


def build_trainer(hw: dict, *, loggers, callbacks, max_epochs: int, default_root_dir: str | Path,
                  limit_val_batches=None, gradient_clip_val: float | None = None, log_every_n_steps: int = 1,
                  enable_progress_bar: bool = True, max_steps: int = -1, check_val_every_n_epoch: int = 1,
                  enable_checkpointing: bool = True) -> L.Trainer:
    set_threads(hw)
    if hw.get("compile"):
        callbacks = [*callbacks, CompileModel(hw["compile"] if isinstance(hw["compile"], str) else "inductor")]
    return L.Trainer(**resolve_hardware(hw), logger=loggers, callbacks=callbacks, max_epochs=max_epochs,
                     max_steps=max_steps, default_root_dir=str(default_root_dir), log_every_n_steps=log_every_n_steps,
                     gradient_clip_val=gradient_clip_val, num_sanity_val_steps=0, deterministic=hw.get("deterministic", False),
                     limit_val_batches=limit_val_batches, enable_progress_bar=enable_progress_bar,
                     enable_model_summary=False, check_val_every_n_epoch=check_val_every_n_epoch,
                     enable_checkpointing=enable_checkpointing, plugins=[SafeCheckpointIO()],
                     reload_dataloaders_every_n_epochs=1)


class CompileModel(L.Callback):
    """``hardware.compile=true`` (or a backend name, e.g. ``aot_eager``): ``compile_regions`` of the
    LightningModule's ``model`` before fitting, in place (``nn.Module.compile``), so its state-dict keys —
    and the checkpoints, the resume and QK-clip's view of the attention modules — stay those of the
    uncompiled model."""

    def __init__(self, backend: str = "inductor"):
        self.backend = backend

    def setup(self, trainer, pl_module, stage):
        model = getattr(pl_module, "model", None)
        if isinstance(model, torch.nn.Module):
            compile_regions(model, self.backend)


def compile_regions(model: torch.nn.Module, backend: str = "inductor") -> list[torch.nn.Module]:
    """Regional compilation (PyTorch's recipe "Reducing torch.compile cold start compilation time with regional
    compilation"): each transformer block of ``model.blocks`` is compiled in place, the rest runs eagerly; a model
    without ``blocks`` is compiled whole. The blocks are identical in structure, so Dynamo compiles one graph
    and reuses it for every block and recursion step; the Cognate model's data-dependent parts — the memory's
    chunk scan (a CUDA graph on a GPU, ``memory_graph.py``), ACT's early exit — stay out of the compiled code
    instead of unrolling into it (compiling the whole 25M model did not finish in 92 s on an H100). Returns the
    compiled modules."""
    regions = list(getattr(model, "blocks", None) or [model])
    for m in regions:
        if getattr(m, "_compiled_call_impl", None) is None:
            m.compile(backend=backend)
    return regions


class EpochCheckpoint(L.Callback):
    """Saves the full training state (weights, optimizer, scheduler, loops, callbacks) to ``path`` at the
    end of every epoch, after validation, through the atomic ``SafeCheckpointIO``: the file a killed run
    resumes from. (Lightning's ModelCheckpoint writes ``last.ckpt`` only alongside a top-k save.) ``fingerprint``:
    the run's config fingerprint, stored in each checkpoint it writes (``FINGERPRINT_KEY``), so the file itself says
    which config wrote it (``training.resume.resume_path``)."""

    def __init__(self, path: str | Path, fingerprint: str | None = None):
        self.path = Path(path)
        self.fingerprint = fingerprint
        self.history_from: int | None = None   # the logger step training started at (set in on_train_start)

    def on_train_start(self, trainer, pl_module):
        """The run's ``metrics.jsonl`` continues from the step training starts at: the resumed checkpoint's (0 from
        scratch). Rows an earlier run logged there from that step on, which this run logs again, move aside
        (``JsonlLogger.continue_from``; a pipeline step resumed in its kept run dir counted steps 6-8 twice). The step
        is the one Lightning's loggers get, ``_batches_that_stepped``, restored from the checkpoint by now (this hook
        runs after the restore, before the first batch; ``on_fit_start`` runs before it)."""
        self.history_from = int(trainer.fit_loop.epoch_loop._batches_that_stepped)
        if trainer.is_global_zero:
            for lg in trainer.loggers:
                if isinstance(lg, JsonlLogger):
                    lg.continue_from(self.history_from)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        if self.fingerprint is not None:
            checkpoint[FINGERPRINT_KEY] = self.fingerprint
        checkpoint[NUMERICS_KEY] = numerics(pl_module)

    def on_load_checkpoint(self, trainer, pl_module, checkpoint):
        """Resuming (after ``hardware.threads`` was applied): one ``warning:`` line when the checkpoint was written
        with another thread count or device. Not refused: resuming on another machine is legitimate."""
        warning = numerics_warning(checkpoint.get(NUMERICS_KEY), numerics(pl_module))
        if warning and trainer.is_global_zero:
            print(warning)

    def on_train_epoch_end(self, trainer, pl_module):
        trainer.save_checkpoint(self.path, weights_only=False)  # the full state, to resume from


def numerics(pl_module) -> dict:
    """What makes a CPU/GPU run's floating point differ run to run besides the config: torch's CPU thread count (the
    kernels split their reductions by it) and the device (``cpu`` or the GPU's name)."""
    device = getattr(pl_module, "device", torch.device("cpu"))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return {"threads": torch.get_num_threads(), "device": name}


def numerics_warning(recorded: dict | None, current: dict) -> str | None:
    """The ``warning:`` line for resuming a checkpoint written with ``recorded`` numerics (``numerics``) under
    ``current`` ones; None when they are the same, or unknown (a checkpoint from before they were stored)."""
    if not isinstance(recorded, dict):
        return None
    diffs = [f"{key} {recorded[key]} then {current.get(key)}" for key in ("threads", "device")
             if key in recorded and recorded[key] != current.get(key)]
    if not diffs:
        return None
    return (f"warning: resuming with other numerics than the checkpoint was written with ({', '.join(diffs)}): the "
            f"resumed run will not be bit-identical to an uninterrupted one")
