"""Trusted re-scoring: the logits that are scored are computed from the returned weights, not taken from
the child.

The child (``child.py``) trains and answers the held-out rows inside the candidate's own process, which may
rewrite anything it returns. Its weights were always checked (``trust.count_params``), but its logits were
scored as they came, never tied to those weights: a candidate could return an honest model's weights and
another predictor's logits (a red-team did, with a byte 6-gram model counted from the training text, and
scored 9.69 against the baseline's 0.099). So, after the child, this module (in the evaluator's process):

1. runs ``infer.py`` in a second, inference-only sandbox that does not mount agentforge/: its dir holds the
   candidate file, copies of the two modules ``ScalingLM`` is built from (``scaling/model.py`` and
   ``models/layers.py``, which import only torch), the weights and the rows — no data code, tokenizer or
   training text. It rebuilds every size from its weights with ``load_state_dict(strict=True)`` and
   computes the last-position logits of the rows sent (selection and test rows, shuffled) and the probe
   logits. Those are what ``trust.score_size`` scores;
2. compares the child's own logits with them: log-probabilities more than ``trust.logit_tol`` nats apart
   anywhere → ``forged`` ("the logits the child returned are not those of its weights"). The child is sent
   no held-out row, only the probe rows (``trust.probe_bases``: the pairs' first halves, whose last positions
   it answers, and the pairs), so it cannot fit its weights to the text it is scored on;
3. since the candidate's code still runs in that process and sees every row at once (it could build
   statistics from the held-out rows themselves, within a batch or across calls), runs a third sandbox
   (fresh process, fresh dir: nothing the batch run wrote reaches it) that computes ``trust.spot_rows``
   secret rows, each alone as a batch of one, the first with nothing else seen and the others with only
   the spot rows before them; a row whose log-probabilities alone differ from those it got in the batch by
   more than ``trust.logit_tol`` → ``forged``. The rows reach that sandbox over a pipe, one at a time, each
   sent only after the logits of the one before came back (``_stream``): until 2026-11-28 they lay in a file
   of its dir, so the candidate could read every spot row before answering the first, and a model whose
   predictions depend on the *set* of rows (the token that followed a row's suffix in the other rows: 88 %
   of the 1 024 default rows) answered alike in both runs and scored 2.75 against the baseline's 0.61
   (a red-team's reproducer; ``tests/test_scaling_rescore.py`` holds a small one).

A failure of an inference sandbox reports no output of the candidate's: its stderr is in the work dir's
``rescore.log`` only, since the rows are in plain view there and an error text goes back to the search
(OpenEvolve shows it to the LLM): a red-team's candidate crashed with ~9 held-out and test rows in its message.

Comparing log-probabilities bounds what slips under the tolerance: a scored row's loss moves by at most
``logit_tol`` nats. Failures of the inference runs themselves are the candidate's (its code runs there):
``timeout`` (``trust.infer_timeout_s``), ``memory``, ``crash``; none of them is cached.
"""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import torch
from safetensors.torch import save

from agentforge.sandbox import SandboxLimits, run_sandboxed
from agentforge.scaling import trust
from agentforge.scaling.failures import CandidateFailure

PACKAGE = Path(__file__).resolve().parents[1]        # agentforge/
COPIED = ("scaling/model.py", "models/layers.py")    # what ScalingLM is built from; they import only torch
EMPTY = ("agentforge/__init__.py", "agentforge/models/__init__.py", "agentforge/scaling/__init__.py")


def program_files(code: str) -> dict[str, str]:
    """The inference sandbox's program: the candidate, ``infer.py`` and the model's modules, nothing else."""
    files = {"candidate.py": code, "infer.py": (PACKAGE / "scaling" / "infer.py").read_text()}
    files.update({name: "" for name in EMPTY})
    files.update({f"agentforge/{rel}": (PACKAGE / rel).read_text() for rel in COPIED})
    return files


def logprob_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |log_softmax(a) − log_softmax(b)| over every row (and position) and token, in nats."""
    if a.numel() == 0:
        return 0.0
    return float((torch.log_softmax(a.double(), -1) - torch.log_softmax(b.double(), -1)).abs().max())


def infer(code: str, settings: dict, weights: dict[str, bytes], rows: dict[str, torch.Tensor], mode: str, *,
          limits: SandboxLimits, sandbox: str, log_dir: Path | None) -> dict[str, dict[str, torch.Tensor]]:
    """Run ``infer.py`` (``mode`` "batch" or "spot") on ``rows`` under ``limits`` (the evaluator's, with the wall
    time ``trust.infer_timeout_s``), one sandbox per size holding only that size's weights; {size name: its logits}.
    One sandbox for all sizes let a size's forward read the other sizes' weight files beside its own (an ensemble
    whose extra parameters no count sees: found by reading, in a fifth red-team round)."""
    return {s["name"]: _infer_size(code, settings, s, weights, rows, mode, limits=limits, sandbox=sandbox,
                                   log_dir=log_dir) for s in settings["sizes"]}


def _infer_size(code: str, settings: dict, size: dict, weights: dict[str, bytes], rows: dict[str, torch.Tensor],
                mode: str, *, limits: SandboxLimits, sandbox: str, log_dir: Path | None) -> dict[str, torch.Tensor]:
    """``infer``'s sandbox for one size: the program, ``size``'s weights alone, the rows; its logits."""
    threads = int((settings.get("hardware") or {}).get("threads") or 1)
    request = {"sizes": [size], "vocab": trust.expected_shapes(settings["sizes"][0])["embed.weight"][0],
               "seed": int(settings["seed"]), "threads": threads, "mode": mode, "row_len": int(rows["rows"].shape[1])}
    own = f"weights_{size['name']}.safetensors"
    files = {**program_files(code), own: weights[own]}
    out = f"logits_{size['name']}.safetensors"
    run = dict(limits=limits, mode=sandbox, mount_package=False,
               env={"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})
    if mode == "spot":  # the rows one at a time over a pipe, never in the dir: see the module's docstring
        res, logits = _stream(rows["rows"], request["vocab"], lambda fds: run_sandboxed(
            ["python", "infer.py"], {**files, "request.json": json.dumps({**request, "stream": list(fds)})},
            pass_fds=fds, **run))
    else:
        res = run_sandboxed(["python", "infer.py"], {**files, "request.json": json.dumps(request),
                                                     "rows.safetensors": save(rows)}, outputs=(out,), **run)
        logits = None
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        with open(log_dir / "rescore.log", "a") as f:
            f.write(f"[{res.mode} {mode} {size['name']}] kind={res.kind} rc={res.returncode} {res.wall_s:.1f}s\n"
                    f"{res.stdout}\n{res.stderr}\n")
    what = (f"re-scoring size {size['name']} ({mode} logits from its returned weights, in a sandbox without the "
            "project's code; its output is in the work dir's rescore.log, not shown: the held-out rows are in plain "
            "view there)")
    if res.kind == "timeout":
        raise CandidateFailure("timeout", f"{what}: no result within the {limits.wall_s:g} s limit "
                                          f"(trust.infer_timeout_s)")
    if res.kind == "memory":
        raise CandidateFailure("memory", f"{what}: the {limits.memory_mb} MiB memory limit was exceeded")
    if res.kind != "ok":
        raise CandidateFailure("crash", f"{what} failed (its exit status is in rescore.log: an exit status the program "
                                        f"chooses would carry test-set bits to the search)")
    if mode == "spot":
        if logits is None:
            raise CandidateFailure("crash", f"{what} ended before answering every row it was sent")
        return {"last": logits}
    return trust._load(res.files, out)


def _read_exact(fd: int, n: int) -> bytes | None:
    """``n`` bytes from ``fd``, or None at end of file first."""
    parts, left = [], n
    while left:
        chunk = os.read(fd, left)
        if not chunk:
            return None
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def _stream(rows: torch.Tensor, vocab: int, start) -> tuple:
    """Run ``start(fds)`` (the spot sandbox, given its two pipe ends: rows in, logits out) while a thread sends it
    ``rows`` one at a time, each only after the ``vocab`` float32 logits of the one before came back; (its
    result, the logits [len(rows), vocab], or None when it stopped answering first)."""
    req_r, req_w = os.pipe()
    resp_r, resp_w = os.pipe()
    got: list = [None]

    def feed() -> None:
        out = torch.empty(len(rows), vocab, dtype=torch.float32)
        try:
            for i, row in enumerate(rows.to(torch.int64)):
                os.write(req_w, row.contiguous().numpy().tobytes())
                answer = _read_exact(resp_r, 4 * vocab)
                if answer is None:
                    return
                out[i] = torch.frombuffer(bytearray(answer), dtype=torch.float32)
            got[0] = out
        except OSError:  # EPIPE: the sandbox ended
            return
        finally:
            os.close(req_w)
            os.close(resp_r)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        res = start((req_r, resp_w))
    finally:  # the feeder sees EOF (or EPIPE) once the sandbox and these copies are gone
        os.close(req_r)
        os.close(resp_w)
        feeder.join()
    return res, got[0]


def _checked(name: str, key: str, t: torch.Tensor | None, shape: tuple, whose: str) -> torch.Tensor:
    if t is None or tuple(t.shape) != shape or not t.is_floating_point():
        desc = "missing" if t is None else f"{tuple(t.shape)} {t.dtype}"
        raise CandidateFailure("forged", f"size {name}: {whose} logits '{key}' are {desc}, expected float {shape}")
    if not torch.isfinite(t).all():
        raise CandidateFailure("non_finite", f"size {name}: {whose} logits '{key}' hold NaN/Inf")
    return t


def _require_close(gap: float, tol: float, message: str) -> None:
    """``forged`` with ``message`` (the tolerance appended) when ``gap`` exceeds ``tol``. The gap itself is not in
    the message: the candidate sets it (e.g. its spot-check logits against its batch ones), and a search reads the
    message, so its digits could carry held-out tokens out (an audit sent a row's token through an exit status)."""
    if gap > tol:
        raise CandidateFailure("forged", f"{message} (by more than the tolerance, {tol:g} nats)")


def rescore(code: str, settings: dict, heldout: dict[str, torch.Tensor], files: dict[str, bytes], *,
            limits: SandboxLimits, sandbox: str, log_dir: Path | None = None) -> tuple[dict[str, bytes], dict]:
    """(the files to score — the child's weights with the logits recomputed from them —, what the checks
    found: the largest log-probability gaps, child vs recomputed and alone vs in the batch)."""
    t0, sizes, tol = time.perf_counter(), settings["sizes"], float(settings["trust"]["logit_tol"])
    ratio = float(settings["trust"].get("max_param_ratio") or 2.0)
    for s in sizes:  # the structure and counts first: forged weights are reported as such, not as a failed load
        total, _ = trust.count_params(s, trust._load(files, f"weights_{s['name']}.safetensors"))
        trust.check_param_ratio(s, total, ratio)
    weights = {f"weights_{s['name']}.safetensors": files[f"weights_{s['name']}.safetensors"] for s in sizes}
    sent, probe = trust.sent_inputs(heldout), heldout["probe"]
    run = dict(limits=limits, sandbox=sandbox, log_dir=log_dir)
    batch = infer(code, settings, weights, {"rows": sent, "probe": probe}, "batch", **run)
    child_gap = 0.0
    for s in sizes:
        name, vocab = s["name"], trust.expected_shapes(s)["embed.weight"][0]
        child = trust._load(files, f"logits_{name}.safetensors")
        ours_probe = _checked(name, "probe", batch[name].get("probe"), (*probe.shape, vocab), "the recomputed")
        _checked(name, "last", batch[name].get("last"), (len(sent), vocab), "the recomputed")
        p = len(heldout["cuts"])  # the child answered the probe's first halves only (trust.probe_bases)
        for key, shape, ours in (("last", (p, vocab), ours_probe[:p, -1]), ("probe", (*probe.shape, vocab), ours_probe)):
            gap = logprob_gap(_checked(name, key, child.get(key), shape, "the child's"), ours)
            child_gap = max(child_gap, gap)
            _require_close(gap, tol, f"size {name}: the logits the child returned are not those of its weights: "
                                     f"'{key}' log-probabilities differ from the ones recomputed from the returned "
                                     f"weights")
    spot, spot_gap = heldout.get("spot", torch.zeros(0, dtype=torch.long)), 0.0
    if len(spot):
        alone = infer(code, settings, weights, {"rows": sent[spot].contiguous()}, "spot", **run)
        for s in sizes:
            name = s["name"]
            got = _checked(name, "last", alone[name].get("last"), (len(spot), batch[name]["last"].shape[1]),
                           "the spot check's")
            gap = logprob_gap(got, batch[name]["last"][spot])
            spot_gap = max(spot_gap, gap)
            _require_close(gap, tol, f"size {name}: a held-out row's logits computed alone differ from its logits "
                                     f"among the other rows — the model carries information across rows or calls, "
                                     f"so the held-out rows themselves feed its predictions")
    scored = {**files, **{f"logits_{s['name']}.safetensors": save({k: v.contiguous() for k, v in batch[s["name"]].items()})
                          for s in sizes}}
    return scored, {"child_gap": child_gap, "spot_gap": spot_gap, "spot_rows": float(len(spot)),
                    "seconds": time.perf_counter() - t0}
