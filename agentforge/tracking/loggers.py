"""The loggers a run reports to: W&B (offline unless the user is logged in), CSV, TensorBoard, or none,
always plus a ``metrics.jsonl`` in the run directory (what ``collect_metrics`` and the reports read).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from agentforge.io import atomic_write
from agentforge.tracking.redaction import redact, redacted_argv

PROJECT = "agent-forge-v2"


def wandb_mode(requested: str | None) -> str:
    """'online' only when asked (logger.mode / WANDB_MODE) or when credentials exist; else 'offline'."""
    if requested:
        return requested
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    netrc = Path.home() / ".netrc"
    if netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore"):
        return "online"
    return "offline"


class JsonlLogger(Logger):
    """Appends each metrics dict as one JSON line to ``{run_dir}/metrics.jsonl``. A run that continues in the
    directory of a killed run (a pipeline step's resume, a fixed ``paths.run_dir``) finds that run's rows there:
    ``continue_from`` sets aside the ones it logs again, so each step is counted once (``collect_metrics``)."""

    def __init__(self, run_dir: str | Path):
        super().__init__()
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._earlier: int | None = _end_torn_line(self.path)   # bytes of earlier runs' rows (None: settled)

    @property
    def name(self) -> str:
        return "jsonl"

    @property
    def version(self) -> str:
        return "0"

    @rank_zero_only
    def log_hyperparams(self, params, *args, **kwargs) -> None:
        return None

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        row = {"_step": step, "_time": time.time()}
        row.update({k: (v.item() if hasattr(v, "item") else v) for k, v in metrics.items()})
        with open(self.path, "a") as f:
            f.write(json.dumps(row, default=str) + "\n")
            f.flush()

    @rank_zero_only
    def continue_from(self, step: int) -> int:
        """This run trains from logger step ``step`` (a resumed checkpoint's; 0 from scratch): the earlier runs' rows
        that it logs again move to ``metrics.superseded.jsonl`` (nothing is deleted): rows at ``step`` or later (a
        killed run logged them after its checkpoint; the resume redoes them: steps 6-8 were counted twice), rows
        without a step (a run's figures before and after its fit: config/*, final/*), rows with the step and keys of
        one this run logged before its fit (Quiet-STaR RL's check at step 0) and torn lines. Called as training
        starts (``trainer.EpochCheckpoint``), before its first row; only the first call acts. Both files are
        rewritten atomically, the set-aside rows first. Returns how many rows moved."""
        earlier, self._earlier = self._earlier, None
        if not earlier or not self.path.is_file():
            return 0
        data = self.path.read_bytes()
        ours = data[earlier:]
        again = {_row_key(r) for r in map(_parse, ours.splitlines()) if r is not None}
        keep, moved = [], []
        for line in data[:earlier].splitlines(keepends=True):
            row = _parse(line)
            s = row.get("_step") if row is not None else None
            redone = not isinstance(s, (int, float)) or isinstance(s, bool) or s >= step or _row_key(row) in again
            if line.strip():
                (moved if redone else keep).append(line if line.endswith(b"\n") else line + b"\n")
        if moved:
            aside = self.path.with_name(SUPERSEDED)
            before = aside.read_bytes() if aside.is_file() else b""
            atomic_write(aside, lambda p: p.write_bytes(before + b"".join(moved)))
            atomic_write(self.path, lambda p: p.write_bytes(b"".join(keep) + ours))
        return len(moved)


SUPERSEDED = "metrics.superseded.jsonl"   # earlier runs' rows a continuing run logged again (JsonlLogger)


def _end_torn_line(path: Path) -> int:
    """End a torn last line (a kill mid-write) with a newline, so the next row is not glued onto it; the file's size."""
    if not path.is_file() or path.stat().st_size == 0:
        return 0
    with open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) != b"\n":
            f.write(b"\n")
        return f.tell()


def _parse(line: bytes) -> dict | None:
    try:
        row = json.loads(line)
    except ValueError:
        return None
    return row if isinstance(row, dict) else None


def _row_key(row: dict | None) -> tuple:
    return (None, None) if row is None else (row.get("_step"), frozenset(k for k in row if not k.startswith("_")))


def build_loggers(logger_cfg: dict, run_dir: str | Path, run_name: str, group: str | None,
                  tags: list[str], config: dict) -> list[Logger]:
    run_dir = Path(run_dir)
    loggers: list[Logger] = [JsonlLogger(run_dir)]
    kind = logger_cfg.get("name", "none")
    if kind == "wandb":
        os.environ.setdefault("WANDB_SILENT", "true")
        wb = WandbLogger(project=logger_cfg.get("project") or PROJECT, name=run_name, group=group,
                         tags=tags, save_dir=str(run_dir), mode=wandb_mode(logger_cfg.get("mode")),
                         entity=logger_cfg.get("entity"), config=redact(config), job_type=logger_cfg.get("job_type"))
        # Lightning always passes anonymous=None to wandb.init, and wandb >= 0.2x warns on stderr that the setting
        # has no effect (on every run, and just before a user error's one line): leave the key out
        getattr(wb, "_wandb_init", {}).pop("anonymous", None)
        with redacted_argv():
            _ = wb.experiment  # start the run now: W&B records the command line, which may carry a key
        loggers.append(wb)
    elif kind == "csv":
        loggers.append(CSVLogger(save_dir=str(run_dir), name="csv", version=""))
    elif kind == "tensorboard":
        loggers.append(TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version=""))
    return loggers


def wandb_run(loggers: list[Logger]):
    """The live wandb run when W&B is among the loggers, else None."""
    for lg in loggers:
        if isinstance(lg, WandbLogger):
            return lg.experiment
    return None


def finish(loggers: list[Logger], status: str = "success") -> None:
    """Close every logger; ``wandb.finish()`` so the next job of a multirun gets a run of its own."""
    for lg in loggers:
        try:
            lg.finalize(status)
        except Exception:  # a logger failing to close must not hide the run's own result
            pass
    try:
        import wandb

        if wandb.run is not None:
            wandb.finish(exit_code=0 if status == "success" else 1)
    except ImportError:
        pass
