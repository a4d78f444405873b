"""Results of past evaluations, keyed by sha256(candidate code + the settings that shape the result + the
project's own code that computes it).

An evaluation costs minutes; OpenEvolve often re-proposes a program it has already seen, and a re-run of
the phase with the same config should cost nothing. Entries are JSON files written atomically, so a
killed run never leaves a half-written entry that a later run would trust.

The key also holds ``source_digest()``: a hash of every project file that determines a result — the
``agentforge/scaling`` package, ``agentforge/models/layers.py`` and every ``agentforge`` module they import,
found by following their import statements (function-level ones too) — so editing, say, the init std in
``scaling/model.py`` misses the cache instead of serving the old loss.
"""
from __future__ import annotations

import ast
import hashlib
import json
from pathlib import Path

from agentforge.io import write_json_atomic

CACHE_VERSION = 8  # bump when the meaning of a cached result changes (2: results carry the test-set figures;
                   # 3: the logits scored are recomputed from the returned weights, rescore.py; 4: the fit's
                   # params are the reference architecture's, the child's informational fields are validated;
                   # 5: the returned parameters are counted by their bytes, in fp32 equivalents; 6: the baseline
                   # reference is the mean of phase.seeds training seeds, the key holds the project's code;
                   # 7: the test rows are the tasks' test split, the spot check computes every row alone;
                   # 8: a child's val-curve rows hold distinct documents, none spanning two rows)
PROJECT_ROOT = Path(__file__).resolve().parents[2]  # the directory holding the agentforge package
ROOTS = ("agentforge/scaling", "agentforge/models/layers.py")  # where the import walk starts


def _module_file(root: Path, name: str) -> Path | None:
    base = root.joinpath(*name.split("."))
    for path in (base / "__init__.py", base.with_suffix(".py")):
        if path.is_file():
            return path
    return None


_PARSED: dict[tuple[str, int, int], list[str]] = {}  # (path, mtime_ns, size) -> its agentforge imports


def _imports(path: Path) -> list[str]:
    """The ``agentforge`` module names ``path`` imports (parsed once per version of the file)."""
    st = path.stat()
    memo = (str(path), st.st_mtime_ns, st.st_size)
    if memo not in _PARSED:
        names = []
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError):  # still hashed by its bytes; it imports nothing we can follow
            tree = ast.Module(body=[], type_ignores=[])
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names += [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        _PARSED[memo] = [n for n in names if n.split(".")[0] == "agentforge"]
    return _PARSED[memo]


def source_files(root: str | Path = PROJECT_ROOT) -> list[Path]:
    """The ``.py`` files under ``ROOTS`` and, transitively, every ``agentforge`` module they import (absolute
    imports, at any depth of the file, each parent package included), sorted by path."""
    root = Path(root)
    todo = [p for r in ROOTS for p in ((root / r).rglob("*.py") if (root / r).is_dir() else [root / r])]
    seen: set[Path] = set()
    while todo:
        path = todo.pop()
        if path in seen or not path.is_file():
            continue
        seen.add(path)
        for name in _imports(path):
            parts = name.split(".")
            for i in range(1, len(parts) + 1):
                found = _module_file(root, ".".join(parts[:i]))
                if found is not None and found not in seen:
                    todo.append(found)
    return sorted(seen, key=lambda p: p.relative_to(root).as_posix())


def source_digest(root: str | Path = PROJECT_ROOT) -> str:
    """sha256 over (relative path, bytes) of ``source_files(root)``, in path order."""
    root, h = Path(root), hashlib.sha256()
    for path in source_files(root):
        data = path.read_bytes()
        h.update(f"{path.relative_to(root).as_posix()}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


def cache_key(code: str, settings: dict, source: str | None = None) -> str:
    """``source``: the project code's digest (default ``source_digest()``, recomputed at every call so an edit
    during a long search takes effect)."""
    blob = json.dumps({"v": CACHE_VERSION, "code": code, "settings": settings,
                       "source": source_digest() if source is None else source}, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ResultCache:
    def __init__(self, directory: str | Path | None):
        self.directory = Path(directory) if directory else None

    def _path(self, key: str) -> Path | None:
        return self.directory / f"{key}.json" if self.directory else None

    def get(self, key: str) -> dict | None:
        path = self._path(key)
        if path is None or not path.is_file():
            return None
        try:
            entry = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None  # unreadable entries are recomputed (and then overwritten)
        return entry if isinstance(entry, dict) and entry.get("key") == key else None

    def put(self, key: str, result: dict) -> Path | None:
        path = self._path(key)
        if path is not None:
            write_json_atomic(path, {**result, "key": key})
        return path
