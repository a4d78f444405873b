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
  i < n_layers, all finite), counts the parameters from them and refuses (``params``) a count more than
  ``trust.max_param_ratio`` times away from the baseline architecture's at that size; the scaling fit's
  x-axis is that reference count (``reference_params``), never the candidate's;
* checks the logits' shapes (``forged`` when wrong), their finiteness (``non_finite``) and causality
  on probe pairs — a held-out row and a copy whose tokens after a random cut are replaced; the logits
  at positions <= cut must agree (``non_causal``);
* computes the mean cross-entropy of the last-position logits against the withheld tokens itself and
  rejects a loss below ``loss_floor`` as ``forged`` (no honest model of these tasks gets there).

Two held-out sets go out in one request. The *selection* set (``inputs``/``targets``) is what the score
OpenEvolve maximizes is computed from, so the winner of a search is chosen on it and its figures are
biased upwards for that winner. The *test* set (``test_inputs``/``test_targets``, ``trust.test_rows``
rows) is drawn the same way from a differently salted seed and is the report: it plays no part in
selection. The selection set holds ``val``-split examples of the synthetic tasks, the test set ``test``-split ones
(``synthetic.split_of``: the splits are disjoint by content from each other and from every training draw, whatever
the seed), with the same task mix; the test set also drops any row equal to a selection or child-validation row
(``make_test_rows``). The child gets the two sets' rows concatenated and shuffled with
a secret permutation (``sent``; ``order`` stays here), so it cannot tell which row counts where.
"""
from __future__ import annotations

import hashlib
import os
import random
import re
import secrets
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from torch import nn

from agentforge.scaling.failures import CandidateFailure
from agentforge.scaling.uncertainty import training_seeds

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


def heldout_seed(settings: dict, salt: str, split: str = "selection") -> int:
    """The seed of a held-out set: the selection set's as it always was, the test set's salted apart."""
    tag = f"{salt}:{settings['seed']}" if split == "selection" else f"{salt}:{split}:{settings['seed']}"
    return int.from_bytes(hashlib.sha256(tag.encode()).digest()[:4], "big")


def heldout_stream(settings: dict, seed: int, n_rows: int, split: str = "val") -> torch.Tensor:
    """The first ``n_rows`` rows [n_rows, T+1] of one stream of ``split`` examples for this seed (the datamodule's
    sampler: the mix's tasks uniformly, BOS/EOS, ``pack``: consecutive cuts, so a document runs on into the next
    row). The selection and test sets take every other row of it (``make_heldout``, ``make_test_rows``) and
    score one withheld token a row. The Cognate-side held-out rows are packed so that no document spans two rows
    (``datamodule.heldout_rows``); this stream is not, because its two sets of 512 rows would need more distinct
    problems than a split holds (~317 arithmetic problems in val)."""
    from agentforge.data import formats, synthetic
    from agentforge.data.datamodule import normalize_mix, pack
    from agentforge.data.tokenizer import ByteTokenizer

    seq_len = int(settings["train"]["seq_len"])
    mix = normalize_mix({t: 1.0 for t in settings["mix"]})
    tasks, probs = list(mix), list(mix.values())
    rng, texts, total, need = random.Random(seed * 104729), [], 0, (n_rows + 2) * (seq_len + 1)
    while total < need:
        task = rng.choices(tasks, probs)[0]
        rec = synthetic.GENERATORS[task](seed, split, rng.randrange(10**9))
        texts.append(formats.render(rec, formats.TASK_FORMAT[task]))
        total += len(texts[-1].encode("utf-8")) + 2
    return pack(texts, ByteTokenizer(), seq_len)[:n_rows]


def child_val_rows(settings: dict, seed: int) -> torch.Tensor:
    """The validation rows a training child at ``seed`` builds for its val curve (``child.child_datamodule``:
    ``heldout_rows``, no document spanning two rows), for the test set's overlap check."""
    from agentforge.scaling.child import child_datamodule

    return child_datamodule(settings, seed).val_rows_tensor()


def _row_keys(rows: torch.Tensor) -> list[bytes]:
    return [r.numpy().tobytes() for r in rows.long()]


def make_test_rows(settings: dict, salt: str, selection_rows: int) -> tuple[torch.Tensor, int]:
    """The test set's rows [M, T+1] (M = ``trust.test_rows``) and how many drawn rows were dropped for
    equalling a selection or child-validation row. Drawn like the selection set (every other row of a stream, the
    same sampler and mix) from ``heldout_seed(.., "test")``, from the synthetic tasks' ``test`` split, which is
    disjoint by content from the ``val`` split of the selection stream (``selection_rows`` rows of ``heldout_seed``)
    and of the child's validation rows, and from every training draw (``synthetic.split_of``). Until 2026-11-27 it
    was a ``val`` stream less every example whose problem the selection stream held: the val split holds ~317
    arithmetic problems and the selection stream used 145, so the test rows came out with another task mix
    (arithmetic in 27 % of them against 50 %, no multiplication), an audit found. A row equal to one of theirs (a
    short row of a template's words) is still dropped."""
    m, seq_len = int(settings["trust"]["test_rows"]), int(settings["train"]["seq_len"])
    seen_rows = heldout_stream(settings, heldout_seed(settings, salt), selection_rows)
    child_rows = [child_val_rows(settings, seed) for seed in training_seeds(settings)]   # at every training seed
    seen = set(_row_keys(torch.cat([seen_rows, *child_rows])[:, :-1]))
    seed, draw = heldout_seed(settings, salt, "test"), 2 * m + 8
    for _ in range(8):  # drops are rare: a longer draw of the same stream replaces them
        rows = heldout_stream(settings, seed, draw, split="test")
        rows = rows[0::2]
        keep = [i for i, k in enumerate(_row_keys(rows[:, :-1])) if k not in seen]
        if len(keep) >= m:
            return rows[keep[:m]].contiguous(), keep[m - 1] + 1 - m
        draw *= 2
    raise ValueError(f"could not draw {m} test rows of {seq_len} tokens disjoint from the selection set")


def make_heldout(settings: dict, salt: str, spot_key: str = "") -> dict[str, torch.Tensor]:
    """``inputs`` [N, T], ``targets`` [N] (withheld), ``probe`` [2P, T] and ``cuts`` [P] for the checks; with
    ``trust.test_rows`` > 0 also the test set (``test_inputs`` [M, T], ``test_targets`` [M], ``test_dropped``),
    ``sent`` [N + M, T] (both sets' rows in a secret order: what the child gets) and that ``order``; ``spot``:
    ``trust.spot_rows`` secret indices into the rows sent (``spot_count``: every row by default), for the
    re-scoring's spot check, in an order drawn anew for every ``spot_key`` (the evaluator passes the code's hash: no fixed set a search could learn to spare)."""
    trust, seq_len = settings["trust"], int(settings["train"]["seq_len"])
    n, p = int(trust["heldout_rows"]), int(trust["probe_rows"])
    seed = heldout_seed(settings, salt)
    # rows are consecutive cuts of one text stream: keep every other one, so the text right after a
    # withheld token (the next row's start) is never sent either
    rows = heldout_stream(settings, seed, 2 * (n + p)).long()[0::2]
    gen = torch.Generator().manual_seed(seed)
    base = rows[n:, :-1]
    cuts = torch.randint(0, seq_len - 1, (p,), generator=gen)
    other = base.clone()
    for i, c in enumerate(cuts.tolist()):
        other[i, c + 1:] = torch.randint(0, 256, (seq_len - c - 1,), generator=gen)
    out = {"inputs": rows[:n, :-1].contiguous(), "targets": rows[:n, -1].contiguous(),
           "probe": torch.cat([base, other]).contiguous(), "cuts": cuts}
    if int(trust.get("test_rows") or 0) > 0:
        test, dropped = make_test_rows(settings, salt, 2 * (n + p))
        out.update(test_inputs=test[:, :-1].contiguous(), test_targets=test[:, -1].contiguous(),
                   test_dropped=torch.tensor(dropped))
        both = torch.cat([out["inputs"], out["test_inputs"]])
        order = torch.randperm(len(both), generator=torch.Generator().manual_seed(heldout_seed(settings, salt,
                                                                                               "order")))
        out.update(sent=both[order].contiguous(), order=order)
    # the rows the re-scoring also computes alone (``rescore``), in a secret order: every row by default
    spot = torch.Generator().manual_seed(heldout_seed(settings, salt, f"spot:{spot_key}"))
    n_sent = len(sent_inputs(out))
    out["spot"] = torch.randperm(n_sent, generator=spot)[:spot_count(trust.get("spot_rows"), n_sent)]
    return out


def spot_count(spot_rows, n_sent: int) -> int:
    """How many of the ``n_sent`` rows the spot check computes alone: all of them for ``"all"`` (the default),
    else ``spot_rows`` of them (at most ``n_sent``; 0 or None: none). Checking every row leaves a model that feeds on
    other rows for a fraction f of them no way through; a sample of k rows lets it through with probability
    (1 − f)^k, and a search that keeps editing draws new secret rows each time, so it gets one through in the end."""
    if spot_rows == "all":
        return n_sent
    return min(int(spot_rows or 0), n_sent)


def sent_inputs(heldout: dict[str, torch.Tensor]) -> torch.Tensor:
    """The rows the child gets: selection and test rows shuffled together (the selection rows alone when
    there is no test set)."""
    return heldout["sent"] if "sent" in heldout else heldout["inputs"]


def probe_bases(heldout: dict[str, torch.Tensor]) -> torch.Tensor:
    """The probe pairs' first halves (held-out text, never scored): the only rows the child answers."""
    return heldout["probe"][: len(heldout["cuts"])].clone()  # its own storage: safetensors refuses shared ones


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


SAFETENSORS_HEADER_MAX = 1 << 20   # bytes of a returned file's JSON header: ~10k tensors; the models here have < 200


def _load(files: dict[str, bytes], name: str) -> dict[str, torch.Tensor]:
    """A safetensors file the sandbox returned; ``forged`` when it is not one or its header is over
    ``SAFETENSORS_HEADER_MAX`` (a red team's 70 MiB file declaring a million empty tensors cost 1.4 GB and 23 s to
    load and count before this check)."""
    if name not in files:
        raise CandidateFailure("crash", f"the sandbox returned no {name}")
    head = int.from_bytes(files[name][:8], "little") if len(files[name]) >= 8 else None
    if head is None or head > SAFETENSORS_HEADER_MAX:
        raise CandidateFailure("forged", f"{name} is not a valid safetensors file (its header is "
                                         f"{'missing' if head is None else f'{head} bytes'}; at most "
                                         f"{SAFETENSORS_HEADER_MAX} are read)")
    try:
        return load_safetensors(files[name])
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise CandidateFailure("forged", f"{name} is not a valid safetensors file ({exc})") from None


def _baseline_attention() -> type[nn.Module]:
    """The shipped baseline variant's Attention class (project code, not a candidate's)."""
    import importlib.util

    from agentforge.scaling.variants import variant_path

    spec = importlib.util.spec_from_file_location("scaling_reference_baseline", variant_path("baseline"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Attention


@lru_cache(maxsize=64)
def _reference(d_model: int, n_layers: int, n_heads: int) -> tuple[int, int]:
    from agentforge.data.tokenizer import RESERVED_VOCAB
    from agentforge.scaling.model import ScalingLM

    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = ScalingLM(RESERVED_VOCAB, d_model, n_layers, n_heads, _baseline_attention())
    total = sum(t.numel() for t in model.state_dict().values())
    return total, total - model.embed.weight.numel()


def reference_params(size: dict) -> tuple[int, int]:
    """(total, non-embedding) parameters of the *baseline* architecture at this size: the scaling fit's x-axis.

    Why not the candidate's own count: the fit is loss against ln(params), so whoever sets the counts sets the
    slope. A candidate that adds never-used tensors to its small sizes squeezes their ln(params) together and
    makes the slope as steep as it likes with the baseline's losses (a red team scored 15985 against the
    baseline's 0.71 that way). The reference depends only on the size config, so nothing a candidate returns
    moves the x-axis; what it returns is bounded by ``check_param_ratio`` instead."""
    return _reference(int(size["d_model"]), int(size["n_layers"]), int(size["n_heads"]))


def check_param_ratio(size: dict, returned: int, max_ratio: float) -> None:
    """Refuse (``params``) returned weights whose total count is more than ``max_ratio`` times the reference's
    or less than the reference over ``max_ratio``. Why both ways: the fit credits every size with the
    reference count, so a candidate that spent more parameters on its large sizes and fewer on its small
    ones than the baseline would gain slope from capacity, not from its idea; the ratio bounds that."""
    ref, name = reference_params(size)[0], size["name"]
    ratio = max(returned / ref, ref / max(returned, 1))
    if ratio > max_ratio:
        raise CandidateFailure("params", f"size {name}: the returned weights hold {returned:,} parameters, "
                                         f"{ratio:.3g}x away from the {ref:,} of the baseline architecture at this "
                                         f"size; phase.trust.max_param_ratio allows at most {max_ratio:g}x")


def fp32_equivalent(t: torch.Tensor) -> int:
    """A tensor's parameters counted in fp32 equivalents, bytes / 4: an fp32 tensor counts its elements, a bf16
    one half of them, a float64 one twice. Why bytes: a red team stored two fp32 parameters in the bits of each
    float64 element (its own state-dict hooks packed and unpacked them), so an element count of 1.95x the reference
    held 3.1x its parameters and bought a significant test gain; counted by bytes, no dtype holds more than it
    is charged for. (Lower-precision values reinterpreted from fp32 bits inside the forward pass are counted by
    their bytes too: the bound is on the bytes of weights, not on how finely they are used.) Rounded up per
    tensor: rounded down, a one-element fp16 tensor counted 0, and a red team hid 50 000 such scalars under one
    layer's attention (2.3x the size's whole model) at no cost."""
    return -(-t.numel() * t.element_size() // 4)


def count_params(size: dict, weights: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(total, non-embedding) parameters of the returned weights in fp32 equivalents (``fp32_equivalent``),
    after checking their structure."""
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
        if not torch.isfinite(t.float() if t.element_size() == 1 else t).all():   # float8: no isfinite of its own
            raise CandidateFailure("non_finite", f"size {name}: weight {key} holds NaN/Inf")
    missing = sorted(set(want) - set(weights))
    if missing:
        raise CandidateFailure("forged", f"size {name}: weights lack {missing[:3]}")
    total = sum(fp32_equivalent(t) for t in weights.values())
    return total, total - fp32_equivalent(weights["embed.weight"])


def score_size(size: dict, files: dict[str, bytes], heldout: dict[str, torch.Tensor], loss_floor: float,
               max_param_ratio: float = 2.0) -> dict:
    """The trusted figures of one size: ``params``/``non_embedding_params`` = the reference architecture's
    counts (``reference_params``: the fit's x-axis), the weights' own counts as ``params_returned`` /
    ``non_embedding_params_returned`` (shown, bounded by ``max_param_ratio``), ``loss`` from its logits on the
    selection rows and, with a test set, ``test_loss`` on the test rows and each test row's loss
    (``test_row_losses``) (the logits come in the shuffled order the rows went out in; ``order`` puts them
    back). The evaluator passes the logits ``rescore`` recomputed from the weights, not the child's."""
    name = size["name"]
    returned, returned_ne = count_params(size, _load(files, f"weights_{name}.safetensors"))
    check_param_ratio(size, returned, max_param_ratio)
    params, non_embedding = reference_params(size)
    logits = _load(files, f"logits_{name}.safetensors")
    sent = sent_inputs(heldout)
    n, t = heldout["inputs"].shape
    vocab = expected_shapes(size)["embed.weight"][0]
    shapes = {"last": (sent.shape[0], vocab), "probe": (heldout["probe"].shape[0], t, vocab)}
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
    last = logits["last"].double()
    if "order" in heldout:  # row i of what went out is row order[i] of selection + test
        last = torch.empty_like(last).index_copy_(0, heldout["order"], last)
    loss = float(F.cross_entropy(last[:n], heldout["targets"]))
    if loss < loss_floor:
        raise CandidateFailure("forged", f"size {name}: held-out loss {loss:.4g} is below the floor {loss_floor} "
                                         f"that no honest model of these tasks reaches")
    out = {"name": name, "d_model": int(size["d_model"]), "n_layers": int(size["n_layers"]),
           "n_heads": int(size["n_heads"]), "params": params, "non_embedding_params": non_embedding,
           "params_returned": returned, "non_embedding_params_returned": returned_ne, "loss": loss}
    if "test_targets" in heldout:
        out["test_loss"] = float(F.cross_entropy(last[n:], heldout["test_targets"]))
        # per row, in the test set's order (the same rows for every candidate): the bootstrap's unit
        out["test_row_losses"] = F.cross_entropy(last[n:], heldout["test_targets"], reduction="none").tolist()
        if out["test_loss"] < loss_floor:  # no figure in the message: it may reach OpenEvolve's prompt
            raise CandidateFailure("forged", f"size {name}: the loss on part of the held-out rows is below the "
                                             f"floor {loss_floor} that no honest model of these tasks reaches")
    return out
