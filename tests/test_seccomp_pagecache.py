"""The seccomp filter's page-cache calls (red-team findings F4/F5): posix_fadvise, readahead, mincore and
cachestat fail with EPERM, preadv2/pwritev2 only when a flag is set, on both architectures and in a real
sandbox, while plain reads still work. Seconds each."""
from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import pytest

from agentforge.sandbox import SandboxLimits, run_sandboxed, strongest_mode
from agentforge.sandbox import seccomp as sc

EPERM = sc.RET_ERRNO | errno.EPERM
RWF_HIPRI, RWF_NOWAIT, RWF_DONTCACHE = 0x1, 0x8, 0x80


@pytest.mark.parametrize("arch,col", [(sc.AUDIT_ARCH_X86_64, 0), (sc.AUDIT_ARCH_AARCH64, 1)])
def test_page_cache_calls_are_denied_on_both_architectures(arch, col):
    prog = sc.build_filter()
    for name in ("fadvise64", "readahead", "mincore", "cachestat"):
        assert sc.run_filter(prog, arch, sc.NUMBERS[name][col]) == EPERM, name
    for name in ("preadv2", "pwritev2"):
        nr = sc.NUMBERS[name][col]
        assert sc.run_filter(prog, arch, nr, (3, 0, 1, 0, 0, 0)) == sc.RET_ALLOW, name  # flags 0: plain preadv
        for flag in (RWF_HIPRI, RWF_NOWAIT, RWF_DONTCACHE):
            assert sc.run_filter(prog, arch, nr, (3, 0, 1, 0, 0, flag)) == EPERM, (name, flag)
        assert sc.run_filter(prog, arch, nr, (3, 0, 1, RWF_NOWAIT, 0, 0)) == sc.RET_ALLOW  # an offset, not flags


def test_numbers_newer_than_the_headers_are_kept_apart_and_match_when_known():
    """cachestat is not in SYSCALLS (whose every name the header test looks up); where the installed headers
    know it, its number must agree."""
    assert not set(sc.NEWER_SYSCALLS) & set(sc.SYSCALLS)
    heads = [Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h"), Path("/usr/include/asm-generic/unistd.h")]
    for col, head in enumerate(heads):
        if not head.is_file():
            continue
        table = {m[1]: int(m[2]) for m in re.finditer(r"#define __NR(?:3264)?_(\w+)\s+(\d+)", head.read_text())}
        for name, nums in sc.NEWER_SYSCALLS.items():
            if name in table:
                assert table[name] == nums[col], (head.name, name)


PROBE = r"""
import ctypes, errno, os, sys
libc = ctypes.CDLL(None, use_errno=True)
nr = {nr}
path = sys.executable
fd = os.open(path, os.O_RDONLY)
def res(f):
    try:
        f()
        return 'ok'
    except OSError as e:
        return errno.errorcode[e.errno]
def raw(n, *args):
    r = libc.syscall(n, *[ctypes.c_long(a) for a in args])
    return 'ok' if r >= 0 else errno.errorcode[ctypes.get_errno()]
buf = bytearray(16)
print('fadvise', res(lambda: os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)))
print('readahead', raw(nr['readahead'], fd, 0, 4096))
vec = ctypes.create_string_buffer(1)
print('mincore', raw(nr['mincore'], 0, 4096, ctypes.addressof(vec)))
print('cachestat', raw(nr['cachestat'], fd, 0, 0, 0))
print('nowait', res(lambda: os.preadv(fd, [buf], 0, os.RWF_NOWAIT)))
print('preadv', res(lambda: os.preadv(fd, [buf], 0)))
print('pread', len(os.pread(fd, 16, 0)))
"""


@pytest.mark.skipif(strongest_mode() != "bwrap", reason="bubblewrap does not work here")
def test_in_the_sandbox_the_channel_tools_fail_and_reads_work():
    col = 0 if os.uname().machine == "x86_64" else 1
    code = PROBE.format(nr={k: sc.NUMBERS[k][col] for k in ("readahead", "mincore", "cachestat")})
    r = run_sandboxed(["python", "main.py"], {"main.py": code}, mode="bwrap", mount_package=False,
                      limits=SandboxLimits(wall_s=20, cpu_s=20, memory_mb=1024, max_procs=32, max_file_mb=8))
    assert r.kind == "ok", r.stderr
    got = dict(line.split(" ", 1) for line in r.stdout.strip().splitlines())
    assert got == {"fadvise": "EPERM", "readahead": "EPERM", "mincore": "EPERM", "cachestat": "EPERM",
                   "nowait": "EPERM", "preadv": "ok", "pread": "16"}
