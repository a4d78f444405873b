"""Scoring a candidate attention file: static checks here, training in the sandbox, the score here.

``evaluate(program_path, settings, ...) -> dict`` is OpenEvolve's evaluator contract (a program path in,
a dict of metrics out; ``combined_score`` is what OpenEvolve maximizes). The steps:

1. read and parse the file — parsing executes nothing (a syntax error is a ``crash``);
2. find its framework from the header line and compare everything outside the
   ``# EVOLVE-BLOCK-START`` / ``# EVOLVE-BLOCK-END`` markers with that framework's template
   (``outside_block``); refuse a block longer than ``MAX_BLOCK_CHARS``, imports beyond
   math/torch/agentforge.models.layers, eval/exec/open and dunder access inside the block (``forbidden``).
   This is a friendly first filter with a clear reason, not the security boundary: that is the sandbox;
3. look the (code, settings, held-out secret) triple up in the cache;
4. run ``agentforge.scaling.child`` on it in ``agentforge.sandbox`` (bubblewrap, or the weaker process
   mode when chosen): it trains every size and returns weights and held-out logits (``timeout``,
   ``memory``, ``crash``);
5. recompute the logits from the returned weights in an inference-only sandbox without the project's
   code, compare them with the child's and spot-check rows computed alone (``rescore.py``: ``forged``
   when they differ), score those logits on the trusted side (``trust.py``: parameter counts, loss on
   withheld tokens, ``non_causal``, ``non_finite``, ``forged``), fit loss = a + b·ln(params) and combine
   the slope with the baseline guard (``fit.guarded_fitness``). The fit's params are the baseline
   architecture's count at each size (``trust.reference_params``), never the candidate's: its own counts are
   reported (``params_returned_<size>``) and must stay within ``trust.max_param_ratio`` of the reference
   (``params``), so dead tensors cannot squeeze the x-axis and steepen the slope.

The figures come twice, from the same trained models: under the plain keys (``combined_score``,
``fitness``, ``loss_<size>``, ...) from the *selection* set, the only numbers a search may choose on;
under ``test_*`` keys (``test_fitness``, ``test_loss_<size>``, ``test_combined_score``,
``test_improvement`` over the baseline with its paired bootstrap interval ``test_improvement_ci95`` over
``test_improvement_n`` rows, ``test_n`` rows) from the *test* set, which played no part in choosing and is
what a winner is reported on. ``selection_only`` removes them for OpenEvolve.

A failing candidate gets ``valid = 0``, ``combined_score = FAIL_SCORE`` and the reason in ``error_kind``
and ``error``; nothing a candidate does raises out of ``evaluate``. Kinds: ``failures.py``.
"""
from __future__ import annotations

import ast
import hashlib
import json
import math
import re
import time
from pathlib import Path

from agentforge.errors import ConfigError
from agentforge.sandbox import SandboxLimits, run_sandboxed
from agentforge.scaling import childinfo, trust
from agentforge.scaling.bootstrap import paired_bootstrap
from agentforge.scaling.cache import ResultCache, cache_key
from agentforge.scaling.failures import CACHEABLE, CandidateFailure
from agentforge.scaling.fit import fit_scaling_law, guarded_fitness
from agentforge.scaling.rescore import rescore
from agentforge.scaling.variants import FRAMEWORKS, variant_path

BLOCK_START, BLOCK_END = "# EVOLVE-BLOCK-START", "# EVOLVE-BLOCK-END"
HEADER = re.compile(r"^#\s*scaling-framework:\s*([A-Za-z_]\w*)\s*$")
FAIL_SCORE = -1000.0  # combined_score of a rejected candidate: below any fitness a trained family reaches
ALLOWED_IMPORTS = ("math", "torch", "agentforge.models.layers")
FORBIDDEN_CALLS = {"eval", "exec", "compile", "open", "__import__", "breakpoint", "input", "globals", "locals",
                   "vars", "exit", "quit"}
# the EVOLVE block's size limit: the shipped blocks hold 519-815 characters; data written into the code
# (a table of n-gram counts, say) would be parameters nobody counts
MAX_BLOCK_CHARS = 8000


# -- static checks ----------------------------------------------------------------------------------------
def split_block(code: str) -> tuple[list[str], list[str], list[str], int]:
    """(lines before the block, block lines, lines after, 1-based line of the START marker)."""
    lines = code.replace("\r\n", "\n").split("\n")
    starts = [i for i, ln in enumerate(lines) if ln.strip() == BLOCK_START]
    ends = [i for i, ln in enumerate(lines) if ln.strip() == BLOCK_END]
    if len(starts) != 1 or len(ends) != 1 or starts[0] > ends[0]:
        raise CandidateFailure("outside_block", f"the file must hold exactly one '{BLOCK_START}' line followed by "
                                                f"one '{BLOCK_END}' line (found {len(starts)} and {len(ends)})")
    s, e = starts[0], ends[0]
    return lines[:s], lines[s + 1:e], lines[e + 1:], s + 1


def _normalized(lines: list[str]) -> list[str]:
    out = [ln.rstrip() for ln in lines]
    while out and not out[-1]:
        out.pop()
    return out


def detect_framework(code: str) -> str:
    """The framework named by the header line; a missing or unknown header is an edit outside the block."""
    for line in code.splitlines():
        if line.strip():
            m = HEADER.match(line.strip())
            if m and m.group(1) in FRAMEWORKS:
                return m.group(1)
            break
    raise CandidateFailure("outside_block", f"the first line must be the framework header "
                                            f"'# scaling-framework: NAME' with NAME in {list(FRAMEWORKS)}; "
                                            f"it was changed or removed")


def check_outside_block(code: str, framework: str) -> None:
    """Everything outside the EVOLVE block must equal the framework template (trailing spaces aside)."""
    before, _, after, _ = split_block(code)
    t_before, _, t_after, _ = split_block(variant_path(framework).read_text())
    for _where, got, want, offset in (("before", before, t_before, 1), ("after", after, t_after, None)):
        got, want = _normalized(got), _normalized(want)
        if got == want:
            continue
        i = next((j for j in range(min(len(got), len(want))) if got[j] != want[j]), min(len(got), len(want)))
        line = got[i] if i < len(got) else "<end of file>"
        pos = f"line {i + 1}" if offset else f"line {i + 1} after {BLOCK_END}"
        raise CandidateFailure("outside_block", f"code outside the EVOLVE block differs from the {framework} "
                                                f"template ({pos}: {line.strip()[:80]!r}); only the code "
                                                f"between the markers may change")


STATE_DICT_HOOKS = ("_save_to_state_dict", "_load_from_state_dict", "state_dict", "load_state_dict")


def _names_a_state_dict_hook(node) -> bool:
    """A method definition or attribute that changes how a module saves or loads its weights (overriding
    ``_save_to_state_dict`` / ``_load_from_state_dict``, any ``register_*state_dict*`` hook): a red team packed
    parameters into other dtypes that way. A friendly filter, like the rest of this check: the parameter count is
    enforced on the returned bytes (``trust.fp32_equivalent``)."""
    name = node.name if isinstance(node, ast.FunctionDef) else node.attr
    if isinstance(node, ast.FunctionDef):
        return name in STATE_DICT_HOOKS
    return name in STATE_DICT_HOOKS[:2] or ("state_dict" in name and "register" in name)


def check_block_code(tree: ast.AST, first: int, last: int) -> None:
    """Refuse, inside the block (lines first..last), the tools a candidate could use to escape its role."""
    for node in ast.walk(tree):
        lineno = getattr(node, "lineno", None)
        if lineno is None or not first <= lineno <= last:
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            bad = [n for n in names if not any(n == ok or n.startswith(ok + ".") for ok in ALLOWED_IMPORTS)]
            if bad or (isinstance(node, ast.ImportFrom) and node.level):
                raise CandidateFailure("forbidden", f"line {lineno}: import of {bad or 'a relative module'}; the "
                                                    f"block may import only {list(ALLOWED_IMPORTS)}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FORBIDDEN_CALLS:
            raise CandidateFailure("forbidden", f"line {lineno}: call to {node.func.id}() is not allowed in the block")
        elif isinstance(node, (ast.Attribute, ast.FunctionDef)) and _names_a_state_dict_hook(node):
            raise CandidateFailure("forbidden", f"line {lineno}: {getattr(node, 'attr', None) or node.name} is not "
                                                f"allowed in the block (the weights are saved and loaded as they are)")
        elif isinstance(node, ast.Attribute) and node.attr.startswith("__") and node.attr != "__init__":
            raise CandidateFailure("forbidden", f"line {lineno}: access to {node.attr} is not allowed in the block")
        elif isinstance(node, ast.Name) and node.id.startswith("__") and node.id.endswith("__"):
            raise CandidateFailure("forbidden", f"line {lineno}: use of {node.id} is not allowed in the block")


def check_static(code: str) -> str:
    """Syntax, framework, untouched frame, allowed constructs; returns the framework name. A carriage return
    outside a CRLF pair is refused: Python ends a line there, ``split_block`` does not, so 40 of them in a comment
    moved every later line past the block's line range and out of ``check_block_code``'s sight."""
    if "\r" in code.replace("\r\n", "\n"):
        raise CandidateFailure("forbidden", "a carriage return outside a CRLF line ending: use \\n or \\r\\n "
                                            "line endings")
    try:
        tree = ast.parse(code)
    except SyntaxError as exc:
        raise CandidateFailure("crash", f"syntax error at line {exc.lineno}: {exc.msg}") from None
    framework = detect_framework(code)
    check_outside_block(code, framework)
    before, block, _, _ = split_block(code)
    size = len("\n".join(block))
    if size > MAX_BLOCK_CHARS:
        raise CandidateFailure("forbidden", f"the EVOLVE block holds {size} characters, more than the "
                                            f"{MAX_BLOCK_CHARS} allowed: keep the attention's code short; tables or "
                                            f"data written into the code would be parameters nobody counts")
    check_block_code(tree, len(before) + 2, len(before) + 1 + len(block))
    return framework


# -- evaluation ---------------------------------------------------------------------------------------------
def failed(kind: str, message: str, **extra) -> dict:
    return {"combined_score": FAIL_SCORE, "valid": 0.0, "error_kind": kind, "error": message, **extra}


TEST_PREFIX = "test_"  # result keys from the test set: never shown to a search


def selection_only(result: dict) -> dict:
    """``result`` without any test-set figure (top-level ``test_*`` keys, the sizes' ``test_loss``): what a
    search may see."""
    out = {k: v for k, v in result.items() if not k.startswith(TEST_PREFIX)}
    if isinstance(out.get("sizes"), list):
        out["sizes"] = [{k: v for k, v in s.items() if not k.startswith(TEST_PREFIX)} if isinstance(s, dict) else s
                        for s in out["sizes"]]
    return out


def _law(sizes: list[dict], settings: dict, loss: str, reference: dict | None) -> dict:
    """Fit, fitness and guarded score of the per-size ``loss`` figures against ``reference``."""
    key = "non_embedding_params" if settings.get("fit_params") == "non_embedding" else "params"
    fit = fit_scaling_law([s[key] for s in sizes], [s[loss] for s in sizes])
    largest = max(sizes, key=lambda s: s[key])["name"]
    guard = guarded_fitness(fit, {s["name"]: s[loss] for s in sizes}, largest, reference,
                            float((settings.get("fitness") or {}).get("tolerance", 0.05)))
    out = {**guard, "fitness": fit.fitness, "slope": fit.slope, "intercept": fit.intercept, "r2": fit.r2}
    if reference is not None:  # the baseline's own score is its fitness: the gain over it
        out["improvement"] = guard["combined_score"] - float(reference["fitness"])
    return out


def scored(sizes: list[dict], settings: dict, reference: dict | None) -> dict:
    """The selection figures (plain keys) and, when the sizes carry ``test_loss``, the test ones (``test_*``),
    each against the baseline reference on the same set."""
    key = "non_embedding_params" if settings.get("fit_params") == "non_embedding" else "params"
    out = {**_law(sizes, settings, "loss", reference), "valid": 1.0, "error_kind": "", "error": ""}
    for s in sizes:
        out[f"loss_{s['name']}"] = s["loss"]
        out[f"params_{s['name']}"] = float(s[key])  # the reference count the fit used
        if f"{key}_returned" in s:  # the candidate's own count: shown, never fitted
            out[f"params_returned_{s['name']}"] = float(s[f"{key}_returned"])
    if sizes and all("test_loss" in s for s in sizes):
        test_ref = None
        if reference is not None and reference.get("test_losses") is not None:
            test_ref = {"fitness": reference["test_fitness"], "losses": reference["test_losses"]}
        out.update({f"{TEST_PREFIX}{k}": v for k, v in _law(sizes, settings, "test_loss", test_ref).items()})
        out.update({f"{TEST_PREFIX}loss_{s['name']}": s["test_loss"] for s in sizes})
        if test_ref is not None and reference.get("test_rows") and all("test_row_losses" in s for s in sizes):
            ci, n = improvement_ci(sizes, settings, reference)
            out.update({f"{TEST_PREFIX}improvement_ci95": list(ci), f"{TEST_PREFIX}improvement_n": float(n)})
    return out


def improvement_ci(sizes: list[dict], settings: dict, reference: dict) -> tuple[tuple[float, float], int]:
    """The 95 % paired percentile bootstrap interval of ``test_improvement`` over the test rows, and their
    number: each replicate resamples the rows once for every size and both models, then recomputes the
    baseline's fit, the candidate's fit and guard and the improvement exactly as ``scored`` does."""
    names, base_params = [s["name"] for s in sizes], reference["params"]

    def improvement(cand: dict[str, float], base: dict[str, float]) -> float:
        base_fitness = fit_scaling_law([base_params[k] for k in names], [base[k] for k in names]).fitness
        trial = [{**s, "test_loss": cand[s["name"]]} for s in sizes]
        return _law(trial, settings, "test_loss", {"fitness": base_fitness, "losses": base})["improvement"]

    return paired_bootstrap({s["name"]: s["test_row_losses"] for s in sizes}, reference["test_rows"], improvement,
                            reps=int((settings.get("trust") or {}).get("bootstrap") or 1000),
                            seed=int(settings.get("seed") or 0))


def limits_for(settings: dict, timeout_s: float, memory_mb: int | None) -> SandboxLimits:
    threads = max(1, int((settings.get("hardware") or {}).get("threads") or 1))
    return SandboxLimits(wall_s=float(timeout_s), cpu_s=int(math.ceil(timeout_s)) * (threads + 1),
                         memory_mb=int(memory_mb or 2**20), max_procs=64 + 4 * threads, max_file_mb=256)


def run_child(code: str, settings: dict, heldout: dict, *, limits: SandboxLimits, mode: str, check_only: bool,
              log_dir: Path | None) -> tuple[dict, dict[str, bytes]]:
    """Train in the sandbox; (the child's own report, the files it returned). Timeouts and memory are the
    sandbox's verdict, not the child's."""
    from safetensors.torch import save

    sizes = [s["name"] for s in settings["sizes"]]
    outputs = ("status.json", *(f"{w}_{n}.safetensors" for n in sizes for w in ("weights", "logits")))
    files = {"candidate.py": code, "request.json": json.dumps({"settings": settings, "check_only": check_only}),
             # no held-out row: the scored logits are recomputed from the weights (rescore.py), so the child gets
             # only the probe rows (it answers their last positions and the probe pairs, compared there) and
             # cannot fit its weights to the text of the rows it is scored on
             "heldout.safetensors": save({"inputs": trust.probe_bases(heldout), "probe": heldout["probe"]})}
    threads = str((settings.get("hardware") or {}).get("threads") or 1)
    res = run_sandboxed(["python", "-m", "agentforge.scaling.child"], files, limits=limits, outputs=outputs,
                        env={"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}, mode=mode)
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        (log_dir / "sandbox.log").write_text(f"[{res.mode}] kind={res.kind} rc={res.returncode} "
                                             f"{res.wall_s:.1f}s\n{res.stdout}\n{res.stderr}")
    tail = " | ".join(res.stderr.strip().splitlines()[-4:])[-600:]
    if res.kind == "timeout":
        raise CandidateFailure("timeout", f"no result within the {limits.wall_s:g} s limit (or the CPU-time "
                                          f"limit): the candidate hangs or is too slow")
    if res.kind == "memory":
        raise CandidateFailure("memory", f"the candidate exceeded the {limits.memory_mb} MiB memory limit: {tail}")
    try:
        status = json.loads(res.files.get("status.json", b"{}"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        status = {}
    if not isinstance(status, dict):
        status = {}
    if status.get("ok") is False:  # the child's own account of a failure: reported, never cached
        kind = status.get("kind") if status.get("kind") in ("memory", "non_causal", "non_finite") else "crash"
        raise CandidateFailure(kind, f"in the sandbox: {str(status.get('error'))[:800]}", trusted=False)
    if res.kind != "ok":
        raise CandidateFailure("crash", f"the sandbox exited with status {res.returncode}: {tail or '(no output)'}")
    return status, res.files


def evaluate(program_path: str | Path, settings: dict, *, timeout_s: float = 600.0, memory_mb: int | None = 4096,
             cache_dir: str | Path | None = None, work_dir: str | Path | None = None, check_only: bool = False,
             sandbox: str = "bwrap", key_dir: str | Path | None = None) -> dict:
    """Score one candidate file; never raises for anything the candidate does (see the module docstring).
    ``sandbox`` is the isolation mode ("bwrap" or the weaker "process"); a missing bwrap raises ConfigError.
    ``key_dir``: where the held-out salt is kept (default ``cache_dir``): with the cache off it keeps the held-out
    and test rows the same from run to run, so fitness stays comparable; without either, one salt per process."""
    t0 = time.perf_counter()
    settings = {**settings, "trust": {**TRUST_DEFAULTS, **(settings.get("trust") or {})}}
    try:
        code = Path(program_path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        return failed("crash", f"{program_path}: cannot read the program ({exc})")
    try:
        framework = check_static(code)
    except CandidateFailure as exc:
        return failed(exc.kind, str(exc), cached=False, eval_seconds=time.perf_counter() - t0, sandbox=sandbox)
    key_dir = cache_dir if key_dir is None else key_dir
    salt = trust.heldout_salt(key_dir)
    key = cache_key(code, {**settings, "heldout": hashlib.sha256(salt.encode()).hexdigest()[:16],
                           "sandbox": sandbox, "check_only": check_only})
    cache = ResultCache(cache_dir)
    hit = cache.get(key)
    if hit is not None:
        return {**hit, "cached": True, "eval_seconds": time.perf_counter() - t0}
    heldout = trust.make_heldout(settings, salt, spot_key=hashlib.sha256(code.encode()).hexdigest())
    limits = limits_for(settings, timeout_s, memory_mb)
    status, sizes, cacheable, rescored, child_checks = {}, [], True, {}, {}
    log_dir = Path(work_dir) if work_dir else None
    try:
        status, files = run_child(code, settings, heldout, limits=limits, mode=sandbox, check_only=check_only,
                                  log_dir=log_dir)
        child_checks = childinfo.checks(status.get("checks"))  # stored: checked first (childinfo.py)
        if check_only:
            result = {"combined_score": 0.0, "valid": 1.0, "error_kind": "", "error": ""}
        else:  # the logits scored are recomputed from the returned weights (rescore.py), not the child's
            infer_limits = limits_for(settings, float(settings["trust"]["infer_timeout_s"]), memory_mb)
            files, rescored = rescore(code, settings, heldout, files, limits=infer_limits, sandbox=sandbox,
                                      log_dir=log_dir)
            floor = float(settings["trust"]["loss_floor"])
            ratio = float(settings["trust"]["max_param_ratio"])
            sizes = [trust.score_size(s, files, heldout, floor, ratio) for s in settings["sizes"]]
            for s in sizes:  # the child's own timing and curve: shown, never scored, checked (childinfo.py)
                s.update(childinfo.size_fields(status, s["name"]))
            reference = baseline_reference(code, settings, timeout_s, memory_mb, cache_dir, sandbox, key_dir)
            result = scored(sizes, settings, reference)
            if "test_targets" in heldout:
                result.update(test_n=float(len(heldout["test_targets"])),
                              test_dropped=float(heldout["test_dropped"]))
    except CandidateFailure as exc:
        result, cacheable = failed(exc.kind, str(exc)), exc.kind in CACHEABLE and exc.trusted
    except (ValueError, KeyError, TypeError) as exc:
        result, cacheable = failed("crash", f"the scaling fit failed: {exc}"), False
    except ConfigError:  # the setup's fault (no bwrap, a bad mode), not the candidate's: stop the run
        raise
    except Exception as exc:  # noqa: BLE001 - the last net: nothing a candidate does raises out of evaluate
        result, cacheable = failed("crash", f"unexpected {type(exc).__name__} while evaluating: {exc}"), False
    result.update(framework=framework, key=key, sizes=sizes, sandbox=sandbox, rescore=rescored, checks=child_checks)
    if result["valid"] or (result["error_kind"] and cacheable):
        cache.put(key, result)
    return {**result, "cached": False, "eval_seconds": time.perf_counter() - t0}


TRUST_DEFAULTS = {"heldout_rows": 512, "test_rows": 512, "probe_rows": 4, "loss_floor": 0.05, "spot_rows": 16,
                  "logit_tol": 1e-4, "infer_timeout_s": 120.0, "bootstrap": 1000, "max_param_ratio": 2.0}


def baseline_reference(code: str, settings: dict, timeout_s, memory_mb, cache_dir, sandbox,
                       key_dir=None) -> dict | None:
    """The baseline variant's fitness and per-size losses under the same settings (evaluated once, then
    cached), for the sabotage guard; None when ``fitness.reference`` is off or the candidate is the baseline."""
    fit_cfg = settings.get("fitness") or {}
    base_code = variant_path("baseline").read_text()
    if fit_cfg.get("reference") != "baseline" or code == base_code:
        return None
    base = evaluate(variant_path("baseline"), {**settings, "fitness": {**fit_cfg, "reference": None}},
                    timeout_s=timeout_s, memory_mb=memory_mb, cache_dir=cache_dir, sandbox=sandbox, key_dir=key_dir)
    if not base["valid"]:
        raise CandidateFailure("crash", f"the baseline reference itself failed ({base['error_kind']}): "
                                        f"{base['error']}")
    ref = {"fitness": base["fitness"], "losses": {s["name"]: s["loss"] for s in base["sizes"]}}
    if "test_fitness" in base:
        key = "non_embedding_params" if settings.get("fit_params") == "non_embedding" else "params"
        ref.update(test_fitness=base["test_fitness"], test_losses={s["name"]: s["test_loss"] for s in base["sizes"]},
                   test_rows={s["name"]: s["test_row_losses"] for s in base["sizes"]},
                   params={s["name"]: s[key] for s in base["sizes"]})
    return ref
