"""CUDA-graph replay of the memory's no-grad chunk scan (``SurpriseMemory.scan_fresh``), through ``graphs.py``.

Why: on a GPU the scan is ~85 tiny kernels per 16-token chunk, 32 chunks per read at seq 512 and a read per
recursion step; the H100 training step of the 25M model was launch-bound (10,661 kernel launches, 206 ms of
device time in ~330 ms of wall time; the model ran 2.4x faster with its memory off). The scan reads and
writes no Python state and never syncs with the host, so it can be recorded once per input shape and
replayed: one launch for the whole scan.

The key: the inputs' shapes and dtypes, ``traced``, the autocast and inference-mode state, and the memory's settings.
At most ``MAX_GRAPHS`` graphs per memory (``graphs.cached_call``'s protocol: captured on the second sighting, never
evicted): the training step's shape comes first; evaluation's varying row counts (ACT drops halted rows) must not
churn captures. On the CPU nothing changes: ``run`` calls ``scan_fresh``.
"""
from __future__ import annotations

import torch

from agentforge.models import graphs

MAX_GRAPHS = 8      # graphs per memory module; later new shapes run eagerly (none is evicted: no re-capture churn)


def key(memory, args: tuple[torch.Tensor, ...], traced: bool) -> tuple:
    return (graphs.metas(args), traced, graphs.modes(args[0].device.type),
            memory.slots, memory.chunk, memory.max_writes, float(memory.surprise_threshold))


def run(memory, args: tuple[torch.Tensor, ...], traced: bool) -> dict[str, torch.Tensor]:
    """The memory's ``scan_fresh(*args, traced)``, replayed from a CUDA graph where ``graphs.usable`` and seen before."""
    if not graphs.usable(args[0]):
        return memory.scan_fresh(*args, traced)
    return graphs.cached_call(memory, key(memory, args, traced), lambda *a: memory.scan_fresh(*a, traced), args,
                              MAX_GRAPHS, kind="scan")
