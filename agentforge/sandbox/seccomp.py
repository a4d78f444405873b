"""The seccomp filter bwrap installs on the sandboxed program (``bwrap --seccomp FD``), built with ``struct``.

Why: memory the rlimits and the tree watchdog cannot see must not be creatable. Pages of a memfd written with
write(2) (never mapped) and of a detached SysV shm segment live in RAM but in no process's RSS and outside
RLIMIT_AS; SysV message queues hold kernel memory the same way. The filter makes those calls fail, and, as
hardening, the kernel interfaces an evolved attention function or a benchmark solution never needs:
io_uring, userfaultfd, bpf, perf_event_open, the keyrings, ptrace and cross-process memory access, every
mount call (old and new API), setns, unshare / clone with a namespace flag, and prctl(PR_SET_DUMPABLE)
(a non-dumpable process gets a root-owned /proc entry and would hide from the uid-based watchdog). Watches
(epoll_ctl, inotify_add_watch, fanotify_mark) fail too: their kernel memory is outside every limit as well. Setting
SIGCHLD's disposition fails too (rt_sigaction(SIGCHLD) with a new action): with SIGCHLD ignored or SA_NOCLDWAIT
the kernel reaps exited children itself and adds their CPU time to no parent's cutime, so the tree's CPU budget
(``tree.tree_cpu_s``) never saw it — a red team's children, each under RLIMIT_CPU, burned 7.2 CPU s under
cpu_s=1. No program run here needs a SIGCHLD handler (torch's DataLoader workers set one; nothing sandboxed
uses them).

It also narrows a covert channel between sandbox runs: every run mounts the same read-only host files (the
Python installation), and whether a page of one of them is in the page cache is state one run can set and a
later run can read. A red team sent 168 bits from a killed run to a fresh one that way, and let the
re-scoring's spot-check run (rows alone) read a statistic of the batch run's rows, defeating that check
(``scaling/rescore.py``). The cheap tools of that channel fail with EPERM: posix_fadvise (fadvise64: DONTNEED
clears pages, WILLNEED sets them), readahead, mincore and cachestat (read residency), and preadv2/pwritev2
with any flag set (RWF_NOWAIT reads residency without changing it, RWF_DONTCACHE drops pages); with flags 0
they are plain preadv/pwritev and pass. This does not close the channel: a page can still be set by reading
it, and read by timing a first read (a miss costs a disk read, a hit does not), so a candidate that times its
reads can still send a few bits, slower and noisier; nothing here treats the runs as unable to communicate.

What: a classic-BPF program over ``struct seccomp_data`` {int nr; u32 arch; u64 ip; u64 args[6]}. It first
checks ``arch``: x86_64 and aarch64 are matched with their own syscall numbers; on x86_64 the x32 ABI (nr
with bit 30 set, ``__X32_SYSCALL_BIT``) fails with EPERM; any other arch (i386 through ``int 0x80``, arm32
compat) kills the process. Denied calls return EPERM, except clone3, which returns ENOSYS so that glibc
(2.34+) falls back to clone(2), whose flags the filter can read (clone3 passes them in memory it cannot).
Everything else is allowed: this is a deny list on top of the namespaces, uid and rlimits, not a whitelist.

Sources: the kernel's Documentation/userspace-api/seccomp_filter.rst and seccomp(2) (filter format, return
values, the arch check, x32); include/uapi/linux/seccomp.h (SECCOMP_RET_*), include/uapi/linux/filter.h and
bpf_common.h (``struct sock_filter`` = u16 code, u8 jt, u8 jf, u32 k; opcodes), include/uapi/linux/audit.h
(AUDIT_ARCH_X86_64 = EM_X86_64|64BIT|LE, AUDIT_ARCH_AARCH64 = EM_AARCH64|64BIT|LE); the syscall numbers from
arch/x86/entry/syscalls/syscall_64.tbl and include/uapi/asm-generic/unistd.h (aarch64), checked against
/usr/include/x86_64-linux-gnu/asm/unistd_64.h and /usr/include/asm-generic/unistd.h; include/uapi/linux/sched.h
(CLONE_NEW*); bubblewrap's bwrap(1) (``--seccomp FD``: the raw program, read from FD, loaded just before the
command is executed, after bwrap's own setup).
"""
from __future__ import annotations

import errno
import os
import platform
import struct
from functools import lru_cache

AUDIT_ARCH_X86_64 = 0xC000003E      # EM_X86_64 (62)   | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE
AUDIT_ARCH_AARCH64 = 0xC00000B7     # EM_AARCH64 (183) | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE
X32_SYSCALL_BIT = 0x40000000
SUPPORTED_MACHINES = {"x86_64": AUDIT_ARCH_X86_64, "amd64": AUDIT_ARCH_X86_64,
                      "aarch64": AUDIT_ARCH_AARCH64, "arm64": AUDIT_ARCH_AARCH64}

RET_KILL_PROCESS, RET_ERRNO, RET_ALLOW = 0x80000000, 0x00050000, 0x7FFF0000
LD_W_ABS, JEQ, JGE, JSET, RET_K = 0x20, 0x15, 0x35, 0x45, 0x06   # BPF_LD|W|ABS, BPF_JMP|J*|K, BPF_RET|K
OFF_NR, OFF_ARCH, OFF_ARG0 = 0, 4, 16                              # seccomp_data; args' low word (little endian)

CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x02000000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET, CLONE_NEWTIME = 0x10000000, 0x20000000, 0x40000000, 0x00000080
CLONE_NS = CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET
UNSHARE_NS = CLONE_NS | CLONE_NEWTIME   # clone's low byte is the exit signal, so NEWTIME only counts for unshare
PR_SET_DUMPABLE = 4
SIGCHLD = 17   # on x86_64 and aarch64 alike

# name: (x86_64, aarch64)
SYSCALLS = {
    "memfd_create": (319, 279), "memfd_secret": (447, 447), "shmget": (29, 194), "shmat": (30, 196),
    "shmctl": (31, 195), "msgget": (68, 186), "io_uring_setup": (425, 425), "io_uring_enter": (426, 426),
    "io_uring_register": (427, 427), "userfaultfd": (323, 282), "bpf": (321, 280), "perf_event_open": (298, 241),
    "keyctl": (250, 219), "add_key": (248, 217), "request_key": (249, 218), "ptrace": (101, 117),
    "process_vm_readv": (310, 270), "process_vm_writev": (311, 271), "pidfd_getfd": (438, 438),
    "mount": (165, 40), "umount2": (166, 39), "pivot_root": (155, 41), "open_tree": (428, 428),
    "move_mount": (429, 429), "fsopen": (430, 430), "fsconfig": (431, 431), "fsmount": (432, 432),
    "fspick": (433, 433), "mount_setattr": (442, 442), "setns": (308, 268),
    "clone3": (435, 435), "clone": (56, 220), "unshare": (272, 97), "prctl": (157, 167),
    "socket": (41, 198), "socketpair": (53, 199),
    "fadvise64": (221, 223), "readahead": (187, 213), "mincore": (27, 232), "preadv2": (327, 286),
    "pwritev2": (328, 287), "rt_sigaction": (13, 134),
    "vmsplice": (278, 75), "splice": (275, 76), "tee": (276, 77),
    "epoll_create1": (291, 20), "epoll_ctl": (233, 21), "inotify_init1": (294, 26), "inotify_add_watch": (254, 27),
    "fanotify_init": (300, 262), "fanotify_mark": (301, 263),
}
# calls newer than the system headers the tests check SYSCALLS against: cachestat (Linux 6.5) is 451 in
# arch/x86/entry/syscalls/syscall_64.tbl and in the unified table every newer arch (aarch64) follows
NEWER_SYSCALLS = {"cachestat": (451, 451)}
NUMBERS = {**SYSCALLS, **NEWER_SYSCALLS}
# EPERM, always. vmsplice / splice / tee too: a pipe keeps each page spliced into it alive after the program unmaps
# it, in no RSS and outside RLIMIT_AS (a red-team held 720 MiB under 512 MB with one byte of each 2 MiB huge page
# vmspliced into pipes, and reported ~32 GiB reachable per sandbox). Sockets too: the network namespace leaves only
# AF_UNIX pairs, whose queued buffers are kernel memory counted in no RSS (a red-team held 1.5 GB under a 512 MB limit that way) and whose SCM_RIGHTS messages
# can hide open files from the work-dir watch; no program run here needs one. epoll, inotify and fanotify too: each
# epoll watch (~200 bytes) and inotify / fanotify mark is kernel memory in no RSS, capped per uid (every run has a fresh
# uid), so a red team held ~1 GiB of unreclaimable kernel memory under a 512 MB limit with 5.1M epoll watches (eventfds
# dup'ed onto many fd numbers, each registered in many epolls); adding a watch or a mark fails, and so does making an
# instance with epoll_create1 / inotify_init1 (x86_64's older epoll_create / inotify_init still make empty ones, which
# hold no watch). Python's subprocess and multiprocessing wait with poll(2), not epoll.
DENIED = tuple(n for n in SYSCALLS if n not in ("clone3", "clone", "unshare", "prctl", "preadv2", "pwritev2",
                                                 "rt_sigaction"))
DENIED_NEWER = tuple(NEWER_SYSCALLS)   # EPERM too (kept apart so DENIED names only header-checked numbers)
ENOSYS_CALLS = ("clone3",)
RWF_ANY = 0xFFFFFFFF   # every RWF_* flag lies in the flags' low word (the kernel refuses unknown high bits)
# (name, argument, mask): EPERM when that argument's low word has any of the mask's bits; preadv2(fd, iov,
# iovcnt, pos_l, pos_h, flags) and pwritev2 take their flags as the sixth argument on both architectures
ARG_CHECKS = (("clone", 0, CLONE_NS), ("unshare", 0, UNSHARE_NS), ("preadv2", 5, RWF_ANY), ("pwritev2", 5, RWF_ANY))


class _Program:
    """Straight-line cBPF with forward jumps to labels (resolved by ``assemble``)."""

    def __init__(self) -> None:
        self.insns: list[list] = []
        self.labels: dict[str, int] = {}

    def op(self, code: int, k: int, jt: str | int = 0, jf: str | int = 0) -> None:
        self.insns.append([code, jt, jf, k])

    def label(self, name: str) -> None:
        self.labels[name] = len(self.insns)

    def assemble(self) -> bytes:
        out = b""
        for i, (code, jt, jf, k) in enumerate(self.insns):
            jt, jf = (self.labels[j] - i - 1 if isinstance(j, str) else j for j in (jt, jf))
            if not (0 <= jt <= 255 and 0 <= jf <= 255):
                raise ValueError(f"seccomp: jump out of range at instruction {i}")
            out += struct.pack("=HBBI", code, jt, jf, k & 0xFFFFFFFF)
        return out


def _arch_block(p: _Program, tag: str, column: int, x86: bool) -> None:
    p.label(tag)
    p.op(LD_W_ABS, OFF_NR)
    if x86:
        p.op(JGE, X32_SYSCALL_BIT, jt=f"{tag}_eperm")
    for name in DENIED + DENIED_NEWER:
        p.op(JEQ, NUMBERS[name][column], jt=f"{tag}_eperm")
    for name in ENOSYS_CALLS:
        p.op(JEQ, NUMBERS[name][column], jt=f"{tag}_enosys")
    for name, _, _ in ARG_CHECKS:
        p.op(JEQ, NUMBERS[name][column], jt=f"{tag}_{name}")
    p.op(JEQ, NUMBERS["prctl"][column], jt=f"{tag}_prctl")
    p.op(JEQ, NUMBERS["rt_sigaction"][column], jt=f"{tag}_sigaction")
    p.op(RET_K, RET_ALLOW)
    for name, arg, mask in ARG_CHECKS:
        p.label(f"{tag}_{name}")
        p.op(LD_W_ABS, OFF_ARG0 + 8 * arg)
        p.op(JSET, mask, jt=f"{tag}_eperm")
        p.op(RET_K, RET_ALLOW)
    p.label(f"{tag}_prctl")
    p.op(LD_W_ABS, OFF_ARG0)
    p.op(JEQ, PR_SET_DUMPABLE, jt=f"{tag}_eperm")
    p.op(RET_K, RET_ALLOW)
    p.label(f"{tag}_sigaction")   # rt_sigaction(SIGCHLD, act != NULL, ...): EPERM (reading it, act NULL, passes)
    p.op(LD_W_ABS, OFF_ARG0)
    p.op(JEQ, SIGCHLD, jt=f"{tag}_sigchld")
    p.op(RET_K, RET_ALLOW)
    p.label(f"{tag}_sigchld")
    for word in (0, 4):          # the pointer's low and high words
        p.op(LD_W_ABS, OFF_ARG0 + 8 + word)
        p.op(JSET, 0xFFFFFFFF, jt=f"{tag}_eperm")
    p.op(RET_K, RET_ALLOW)
    p.label(f"{tag}_eperm")
    p.op(RET_K, RET_ERRNO | errno.EPERM)
    p.label(f"{tag}_enosys")
    p.op(RET_K, RET_ERRNO | errno.ENOSYS)


def build_filter() -> bytes:
    """The filter as bwrap reads it: an array of ``struct sock_filter`` (8 bytes each, native byte order)."""
    p = _Program()
    p.op(LD_W_ABS, OFF_ARCH)
    p.op(JEQ, AUDIT_ARCH_X86_64, jt="x86_64")
    p.op(JEQ, AUDIT_ARCH_AARCH64, jt="aarch64")
    p.op(RET_K, RET_KILL_PROCESS)
    _arch_block(p, "x86_64", 0, x86=True)
    _arch_block(p, "aarch64", 1, x86=False)
    return p.assemble()


@lru_cache(maxsize=1)
def _filter_bytes() -> bytes:
    return build_filter()


def filter_pipe() -> int:
    """The read end of a pipe holding the filter, for ``bwrap --seccomp FD`` (bwrap reads it to the end and
    closes its copy; the caller closes this one after the run)."""
    r, w = os.pipe()
    try:
        os.write(w, _filter_bytes())  # < 1 KiB, well inside the pipe buffer
    finally:
        os.close(w)
    return r


def host_supported() -> bool:
    """Whether the filter knows this machine's syscall numbers (elsewhere it would kill every program)."""
    return platform.machine().lower() in SUPPORTED_MACHINES


def run_filter(prog: bytes, arch: int, nr: int, args: tuple[int, ...] = ()) -> int:
    """Evaluate ``prog`` on one syscall, as the kernel would (only the opcodes ``build_filter`` emits): the
    tests check the aarch64 half with it, which this x86_64 machine cannot run."""
    data = struct.pack("=iIQ6Q", nr, arch, 0, *(list(args) + [0] * 6)[:6])
    insns = [struct.unpack_from("=HBBI", prog, i) for i in range(0, len(prog), 8)]
    pc, acc = 0, 0
    while True:
        code, jt, jf, k = insns[pc]
        if code == LD_W_ABS:
            acc = struct.unpack_from("=I", data, k)[0]
        elif code == RET_K:
            return k
        elif code in (JEQ, JGE, JSET):
            hit = acc == k if code == JEQ else acc >= k if code == JGE else bool(acc & k)
            pc += jt if hit else jf
        else:
            raise ValueError(f"unexpected opcode {code:#x}")
        pc += 1
