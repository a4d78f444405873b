"""Results of past evaluations, keyed by sha256(candidate code + the settings that shape the result).

An evaluation costs minutes; OpenEvolve often re-proposes a program it has already seen, and a re-run of
the phase with the same config should cost nothing. Entries are JSON files written atomically, so a
killed run never leaves a half-written entry that a later run would trust.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from agentforge.io import write_json_atomic

CACHE_VERSION = 5  # bump when the meaning of a cached result changes (2: results carry the test-set figures;
                   # 3: the logits scored are recomputed from the returned weights, rescore.py; 4: the fit's
                   # params are the reference architecture's, the child's informational fields are validated;
                   # 5: the returned parameters are counted by their bytes, in fp32 equivalents)


def cache_key(code: str, settings: dict) -> str:
    blob = json.dumps({"v": CACHE_VERSION, "code": code, "settings": settings}, sort_keys=True)
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
