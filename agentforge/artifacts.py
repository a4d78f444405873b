"""Saving and loading the project's models as checkpoints (safetensors + JSON; see ``io.py``).

``load_model`` checks the architecture tag and that every tensor matches the model the config
describes, so a checkpoint of another architecture or size fails with one line instead of a shape
error deep inside PyTorch.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from agentforge.config import check_model_dict
from agentforge.data.tokenizer import ByteTokenizer
from agentforge.errors import ConfigError
from agentforge.io import (
    CONFIG_FILE,
    OLD_SUFFIX,
    WEIGHTS_FILE,
    CheckpointError,
    check_dtypes,
    fsync_dir,
    fsync_tree,
    load_checkpoint,
    recover_published,
    save_checkpoint,
    write_json_atomic,
)
from agentforge.models import CognateConfig, CognateModel

ARCHITECTURE = "TRM-Titans-MAG"
ARCH_FIELDS = {f for f in CognateConfig.__dataclass_fields__}


def cognate_config_from(model_cfg: dict, vocab_size: int | None = None) -> CognateConfig:
    """The architecture fields of a ``model`` config group (extra keys such as name/role are ignored)."""
    arch = {k: v for k, v in model_cfg.items() if k in ARCH_FIELDS}
    if vocab_size is not None:
        arch["vocab_size"] = vocab_size
    return CognateConfig(**arch)


def save_model(directory: str | Path, model: CognateModel, tokenizer: ByteTokenizer, meta: dict | None = None) -> Path:
    return save_checkpoint(directory, model.state_dict(), architecture=ARCHITECTURE,
                           model_config=model.config.to_dict(), tokenizer=tokenizer.to_dict(), meta=meta)


def load_model(directory: str | Path, map_location: str | torch.device = "cpu",
               expect: CognateConfig | None = None) -> tuple[CognateModel, ByteTokenizer, dict]:
    """(model in eval mode, tokenizer, full checkpoint config dict)."""
    state, cfg = load_checkpoint(directory)
    if cfg.get("architecture") != ARCHITECTURE:
        raise CheckpointError(f"{directory}: architecture {cfg.get('architecture')!r} is not {ARCHITECTURE!r}; "
                              f"this phase needs a Cognate-family checkpoint")
    config = checked_model_config(directory, cfg.get("model"))
    if expect is not None and _shape_key(expect) != _shape_key(config):
        raise CheckpointError(f"{directory}: architecture differs from the other inputs "
                              f"({_shape_key(config)} vs {_shape_key(expect)}); all inputs must share one size")
    check_config_fits(directory, config, state)
    model = CognateModel(config)
    missing, unexpected = _diff_keys(model.state_dict(), state)
    if missing or unexpected:
        raise CheckpointError(f"{directory}: weights do not match the config (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]})")
    for k, v in model.state_dict().items():
        if state[k].shape != v.shape:
            raise CheckpointError(f"{directory}: tensor {k} has shape {tuple(state[k].shape)}, the config "
                                  f"implies {tuple(v.shape)}")
    check_dtypes(Path(directory) / WEIGHTS_FILE, state, model.state_dict())
    tokenizer = checked_tokenizer(directory, cfg)
    model.load_state_dict(state)
    model.to(map_location).eval()
    return model, tokenizer, cfg


def checked_model_config(directory: str | Path, model: dict | None) -> CognateConfig:
    """The ``CognateConfig`` of a checkpoint's ``config.json`` "model" entry, its values checked by the config rules
    first (``config.check_model_dict``): a bad one is a ``CheckpointError`` naming the file and the key, never a
    traceback from the model's constructor or, worse, a model built from impossible values (a negative window)."""
    try:
        check_model_dict(model)
        return CognateConfig.from_dict(model)
    except ConfigError as exc:
        raise CheckpointError(f"{directory}/config.json: {exc}; the checkpoint's config was edited or is not "
                              f"Agent Forge's: re-export the model") from None
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{directory}/config.json: the \"model\" entry is not a Cognate config ({exc}); "
                              f"re-export the model") from None


# the config keys that size the model, each with a tensor whose shape holds it: (tensor, its shape in config keys)
SIZE_TENSORS = (("embed.weight", ("vocab_size", "d_model")), ("blocks.0.mlp.gate.weight", ("ffn_hidden", "d_model")),
                ("memory.keys", ("ltm_slots", "ltm_key_dim")))
_BLOCK = re.compile(r"blocks\.(\d+)\.")


def check_config_fits(directory: str | Path, config: CognateConfig, state: dict[str, torch.Tensor],
                      prefix: str = "") -> None:
    """Before the model is built: the config's sizes (``model.n_layers``, ``vocab_size``, ``d_model``,
    ``ffn_hidden``, ``ltm_slots``, ``ltm_key_dim``) must be those of the tensors in the file, so a config.json edited
    to 10^12 layers is one ``CheckpointError`` naming the key, not a model that exhausts memory being built. A
    quantized layer (``NAME.codes_packed``, 4 or 5 codes a byte) bounds its weight's size instead. ``prefix``: the
    model's key prefix in the file (``base.`` for a surgery-wrapped one)."""
    where = f"{directory}/{CONFIG_FILE}"
    blocks = {int(m.group(1)) for k in state if k.startswith(prefix) and (m := _BLOCK.match(k[len(prefix):]))}
    n = max(blocks) + 1 if blocks else 0
    if config.n_layers != n:
        raise CheckpointError(f"{where}: model.n_layers is {config.n_layers} but {WEIGHTS_FILE} holds {n} blocks; "
                              f"the config does not describe these weights — re-export the model")
    for name, keys in SIZE_TENSORS:
        want = tuple(getattr(config, k) for k in keys)
        t = state.get(prefix + name)
        if t is not None:
            got = tuple(t.shape)
            bad = next((i for i, w in enumerate(want) if len(got) != len(want) or got[i] != w), None)
            if bad is not None:
                raise CheckpointError(f"{where}: model.{keys[bad]} is {want[bad]} but {WEIGHTS_FILE}'s {prefix}{name} "
                                      f"has shape {got}; the config does not describe these weights — re-export the "
                                      f"model")
            continue
        codes = state.get(prefix + name.removesuffix("weight") + "codes_packed")
        if codes is not None and want[0] * want[1] > 5 * codes.numel():
            raise CheckpointError(f"{where}: model.{keys[0]} is {want[0]}, more than {WEIGHTS_FILE}'s "
                                  f"{prefix}{name.removesuffix('weight')}codes_packed holds; the config does not "
                                  f"describe these weights — re-export the model")


def checked_tokenizer(directory: str | Path, cfg: dict) -> ByteTokenizer:
    """The checkpoint's tokenizer (``ByteTokenizer.from_dict``), a bad entry a ``CheckpointError`` naming the file."""
    try:
        return ByteTokenizer.from_dict(cfg.get("tokenizer"))
    except ValueError as exc:
        raise CheckpointError(f"{directory}/config.json: tokenizer: {exc}; re-export the model") from None


def _shape_key(c: CognateConfig) -> dict:
    return {k: getattr(c, k) for k in ("vocab_size", "d_model", "n_layers", "n_heads", "ffn_hidden",
                                       "ltm_slots", "ltm_key_dim")}


def _diff_keys(expected: dict, got: dict) -> tuple[list[str], list[str]]:
    return sorted(set(expected) - set(got)), sorted(set(got) - set(expected))


_ON_PUBLISH: list[Callable[[Path], None]] = []


@contextlib.contextmanager
def on_publish(callback: Callable[[Path], None]):
    """Within the block, ``callback(dst)`` runs just before a ``publish`` or ``publish_json`` replaces what is at
    ``dst``: the pipeline retires the report that describes the old outputs there, at the moment they change (a
    step that fails before publishing leaves the report, still true, in place)."""
    _ON_PUBLISH.append(callback)
    try:
        yield
    finally:
        _ON_PUBLISH.remove(callback)


def _announce(dst: Path) -> None:
    for callback in list(_ON_PUBLISH):
        callback(Path(dst))


def publish_json(dst: Path, obj) -> Path:
    """``write_json_atomic`` of a published result file (an eval's ``{stage}_results.json``), announced to
    ``on_publish`` first like a published checkpoint."""
    _announce(dst)
    return write_json_atomic(dst, obj)


def publish(src: Path, dst: Path) -> None:
    """Copy a finished checkpoint dir to the artifacts location, replacing the old one atomically: the copy
    ``{dst}.tmp`` is written and fsynced (every file, then its directories), the old ``dst`` renamed to
    ``{dst}.old``, the copy renamed to ``dst``, and the parent directory fsynced. On any failure (a full disk, a
    read-only directory, an interrupt) the partial copy is removed and the previous ``dst``, if any, is left in
    place; a failed copy is an ``OSError`` with its errno and file (``shutil.copytree`` raises ``shutil.Error``, a
    list of every file it could not copy), which ``main`` reports in one line. A process killed between the two
    renames leaves the previous checkpoint at ``{dst}.old`` and no ``dst``: ``io.recover_published`` renames it
    back, here first and wherever a checkpoint is read."""
    dst = Path(dst)
    tmp = dst.with_name(dst.name + ".tmp")
    old = dst.with_name(dst.name + OLD_SUFFIX)
    recover_published(dst)
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp)
        fsync_tree(tmp)
        _announce(dst)
        if dst.exists():
            shutil.rmtree(old, ignore_errors=True)
            dst.rename(old)
        tmp.rename(dst)
        fsync_dir(dst.parent)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not dst.exists():
            old.rename(dst)   # the previous model stays published
        if isinstance(exc, shutil.Error):
            raise _copy_error(exc, dst) from None
        if isinstance(exc, OSError) and exc.errno:   # named by the directory being published, not its .tmp
            raise OSError(exc.errno, os.strerror(exc.errno), str(dst)) from None
        raise
    shutil.rmtree(old, ignore_errors=True)


def _copy_error(exc: shutil.Error, dst: Path) -> OSError:
    """``shutil.Error``'s first failed file as an ``OSError`` (errno read from its message; EIO when it has none)."""
    failures = exc.args[0] if exc.args and isinstance(exc.args[0], list) else []
    why = str(failures[0][2]) if failures else str(exc)
    found = re.search(r"\[Errno (\d+)\]", why)
    code = int(found.group(1)) if found else errno.EIO
    return OSError(code, os.strerror(code), str(dst))


# Loaders by the ``architecture`` tag of config.json: "module:function", each (directory) -> (model, tokenizer, cfg).
# Phases that write another kind of checkpoint (e.g. BitNet's packed ternary one) register theirs here.
LOADERS: dict[str, str] = {ARCHITECTURE: "agentforge.artifacts:load_model",
                           "TRM-Titans-MAG-bitnet1.58": "agentforge.quant.checkpoint:load_packed",
                           "Cognate-Recursive": "agentforge.evals.checkpoints:load_recursive"}


def load_any(directory: str | Path, map_location: str | torch.device = "cpu", choose_kernel: bool = False):
    """Load any checkpoint this project writes, dispatching on its architecture tag. ``choose_kernel`` goes to
    the loaders that take it (the packed BitNet one, ``quant.checkpoint.load_packed``): False (the default) keeps
    the default kernels, so what the model computes never depends on a timing; True chooses them by measurement
    (for speed figures only: the kernels agree only to float rounding)."""
    import importlib
    import inspect

    from agentforge.io import read_checkpoint_config

    arch = read_checkpoint_config(directory).get("architecture")
    if not isinstance(arch, str) or arch not in LOADERS:
        raise CheckpointError(f"{directory}: unknown architecture {arch!r}; known: {sorted(LOADERS)}")
    module, fn = LOADERS[arch].split(":")
    loader = getattr(importlib.import_module(module), fn)
    kw = {"choose_kernel": choose_kernel} if "choose_kernel" in inspect.signature(loader).parameters else {}
    return loader(directory, map_location=map_location, **kw)
