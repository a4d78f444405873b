#!/usr/bin/env python
"""Compare evaluation stages (thin wrapper over ``agentforge.evals.compare.run_comparison``).

    python scripts/compare_results.py baseline after_surgery finetuned_vanilla finetuned_recursive
    python scripts/compare_results.py baseline finetuned_recursive --results-dir outputs/artifacts/eval_results

Writes comparison.md, comparison.csv, plots/*.png and stats.json under --out (the dashboard's default
thresholds: pass@1 >= 0.30, pass@10 >= 0.45, delta >= 4 pp, delta pass@10 >= 3 pp, p < 0.05).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agentforge.errors import AgentForgeError
from agentforge.evals.compare import run_comparison
from agentforge.evals.results_file import load_results, require_two

DEFAULT_THRESHOLDS = {"pass_at": {1: 0.30, 10: 0.45}, "min_delta_pass1": 0.04, "min_delta_pass10": 0.03,
                      "alpha": 0.05, "failure_p": 0.1}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stages", nargs="*", help="stage names; none = the standard stages that have results")
    ap.add_argument("--results-dir", default="outputs/artifacts/eval_results")
    ap.add_argument("--out", default="outputs/compare")
    ap.add_argument("--baseline", default=None)
    ap.add_argument("--candidate", default=None)
    ap.add_argument("--n-resamples", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    try:
        require_two(load_results(a.results_dir, a.stages or None), a.stages, a.results_dir)
        out = run_comparison(a.results_dir, a.stages or None, a.out, baseline=a.baseline, candidate=a.candidate,
                             thresholds=DEFAULT_THRESHOLDS, n_resamples=a.n_resamples, seed=a.seed)
    except AgentForgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(out["markdown"])
    for k, p in out["paths"].items():
        print(f"{k}: {p}")
    for p in out["plots"]:
        print(f"plot: {p}")
    if out["stats"]:
        print(f"verdict: {out['stats']['verdict']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
