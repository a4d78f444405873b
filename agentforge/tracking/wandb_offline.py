"""Reading an offline W&B run back (the ``run-*.wandb`` transaction log) without a server.

The file is a LevelDB-style log (a 7-byte ``:W&B`` header, then 32 KiB blocks of records with a
7-byte header: crc32 (unchecked here), length, type FULL/FIRST/MIDDLE/LAST), each record a
``wandb_internal.Record`` protobuf. Tests and reports use this to check what a run really logged.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

BLOCK = 32768
HEADER = 7


@dataclass
class OfflineRun:
    name: str = ""
    project: str = ""
    group: str = ""
    tags: list[str] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    artifacts: list[str] = field(default_factory=list)
    exit_code: int | None = None

    def history_keys(self) -> set[str]:
        return {k for row in self.history for k in row}


def _records(data: bytes):
    if data[:4] != b":W&B":
        raise ValueError("not a W&B transaction log")
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos: pos + HEADER])
        pos += HEADER
        if kind == 0 and length == 0:
            pos += (BLOCK - pos % BLOCK) % BLOCK
            continue
        chunk = data[pos: pos + length]
        pos += length
        if kind == 1:
            yield chunk
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            yield pending + chunk
            pending = b""


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def read_offline_run(run_dir: str | Path) -> OfflineRun:
    """Parse ``run_dir`` (an ``offline-run-*`` folder or the ``.wandb`` file itself)."""
    from wandb.proto import wandb_internal_pb2 as pb

    path = Path(run_dir)
    if path.is_dir():
        path = next(path.glob("run-*.wandb"))
    out = OfflineRun()
    for raw in _records(path.read_bytes()):
        rec = pb.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            out.name, out.project, out.group = rec.run.display_name, rec.run.project, rec.run.run_group
            out.tags = list(rec.run.tags)
            # the config given to wandb.init travels in the run record; later config records update it
            out.config.update({_key(i): json.loads(i.value_json) for i in rec.run.config.update})
        elif kind == "history":
            out.history.append({_key(i): json.loads(i.value_json) for i in rec.history.item})
        elif kind == "summary":
            out.summary.update({_key(i): json.loads(i.value_json) for i in rec.summary.update})
        elif kind == "config":
            out.config.update({_key(i): json.loads(i.value_json) for i in rec.config.update})
        elif kind == "artifact":
            out.artifacts.append(rec.artifact.name)
        elif kind == "exit":
            out.exit_code = rec.exit.exit_code
    return out


def find_offline_runs(root: str | Path) -> list[Path]:
    return sorted(Path(root).rglob("offline-run-*"))
