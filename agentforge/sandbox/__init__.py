"""Running untrusted code (evolved programs, model-written solutions) isolated by the operating system.

    result = run_sandboxed(["python", "main.py"], {"main.py": code}, outputs=("out.json",),
                           limits=SandboxLimits(wall_s=10, memory_mb=1024))

``mode="bwrap"`` (the default) runs the code under bubblewrap: its own user, PID, network, IPC, UTS and
mount namespaces (no network beyond an empty loopback), a read-only view of the system libraries, the
Python installation and the ``agentforge`` package only, a fresh private temp dir as the only writable
place and working directory, a cleared environment, ``--die-with-parent``, rlimits on CPU time, address
space, process count, open files and file size, a seccomp filter (no memfd / SysV shm, io_uring, bpf,
ptrace, mounts, new namespaces...: ``seccomp.py``), and a watchdog on the whole tree's resident memory and
CPU time and on the work dir's files and bytes. ``mode="process"`` is the weaker fallback (a child process
with a cleared environment and the same rlimits and watchdog, no seccomp filter, and the host's file
system, network and PID space);
callers print a warning on every run. ``require_sandbox`` refuses ``bwrap`` mode where bubblewrap is
missing or does not work, with one line saying how to install it.
"""
from agentforge.sandbox.runner import SandboxLimits, SandboxResult, require_sandbox, run_sandboxed, strongest_mode

__all__ = ["SandboxLimits", "SandboxResult", "require_sandbox", "run_sandboxed", "strongest_mode"]
