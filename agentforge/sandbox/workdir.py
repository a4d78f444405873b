"""The sandbox's temp dirs on the host: what a running program holds there, and deleting them afterwards.

Both must cope with anything the program can build (3000 nested dirs, dirs made 000, a million empty files,
symlinks to host files) and neither may raise: ``tree_usage`` walks iteratively with directory fds (never a
path, never following a symlink, at most ``max_depth`` fds open) and stops counting once over the limit;
``remove_tree`` deletes with GNU ``rm`` (fts: any depth, no recursion in Python, never leaves the file system).
"""
from __future__ import annotations

import itertools
import os
import shutil
import stat
import subprocess
from pathlib import PurePosixPath

MAX_DEPTH = 64          # a work dir nested deeper than this counts as over the file limit (legit runs: 1-3)
REMOVE_TIMEOUT_S = 300  # per rm / chmod call; the file watchdog keeps trees far smaller than that needs


def tree_usage(root: str, max_entries: int, max_depth: int = MAX_DEPTH) -> tuple[int, int]:
    """(files + dirs + other entries, bytes allocated on disk) under ``root``. Counting stops once
    ``max_entries`` is passed; a tree deeper than ``max_depth`` reports ``max_entries + 1`` entries. Never
    raises (entries that vanish mid-walk are skipped)."""
    entries = size = 0
    try:
        top = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return 0, 0
    stack: list[tuple[int, list[str]]] = []
    fd: int | None = top
    try:
        while True:
            if fd is not None:  # list a newly entered dir completely, remember its subdirs
                subdirs: list[str] = []
                stack.append((fd, subdirs))
                fd = None
                try:
                    with os.scandir(stack[-1][0]) as it:
                        for entry in it:
                            entries += 1
                            if entries > max_entries:
                                return entries, size
                            try:
                                size += entry.stat(follow_symlinks=False).st_blocks * 512
                                if entry.is_dir(follow_symlinks=False):
                                    subdirs.append(entry.name)
                            except OSError:
                                continue
                except OSError:
                    pass
            if not stack:
                return entries, size
            parent, subdirs = stack[-1]
            if not subdirs:
                os.close(stack.pop()[0])
                continue
            if len(stack) >= max_depth:
                return max(entries, max_entries + 1), size
            try:
                fd = os.open(subdirs.pop(), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent)
            except OSError:
                fd = None
    finally:
        for d, _ in stack:
            os.close(d)


def deleted_open_bytes(pids: list[int], dev: int) -> int:
    """Bytes allocated to files on device ``dev`` that ``pids`` hold open after unlinking them (invisible to
    ``tree_usage``, still on the disk until closed or unmapped): through a file descriptor (``/proc/<pid>/fd``) or a
    memory mapping alone (``/proc/<pid>/map_files``: a file written, mmap-ed with libc, closed and unlinked kept its
    blocks while the watch saw nothing — 240 MiB under a 32 MiB limit). Never raises."""
    seen: dict[tuple[int, int], int] = {}
    for pid in pids:
        for sub in ("fd", "map_files"):
            try:
                entries = os.listdir(f"/proc/{pid}/{sub}")
            except OSError:
                continue
            for n in entries:
                try:
                    st = os.stat(f"/proc/{pid}/{sub}/{n}")
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode) and st.st_nlink == 0 and st.st_dev == dev:
                    seen[(st.st_dev, st.st_ino)] = st.st_blocks * 512
    return sum(seen.values())


def _quiet(argv: list[str]) -> None:
    try:
        subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=REMOVE_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):
        pass


def _remove_flat(path: str, most: int = 256) -> bool:
    """The common case without a subprocess: a dir holding at most ``most`` entries, none a dir. True when it is
    gone; False (having removed some files, maybe) where ``remove_tree`` must go on."""
    try:
        with os.scandir(path) as it:
            entries = list(itertools.islice(it, most + 1))
        if len(entries) > most or any(e.is_dir(follow_symlinks=False) for e in entries):
            return False
        for e in entries:
            os.unlink(e.path)  # a symlink is removed, never followed
        os.rmdir(path)
        return True
    except OSError:
        return False


def remove_tree(path: str) -> bool:
    """Delete ``path`` and everything under it; True when it is gone. Never raises. A flat dir of a few files
    goes without a subprocess; anything else with GNU ``rm -rf --one-file-system`` (as root it removes whatever
    the program left, whatever the modes); if something is left (a non-root caller cannot enter or empty a dir
    the program made 000), ``chmod -R u+rwx`` and rm again; ``shutil.rmtree`` last, for a system without GNU
    rm."""
    if not os.path.lexists(path) or _remove_flat(path):
        return True
    rm, chmod = shutil.which("rm") or "/bin/rm", shutil.which("chmod") or "/bin/chmod"
    _quiet([rm, "-rf", "--one-file-system", "--", path])
    if os.path.lexists(path):
        _quiet([chmod, "-R", "u+rwx", "--", path])
        _quiet([rm, "-rf", "--one-file-system", "--", path])
    if os.path.lexists(path):
        try:
            shutil.rmtree(path, ignore_errors=True)
        except Exception:  # noqa: BLE001 - RecursionError on deep trees, whatever else: never raise
            pass
    return not os.path.lexists(path)


def read_regular(root: str, name: PurePosixPath, max_bytes: int | None = None) -> bytes | None:
    """The bytes of root/name if it is a regular file reached without following any symlink, else None
    (a sandboxed program may plant a symlink to a host file where an output is expected); None as well for
    any other error (ELOOP, ENOTDIR, EACCES, ENXIO...): never raises for what the program left. None too for a
    file larger than ``max_bytes``: a sparse file's size is not its disk use (nine 255 MiB sparse outputs, each
    under the file limit and using no blocks, were read whole into the evaluator: 2.9 GB)."""
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return None
    try:
        for i, part in enumerate(name.parts):
            last = i == len(name.parts) - 1
            flags = os.O_RDONLY | os.O_NOFOLLOW | (os.O_NONBLOCK if last else os.O_DIRECTORY)
            nxt = os.open(part, flags, dir_fd=fd)
            os.close(fd)
            fd = nxt
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (max_bytes is not None and st.st_size > max_bytes):
            return None
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(max_bytes + 1 if max_bytes is not None else -1)
        return None if max_bytes is not None and len(data) > max_bytes else data
    except OSError:
        return None
    finally:
        os.close(fd)
