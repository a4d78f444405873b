"""Where a run's numbers came from: the source tree's git commit (and whether it had local changes), the versions of
the packages that compute them, torch's CPU thread count, the visible GPUs, a few environment variables that change
results, the (secret-free) command line, the host and the time. ``run_context`` writes it to every run dir as
``provenance.json`` and gives it to the W&B config; ``io.save_checkpoint`` puts ``checkpoint_provenance()`` (its
smaller part) in each checkpoint's ``config.json`` ``meta``.

Nothing here fails a run: git missing, not a git checkout, a slow or broken git, a package not installed -- each
gives ``None`` for that field. Only the environment variables named in ``ENV_VARS`` are read (never the others:
they may hold credentials), and the command line goes through ``redaction.redact_args``."""
from __future__ import annotations

import functools
import hashlib
import os
import platform
import socket
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import torch

from agentforge.tracking.redaction import redact_args

PACKAGES = ("torch", "lightning", "hydra-core", "omegaconf", "wandb", "numpy")
ENV_VARS = ("AGENTFORGE_OUTPUTS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "WANDB_MODE")
GIT_TIMEOUT_S = 5.0
SOURCE_ROOT = Path(__file__).resolve().parents[2]   # the folder holding the imported ``agentforge`` package


def _git(root: Path, *args: str) -> str | None:
    """``git -C root ARGS``'s stdout, or None when git is missing, fails or takes longer than ``GIT_TIMEOUT_S``."""
    try:
        proc = subprocess.run(["git", "-C", str(root), *args], capture_output=True, timeout=GIT_TIMEOUT_S,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.decode("utf-8", "replace") if proc.returncode == 0 else None


def git_state(root: str | Path = SOURCE_ROOT) -> dict:
    """``{"commit", "dirty", "diff_sha256"}`` of the git checkout whose top level is ``root``: the HEAD commit,
    whether a tracked file differs from it (``git status --porcelain --untracked-files=no``), and when it does the
    sha256 of ``git diff HEAD`` (which local changes). All None when ``root`` is not a checkout's top level (e.g. the
    package installed into a virtual environment that happens to sit inside some other repository) or git fails."""
    none = {"commit": None, "dirty": None, "diff_sha256": None}
    root = Path(root)
    top = _git(root, "rev-parse", "--show-toplevel")
    if top is None or Path(top.strip()).resolve() != root.resolve():
        return none
    commit = _git(root, "rev-parse", "HEAD")
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    if commit is None:
        return none
    dirty = None if status is None else bool(status.strip())
    diff = _git(root, "diff", "HEAD", "--no-ext-diff", "--no-color") if dirty else None
    return {"commit": commit.strip(), "dirty": dirty,
            "diff_sha256": hashlib.sha256(diff.encode()).hexdigest() if diff is not None else None}


def package_versions(names=PACKAGES) -> dict:
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def cuda_info() -> dict:
    """How many CUDA devices are visible and, when this process has already started CUDA, their names (not which one
    the run uses: the phase decides that later; its config's ``hardware`` group says). Counted the way Lightning
    counts them before it forks DDP ranks (NVML where it can): asking for a device's name would start CUDA here,
    and a forked rank cannot use CUDA started in its parent."""
    from lightning.fabric.accelerators.cuda import num_cuda_devices

    try:
        n = num_cuda_devices()
        names = [torch.cuda.get_device_name(i) for i in range(n)] if n and torch.cuda.is_initialized() else []
        return {"available": n > 0, "device_count": n, "devices": names}
    except Exception:   # a broken driver must not fail the run
        return {"available": None, "device_count": None, "devices": []}


def selected_env(names=ENV_VARS) -> dict:
    """The values of the variables in ``names`` only (None when unset); no other variable is read."""
    return {k: os.environ.get(k) for k in names}


def collect(root: str | Path = SOURCE_ROOT, argv: list[str] | None = None) -> dict:
    """The run's provenance (the module docstring), a small JSON-able dict."""
    return {
        "git": source_git_state() if Path(root) == SOURCE_ROOT else git_state(root),
        "versions": package_versions(),
        "torch_threads": torch.get_num_threads(),
        "cuda": cuda_info(),
        "env": selected_env(),
        "argv": redact_args(list(sys.argv if argv is None else argv)),
        "hostname": socket.gethostname(),
        "time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


@functools.cache
def _source_state() -> dict:
    return git_state(SOURCE_ROOT)


def source_git_state() -> dict:
    """``git_state`` of this package's own source, asked once per process (three git calls; a phase saves many
    checkpoints); a copy, so a caller's edit never reaches the next."""
    return dict(_source_state())


def checkpoint_provenance(root: str | Path | None = None) -> dict:
    """What a published checkpoint's ``meta`` records: the code (commit, dirty, diff), torch's version and thread
    count. No time or host: the same code and settings write the same ``config.json``."""
    git = source_git_state() if root is None else git_state(root)
    return {**git, "torch": torch.__version__, "torch_threads": torch.get_num_threads()}


def with_final_threads(prov: dict) -> dict | None:
    """``prov`` updated at the end of a run whose phase changed torch's thread count after ``collect`` (the training
    phases apply ``hardware.threads`` when they build their Trainer): ``torch_threads`` becomes the count the phase
    ran with and ``torch_threads_at_start`` keeps the first. None when the count did not change."""
    now = torch.get_num_threads()
    if now == prov.get("torch_threads"):
        return None
    return {**prov, "torch_threads": now, "torch_threads_at_start": prov.get("torch_threads_at_start",
                                                                                prov.get("torch_threads"))}
