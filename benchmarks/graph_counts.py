"""What the CUDA-graph policy (``models/graphs.py``) does in a phase, counted on the CPU: the phase runs with a
stand-in capture that runs the function eagerly (a capture and a replay cost nothing here), so every call that on a
GPU would go through ``graphs.cached_call`` does, and the phase prints its ``CUDA graphs:`` line (replayed, captured,
eager_first, eager_full, eager_failed per kind). No timing: on a GPU a capture costs a warm-up, the capture and a
private memory pool, so these counts say how many captures a run pays for and how many calls they serve.

    python benchmarks/graph_counts.py phase=quietstar phase.input=<a Cognate checkpoint> paths.outputs=/tmp/gc
    python benchmarks/graph_counts.py phase=cognate model=m1 paths.outputs=/tmp/gc

Any arguments are the CLI's (``python -m agentforge ...``); ``hardware=cpu`` is added.
"""
from __future__ import annotations

import runpy
import sys


def main() -> None:
    from agentforge.models import graphs

    sys.argv = ["agentforge", *sys.argv[1:], "hardware=cpu"]
    with graphs.on_the_cpu():
        runpy.run_module("agentforge", run_name="__main__")


if __name__ == "__main__":
    main()
