"""Where one Cognate training step's time goes: ``torch.profiler`` over a few steps of the model at a bench size,
the top ops by self device time (CUDA) or self CPU time, and the kernel-launch count per step — on a GPU a step of
many small kernels is bound by launching them, not by arithmetic.

    python benchmarks/profile_step.py                                   # CPU, tiny size
    python benchmarks/profile_step.py --device cuda --size 25m --batch 32 --seq 512
    python benchmarks/profile_step.py --device cuda --size 25m --batch 32 --seq 512 --muon-grokfast  # the phase's optimizer

The wall time per step is printed beside the device time: where it is much larger, the GPU waits on the host.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_throughput import SIZES, Runner  # noqa: E402

from agentforge.models import CognateConfig, CognateModel  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="tiny", choices=list(SIZES))
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--muon-grokfast", action="store_true",
                    help="step with the phase's default optimizer and clipping (bench_throughput --muon-grokfast)")
    a = ap.parse_args()
    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA GPU is visible")
    cuda = a.device == "cuda"
    run = Runner(CognateModel(CognateConfig(**SIZES[a.size], max_steps=3, ltm_gate_norm=True)), a.batch, a.seq, a.device, False,
                 phase_optimizer=a.muon_grokfast)
    run.step()  # the bench's training step (bf16 autocast on CUDA, AdamW), warmed up once more
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        t0 = time.perf_counter()
        for _ in range(a.steps):
            run.step()
        if cuda:
            torch.cuda.synchronize()
        wall = (time.perf_counter() - t0) / a.steps
    events = prof.key_averages()
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=a.top, max_name_column_width=48))
    if cuda:
        launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC"))
        dev = sum(e.self_device_time_total for e in events) / 1e3 / a.steps
        print(f"per step: {launches / a.steps:.0f} kernel launches, {dev:.1f} ms of device time, "
              f"{wall * 1e3:.1f} ms of wall time (profiled)")


if __name__ == "__main__":
    main()
