"""Training one Quiet-STaR step (baking, its control, RL) with the shared ``build_trainer`` and a resumable epoch
checkpoint in ``{out}.work`` that only the same config and input may continue (as Cognate's ``ckpt_path``)."""
from __future__ import annotations

import hashlib
import time
from pathlib import Path

from omegaconf import OmegaConf

from agentforge.evals.speed import PartTimes
from agentforge.phases.cognate import fingerprint
from agentforge.training.part_callbacks import TimedEpochCheckpoint
from agentforge.training.resume import claim_work_dir, resume_path, start_work_dir, will_resume
from agentforge.training.trainer import build_trainer


def fit_step(cfg, ctx, module, step: str, src: Path, out_dir: Path, epochs: int, clip: float,
             times: PartTimes | None = None):
    """Train ``module`` with the shared ``build_trainer``: an epoch checkpoint in ``{out_dir}.work``, resumed
    (``ckpt_path``, as Cognate) when it belongs to the same config and input — the fingerprint stored IN the
    checkpoint decides, and its weights must fit ``module`` (``training/resume.py``); starting fresh, the stale
    ``last.ckpt`` is removed first. Returns (trainer, hours). ``ctx`` None: no loggers (with the run's, a second
    Trainer would log its steps over the first's). ``times``: the epoch checkpoints' saves are its part
    ``checkpoint``."""
    work = work_dir(out_dir)
    fp = step_fingerprint(cfg, step, src)
    claim_work_dir(work)
    resume = resume_path(cfg.get("ckpt_path"), work, fp, expected=module.state_dict())
    if resume:
        print(f"resuming from {resume}")
    start_work_dir(work, fp, resume)
    trainer = build_trainer(OmegaConf.to_container(cfg.hardware, resolve=True), loggers=ctx.loggers if ctx else False,
                            callbacks=[TimedEpochCheckpoint(work / "last.ckpt", fp, times)], max_epochs=epochs,
                            default_root_dir=ctx.run_dir if ctx else work, gradient_clip_val=clip or None, enable_checkpointing=False)
    t0 = time.perf_counter()
    trainer.fit(module, ckpt_path=resume)
    module.model.eval()
    return trainer, (time.perf_counter() - t0) / 3600


def step_fingerprint(cfg, step: str, src: Path) -> str:
    """What a step's epoch checkpoint must carry to be resumed: the config's fingerprint, the step, its input's digest."""
    return hashlib.sha256(f"{fingerprint(cfg)} {step} {input_digest(src)}".encode()).hexdigest()[:16]


def step_dirs(cfg) -> dict[str, tuple[Path, Path]]:
    """Each step's (input, output) directories: baking reads ``phase.input`` or EvoMerge's champion and writes
    ``quietstar/baked``; RL reads the baked model (``phase.input`` with ``step=rl``) and writes ``quietstar/reasoning``."""
    art = Path(cfg.paths.artifacts).absolute()
    given = Path(cfg.phase.input).absolute() if cfg.phase.get("input") else None
    step = cfg.get("step") or cfg.phase.step
    return {"baking": (given or art / "evomerge" / "champion", art / "quietstar" / "baked"),
            "rl": (given if step == "rl" and given else art / "quietstar" / "baked", art / "quietstar" / "reasoning")}


def resumes(cfg) -> bool:
    """Whether ``phase=quietstar`` with ``cfg`` would resume an epoch checkpoint of a step it trains (the one
    ``fit_step`` would accept: this config's and input's fingerprint; ``training.resume.will_resume``). The pipeline
    keeps the step's run dir, and the history in it, only then (``pipeline.continues``)."""
    step = cfg.get("step") or cfg.phase.step
    return any(will_resume(cfg.get("ckpt_path"), work_dir(out), step_fingerprint(cfg, s, src))
               for s, (src, out) in step_dirs(cfg).items() if step in (s, "both"))


def work_dir(out_dir: Path) -> Path:
    return out_dir.with_name(out_dir.name + ".work")


def input_digest(src: Path) -> str:
    """SHA-256 of the input checkpoint's weights and config (resume only continues from the same input)."""
    h = hashlib.sha256()
    for name in ("config.json", "model.safetensors"):
        if (src / name).is_file():
            h.update((src / name).read_bytes())
    return h.hexdigest()
