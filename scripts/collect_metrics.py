#!/usr/bin/env python
"""Aggregate a run's per-step metrics.jsonl into run_summary.json, optionally gating on KPIs.

    python scripts/collect_metrics.py outputs/runs/2026-01-01/12-00-00_cognate_abcd
    python scripts/collect_metrics.py RUN_DIR --require "val/loss.min<=5" --require "train/loss<=6"

Exit status: 0 ok, 1 a --require threshold failed, 2 the run dir or a threshold is malformed.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agentforge.errors import AgentForgeError
from agentforge.evals.collect import check_gate, collect_metrics, split_requirement


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--require", action="append", default=[], metavar="KEY<OP>VALUE",
                    help="a KPI threshold such as 'val/loss.min<=5' (repeatable)")
    a = ap.parse_args(argv)
    try:
        path = collect_metrics(a.run_dir)
        gate = dict(split_requirement(r) for r in a.require)
        failures = check_gate(json.loads(path.read_text()), gate)
    except AgentForgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"run_summary: {path}")
    for f in failures:
        print(f"KPI FAIL: {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
