"""Wall time of the README's main job, ``python -m agentforge phase=pipeline``, from fresh outputs, per hardware
setting; with two settings (``--hardware gpu,cpu``) also their ratio — issue 16's "GPU ÷ CPU wall time" figure: the
median of the per-round ratios with its 95 % CI and n (``ratio_ci.py``); with one round (the default) a single ratio,
for which no CI exists, and the line says so.

    python benchmarks/bench_pipeline.py                       # the README's command (~4 min on 2 CPU cores)
    python benchmarks/bench_pipeline.py --hardware gpu,cpu    # on a GPU machine: both, and GPU ÷ CPU
    python benchmarks/bench_pipeline.py --repeats 3 -- phase.overrides.cognate=[...]   # extra overrides

Each run is a real subprocess with its own empty ``AGENTFORGE_OUTPUTS`` (nothing reused between runs) and W&B
offline; the settings are timed in interleaved rounds (``evals.speed.interleaved_times``, order rotated), so with
``--repeats`` > 1 the figure is a median. Per-step times are read from each run's ``pipeline_state.json``. One run
of the default pipeline takes minutes: the default is one round, which is a single measurement, not a median.
Printed with the figures: the device (CPU cores, the CUDA GPU where one is visible), torch's threads here and the
OMP_NUM_THREADS the runs inherit, the CPU time the runs used (user + system, ``resource.getrusage(RUSAGE_CHILDREN)``)
beside each wall time, and the 1/5/15-minute load average (``os.getloadavg()``) before and after: on a shared
machine a wall time means little without them.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ratio_ci import ratio_line  # noqa: E402

from agentforge.evals.speed import interleaved_times  # noqa: E402


def children_cpu_s() -> float:
    """User + system CPU seconds of this process's finished children so far."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def machine_line() -> str:
    """'device: ...; torch threads N; OMP_NUM_THREADS ...' (torch imported here only for the device and threads)."""
    import torch

    gpu = f"CUDA {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "no CUDA GPU visible"
    return (f"device: CPU, {os.cpu_count()} cores; {gpu}; torch threads {torch.get_num_threads()}; "
            f"OMP_NUM_THREADS for the runs {os.environ.get('OMP_NUM_THREADS') or 'unset'}")


def load_text(load: tuple[float, float, float]) -> str:
    return " / ".join(f"{x:.2f}" for x in load)


def record_line(setting: str, wall_s: float, cpu_s: float, repeats: int, steps: dict) -> str:
    """One setting's figures: wall time (median of the rounds), its runs' CPU time (median), per-step seconds."""
    kind = "median of" if repeats > 1 else "one run of"
    parts = ", ".join(f"{k} {statistics.median(v):.1f}" for k, v in steps.items())
    return (f"hardware={setting}: pipeline wall time {wall_s:.1f} s ({kind} {repeats}); children's CPU time "
            f"{cpu_s:.1f} s (user + system, {cpu_s / wall_s:.2f} cores busy on average); steps (s): {parts}")


def run_pipeline(hardware: str, extra: list[str], steps: dict, cpu: list | None = None, logs: Path | None = None) -> None:
    """One pipeline run with ``hardware=<hardware>`` in a fresh output dir; its per-step seconds appended to
    ``steps[name]``, the CPU seconds it used to ``cpu``. A failed run stops the benchmark with one error line."""
    before = children_cpu_s()
    with tempfile.TemporaryDirectory(prefix="bench_pipeline_") as out:
        env = dict(os.environ, AGENTFORGE_OUTPUTS=out, WANDB_MODE="offline")
        proc = subprocess.run([sys.executable, "-m", "agentforge", "phase=pipeline", f"hardware={hardware}", *extra],
                              cwd=ROOT, env=env, capture_output=True, text=True)
        if logs is not None:   # the run's whole output (each phase's printed figures), one file per run
            logs.mkdir(parents=True, exist_ok=True)
            n = sum(1 for _ in logs.glob(f"pipeline_{hardware}_*.log"))
            (logs / f"pipeline_{hardware}_{n + 1}.log").write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
        if proc.returncode != 0:
            tail = proc.stderr.strip().splitlines()[-1:] or ["(no output)"]
            sys.exit(f"error: the pipeline with hardware={hardware} failed (exit {proc.returncode}): {tail[0]}")
        state = next(Path(out).glob("pipeline/*/pipeline_state.json"))
        for s in json.loads(state.read_text())["steps"]:
            steps.setdefault(s["key"], []).append(s.get("duration_s") or 0.0)
    if cpu is not None:
        cpu.append(children_cpu_s() - before)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hardware", default="auto",
                    help="comma-separated hardware settings, e.g. gpu,cpu (default auto: the README's command)")
    ap.add_argument("--repeats", type=int, default=1, help="interleaved rounds (each runs every setting once)")
    ap.add_argument("--logs", type=Path, default=None,
                    help="keep each run's stdout and stderr in this folder (pipeline_<hardware>_<n>.log)")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides after --, passed to every run")
    args = ap.parse_args()
    settings = [h.strip() for h in args.hardware.split(",") if h.strip()]
    steps, cpu = {h: {} for h in settings}, {h: [] for h in settings}
    print(machine_line())
    load_before = os.getloadavg()
    times = interleaved_times({h: (lambda h=h: run_pipeline(h, args.overrides, steps[h], cpu[h], args.logs))
                               for h in settings},
                              args.repeats, warmup=0)
    print(f"load average (1/5/15 min): before {load_text(load_before)}, after {load_text(os.getloadavg())}")
    for h in settings:
        print(record_line(h, statistics.median(times[h]), statistics.median(cpu[h]), args.repeats, steps[h]))
    if len(settings) == 2:
        a, b = settings
        print(ratio_line(f"wall time hardware={a} ÷ hardware={b}", times[a], times[b]))


if __name__ == "__main__":
    main()
