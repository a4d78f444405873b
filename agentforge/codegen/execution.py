"""Executing completions against their tests, only through ``agentforge.sandbox.run_sandboxed``.

Each sample is one program (``Problem.program``) run as its own sandboxed process with a per-sample
wall/CPU timeout and memory limit; up to ``workers`` run at once (threads that wait on the sandboxes).
Outcomes, judged on the trusted side:

* ``passed``  — exit code 0 *and* the tests reached their end: after them the program writes a random
  token the harness sends on stdin to a file the harness reads back, so a completion that calls
  ``sys.exit(0)`` before the tests run does not pass (one that deliberately reads its stdin to forge the
  token could; the sandbox still contains it);
* ``failed``  — an ``AssertionError`` (a test's assert);
* ``timeout`` — killed at the wall-clock or CPU limit;
* ``error``   — any other exception, a syntax error, the memory limit, a crash.

Identical programs (common for a small model's samples) are executed once and the outcome shared.
A hostile completion can only spoil its own sample: the run continues.
"""
from __future__ import annotations

import hashlib
import os
import secrets
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from agentforge.sandbox import SandboxLimits, run_sandboxed

OUTCOMES = ("passed", "failed", "timeout", "error")
DONE_FILE = "_af_tests_done"
_TAIL = (f"\nimport sys as _af_sys\nwith open({DONE_FILE!r}, 'w') as _af_f:\n"
         f"    _af_f.write(_af_sys.stdin.readline().strip())\n")


@dataclass
class SampleResult:
    outcome: str          # passed | failed | timeout | error
    detail: str           # the last stderr line (or the sandbox kind) for the report
    wall_s: float


def classify(kind: str, returncode: int | None, done: bytes | None, stderr: str, token: str) -> tuple[str, str]:
    """(outcome, detail) of one sandbox result; see the module doc."""
    last = next((ln.strip() for ln in reversed(stderr.splitlines()) if ln.strip()), "")
    if kind == "timeout":
        return "timeout", "timeout"
    if kind == "ok" and returncode == 0:
        if done is not None and done.decode(errors="replace").strip() == token:
            return "passed", ""
        return "error", "exited before the tests ran"
    if last.startswith("AssertionError"):
        return "failed", last[:200]
    if kind == "memory":
        return "error", "memory limit"
    return "error", last[:200] or f"{kind} (exit {returncode})"


def run_one(program: str, limits: SandboxLimits, mode: str) -> SampleResult:
    token = secrets.token_hex(16)
    res = run_sandboxed(["python", "solution.py"], {"solution.py": program + _TAIL}, limits=limits, mode=mode,
                        stdin=token + "\n", outputs=(DONE_FILE,))
    outcome, detail = classify(res.kind, res.returncode, res.files.get(DONE_FILE), res.stderr, token)
    return SampleResult(outcome, detail, res.wall_s)


def execute(programs: list[str], *, timeout_s: float = 5.0, memory_mb: int = 512, workers: int | None = None,
            mode: str = "bwrap") -> list[SampleResult]:
    """Outcomes of ``programs`` in order; identical programs run once."""
    limits = SandboxLimits(wall_s=timeout_s, cpu_s=max(1, int(timeout_s + 0.999)), memory_mb=memory_mb,
                           max_procs=16, max_file_mb=16)
    keys = [hashlib.sha256(p.encode()).hexdigest() for p in programs]
    unique = dict(zip(keys, programs))
    workers = max(1, min(workers or os.cpu_count() or 1, len(unique) or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        done = dict(zip(unique, pool.map(lambda p: run_one(p, limits, mode), unique.values())))
    return [done[k] for k in keys]


def outcome_counts(results: list[SampleResult]) -> dict[str, int]:
    c = Counter(r.outcome for r in results)
    return {o: int(c.get(o, 0)) for o in OUTCOMES}
