"""Sandbox overhead: evaluation time of the baseline scaling variant under bubblewrap vs the unisolated
process mode (the same evaluator, the same child, the same trusted scoring), as a ratio (aim <= 1.10, decided from
the ratio's 95 % CI: met when the whole CI is <= 1.10, missed when none of it is, else inconclusive; under 6 rounds
no verdict).

    python benchmarks/bench_sandbox.py                       # 3 interleaved repeats, CPU preset at 30 steps
    python benchmarks/bench_sandbox.py --repeats 6 --steps 300   # the phase's default training length

Runs are interleaved (``evals.speed.interleaved_times``: every mode once per round, the order rotated) so drift in
the machine's load hits both modes alike; the ratio is the median of the per-round ratios with its 95 % CI and n
(``ratio_ci.py``; the default 3 rounds give only the range and no verdict: ``--repeats 6`` or more for one). Nothing
is cached (every run trains). Also prints the bare cost of one sandboxed ``python -c pass`` in each mode, the fixed
part of the overhead, and what checking every held-out row alone (``phase.trust.spot_rows: all``, the default) costs
against a spot check of 16 secret rows (the default until 2026-11-27), as the same kind of ratio.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ratio_ci import aim_line, ci_text  # noqa: E402

AIM = 1.10   # bwrap's evaluation time <= 1.10x the process mode's
SPOT_SAMPLE = 16   # the spot check's old default: that many secret rows alone, not every row (trust.spot_rows)


def settings(steps: int) -> dict:
    from hydra import compose, initialize_config_dir

    from agentforge.main import CONF_DIR
    from agentforge.phases.scaling import settings_from_cfg

    overrides = ["phase=scaling", "hardware=cpu", f"phase.train.steps={steps}",
                 f"phase.train.eval_every={max(1, steps // 2)}", f"phase.train.warmup_steps={max(1, steps // 10)}",
                 "phase.fitness.reference=null"]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return settings_from_cfg(compose(config_name="config", overrides=overrides))


def report(times: dict[str, list[float]], sizes: int, steps: int) -> list[str]:
    """The medians of each mode, the bwrap/process ratio (``ratio_ci.py``) with the aim decided from its CI, and the
    bare ``python -c pass`` medians; ``times``: case -> seconds per interleaved round."""
    med = {k: statistics.median(v) for k, v in times.items()}
    return [f"\nbaseline evaluation ({sizes} sizes x {steps} steps), median of {len(times['bwrap'])} interleaved rounds:",
            f"  bwrap   {med['bwrap']:7.2f} s\n  process {med['process']:7.2f} s",
            "  " + aim_line("overhead bwrap/process", times["bwrap"], times["process"], AIM),
            f"  bwrap with a spot check of {SPOT_SAMPLE} secret rows instead of every row alone (the default): "
            f"{med['bwrap spot sample']:.2f} s; every row ÷ {SPOT_SAMPLE} rows: "
            + ci_text(times["bwrap"], times["bwrap spot sample"]),
            f"  bare `python -c pass`: bwrap {med['bare bwrap'] * 1000:.0f} ms, process {med['bare process'] * 1000:.0f} ms"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()
    from agentforge.evals.speed import interleaved_times
    from agentforge.sandbox import SandboxLimits, require_sandbox, run_sandboxed
    from agentforge.scaling.evaluator import evaluate
    from agentforge.scaling.variants import variant_path

    require_sandbox("bwrap")
    cfg = settings(args.steps)

    def bare(mode):
        run_sandboxed(["python", "-c", "pass"], {}, limits=SandboxLimits(wall_s=60), mode=mode)

    def evaluation(mode, spot="all"):
        one = {**cfg, "trust": {**cfg["trust"], "spot_rows": spot}}
        result = evaluate(variant_path("baseline"), one, timeout_s=900, memory_mb=4096, sandbox=mode)
        if not result["valid"]:
            raise SystemExit(f"error: the baseline failed under {mode}: {result['error']}")
        print(f"{mode:7s} run: loss_l {result.get('loss_l', float('nan')):.4f}", flush=True)
    modes = ("bwrap", "process")
    times = interleaved_times({**{m: lambda m=m: evaluation(m) for m in modes},
                               "bwrap spot sample": lambda: evaluation("bwrap", SPOT_SAMPLE),
                               **{f"bare {m}": lambda m=m: bare(m) for m in modes}}, args.repeats, warmup=0)
    print("\n".join(report(times, len(cfg["sizes"]), args.steps)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
