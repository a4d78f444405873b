"""The sandbox contract (agentforge.sandbox): files in, isolated run, files back, kinds of failure."""
from __future__ import annotations

import pytest

from agentforge.errors import ConfigError
from agentforge.sandbox import SandboxLimits, require_sandbox, run_sandboxed

FAST = SandboxLimits(wall_s=20, cpu_s=20, memory_mb=1024, max_procs=32, max_file_mb=8)
MODES = ["bwrap", "process"]


@pytest.mark.parametrize("mode", MODES)
def test_files_in_outputs_back_and_cleared_env(mode, monkeypatch):
    monkeypatch.setenv("AGENTFORGE_TEST_SECRET", "s3cr3t")
    code = ("import os, sys\nprint(sys.stdin.read().upper())\nopen('out/r.txt', 'w').write(open('in.txt').read() * 2)\n"
            "print(sorted(k for k in os.environ if 'SECRET' in k or k == 'EXTRA'), file=sys.stderr)\n")
    r = run_sandboxed(["python", "main.py"], {"main.py": code, "in.txt": "ab", "out/keep": b""}, limits=FAST,
                      outputs=("out/r.txt", "missing.txt"), env={"EXTRA": "1"}, mode=mode, stdin="hello")
    assert (r.kind, r.returncode, r.mode) == ("ok", 0, mode)
    assert r.stdout.strip() == "HELLO"
    assert r.files == {"out/r.txt": b"abab"}
    assert r.stderr.strip() == "['EXTRA']"  # the parent's secret is not in the child's environment
    assert r.wall_s > 0


@pytest.mark.parametrize("mode", MODES)
def test_failure_kinds(mode):
    crash = run_sandboxed(["python", "-c", "raise SystemExit(3)"], {}, limits=FAST, mode=mode)
    assert (crash.kind, crash.returncode) == ("crash", 3)
    hang = run_sandboxed(["python", "-c", "while True: pass"], {}, limits=SandboxLimits(wall_s=1.5), mode=mode)
    assert (hang.kind, hang.returncode) == ("timeout", None)
    mem = run_sandboxed(["python", "-c", "x = bytearray(3 * 2**30)"], {}, limits=FAST, mode=mode)
    assert mem.kind == "memory" and "MemoryError" in mem.stderr


def test_bad_mode_and_paths_are_config_errors():
    with pytest.raises(ConfigError, match="sandbox mode 'docker'"):
        require_sandbox("docker")
    with pytest.raises(ConfigError, match="relative path"):
        run_sandboxed(["python", "-c", "pass"], {"../x.py": ""}, mode="process")
