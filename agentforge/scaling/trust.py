"""The trusted side of a scaling evaluation: the held-out set going in, the score from what comes back.

The sandboxed child (``child.py``) trains with the candidate's code in its own process, so nothing it
says about itself counts. It is given held-out rows of T tokens whose next token (T+1) stays here; it
returns, per size, its trained weights and the logits at the last position of every row. This module
then, in the evaluator's own process:

* draws the held-out rows from the synthetic tasks with a seed mixed with a secret salt that the
  sandbox cannot read, so the child can neither regenerate them nor see the targets, and sends only
  every other row of the text stream, so the text that follows a withheld token is not sent either;
* checks the weights against the architecture the size prescribes (every tensor outside ``.attn.``
  present with exactly the expected shape, attention tensors only under ``blocks.<i>.attn.`` for
  i < n_layers, all finite) and counts the parameters from them;
* checks the logits' shapes (``forged`` when wrong), their finiteness (``non_finite``) and causality
  on probe pairs — a held-out row and a copy whose tokens after a random cut are replaced; the logits
  at positions <= cut must agree (``non_causal``);
* computes the mean cross-entropy of the last-position logits against the withheld tokens itself and
  rejects a loss below ``loss_floor`` as ``forged`` (no honest model of these tasks gets there).
"""
from __future__ import annotations

import hashlib
import os
import re
import secrets
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from torch import nn

from agentforge.scaling.failures import CandidateFailure

KEY_FILE = "heldout.key"
_PROCESS_SALT = secrets.token_hex(16)
CAUSAL_TOL = 1e-4


def heldout_salt(directory: str | Path | None) -> str:
    """The secret mixed into the held-out seed: ``directory/heldout.key`` (made once, mode 0600) so
    results stay comparable and cacheable across runs; without a directory, one per process."""
    if directory is None:
        return _PROCESS_SALT
    path = Path(directory) / KEY_FILE
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(16))
        os.replace(tmp, path)
    return path.read_text().strip()


def heldout_seed(settings: dict, salt: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{salt}:{settings['seed']}".encode()).digest()[:4], "big")


def make_heldout(settings: dict, salt: str) -> dict[str, torch.Tensor]:
    """``inputs`` [N, T], ``targets`` [N] (withheld), ``probe`` [2P, T] and ``cuts`` [P] for the checks."""
    from agentforge.data.build import build_datamodule
    from agentforge.data.tokenizer import ByteTokenizer

    trust, seq_len = settings["trust"], int(settings["train"]["seq_len"])
    n, p = int(trust["heldout_rows"]), int(trust["probe_rows"])
    seed = heldout_seed(settings, salt)
    dm = build_datamodule({"seq_len": seq_len, "batch_size": 1}, ByteTokenizer(),
                          stages=[{"epochs": 1, "mix": dict(settings["mix"])}], seed=seed, steps_per_epoch=1,
                          val_rows=2 * (n + p))
    # rows are consecutive cuts of one text stream: keep every other one, so the text right after a
    # withheld token (the next row's start) is never sent either
    rows = dm.val_rows_tensor().long()[0::2]
    gen = torch.Generator().manual_seed(seed)
    base = rows[n:, :-1]
    cuts = torch.randint(0, seq_len - 1, (p,), generator=gen)
    other = base.clone()
    for i, c in enumerate(cuts.tolist()):
        other[i, c + 1:] = torch.randint(0, 256, (seq_len - c - 1,), generator=gen)
    return {"inputs": rows[:n, :-1].contiguous(), "targets": rows[:n, -1].contiguous(),
            "probe": torch.cat([base, other]).contiguous(), "cuts": cuts}


class _Stub(nn.Module):
    """Stands in for the candidate's attention when we ask which tensors a size must have."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()


def expected_shapes(size: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor of the size's model outside the attention modules, with its shape."""
    from agentforge.data.tokenizer import RESERVED_VOCAB
    from agentforge.scaling.model import ScalingLM

    model = ScalingLM(RESERVED_VOCAB, int(size["d_model"]), int(size["n_layers"]), int(size["n_heads"]), _Stub)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _load(files: dict[str, bytes], name: str) -> dict[str, torch.Tensor]:
    if name not in files:
        raise CandidateFailure("crash", f"the sandbox returned no {name}")
    try:
        return load_safetensors(files[name])
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise CandidateFailure("forged", f"{name} is not a valid safetensors file ({exc})") from None


def count_params(size: dict, weights: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(total, non-embedding) parameters of the returned weights, after checking their structure."""
    want, name = expected_shapes(size), size["name"]
    attn = re.compile(r"blocks\.(\d+)\.attn\.")
    for key, t in weights.items():
        m = attn.match(key)
        if m:
            if int(m.group(1)) >= int(size["n_layers"]):
                raise CandidateFailure("forged", f"size {name}: weights hold {key}, beyond n_layers")
        elif key not in want or tuple(t.shape) != want[key]:
            got = tuple(t.shape)
            raise CandidateFailure("forged", f"size {name}: weight {key} {got} is not in the architecture the "
                                             f"config prescribes ({want.get(key, 'no such tensor')})")
        if not t.is_floating_point():
            raise CandidateFailure("forged", f"size {name}: weight {key} is not a float tensor")
        if not torch.isfinite(t).all():
            raise CandidateFailure("non_finite", f"size {name}: weight {key} holds NaN/Inf")
    missing = sorted(set(want) - set(weights))
    if missing:
        raise CandidateFailure("forged", f"size {name}: weights lack {missing[:3]}")
    total = sum(t.numel() for t in weights.values())
    return total, total - weights["embed.weight"].numel()


def score_size(size: dict, files: dict[str, bytes], heldout: dict[str, torch.Tensor], loss_floor: float) -> dict:
    """The trusted figures of one size: parameter counts from its weights, loss from its logits."""
    name = size["name"]
    params, non_embedding = count_params(size, _load(files, f"weights_{name}.safetensors"))
    logits = _load(files, f"logits_{name}.safetensors")
    n, t = heldout["inputs"].shape
    vocab = expected_shapes(size)["embed.weight"][0]
    shapes = {"last": (n, vocab), "probe": (heldout["probe"].shape[0], t, vocab)}
    for key, shape in shapes.items():
        got = logits.get(key)
        if got is None or tuple(got.shape) != shape or not got.is_floating_point():
            desc = "missing" if got is None else f"{tuple(got.shape)} {got.dtype}"
            raise CandidateFailure("forged", f"size {name}: logits '{key}' are {desc}, expected float {shape}")
        if not torch.isfinite(got).all():
            raise CandidateFailure("non_finite", f"size {name}: logits '{key}' hold NaN/Inf")
    probe, p = logits["probe"].double(), len(heldout["cuts"])
    for i, c in enumerate(heldout["cuts"].tolist()):
        a, b = probe[i, : c + 1], probe[p + i, : c + 1]
        moved = float((a - b).abs().max()) / (float(a.abs().max()) + 1e-6)
        if moved > CAUSAL_TOL:
            raise CandidateFailure("non_causal", f"size {name}: changing tokens after position {c} changed the "
                                                 f"logits at positions <= {c} (relative change {moved:.3g})")
    loss = float(F.cross_entropy(logits["last"].double(), heldout["targets"]))
    if loss < loss_floor:
        raise CandidateFailure("forged", f"size {name}: held-out loss {loss:.4g} is below the floor {loss_floor} "
                                         f"that no honest model of these tasks reaches")
    return {"name": name, "d_model": int(size["d_model"]), "n_layers": int(size["n_layers"]),
            "n_heads": int(size["n_heads"]), "params": params, "non_embedding_params": non_embedding, "loss": loss}
