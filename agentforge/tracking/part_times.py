"""Reporting where a phase's wall time went (its ``evals.speed.PartTimes``): ``time/<part>_s``, ``time/other_s`` and
``time/total_s`` in its run's summary and its metrics.json files and as one printed line (Cognate, each Quiet-STaR
step), and, once its run is closed, what closing it took; and where a step's fit and the evaluations after it ran
(``fit_devices``, ``devices_line``)."""
from __future__ import annotations

import json
from pathlib import Path

from agentforge.evals.speed import PartTimes
from agentforge.io import write_json_atomic
from agentforge.models import graphs


def report_times(ctx, times: PartTimes, label: str, files: list[Path], extra: dict | None = None) -> dict:
    """The part times, from the start of ``times`` to now (the last act in the run, after publishing): logged to the
    run's summary (``ctx.tracker``), added to ``files`` (its metrics.json, in the run dir and published) and printed as
    one line (``PartTimes.line``); ``extra`` (e.g. the devices the parts ran on) is logged and written with them, and
    so are the CUDA-graph calls since the run opened (``cuda_graphs/<kind>_<outcome>``, ``models.graphs.counts``; none
    on the CPU), with a line of their own. Closing the run (the loggers, W&B's finish) comes after, so only a line
    printed later can count it (``closing_line``). Returns what it logged."""
    found = graphs.counts()   # empty unless a CUDA graph path ran (a GPU): its calls since the run opened
    summary = {**times.summary(), **(extra or {}), **found}
    ctx.tracker.summary(summary)
    for f in files:
        write_json_atomic(f, {**json.loads(f.read_text()), **summary})
    print(PartTimes.line(summary, label))
    if found:
        print(f"{label} {graphs.counts_line(found)}")
    return summary


def closing_line(times: PartTimes, reported: dict, label: str) -> str:
    """Printed once the run is closed: the seconds since ``reported`` (``report_times``' summary), i.e. closing the
    run, and the total so far of ``times``."""
    total = times.summary()["time/total_s"]
    return (f"{label} closing the run (loggers, W&B finish): {total - reported['time/total_s']:.1f} s after its "
            f"report (total {total:.1f})")


def fit_devices(trainer, model) -> dict:
    """Where the fit ran (the strategy's root device) and where ``model`` is now, i.e. where the evaluations after the
    fit run: ``time/fit_device``, ``time/eval_device``. Lightning's teardown moves the module to the CPU when a fit
    ends; the Cognate phase moves it back (``training.trainer.to_eval_device``), so there they differ only with
    ``hardware.eval_device=cpu`` after a GPU fit (``cuda:0``, ``cpu``); Quiet-STaR does not (its docstring says why)."""
    return {"time/fit_device": str(trainer.strategy.root_device), "time/eval_device": str(next(model.parameters()).device)}


def devices_line(devices: dict, label: str, reason: str = "hardware.eval_device=cpu") -> str:
    """One printed line of ``fit_devices``' two keys, with ``reason`` (why they differ) when they do."""
    fit, ev = devices["time/fit_device"], devices["time/eval_device"]
    why = f" ({reason})" if fit != ev else ""
    return f"{label} devices: fit on {fit}, evaluations after it on {ev}{why}"
