"""The child's own account of its run (``status.json``), checked before the evaluator stores any of it.

The child shares its process with the candidate, which may rewrite what it writes (``torch.sys.modules``
reaches the child's module from inside the EVOLVE block). Its timing, step count, validation curve and
early-check figures are never scored, but they are stored in the result, cached and read back by the phase's
report: a red team made every ``val_curve`` ``[7, 7]`` and ``python -m agentforge phase=scaling`` died with a
``TypeError`` on that run and, through the cache, on every rerun. So each field is checked here for the
shape an honest child writes; anything else makes the candidate ``forged`` (an honest child never writes
it), with the field and size named. ``curve_points`` and ``seconds`` are the same checks for readers of
stored results, which drop what does not pass instead of failing.
"""
from __future__ import annotations

import math

from agentforge.scaling.failures import CandidateFailure

MAX_CURVE_POINTS = 4096   # validation points per size: far more than any configured run evaluates
MAX_CHECK_KEYS = 32       # the child's early checks report four figures


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def curve_points(curve) -> list[list] | None:
    """``curve`` as a list of [step, loss] pairs (a non-negative int and a finite number), or None when it is
    anything else (too long included)."""
    if not isinstance(curve, list) or len(curve) > MAX_CURVE_POINTS:
        return None
    pairs = [list(pt) for pt in curve if isinstance(pt, (list, tuple)) and len(pt) == 2]
    if len(pairs) != len(curve) or not all(_count(a) and _number(b) for a, b in pairs):
        return None
    return pairs


def seconds(v) -> float | None:
    """``v`` as a finite, non-negative number of seconds, or None."""
    return float(v) if _number(v) and v >= 0 else None


def _forged(name: str, field: str, value, want: str) -> CandidateFailure:
    return CandidateFailure("forged", f"size {name}: the child's status.json reports {field} = {repr(value)[:80]}, "
                                      f"not {want}; an honest run never writes that (its report was tampered with)")


def size_fields(status: dict, name: str) -> dict:
    """``train_seconds``, ``val_curve`` and ``steps`` of size ``name`` from the child's status, checked; a
    field the child left out (or a size it did not report) is None."""
    entries = status.get("sizes")
    entries = entries if isinstance(entries, list) else []
    info = next((r for r in entries if isinstance(r, dict) and r.get("name") == name), {})
    out = {"train_seconds": info.get("train_seconds"), "val_curve": info.get("val_curve"), "steps": info.get("steps")}
    if out["train_seconds"] is not None and seconds(out["train_seconds"]) is None:
        raise _forged(name, "train_seconds", out["train_seconds"], "a finite number >= 0")
    if out["steps"] is not None and not _count(out["steps"]):
        raise _forged(name, "steps", out["steps"], "an integer >= 0")
    if out["val_curve"] is not None:
        curve = curve_points(out["val_curve"])
        if curve is None:
            raise _forged(name, "val_curve", out["val_curve"], f"a list of at most {MAX_CURVE_POINTS} [step, "
                                                               f"finite loss] pairs")
        out["val_curve"] = curve
    return out


def checks(value) -> dict:
    """The child's early-check figures: a flat dict of at most ``MAX_CHECK_KEYS`` short names to finite
    numbers ({} when absent); anything else is ``forged``."""
    if value is None:
        return {}
    if (not isinstance(value, dict) or len(value) > MAX_CHECK_KEYS
            or not all(isinstance(k, str) and len(k) <= 64 and _number(v) for k, v in value.items())):
        raise CandidateFailure("forged", f"the child's status.json reports checks = {repr(value)[:80]}, not a "
                                         f"flat dict of at most {MAX_CHECK_KEYS} names to finite numbers; an honest "
                                         f"run never writes that (its report was tampered with)")
    return dict(value)
