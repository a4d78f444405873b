"""The program that runs inside the sandbox: load the candidate, train every size, answer the held-out set.

    python -m agentforge.scaling.child request.json        (run by the evaluator in agentforge.sandbox)

Files in its private dir: ``candidate.py``, ``request.json`` (sizes, training settings) and
``heldout.safetensors`` (``inputs`` [P, T]: the causality probe's first halves — no row that is scored is
sent; the scored logits are recomputed from the returned weights in another sandbox, ``rescore.py`` — and
``probe`` [2P, T] rows for the causality probe). It writes, per size, ``weights_<name>.safetensors`` (the
trained state dict) and ``logits_<name>.safetensors`` (``last`` [P, vocab]: logits at the last position of
every input row; ``probe`` [2P, T, vocab]), compared with the recomputed ones, and ``status.json`` (how it
went; informational only).

Everything here shares a process with the candidate, which may patch any of it: nothing it writes is
trusted as a score. The parent (``agentforge.scaling.trust``) computes the loss from the logits against
tokens this process never saw, counts parameters from the weights and runs the causality and finiteness
checks itself. The checks below are a friendly early filter that saves training a broken candidate.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from agentforge.scaling.failures import CandidateFailure, failure
from agentforge.scaling.infer import CHUNK  # the trusted re-scoring splits the rows the same way
from agentforge.scaling.uncertainty import train_seed

STATUS = "status.json"


def load_candidate(path: str):
    """Execute the candidate file as a module and return its Attention class."""
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("scaling_candidate", path)
    module = importlib.util.module_from_spec(spec)
    _guarded(lambda: spec.loader.exec_module(module), "importing the candidate failed")
    attn = getattr(module, "Attention", None)
    if not (isinstance(attn, type) and issubclass(attn, torch.nn.Module)):
        raise CandidateFailure("crash", "the candidate defines no class Attention(torch.nn.Module)")
    return attn


def check_attention(attention_cls, d_model: int, n_heads: int, seq_len: int, seed: int, tol: float = 1e-4) -> dict:
    """Shape, finiteness and causality of one attention module on random inputs.

    Causality is tested by perturbation: for every cut t, the inputs after t are replaced by fresh noise
    and the outputs at positions <= t must not move (beyond ``tol``, relative to their scale).
    """
    import torch

    torch.manual_seed(seed)
    attn = _guarded(lambda: attention_cls(d_model, n_heads), f"Attention({d_model}, {n_heads}) failed")
    attn.eval()
    x = torch.randn(2, seq_len, d_model)
    with torch.no_grad():
        y = _forward(attn, x)
        if not isinstance(y, torch.Tensor) or tuple(y.shape) != tuple(x.shape):
            got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise CandidateFailure("crash", f"Attention.forward maps {tuple(x.shape)} to {got}; it must return "
                                            f"the input's shape [batch, seq_len, d_model]")
        if not torch.isfinite(y).all():
            raise CandidateFailure("non_finite", f"Attention output has {int((~torch.isfinite(y)).sum())} NaN/Inf "
                                                 f"values on a random input")
        scale = float(y.abs().max()) + 1e-6
        worst = 0.0
        for t in range(seq_len - 1):
            x2 = x.clone()
            x2[:, t + 1:] = torch.randn_like(x2[:, t + 1:]) * 3.0
            y2 = _forward(attn, x2)
            if not torch.isfinite(y2).all():
                raise CandidateFailure("non_finite", "Attention output has NaN/Inf values on a random input")
            moved = float((y2[:, : t + 1] - y[:, : t + 1]).abs().max()) / scale
            worst = max(worst, moved)
            if moved > tol:
                raise CandidateFailure("non_causal", f"not causal: changing inputs after position {t} changes "
                                                     f"the output at positions <= {t} (relative change "
                                                     f"{moved:.3g}); no token may see the future")
    return {"d_model": d_model, "n_heads": n_heads, "seq_len": seq_len, "max_relative_leak": worst}


def _forward(attn, x):
    return _guarded(lambda: attn(x), "Attention.forward raised")


def _guarded(fn, what: str):
    """fn(); an out-of-memory becomes MemoryError, any other exception a ``crash`` saying ``what``."""
    try:
        return fn()
    except (MemoryError, CandidateFailure):
        raise
    except Exception as exc:
        if _is_oom(exc):
            raise MemoryError(str(exc)) from exc
        raise CandidateFailure("crash", f"{what}: {type(exc).__name__}: {exc}") from exc


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or "can't allocate memory" in str(exc) or "out of memory" in str(exc)


def child_datamodule(settings: dict, seed: int):
    """The datamodule every size trains on at ``seed`` (``phase.train``'s rows, the mix as one stage; its validation
    rows give the val curve); ``trust.child_val_rows`` rebuilds it for the test set's overlap check."""
    from agentforge.data.build import build_datamodule
    from agentforge.data.tokenizer import ByteTokenizer

    tr = settings["train"]
    return build_datamodule({"seq_len": int(tr["seq_len"]), "batch_size": int(tr["batch_size"])}, ByteTokenizer(),
                            stages=[{"epochs": 1, "mix": dict(settings["mix"])}], seed=seed,
                            steps_per_epoch=int(tr["eval_every"]), val_rows=int(tr["val_rows"]))


def train_size(attention_cls, size: dict, settings: dict, heldout: dict) -> dict:
    """Train one size through LMModule + the project's Trainer; write its weights and held-out logits."""
    import lightning as L
    import torch
    from safetensors.torch import save_file

    from agentforge.data.tokenizer import RESERVED_VOCAB
    from agentforge.scaling.model import ScalingLM
    from agentforge.tracking.loggers import JsonlLogger
    from agentforge.training.lm_module import LMModule
    from agentforge.training.trainer import build_trainer

    tr, seed = settings["train"], train_seed(settings)  # phase.seeds: the baseline at K of them (uncertainty.py)
    L.seed_everything(seed, workers=True, verbose=False)  # every size sees the same data and init stream
    model = ScalingLM(RESERVED_VOCAB, int(size["d_model"]), int(size["n_layers"]), int(size["n_heads"]),
                      attention_cls)
    steps, every = int(tr["steps"]), int(tr["eval_every"])
    dm = child_datamodule(settings, seed)
    module = LMModule(model, dict(settings["optimizer"]), steps, "stop")
    size_dir = Path(f"size_{size['name']}")
    trainer = build_trainer(dict(settings.get("hardware") or {}), loggers=[JsonlLogger(size_dir)], callbacks=[],
                            max_epochs=-(-steps // every), max_steps=steps, default_root_dir=size_dir,
                            gradient_clip_val=float(tr.get("gradient_clip") or 0) or None,
                            log_every_n_steps=max(1, min(10, every)), enable_progress_bar=False,
                            enable_checkpointing=False)
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    seconds = time.perf_counter() - t0
    model.eval().cpu()
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()},
              f"weights_{size['name']}.safetensors")
    with torch.no_grad():
        last = torch.cat([model(x).logits[:, -1, :].float() for x in heldout["inputs"].split(CHUNK)])
        probe = model(heldout["probe"]).logits.float()
    save_file({"last": last.contiguous(), "probe": probe.contiguous()}, f"logits_{size['name']}.safetensors")
    curve = [[(i + 1) * every, v] for i, v in enumerate(module.history["val_loss"])]
    return {"name": size["name"], "val_curve": curve, "train_seconds": seconds, "steps": int(trainer.global_step)}


def evaluate_here(request: dict) -> dict:
    settings = request["settings"]
    attention = load_candidate("candidate.py")
    import torch
    from safetensors.torch import load_file

    torch.set_num_threads(int((settings.get("hardware") or {}).get("threads") or 1))
    chk, first = settings["check"], settings["sizes"][0]
    checks = check_attention(attention, int(chk.get("d_model") or first["d_model"]),
                             int(chk.get("n_heads") or first["n_heads"]), int(chk["seq_len"]), int(settings["seed"]))
    print(f"checks passed: {checks}", flush=True)
    if request.get("check_only"):
        return {"ok": True, "checks": checks, "sizes": []}
    heldout = load_file("heldout.safetensors")
    sizes = []
    for size in settings["sizes"]:
        sizes.append(train_size(attention, size, settings, heldout))
        print(f"size {size['name']}: trained {sizes[-1]['steps']} steps", flush=True)
    return {"ok": True, "checks": checks, "sizes": sizes}


def _restoring_sigchld_is_a_no_op() -> None:
    """The sandbox's seccomp filter refuses to set SIGCHLD's disposition (children reaped by the kernel would take
    their CPU time out of the tree's budget: ``sandbox.seccomp``). Lightning's signal connector restores every
    signal's handler at teardown, SIGCHLD's unchanged SIG_DFL included; that no-op is answered here without the
    refused call. Any real change still reaches the filter and fails."""
    import signal

    real = signal.signal

    def guarded(signalnum, handler):
        if signalnum == signal.SIGCHLD and handler == signal.SIG_DFL == signal.getsignal(signal.SIGCHLD):
            return signal.SIG_DFL
        return real(signalnum, handler)

    signal.signal = guarded


def main() -> int:
    _restoring_sigchld_is_a_no_op()
    request = json.loads(Path("request.json").read_text())
    try:
        result = evaluate_here(request)
    except CandidateFailure as exc:
        result = failure(exc.kind, str(exc))
    except MemoryError as exc:
        result = failure("memory", f"the candidate exceeded the memory limit ({exc})")
    except Exception as exc:  # anything else the candidate provokes during training
        from agentforge.errors import NonFiniteError

        if isinstance(exc, NonFiniteError):
            result = failure("non_finite", f"training diverged: {exc}")
        elif _is_oom(exc):
            result = failure("memory", f"the candidate exceeded the memory limit ({type(exc).__name__}: {exc})")
        else:
            import traceback

            traceback.print_exc()
            result = failure("crash", f"{type(exc).__name__}: {exc}")
    Path(STATUS).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
