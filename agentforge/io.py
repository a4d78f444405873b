"""Files: atomic writes, and checkpoints as safetensors + JSON (loading never unpickles anything).

A checkpoint is a directory holding ``model.safetensors`` (the tensors) and ``config.json``
(``{"format": ..., "architecture": ..., "model": {...}, "tokenizer": {...}, "meta": {...}}``); ``meta`` holds what
the writer passes plus ``provenance`` (the commit, dirty flag, torch version and thread count that wrote it:
``tracking.provenance.checkpoint_provenance``), added here for every checkpoint.
Both are written to temporary names, fsynced and renamed, so a crash never leaves a truncated file
where a good one was; the directory is complete when ``config.json`` exists, which is written last. A checkpoint
left at ``{dir}.old`` by a publish killed between its two renames (``artifacts.publish``) is renamed back when
``dir`` is read and missing (``recover_published``).
"""
from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from agentforge.errors import AgentForgeError
from agentforge.tracking.provenance import checkpoint_provenance

CHECKPOINT_FORMAT = "agentforge-checkpoint-v1"
WEIGHTS_FILE, CONFIG_FILE = "model.safetensors", "config.json"


class CheckpointError(AgentForgeError):
    """A checkpoint is missing, truncated, or not what the caller expects."""


# the name of ``atomic_write``'s temporary file: ``.{name}.`` + mkstemp's 8 random characters + ``.tmp``
TEMPORARY = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


def atomic_write(path: str | Path, writer: Callable[[Path], None]) -> Path:
    """Run ``writer(tmp_path)``, fsync, then rename onto ``path``; on failure nothing is left behind (but SIGKILL
    and power loss leave the temporary file: ``sweep_temporaries``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        writer(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def sweep_temporaries(root: str | Path, skip: tuple[str, ...] = ("wandb",)) -> list[Path]:
    """Remove the temporary files of ``atomic_write``s that a killed process (SIGKILL: no ``except`` ran) left under
    ``root``, and return them. For a directory a run continues (a pipeline step's kept run dir): nothing else writes
    there then, and the files they were to replace are whole (the rename never happened). ``skip``: subdirectories
    whose files are another tool's (W&B's offline runs)."""
    root, gone = Path(root), []
    for p in sorted(root.rglob(".*.tmp")) if root.is_dir() else []:
        if p.is_file() and not p.is_symlink() and TEMPORARY.match(p.name) \
                and not set(p.relative_to(root).parts[:-1]) & set(skip):
            p.unlink(missing_ok=True)
            gone.append(p)
    return gone


def fsync_dir(directory: str | Path) -> None:
    """fsync a directory: the entries created or renamed in it (not only their data) survive a power loss."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str | Path) -> None:
    """fsync every file under ``root``, then every directory, deepest first: a copied tree is on disk before a
    rename makes it the published one (a rename can reach the disk before the data it points to)."""
    root = Path(root)
    dirs = [root]
    for p in sorted(root.rglob("*")):
        if p.is_dir() and not p.is_symlink():
            dirs.append(p)
        elif p.is_file() and not p.is_symlink():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    for d in sorted(dirs, key=lambda d: len(d.parts), reverse=True):
        fsync_dir(d)


def write_text_atomic(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text))


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    """Atomic safetensors save; shared or non-contiguous tensors are cloned to plain ones."""
    plain = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}  # a GPU model's too
    data = save(plain, metadata=metadata)  # bytes first, so write errors are ordinary OSErrors
    return atomic_write(path, lambda p: p.write_bytes(data))


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such weights file; the checkpoint is incomplete — re-run the phase that "
                              f"wrote it, or point at a complete checkpoint directory (with {path.name} beside its "
                              f"{CONFIG_FILE})")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc}); it may be truncated or "
                              f"corrupt — re-run the phase that wrote it") from exc


def weights_sha256(directory: str | Path) -> str | None:
    """The first 16 hex digits of the SHA-256 of a checkpoint's weights file (as EvoMerge names its models), or None
    when it has none: what a later phase's ``meta`` records of its input (``source_weights_sha256``), since the path
    it read from is overwritten by the next publish."""
    import hashlib

    path = Path(directory) / WEIGHTS_FILE
    if not path.is_file():
        return None
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def source_fields(src: str | Path) -> dict:
    """A phase's ``meta`` record of the checkpoint it read: the directory and its weights' digest (which model that
    was, when the directory has since been republished)."""
    return {"source_checkpoint": str(Path(src).absolute()), "source_weights_sha256": weights_sha256(src)}


def save_checkpoint(directory: str | Path, state_dict: dict[str, torch.Tensor], *, architecture: str,
                    model_config: dict, tokenizer: dict | None = None, meta: dict | None = None) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_FILE).unlink(missing_ok=True)  # incomplete until the config is back
    save_tensors(directory / WEIGHTS_FILE, state_dict)
    write_json_atomic(directory / CONFIG_FILE, {"format": CHECKPOINT_FORMAT, "architecture": architecture,
                                                "model": model_config, "tokenizer": tokenizer or {},
                                                "meta": {**(meta or {}), "provenance": checkpoint_provenance()}})
    return directory


def pipeline_copy_hint(missing: str | Path, holds: str = CONFIG_FILE) -> str:
    """Where a pipeline run holds the checkpoint a standalone phase looked for and did not find, as advice ('' when
    none does). The pipeline keeps its models under ``<outputs>/pipeline/<run_name>/artifacts/``, the standalone
    phases under ``<outputs>/artifacts/``: after ``phase=pipeline``, ``phase=bitnet`` alone finds nothing until it
    is pointed there. ``holds``: the file (a glob) that marks what was looked for."""
    parts = Path(missing).absolute().parts
    if "artifacts" not in parts:
        return ""
    i = len(parts) - 1 - parts[::-1].index("artifacts")
    outputs, rel = Path(*parts[:i]), Path(*parts[i + 1:])
    found = sorted({d.parent for d in (outputs / "pipeline").glob(f"*/artifacts/{rel}/{holds}")})
    if not found:
        return ""
    runs = [d.relative_to(outputs / "pipeline").parts[0] for d in found]
    return (f"; the pipeline run {runs[0]!r} has one: add paths.artifacts={outputs / 'pipeline' / runs[0] / 'artifacts'}"
            + (f" (other pipeline runs with one: {', '.join(runs[1:])})" if runs[1:] else ""))


OLD_SUFFIX = ".old"   # where ``artifacts.publish`` keeps the previous checkpoint between its two renames


def recover_published(directory: str | Path) -> bool:
    """Rename ``{directory}.old`` back to ``directory`` when ``directory`` is missing and ``.old`` holds a complete
    checkpoint: what a publish killed (SIGKILL, power loss) between moving the published checkpoint aside and
    renaming the new copy in leaves; its own cleanup, which does the same, never ran. True when it did."""
    directory = Path(directory)
    if not directory.name:   # "/", "": nothing is published there
        return False
    old = directory.with_name(directory.name + OLD_SUFFIX)
    if directory.exists() or not old.is_dir() or not is_complete_checkpoint(old):
        return False
    try:
        old.rename(directory)
        fsync_dir(directory.parent)
    except OSError:   # a read-only directory, or another process renamed it first
        return False
    return True


def read_json(path: str | Path, what: str = "JSON"):
    """``json.loads`` of a UTF-8 file; a ValueError saying why it cannot be read: malformed (``what``, e.g.
    "results JSON"), not UTF-8, or nested too deeply for the parser (RecursionError). Callers wrap the reason in their
    own error naming the file and what to do."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"malformed {what} ({exc})") from None
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def read_checkpoint_config(directory: str | Path) -> dict:
    directory = Path(directory)
    recover_published(directory)
    cfg_path = directory / CONFIG_FILE
    if not directory.exists():
        raise CheckpointError(f"{directory}: checkpoint not found — run the phase that produces it first, "
                              f"or pass the right path{pipeline_copy_hint(directory)}")
    if directory.is_file():
        raise CheckpointError(f"{directory}: a file; a checkpoint is the directory that holds {CONFIG_FILE} and "
                              f"{WEIGHTS_FILE} (e.g. {directory.parent})")
    if not cfg_path.is_file():
        raise CheckpointError(f"{directory}: incomplete checkpoint (no {CONFIG_FILE}); the run that wrote it "
                              f"did not finish, or this is not a checkpoint directory — re-run it or point at another "
                              f"checkpoint")
    try:
        cfg = read_json(cfg_path)
    except ValueError as exc:
        raise CheckpointError(f"{cfg_path}: {exc}; the checkpoint is corrupt — re-run the phase "
                              f"that wrote it, or point at a complete checkpoint directory") from None
    if not isinstance(cfg, dict) or cfg.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{cfg_path}: not an Agent Forge checkpoint (format "
                              f"{cfg.get('format') if isinstance(cfg, dict) else None!r}, "
                              f"expected {CHECKPOINT_FORMAT!r})")
    return cfg


def load_checkpoint(directory: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Return (state_dict, config dict) of a checkpoint directory, with clear errors. Every floating tensor must be
    finite (``check_finite``): NaN/Inf weights are refused here, before any phase evaluates or merges them."""
    cfg = read_checkpoint_config(directory)
    path = Path(directory) / WEIGHTS_FILE
    state = load_tensors(path)
    check_finite(path, state)
    return state, cfg


UNBOUNDED = (".act_clip",)   # a BitLinear's activation clip: +inf means "not calibrated", a legitimate value


def check_finite(path: str | Path, state: dict[str, torch.Tensor]) -> None:
    """CheckpointError naming ``path`` and the first floating tensor holding a NaN or Inf (one pass, no copies); a
    tensor named ``*.act_clip`` (``UNBOUNDED``) may be +inf."""
    for k, t in state.items():
        if not t.is_floating_point():
            continue
        ok = torch.isfinite(t) | (t == math.inf) if k.endswith(UNBOUNDED) else torch.isfinite(t)
        if not bool(ok.all()):
            raise CheckpointError(f"{path}: tensor {k} holds NaN or Inf values; the weights are damaged (a diverged "
                                  f"run or a corrupt file) — re-run the phase that wrote it")


def check_dtypes(path: str | Path, state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """CheckpointError naming ``path`` and the first tensor whose kind (floating or not) differs from the model's:
    ``load_state_dict`` would cast an int or bool tensor into a float parameter silently."""
    for k, want in expected.items():
        got = state.get(k)
        if got is not None and got.is_floating_point() != want.is_floating_point():
            raise CheckpointError(f"{path}: tensor {k} is {str(got.dtype).removeprefix('torch.')}, the model's is "
                                  f"{str(want.dtype).removeprefix('torch.')}; the file is not a checkpoint of "
                                  f"this model — re-run the phase that wrote it")


def is_complete_checkpoint(directory: str | Path) -> bool:
    try:
        read_checkpoint_config(directory)
    except CheckpointError:
        return False
    return (Path(directory) / WEIGHTS_FILE).is_file()
