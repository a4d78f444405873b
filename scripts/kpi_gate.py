#!/usr/bin/env python
"""KPI gate for CI and make targets: check thresholds against a JSON file (run_summary.json,
{stage}_results.json or stats.json); exit 1 when any fails, exit 2 when a required key is not in the file at all
(a misspelled key is a usage error, not a failed KPI: it names the closest keys the file has).

    python scripts/kpi_gate.py outputs/artifacts/eval_results/baseline_results.json \
        --require "metrics.perplexity<=300" --require "metrics.reasoning_accuracy>=0.3"
    python scripts/kpi_gate.py outputs/compare/stats.json --require "pass_at_1.p_value<0.05"
"""
from __future__ import annotations

import argparse
import difflib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agentforge.errors import AgentForgeError
from agentforge.evals.collect import check_gate, lookup, split_requirement


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("file")
    ap.add_argument("--require", action="append", default=[], metavar="KEY<OP>VALUE", required=True)
    a = ap.parse_args(argv)
    try:
        doc = json.loads(Path(a.file).read_text())
        keys = [split_requirement(r)[0] for r in a.require]
        missing = [k for k in keys if lookup(doc, k) is None]
        if missing:
            have = _keys(doc)
            near = {k: difflib.get_close_matches(k, have, n=3) for k in missing}
            raise AgentForgeError("; ".join(f"no key {k!r}" + (f" (did you mean {', '.join(near[k])}?)" if near[k]
                                                               else "") for k in missing))
        results = [(r, check_gate(doc, dict([split_requirement(r)]))) for r in a.require]
    except (OSError, json.JSONDecodeError, AgentForgeError) as exc:
        print(f"error: {a.file}: {exc}", file=sys.stderr)
        return 2
    for r, failures in results:
        print(f"FAIL {failures[0]}" if failures else f"ok   {r}")
    return 1 if any(f for _, f in results) else 0

def _keys(doc, prefix: str = "") -> list[str]:
    """Every dotted key path of a JSON document (what a requirement may name)."""
    out = []
    for k, v in (doc.items() if isinstance(doc, dict) else []):
        out.append(prefix + k)
        out += _keys(v, prefix + k + ".")
    return out


if __name__ == "__main__":
    sys.exit(main())
