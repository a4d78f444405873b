"""Scoring a candidate attention file: static checks here, the rest in the sandbox, then the fit.

``evaluate(program_path, settings, ...) -> dict`` is OpenEvolve's evaluator contract (a program path in,
a dict of metrics out; ``combined_score`` is what OpenEvolve maximizes). The steps:

1. read and parse the file (``syntax``) — parsing executes nothing;
2. find its framework from the header line and compare everything outside the
   ``# EVOLVE-BLOCK-START`` / ``# EVOLVE-BLOCK-END`` markers with that framework's template
   (``outside_block``); refuse imports beyond math/torch/agentforge.models.layers, eval/exec/open and
   dunder access inside the block (``forbidden``);
3. look the (code, settings) pair up in the cache;
4. run it in the sandbox (``sandbox.py``): contract, shape, causality, NaN/Inf checks, then training of
   every size (``timeout``, ``memory``, ``crash``, ``causality``, ``nonfinite``, ...);
5. fit loss = a + b·ln(params) (``fit.py``); fitness = combined_score = −b.

A failing candidate gets ``valid = 0``, ``combined_score = FAIL_SCORE`` and the reason in ``error_kind``
and ``error``; nothing a candidate does raises out of ``evaluate``.
"""
from __future__ import annotations

import ast
import re
import shutil
import tempfile
import time
from pathlib import Path

from agentforge.scaling.cache import ResultCache, cache_key
from agentforge.scaling.fit import fit_scaling_law
from agentforge.scaling.sandbox import CandidateFailure, run_in_sandbox
from agentforge.scaling.variants import FRAMEWORKS, variant_path

BLOCK_START, BLOCK_END = "# EVOLVE-BLOCK-START", "# EVOLVE-BLOCK-END"
HEADER = re.compile(r"^#\s*scaling-framework:\s*([A-Za-z_]\w*)\s*$")
FAIL_SCORE = -1000.0  # combined_score of a rejected candidate: below any fitness a trained family reaches
# failures that the same code and settings reproduce exactly, so they may be cached (not timeouts/crashes)
DETERMINISTIC_FAILURES = {"contract", "import", "shape", "causality", "nonfinite"}
ALLOWED_IMPORTS = ("math", "torch", "agentforge.models.layers")
FORBIDDEN_CALLS = {"eval", "exec", "compile", "open", "__import__", "breakpoint", "input", "globals", "locals",
                   "vars", "exit", "quit"}


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
        elif isinstance(node, ast.Attribute) and node.attr.startswith("__") and node.attr != "__init__":
            raise CandidateFailure("forbidden", f"line {lineno}: access to {node.attr} is not allowed in the block")
        elif isinstance(node, ast.Name) and node.id.startswith("__") and node.id.endswith("__"):
            raise CandidateFailure("forbidden", f"line {lineno}: use of {node.id} is not allowed in the block")


def check_static(code: str) -> str:
    """Syntax, framework, untouched frame, allowed constructs; returns the framework name."""
    try:
        tree = ast.parse(code)
    except SyntaxError as exc:
        raise CandidateFailure("syntax", f"syntax error at line {exc.lineno}: {exc.msg}") from None
    framework = detect_framework(code)
    check_outside_block(code, framework)
    before, block, _, _ = split_block(code)
    check_block_code(tree, len(before) + 2, len(before) + 1 + len(block))
    return framework


# -- evaluation ---------------------------------------------------------------------------------------------
def failed(kind: str, message: str, **extra) -> dict:
    return {"combined_score": FAIL_SCORE, "valid": 0.0, "error_kind": kind, "error": message, **extra}


def scored(sizes: list[dict], fit_params: str) -> dict:
    key = "non_embedding_params" if fit_params == "non_embedding" else "params"
    fit = fit_scaling_law([s[key] for s in sizes], [s["loss"] for s in sizes])
    out = {"combined_score": fit.fitness, "fitness": fit.fitness, "slope": fit.slope, "intercept": fit.intercept,
           "r2": fit.r2, "valid": 1.0, "error_kind": "", "error": ""}
    for s in sizes:
        out[f"loss_{s['name']}"] = s["loss"]
        out[f"params_{s['name']}"] = float(s[key])
    return out


def evaluate(program_path: str | Path, settings: dict, *, timeout_s: float = 600.0, memory_mb: int | None = 4096,
             cache_dir: str | Path | None = None, work_dir: str | Path | None = None, check_only: bool = False) -> dict:
    """Score one candidate file; never raises for anything the candidate does (see the module docstring)."""
    t0 = time.perf_counter()
    try:
        code = Path(program_path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        return failed("io", f"{program_path}: cannot read the program ({exc})")
    try:
        framework = check_static(code)
    except CandidateFailure as exc:
        return failed(exc.kind, str(exc), cached=False, eval_seconds=time.perf_counter() - t0)
    key = cache_key(code, settings)
    cache = ResultCache(None if check_only else cache_dir)
    hit = cache.get(key)
    if hit is not None:
        return {**hit, "cached": True, "eval_seconds": time.perf_counter() - t0}
    tmp = None
    if work_dir is None:
        work_dir = tmp = Path(tempfile.mkdtemp(prefix="agentforge-scaling-"))
    try:
        work_dir = Path(work_dir)
        work_dir.mkdir(parents=True, exist_ok=True)
        candidate = work_dir / "candidate.py"
        candidate.write_text(code)
        raw = run_in_sandbox(candidate, {**settings, "check_only": check_only}, work_dir / "sandbox",
                             timeout_s=timeout_s, memory_mb=memory_mb)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    if not raw.get("ok"):
        result = failed(str(raw.get("kind", "crash")), str(raw.get("error", "unknown failure")))
    elif check_only:
        result = {"combined_score": 0.0, "valid": 1.0, "error_kind": "", "error": ""}
    else:
        try:
            result = scored(raw["sizes"], str(settings.get("fit_params", "total")))
        except (ValueError, KeyError, TypeError) as exc:
            result = failed("fit", f"the scaling fit failed: {exc}")
    result.update(framework=framework, key=key, sizes=raw.get("sizes", []), checks=raw.get("checks", {}))
    if result["valid"] or result["error_kind"] in DETERMINISTIC_FAILURES:
        cache.put(key, result)
    return {**result, "cached": False, "eval_seconds": time.perf_counter() - t0}
