"""Tracker: what reaches the W&B run summary (the real client, offline)."""
from __future__ import annotations


def test_an_undefined_summary_figure_is_marked_so_and_labels_join_the_tags_in_the_offline_wandb_run(tmp_path,
                                                                                                     monkeypatch):
    """W&B's summary stores NaN as null (the history keeps NaN); ``Tracker.summary`` adds ``<key>_undefined: true``
    so a reader can tell an undefined figure (a correlation over n = 0) from one never logged. ``Tracker.label`` (the
    dashboard's section-6 run label) adds to the run's tags once each, after its own. Real client, offline."""
    import math

    from agentforge.tracking.loggers import build_loggers, finish
    from agentforge.tracking.tracker import Tracker
    from agentforge.tracking.wandb_offline import find_offline_runs, read_offline_run

    monkeypatch.setenv("WANDB_MODE", "offline")
    loggers = build_loggers({"name": "wandb"}, tmp_path, "t", None, ["codegen"], {})
    tr = Tracker(loggers, tmp_path)
    tr.summary({"x/corr": float("nan"), "x/value": 0.5})
    tr.label(["FAILURE", "INCONCLUSIVE"])
    tr.label(["INCONCLUSIVE"])
    finish(loggers)
    # wandb.finish returns before the W&B service has necessarily closed the run's transaction log; in a long-lived
    # process (this pytest run) a read right after it found the file without a record once, under load. teardown
    # waits for the service to write everything (the CLI's own process exit does the same through atexit)
    import wandb

    wandb.teardown()
    run = read_offline_run(find_offline_runs(tmp_path)[0])
    assert run.exit_code == 0 and run.tags == ["codegen", "FAILURE", "INCONCLUSIVE"]
    assert run.summary.get("x/corr_undefined") is True and run.summary["x/value"] == 0.5
    assert "x/value_undefined" not in run.summary
    assert any(math.isnan(r["x/corr"]) for r in run.history if "x/corr" in r)


def test_run_labels_follow_the_verdict_and_section_6_p_value_rule():
    from agentforge.evals.dashboard_verdict import run_labels

    assert run_labels({"verdict": "SUCCESS", "pass_at_1": {"p_value": 0.01}}) == ["SUCCESS"]
    assert run_labels({"verdict": "PARTIAL", "pass_at_1": {"p_value": 0.05}}) == ["PARTIAL", "INCONCLUSIVE"]
    assert run_labels({"verdict": "FAILURE", "pass_at_1": {"p_value": 0.2}}, alpha=0.3) == ["FAILURE"]
    assert run_labels({"verdict": "FAILURE", "pass_at_1": {"note": "not measured"}}) == ["FAILURE", "INCONCLUSIVE"]
    assert run_labels({"verdict": "FAILURE", "pass_at_1": {"p_value": float("nan")}}) == ["FAILURE", "INCONCLUSIVE"]
    assert run_labels({"verdict": "INCONCLUSIVE", "pass_at_1": {"p_value": 0.7}}) == ["INCONCLUSIVE"]
