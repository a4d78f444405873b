"""Exclusive claims on the directories a run writes into, so two live processes never share one.

Why: the checks before a run ("this run dir already holds a run", "this checkpoint belongs to another config") look
at files, and two runs started together both pass them. An audit started two identical commands with one
``hydra.run.dir``: both exited 0 and ``metrics.jsonl`` held every step twice; and a Cognate run with another config
found a live run's ``last.ckpt`` in the shared ``<model>.work`` dir, called it stale and deleted it, so the live
run's "run the same command again to continue" later started over.

How: ``flock(2)`` on the directory itself (no lock file is left in it); the kernel drops the claim when the process
ends, however it ends, so a killed run never leaves a stale one. A claim is held until the process exits (a
multirun's jobs each claim their own run dir; a directory claimed twice by one process is claimed once).
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

_HELD: dict[str, int] = {}   # absolute directory -> the open descriptor that holds its lock
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID")


def worker_rank() -> bool:
    """Whether this process is a rank other than 0 of a multi-process run (Lightning's DDP re-runs the command line
    for each rank, torchrun / SLURM start them): it works in the run rank 0 claimed and claims nothing itself."""
    return any(os.environ.get(v, "0").strip() not in ("", "0") for v in RANK_VARIABLES)


def claim(directory: str | Path) -> bool:
    """Take the exclusive lock of ``directory`` (created if missing) for the rest of this process; False when another
    process holds it. A worker rank (``worker_rank``) takes none and is told True."""
    path = os.path.abspath(directory)
    if path in _HELD or worker_rank():
        return True
    os.makedirs(path, exist_ok=True)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    _HELD[path] = fd
    return True


def release(directory: str | Path) -> None:
    """Give up this process's claim on ``directory`` (nothing when it holds none)."""
    fd = _HELD.pop(os.path.abspath(directory), None)
    if fd is not None:
        os.close(fd)
