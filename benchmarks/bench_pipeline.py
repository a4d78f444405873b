"""Wall time of the README's main job, ``python -m agentforge phase=pipeline``, from fresh outputs, per hardware
setting; with two settings (``--hardware gpu,cpu``) also their ratio — issue 16's "GPU ÷ CPU wall time" figure.

    python benchmarks/bench_pipeline.py                       # the README's command (~4 min on 2 CPU cores)
    python benchmarks/bench_pipeline.py --hardware gpu,cpu    # on a GPU machine: both, and GPU ÷ CPU
    python benchmarks/bench_pipeline.py --repeats 3 -- phase.overrides.cognate=[...]   # extra overrides

Each run is a real subprocess with its own empty ``AGENTFORGE_OUTPUTS`` (nothing reused between runs) and W&B
offline; the settings are timed in interleaved rounds (``evals.speed.interleaved_medians``, order rotated), so with
``--repeats`` > 1 the figure is a median. Per-step times are read from each run's ``pipeline_state.json``. One run
of the default pipeline takes minutes: the default is one round, which is a single measurement, not a median.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agentforge.evals.speed import interleaved_medians  # noqa: E402


def run_pipeline(hardware: str, extra: list[str], steps: dict) -> None:
    """One pipeline run with ``hardware=<hardware>`` in a fresh output dir; its per-step seconds appended to
    ``steps[name]``. A failed run stops the benchmark with one error line."""
    with tempfile.TemporaryDirectory(prefix="bench_pipeline_") as out:
        env = dict(os.environ, AGENTFORGE_OUTPUTS=out, WANDB_MODE="offline")
        proc = subprocess.run([sys.executable, "-m", "agentforge", "phase=pipeline", f"hardware={hardware}", *extra],
                              cwd=ROOT, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = proc.stderr.strip().splitlines()[-1:] or ["(no output)"]
            sys.exit(f"error: the pipeline with hardware={hardware} failed (exit {proc.returncode}): {tail[0]}")
        state = next(Path(out).glob("pipeline/*/pipeline_state.json"))
        for s in json.loads(state.read_text())["steps"]:
            steps.setdefault(s["key"], []).append(s.get("duration_s") or 0.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hardware", default="auto",
                    help="comma-separated hardware settings, e.g. gpu,cpu (default auto: the README's command)")
    ap.add_argument("--repeats", type=int, default=1, help="interleaved rounds (each runs every setting once)")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides after --, passed to every run")
    args = ap.parse_args()
    settings = [h.strip() for h in args.hardware.split(",") if h.strip()]
    steps = {h: {} for h in settings}
    med = interleaved_medians({h: (lambda h=h: run_pipeline(h, args.overrides, steps[h])) for h in settings},
                              args.repeats, warmup=0)
    kind = "median of" if args.repeats > 1 else "one run of"
    for h in settings:
        parts = ", ".join(f"{k} {statistics.median(v):.1f}" for k, v in steps[h].items())
        print(f"hardware={h}: pipeline wall time {med[h]:.1f} s ({kind} {args.repeats}); steps (s): {parts}")
    if len(settings) == 2:
        a, b = settings
        print(f"wall time hardware={a} ÷ hardware={b}: {med[a] / med[b]:.3f}")


if __name__ == "__main__":
    main()
