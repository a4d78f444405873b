"""Running an untrusted attention variant in a child process with a time and a memory limit.

    python -m agentforge.scaling.sandbox REQUEST.json      (the child; the parent uses run_in_sandbox)

The parent never imports candidate code. It writes a request (program path, sizes, training settings),
starts ``python -m agentforge.scaling.sandbox`` in its own session with stdout/stderr to a log file,
waits at most ``timeout_s`` and then kills the whole process group. The child caps its address space
with ``RLIMIT_AS`` before importing torch, loads the candidate, checks it (contract, output shape,
causality, finiteness), trains every size through the project's Lightning loop and writes its result as
JSON. Every way a candidate can fail (hang, crash, runaway memory, NaN, non-causal output) ends as
``{"ok": false, "kind": ..., "error": ...}``, never as an exception in the parent.

What this does not do: contain a candidate that sets out to cheat (it runs as the same user and could,
say, write a forged result file). The evaluator's static checks refuse the obvious tools for that
(imports beyond math/torch, eval/exec/open, dunder access) but a hostile search should run the whole
evaluator inside a container.
"""
from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


class CandidateFailure(Exception):
    """A candidate failed a check; ``kind`` is the machine-readable reason."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def failure(kind: str, message: str) -> dict:
    return {"ok": False, "kind": kind, "error": message}


# -- parent side ----------------------------------------------------------------------------------------
def run_in_sandbox(program_path: str | Path, settings: dict, work_dir: str | Path, *, timeout_s: float,
                   memory_mb: int | None) -> dict:
    """Evaluate ``program_path`` in a child process; always returns a dict (``ok`` true or false)."""
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    out_path, log_path = work_dir / "result.json", work_dir / "sandbox.log"
    out_path.unlink(missing_ok=True)
    request = {"program": str(Path(program_path).absolute()), "settings": settings, "out": str(out_path),
               "work_dir": str(work_dir.absolute()), "memory_mb": memory_mb}
    req_path = work_dir / "request.json"
    req_path.write_text(json.dumps(request, indent=2))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
               PYTHONDONTWRITEBYTECODE="1")
    threads = (settings.get("hardware") or {}).get("threads")
    env["OMP_NUM_THREADS"] = str(threads or os.environ.get("OMP_NUM_THREADS", "1"))
    t0 = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "agentforge.scaling.sandbox", str(req_path)],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=work_dir, env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            return failure("timeout", f"no result within the {timeout_s:g} s limit (the candidate hangs or is too "
                                      f"slow); raise phase.sandbox.timeout_s if it is merely slow")
        finally:
            _kill_group(proc)  # nothing the candidate started outlives the evaluation
    seconds = time.perf_counter() - t0
    if out_path.is_file():
        try:
            result = json.loads(out_path.read_text())
        except json.JSONDecodeError as exc:
            return failure("crash", f"the sandbox wrote an unreadable result ({exc})")
        if isinstance(result, dict) and "ok" in result:
            result["sandbox_seconds"] = seconds
            return result
        return failure("crash", "the sandbox wrote a result without an 'ok' field")
    tail = _tail(log_path)
    if rc in (-signal.SIGKILL, -signal.SIGSEGV) or "MemoryError" in tail:
        return failure("memory" if rc == -signal.SIGKILL or "MemoryError" in tail else "crash",
                       f"the sandbox died (exit {rc}) without a result: {tail}")
    return failure("crash", f"the sandbox exited with status {rc} without a result: {tail}")


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _tail(path: Path, n: int = 600) -> str:
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return "(no log)"
    return " | ".join(text[-n:].splitlines()[-6:]) or "(empty log)"


# -- child side -----------------------------------------------------------------------------------------
def limit_memory(memory_mb: int | None) -> None:
    """Cap the address space of this process (and what it forks) at ``memory_mb`` MiB."""
    if memory_mb:
        limit = int(memory_mb) * 2**20
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def load_candidate(path: str):
    """Execute the candidate file as a module (child process only) and return it."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("scaling_candidate", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except MemoryError:
        raise
    except Exception as exc:
        raise CandidateFailure("import", f"importing the candidate failed: {type(exc).__name__}: {exc}") from exc
    attn = getattr(module, "Attention", None)
    import torch

    if not (isinstance(attn, type) and issubclass(attn, torch.nn.Module)):
        raise CandidateFailure("contract", "the candidate defines no class Attention(torch.nn.Module)")
    return module


def check_attention(attention_cls, d_model: int, n_heads: int, seq_len: int, seed: int, tol: float = 1e-4) -> dict:
    """Shape, finiteness and causality of one attention module on random inputs.

    Causality is tested by perturbation: for every cut t, the inputs after t are replaced by fresh noise
    and the outputs at positions <= t must not move (beyond ``tol``, relative to their scale).
    """
    import torch

    torch.manual_seed(seed)
    try:
        attn = attention_cls(d_model, n_heads)
    except Exception as exc:
        if _is_oom(exc):
            raise MemoryError(str(exc)) from exc
        raise CandidateFailure("contract", f"Attention({d_model}, {n_heads}) failed: {type(exc).__name__}: {exc}") from exc
    attn.eval()
    x = torch.randn(2, seq_len, d_model)
    with torch.no_grad():
        y = _forward(attn, x)
        if not isinstance(y, torch.Tensor) or tuple(y.shape) != tuple(x.shape):
            got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise CandidateFailure("shape", f"Attention.forward maps {tuple(x.shape)} to {got}; it must return "
                                            f"the input's shape [batch, seq_len, d_model]")
        if not torch.isfinite(y).all():
            raise CandidateFailure("nonfinite", f"Attention output has {int((~torch.isfinite(y)).sum())} NaN/Inf "
                                                f"values on a random input")
        scale = float(y.abs().max()) + 1e-6
        worst = 0.0
        for t in range(seq_len - 1):
            x2 = x.clone()
            x2[:, t + 1:] = torch.randn_like(x2[:, t + 1:]) * 3.0
            y2 = _forward(attn, x2)
            if not torch.isfinite(y2).all():
                raise CandidateFailure("nonfinite", "Attention output has NaN/Inf values on a random input")
            moved = float((y2[:, : t + 1] - y[:, : t + 1]).abs().max()) / scale
            worst = max(worst, moved)
            if moved > tol:
                raise CandidateFailure("causality", f"not causal: changing inputs after position {t} changes the "
                                                    f"output at positions <= {t} (relative change {moved:.3g}); "
                                                    f"no token may see the future")
    return {"d_model": d_model, "n_heads": n_heads, "seq_len": seq_len, "max_relative_leak": worst}


def _forward(attn, x):
    try:
        return attn(x)
    except MemoryError:
        raise
    except Exception as exc:
        if _is_oom(exc):
            raise MemoryError(str(exc)) from exc
        raise CandidateFailure("crash", f"Attention.forward raised {type(exc).__name__}: {exc}") from exc


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or "can't allocate memory" in str(exc) or "out of memory" in str(exc)


def train_size(attention_cls, size: dict, settings: dict, work_dir: Path) -> dict:
    """Train one size through LMModule + the project's Trainer; return params and final val loss."""
    import lightning as L
    import torch

    from agentforge.data.build import build_datamodule
    from agentforge.data.tokenizer import RESERVED_VOCAB, ByteTokenizer
    from agentforge.scaling.model import ScalingLM
    from agentforge.tracking.loggers import JsonlLogger
    from agentforge.training.lm_module import LMModule
    from agentforge.training.trainer import build_trainer

    tr, seed = settings["train"], int(settings["seed"])
    L.seed_everything(seed, workers=True, verbose=False)  # every size sees the same data and init stream
    model = ScalingLM(RESERVED_VOCAB, int(size["d_model"]), int(size["n_layers"]), int(size["n_heads"]),
                      attention_cls)
    steps, every = int(tr["steps"]), int(tr["eval_every"])
    dm = build_datamodule({"seq_len": int(tr["seq_len"]), "batch_size": int(tr["batch_size"])}, ByteTokenizer(),
                          stages=[{"epochs": 1, "mix": dict(settings["mix"])}], seed=seed, steps_per_epoch=every,
                          val_rows=int(tr["val_rows"]))
    module = LMModule(model, dict(settings["optimizer"]), steps, "stop")
    size_dir = work_dir / f"size_{size['name']}"
    trainer = build_trainer(dict(settings.get("hardware") or {}), loggers=[JsonlLogger(size_dir)], callbacks=[],
                            max_epochs=-(-steps // every), max_steps=steps, default_root_dir=size_dir,
                            gradient_clip_val=float(tr.get("gradient_clip") or 0) or None,
                            log_every_n_steps=max(1, min(10, every)), enable_progress_bar=False,
                            enable_checkpointing=False)
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    seconds = time.perf_counter() - t0
    model.eval()
    rows = dm.val_rows_tensor().to(next(model.parameters()).device)
    with torch.no_grad():  # the final figure: mean next-token loss on the held-out rows, after training
        loss = float(model(rows[:, :-1], rows[:, 1:]).loss)
    if not torch.isfinite(torch.tensor(loss)):
        raise CandidateFailure("nonfinite", f"size {size['name']}: final validation loss is {loss}")
    curve = [[(i + 1) * every, v] for i, v in enumerate(module.history["val_loss"])]
    return {"name": size["name"], "d_model": int(size["d_model"]), "n_layers": int(size["n_layers"]),
            "n_heads": int(size["n_heads"]), "params": model.num_params(),
            "non_embedding_params": model.num_params(non_embedding=True), "loss": loss, "val_curve": curve,
            "train_seconds": seconds, "steps": int(trainer.global_step)}


def evaluate_in_child(request: dict) -> dict:
    settings = request["settings"]
    hw = settings.get("hardware") or {}
    module = load_candidate(request["program"])
    import torch

    if hw.get("threads"):
        torch.set_num_threads(int(hw["threads"]))
    chk = settings["check"]
    first = settings["sizes"][0]
    checks = check_attention(module.Attention, int(chk.get("d_model") or first["d_model"]),
                             int(chk.get("n_heads") or first["n_heads"]), int(chk["seq_len"]), int(settings["seed"]))
    print(f"checks passed: {checks}", flush=True)
    if settings.get("check_only"):
        return {"ok": True, "checks": checks, "sizes": []}
    sizes = []
    for size in settings["sizes"]:
        sizes.append(train_size(module.Attention, size, settings, Path(request["work_dir"])))
        print(f"size {size['name']}: {sizes[-1]['params']:,} params, loss {sizes[-1]['loss']:.4f}", flush=True)
    return {"ok": True, "checks": checks, "sizes": sizes}


def child_main(argv: list[str]) -> int:
    request = json.loads(Path(argv[0]).read_text())
    out = Path(request["out"])
    limit_memory(request.get("memory_mb"))
    try:
        result = evaluate_in_child(request)
    except CandidateFailure as exc:
        result = failure(exc.kind, str(exc))
    except MemoryError as exc:
        result = failure("memory", f"the candidate exceeded the {request.get('memory_mb')} MiB memory limit ({exc})")
    except Exception as exc:  # anything else the candidate provokes during training
        from agentforge.errors import NonFiniteError

        if isinstance(exc, NonFiniteError):
            result = failure("nonfinite", f"training diverged: {exc}")
        elif _is_oom(exc):
            result = failure("memory", f"the candidate exceeded the memory limit ({type(exc).__name__}: {exc})")
        else:
            import traceback

            traceback.print_exc()
            result = failure("crash", f"{type(exc).__name__}: {exc}")
    from agentforge.io import write_json_atomic

    write_json_atomic(out, result)
    return 0


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
