"""Attacks on the bubblewrap sandbox itself: each must leave no file outside its temp dir, read no secret,
send no byte and leave no process behind (``make test-faults``; seconds each)."""
from __future__ import annotations

import ast
import os
import socket
import threading
import uuid
from pathlib import Path

import pytest

from agentforge.errors import ConfigError
from agentforge.sandbox import SandboxLimits, require_sandbox, run_sandboxed

pytestmark = pytest.mark.faults
LIMITS = SandboxLimits(wall_s=20, cpu_s=20, memory_mb=1024, max_procs=32, max_file_mb=8)


def run(code: str, **kw) -> object:
    kw.setdefault("limits", LIMITS)
    return run_sandboxed(["python", "main.py"], {"main.py": code}, **kw)


def alive_with(marker: str) -> list[int]:
    """Host processes whose command line holds ``marker``."""
    pids = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and marker.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                pids.append(int(entry))
        except OSError:
            continue
    return [p for p in pids if p != os.getpid()]


@pytest.fixture
def secret_file(tmp_path):
    path = tmp_path / "secret.txt"
    path.write_text("TOPSECRET-42")
    return path


def test_host_files_are_not_readable(secret_file):
    targets = [str(secret_file), "/etc/passwd", "/etc/shadow", "/root/.bashrc", str(Path.cwd() / "README.md"),
               str(Path(__file__))]
    code = ("import sys\nfor t in sys.argv[1:]:\n    try:\n        print('GOT', t, open(t).read()[:20])\n"
            "    except OSError as e:\n        print('DENIED', t, type(e).__name__)\n")
    r = run_sandboxed(["python", "main.py", *targets], {"main.py": code}, limits=LIMITS)
    assert r.kind == "ok", r.stderr
    assert "GOT " not in r.stdout and r.stdout.count("DENIED") == len(targets)
    assert "TOPSECRET" not in r.stdout + r.stderr


def test_writes_outside_the_temp_dir_do_not_land(tmp_path):
    marker = uuid.uuid4().hex
    targets = [tmp_path / f"{marker}.txt", Path("/tmp") / f"{marker}.txt",
               Path(__file__).parent.parent / "agentforge" / f"{marker}.py", Path(os.__file__).parent / f"{marker}.py"]
    code = ("import sys, subprocess\nfor t in sys.argv[1:]:\n    try:\n        open(t, 'w').write('x')\n"
            "    except OSError:\n        pass\n"
            "subprocess.run(['sh', '-c', 'for f in \"$@\"; do echo x > $f; done', 'sh', *sys.argv[1:]])\n"
            "import ctypes\nctypes.CDLL(None).system(('touch ' + ' '.join(sys.argv[1:])).encode())\n")
    r = run_sandboxed(["python", "main.py", *map(str, targets)], {"main.py": code}, limits=LIMITS)
    assert r.kind == "ok", r.stderr
    assert not [t for t in targets if t.exists()]


def test_environment_and_proc_hold_no_secret(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "wandb-secret-77")
    monkeypatch.setenv("OPENAI_API_KEY", "llm-secret-88")
    code = ("import os\nprint(dict(os.environ))\nfor p in os.listdir('/proc'):\n    if p.isdigit():\n"
            "        try:\n            print(open(f'/proc/{p}/environ', 'rb').read())\n        except OSError:\n"
            "            pass\nprint('PIDS', sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))\n")
    r = run(code)
    assert r.kind == "ok", r.stderr
    assert "secret" not in r.stdout + r.stderr
    pids = ast.literal_eval(r.stdout.split("PIDS")[1].strip())  # own PID namespace: only bwrap's init and the program
    assert max(pids) < 10


def test_the_program_holds_no_capability_not_even_in_its_bounding_set():
    """Every capability set of the program is empty and no_new_privs is on. The bounding set was the host's full
    set until 2026-11-28 (a red-team's readout): setpriv's ``--bounding-set=-all`` needs CAP_SETPCAP, which bwrap
    did not keep, so it dropped nothing; nothing could be gained then either (no effective or permitted
    capability, no_new_privs), but "no capabilities" was only true of the effective set."""
    r = run("print(open('/proc/self/status').read())")
    assert r.kind == "ok", r.stderr
    status = dict(line.split(":", 1) for line in r.stdout.splitlines() if ":" in line)
    for name in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[name].strip(), 16) == 0, (name, status[name])
    assert status["NoNewPrivs"].strip() == "1"


def test_no_byte_reaches_a_loopback_listener():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(0.2)
    port, got, done = srv.getsockname()[1], [], threading.Event()

    def accept():
        while not done.is_set():
            try:
                conn, _ = srv.accept()
                got.append(conn.recv(100))
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    code = (f"import socket\nfor host in ('127.0.0.1', 'localhost', '10.0.0.1'):\n    try:\n"
            f"        s = socket.create_connection((host, {port}), timeout=1)\n        s.sendall(b'leak')\n"
            f"        print('SENT', host)\n    except OSError as e:\n        print('BLOCKED', host, e)\n")
    r = run(code)
    done.set()
    t.join()
    srv.close()
    assert r.kind == "ok", r.stderr
    assert "SENT" not in r.stdout and got == []


def test_fork_bomb_is_bounded_and_leaves_nothing():
    marker = uuid.uuid4().hex
    code = ("import os, sys, time\nn = 0\ntry:\n    while True:\n        if os.fork() == 0:\n"
            f"            os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', '{marker}'])\n"
            "        n += 1\nexcept OSError:\n    print('forks', n)\n")
    r = run(code)
    assert r.kind == "ok" and 0 < int(r.stdout.split()[-1]) < LIMITS.max_procs, r.stdout + r.stderr
    assert alive_with(marker) == []


def test_setsid_double_fork_escape_dies_with_the_sandbox(tmp_path):
    marker = uuid.uuid4().hex
    code = ("import os, sys\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
            f"        os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', '{marker}'])\n"
            "    os._exit(0)\nprint('parent done')\n")
    r = run(code)
    assert r.kind == "ok"
    assert alive_with(marker) == []


def test_memory_bomb_spread_over_processes_is_stopped():
    code = ("import os, time\nfor _ in range(6):\n    if os.fork() == 0:\n        x = b'x' * (120 * 2**20)\n"
            "        time.sleep(30)\n        os._exit(0)\ntime.sleep(30)\n")
    r = run(code, limits=SandboxLimits(wall_s=20, memory_mb=400, max_procs=32))
    assert r.kind == "memory" and r.wall_s < 15


def test_infinite_loop_and_cpu_limit():
    assert run("while True: pass", limits=SandboxLimits(wall_s=1.0)).kind == "timeout"
    r = run("while True: pass", limits=SandboxLimits(wall_s=30, cpu_s=1))
    assert r.kind == "timeout" and r.wall_s < 15  # RLIMIT_CPU, not the wall clock


def test_big_file_and_symlinked_outputs(secret_file):
    code = (f"import os\nos.symlink({str(secret_file)!r}, 'out.txt')\nos.symlink('/etc/hostname', 'o2')\n"
            "open('big', 'wb').write(b'x' * (20 * 2**20))\n")
    r = run(code, outputs=("out.txt", "o2", "big"))
    assert r.kind == "crash" and "File too large" in r.stderr  # RLIMIT_FSIZE = 8 MiB
    assert set(r.files) == {"big"} and len(r.files["big"]) <= 8 * 2**20  # symlinks are never followed back


def test_kill_everything_it_can_see_harms_nothing_outside():
    r = run("import os, signal\nos.kill(-1, signal.SIGKILL)\n")
    assert r.kind in ("ok", "crash")  # the program may kill itself; the host test process lives on


def test_missing_bwrap_is_refused_with_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ConfigError) as err:
        require_sandbox("bwrap")
    msg = str(err.value)
    assert "apt-get install bubblewrap" in msg and "phase.sandbox=process" in msg and "\n" not in msg
    with pytest.raises(ConfigError):
        run("print('never runs')")
    require_sandbox("process")  # the weaker mode stays available when chosen explicitly


def test_process_mode_is_weaker_and_says_so(secret_file, monkeypatch):
    """The fallback clears the environment and kills its process group, but the host's files are visible."""
    monkeypatch.setenv("WANDB_API_KEY", "wandb-secret-77")
    r = run(f"import os\nprint(open({str(secret_file)!r}).read(), os.environ.get('WANDB_API_KEY'))", mode="process")
    assert (r.kind, r.mode) == ("ok", "process")
    assert r.stdout.split() == ["TOPSECRET-42", "None"]


@pytest.mark.parametrize("prlimit", [True, False])
def test_rlimits_reach_the_program_with_or_without_prlimit(monkeypatch, prlimit):
    """runner._with_limits: util-linux's prlimit where it exists, else setrlimit in a preexec_fn; same limits."""
    from agentforge.sandbox import runner

    if not prlimit:
        monkeypatch.setattr(runner, "PRLIMIT", "/nonexistent/prlimit")
    elif not os.path.isfile(runner.PRLIMIT):
        pytest.skip(f"{runner.PRLIMIT} is not installed")
    code = "import resource as r\nprint([r.getrlimit(k) for k in (r.RLIMIT_CPU, r.RLIMIT_FSIZE, r.RLIMIT_CORE)])\n"
    res = run(code, mode="process")
    assert res.kind == "ok", res.stderr
    assert ast.literal_eval(res.stdout.strip()) == [(20, 21), (8 * 2 ** 20,) * 2, (0, 0)]


def test_only_the_passed_fds_reach_the_program():
    """``pass_fds`` (the codegen harness's pipes between its two sandboxes): those fds arrive under the same
    numbers; another inheritable fd of the parent does not."""
    given_r, given_w = os.pipe()
    other_r, other_w = os.pipe()
    os.set_inheritable(other_w, True)
    code = ("import os, sys\ngiven, other = map(int, sys.argv[1:])\nos.write(given, b'through')\n"
            "try:\n    os.write(other, b'leak')\nexcept OSError as e:\n    print('closed', e.errno)\n")
    try:
        r = run_sandboxed(["python", "main.py", str(given_w), str(other_w)], {"main.py": code}, limits=LIMITS,
                          pass_fds=(given_w,))
        os.close(given_w)
        os.close(other_w)
        assert r.kind == "ok", r.stderr
        assert os.read(given_r, 100) == b"through" and os.read(other_r, 100) == b""
        assert r.stdout.startswith("closed")
    finally:
        os.close(given_r)
        os.close(other_r)


def test_codegen_forgeries_of_the_red_team_are_not_passes():
    """The one-process codegen harness scored these wrong HumanEval/0 solutions ``passed``; now the tests run in
    a sandbox of their own (details in tests/test_codegen_isolation.py)."""
    from agentforge.codegen.execution import execute, split_program
    from agentforge.codegen.problems import load_humaneval
    from tests.test_codegen_isolation import ATEXIT, DIRECT, EQ, EXCEPTHOOK

    p = load_humaneval()[0]
    out = execute([split_program(p, c) for c in (p.canonical_solution, ATEXIT, EXCEPTHOOK, DIRECT, EQ)],
                  timeout_s=5.0, memory_mb=512, workers=2, mode="bwrap")
    assert [r.outcome for r in out] == ["passed", "failed", "failed", "error", "error"]
