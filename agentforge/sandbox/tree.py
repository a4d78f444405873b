"""The sandboxed process tree as the host's /proc shows it: its processes, memory and CPU time, and the kill.

Started as root, every process of a run has the run's fresh uid (``runner._fresh_uid``), so ``uid_pids``
finds the whole tree wherever it forked to. The tree's CPU time (``tree_cpu_s``) is what its live processes
used (utime + stime of each thread group) plus what the children they reaped used (cutime + cstime), plus the
same four figures of the "top" processes: bwrap outside the sandbox and bwrap's init inside its PID
namespace (both root-owned, so not among the uid's), which reaps every orphan of the tree. Processes that
exited without being reaped yet (zombies) still show their times. RLIMIT_CPU, by contrast, is per process.
"""
from __future__ import annotations

import os
import signal
import time

from agentforge.sandbox.workdir import deleted_open_bytes, tree_usage

CLK_TCK = os.sysconf("SC_CLK_TCK")
FILES_POLL_S = 0.5      # the work dir walk runs at most this often (the /proc checks every poll)


def uid_pids(uid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    pids.append(int(entry))
            except OSError:
                continue
    return pids


def uid_rss_mb(pids: list[int]) -> float:
    """Resident memory of ``pids`` (the run uid's processes: the whole tree, wherever it forked to)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total * os.sysconf("SC_PAGE_SIZE") / 2**20


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat from field 3 (state) on: the command name in field 2 may hold spaces and ')'."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
        return raw[raw.rindex(b")") + 2:].decode().split()
    except (OSError, ValueError):
        return None


def cpu_ticks(pid: int, ppid: int | None = None) -> int:
    """utime + stime + cutime + cstime of ``pid`` in clock ticks (0 when it is gone, or, with ``ppid``, when
    its parent is not ``ppid``: a reused pid)."""
    f = _stat(pid)
    try:
        if f is None or (ppid is not None and int(f[1]) != ppid):
            return 0
        return sum(int(x) for x in f[11:15])  # fields 14-17
    except (IndexError, ValueError):
        return 0


def child_of(ppid: int) -> int | None:
    """A process whose parent is ``ppid`` (bwrap's init in the new PID namespace, for the outer bwrap)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            f = _stat(int(entry))
            if f is not None and len(f) > 1 and f[1] == str(ppid):
                return int(entry)
    return None


def tree_cpu_s(pids: list[int], top: list[tuple[int, int | None]]) -> float:
    """CPU seconds of the tree: ``pids`` (the uid's live processes) and ``top`` ((pid, expected parent) of the
    processes above them), each with what it has reaped."""
    ticks = sum(cpu_ticks(p) for p in pids) + sum(cpu_ticks(p, pp) for p, pp in top)
    return ticks / CLK_TCK


def kill_uid(uid: int, patience_s: float = 10.0) -> None:
    """SIGKILL every process of the run's uid until none is left (dying ones take a moment to go)."""
    deadline = time.perf_counter() + patience_s
    while (pids := uid_pids(uid)) and time.perf_counter() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.01)


class Watchdog:
    """The parent's per-poll check of a running sandbox: the tree's resident memory (with a fresh uid), the
    tree's CPU time against ``cpu_s`` (two polls in a row over it, so that a child counted once live and once
    in its reaper's cutime in the same poll cannot trip it), and, every ``FILES_POLL_S``, the work dir's entries
    and bytes. ``check`` returns "" or why to kill: "memory", "cpu", "files". Never raises."""

    def __init__(self, top_pid: int, uid: int | None, limits, work_dir: str, bwrap: bool) -> None:
        self.top, self.uid, self.limits, self.work, self.bwrap = top_pid, uid, limits, work_dir, bwrap
        self.init: int | None = None  # bwrap's init inside the PID namespace, once it exists
        self.over_cpu, self.next_files = 0, FILES_POLL_S
        try:
            self.dev = os.stat(work_dir).st_dev
        except OSError:
            self.dev = -1

    def check(self, elapsed: float) -> str:
        try:
            return self._check(elapsed)
        except OSError:  # /proc vanished under us: nothing to conclude this time
            return ""

    def _check(self, elapsed: float) -> str:
        lim = self.limits
        pids = uid_pids(self.uid) if self.uid is not None else []
        if self.uid is not None and uid_rss_mb(pids) > lim.memory_mb:
            return "memory"
        if self.bwrap and self.init is None:
            self.init = child_of(self.top)
        top = [(self.top, os.getpid()), *([(self.init, self.top)] if self.init else [])]
        self.over_cpu = self.over_cpu + 1 if tree_cpu_s(pids, top) > lim.cpu_s else 0
        if self.over_cpu >= 2:
            return "cpu"
        if elapsed >= self.next_files:
            self.next_files = elapsed + FILES_POLL_S
            entries, size = tree_usage(self.work, lim.max_files)
            if entries > lim.max_files or size + deleted_open_bytes(pids, self.dev) > lim.max_disk_mb * 2**20:
                return "files"
        return ""
