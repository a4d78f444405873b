"""``collect_metrics``: a run's per-step ``metrics.jsonl`` aggregated into ``run_summary.json``, and the
KPI gate that fails (non-zero exit) when a configured threshold is not met — for CI and make targets.

Summary per numeric key: count, first, last, min, max, mean, the step of the last value, and how many
values were non-finite (a NaN/Inf loss marks the run unstable). Thresholds are strings ``">=0.3"``,
``"<=20"``, ``">5"``, ``"<1"``, ``"==0"`` against a key of the summary (``key`` = its last value,
``key.min``/``key.max``/``key.mean`` the aggregates) or of a results JSON (dotted, ``metrics.perplexity``).
"""
from __future__ import annotations

import json
import math
import operator
import re
from pathlib import Path

from agentforge.errors import AgentForgeError
from agentforge.io import write_json_atomic

_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq}
_SPEC = re.compile(r"^\s*(>=|<=|==|>|<)\s*([-+0-9.eE]+|nan|inf)\s*$")


class KPIGateError(AgentForgeError):
    """A configured KPI threshold failed."""


def summarize_jsonl(path: str | Path) -> dict:
    """Aggregate a metrics.jsonl file (one JSON object per line; ``_step``/``_time`` are bookkeeping)."""
    path = Path(path)
    if not path.is_file():
        raise AgentForgeError(f"{path}: no metrics.jsonl — give the run directory of a finished run")
    keys: dict[str, dict] = {}
    n_records = bad_lines = 0
    t_first = t_last = None
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            bad_lines += 1  # a run killed mid-write leaves a torn last line; count it, keep the rest
            continue
        n_records += 1
        t = rec.get("_time")
        if isinstance(t, (int, float)):
            t_first = t if t_first is None else t_first
            t_last = t
        for k, v in rec.items():
            if k.startswith("_") or isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            s = keys.setdefault(k, {"count": 0, "nonfinite": 0, "values": []})
            s["last_nonfinite"] = not math.isfinite(v)
            if not math.isfinite(v):
                s["nonfinite"] += 1
                continue
            s["count"] += 1
            s["values"].append(float(v))
            s["last_step"] = rec.get("_step")
    metrics = {}
    for k, s in keys.items():
        vals = s.pop("values")
        metrics[k] = {**s, **({"first": vals[0], "last": vals[-1], "min": min(vals), "max": max(vals),
                               "mean": sum(vals) / len(vals)} if vals else {})}
    return {"source": str(path), "records": n_records, "torn_lines": bad_lines,
            "wall_seconds": (t_last - t_first) if t_first is not None else None,
            "unstable": any(s["nonfinite"] for s in metrics.values()), "metrics": metrics}


def collect_metrics(run_dir: str | Path) -> Path:
    """Write ``{run_dir}/run_summary.json`` from ``{run_dir}/metrics.jsonl``; returns its path."""
    run_dir = Path(run_dir)
    return write_json_atomic(run_dir / "run_summary.json", summarize_jsonl(run_dir / "metrics.jsonl"))


def lookup(doc: dict, key: str):
    """A value of a run summary (``key`` = last, ``key.min`` ...) or of any JSON by dotted path. A metric whose
    final value was NaN / inf reads NaN (its ``last`` is the last finite one: 2.0, 1.5, NaN passed ``<=1.6``)."""
    m = doc.get("metrics", {})
    if isinstance(m, dict) and key in m:
        v = m[key]
        if isinstance(v, dict):
            return float("nan") if v.get("last_nonfinite") else v.get("last")
        return v
    base, _, agg = key.rpartition(".")
    if base and isinstance(m, dict) and isinstance(m.get(base), dict) and agg in m[base]:
        return m[base][agg]
    cur = doc
    for part in key.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def is_threshold(spec) -> bool:
    """``spec`` has the form ``parse_threshold`` reads ('>=0.3', '<=20', ...): the start-up check of a gate."""
    return isinstance(spec, (str, int, float)) and not isinstance(spec, bool) and bool(_SPEC.match(str(spec)))


def parse_threshold(spec: str) -> tuple[str, float]:
    m = _SPEC.match(str(spec))
    if not m:
        raise AgentForgeError(f"threshold {spec!r} must look like '>=0.3', '<=20', '>5', '<1' or '==0'")
    return m.group(1), float(m.group(2))


def check_gate(doc: dict, gate: dict[str, str]) -> list[str]:
    """The failed thresholds, each as one line (empty when all pass). A missing metric fails."""
    failures = []
    for key, spec in gate.items():
        op, target = parse_threshold(spec)
        val = lookup(doc, key)
        if not isinstance(val, (int, float)) or isinstance(val, bool):
            failures.append(f"{key}: not found (needed {op}{target:g})")
        elif not _OPS[op](val, target) or (isinstance(val, float) and math.isnan(val)):
            failures.append(f"{key} = {val:.6g}, needed {op}{target:g}")
    return failures


def gate_or_raise(doc: dict, gate: dict[str, str], what: str) -> None:
    failures = check_gate(doc, gate)
    if failures:
        raise KPIGateError(f"KPI gate failed for {what}: " + "; ".join(failures))


def split_requirement(text: str) -> tuple[str, str]:
    """'val/loss.min<=5' -> ('val/loss.min', '<=5') (the command-line form of a threshold)."""
    m = re.match(r"^(.+?)\s*(>=|<=|==|>|<)\s*(.+)$", text)
    if not m:
        raise AgentForgeError(f"requirement {text!r} must look like KEY>=VALUE, KEY<=VALUE, KEY<VALUE, ...")
    spec = m.group(2) + m.group(3)
    parse_threshold(spec)
    return m.group(1).strip(), spec
