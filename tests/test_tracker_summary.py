"""Tracker: what reaches the W&B run summary (the real client, offline)."""
from __future__ import annotations


def test_an_undefined_summary_figure_is_marked_so_in_the_offline_wandb_summary(tmp_path, monkeypatch):
    """W&B's summary stores NaN as null (the history keeps NaN); ``Tracker.summary`` adds ``<key>_undefined: true``
    so a reader can tell an undefined figure (a correlation over n = 0) from one never logged. Real client, offline."""
    import math

    from agentforge.tracking.loggers import build_loggers, finish
    from agentforge.tracking.tracker import Tracker
    from agentforge.tracking.wandb_offline import find_offline_runs, read_offline_run

    monkeypatch.setenv("WANDB_MODE", "offline")
    loggers = build_loggers({"name": "wandb"}, tmp_path, "t", None, [], {})
    Tracker(loggers, tmp_path).summary({"x/corr": float("nan"), "x/value": 0.5})
    finish(loggers)
    # wandb.finish returns before the W&B service has necessarily closed the run's transaction log; in a long-lived
    # process (this pytest run) a read right after it found the file without a record once, under load. teardown
    # waits for the service to write everything (the CLI's own process exit does the same through atexit)
    import wandb

    wandb.teardown()
    run = read_offline_run(find_offline_runs(tmp_path)[0])
    assert run.exit_code == 0
    assert run.summary.get("x/corr_undefined") is True and run.summary["x/value"] == 0.5
    assert "x/value_undefined" not in run.summary
    assert any(math.isnan(r["x/corr"]) for r in run.history if "x/corr" in r)
