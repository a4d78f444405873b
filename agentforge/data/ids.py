"""Example ids: the first 16 hex digits of the BLAKE2b hash of a record's canonical JSON (sorted keys).

The same record gets the same id in every process and on every machine, so two evaluations can be
paired example by example (``evals.compare.align``) and a comparison of different example sets fails.
"""
from __future__ import annotations

import hashlib
import json


def example_id(rec: dict) -> str:
    return hashlib.blake2b(json.dumps(rec, sort_keys=True, ensure_ascii=False).encode("utf-8"),
                           digest_size=8).hexdigest()


def example_ids(records: list[dict]) -> list[str]:
    """One id per record; a repeated record gets ``id#2``, ``id#3``, ... so the ids stay unique."""
    seen: dict[str, int] = {}
    out = []
    for r in records:
        i = example_id(r)
        seen[i] = seen.get(i, 0) + 1
        out.append(i if seen[i] == 1 else f"{i}#{seen[i]}")
    return out
