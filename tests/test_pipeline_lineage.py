"""A ``phase.phases`` subset never mixes model lineages silently.

The red-team's case: a complete pipeline run; the same with other Cognate settings, interrupted during cognate-m2
(model1 new, model2/model3 old); then ``phase.phases=[evomerge,...]`` with the new settings merged new model1 with
old model2/model3, exit 0, and a report saying every figure was "measured by this pipeline's own runs". The
interrupted run also dropped the records of the steps it did not reach, and left the old report as if current.

Most tests run the real ``phases.pipeline.run`` in this process, each phase replaced by a fake that writes tiny
valid outputs (a checkpoint whose metadata names the settings it was made with, and for EvoMerge the settings of
the three models it merged): the bookkeeping is tested in seconds, with no training. The CLI test checks the
refusal is one ``error:`` line with exit status 2.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from agentforge.errors import ConfigError
from agentforge.io import read_checkpoint_config, save_checkpoint
from agentforge.main import CONF_DIR
from tests.conftest import compose_cfg, run_cli


def _cognate(steps: int) -> str:
    return f'phase.overrides.cognate=["phase.steps_per_epoch={steps}"]'


def _ckpt(d: Path, meta: dict) -> None:
    save_checkpoint(d, {"w": torch.zeros(2)}, architecture="fake", model_config={}, meta=meta)


def _fake_phase(calls: list[str], fail_at: str | None):
    """A stand-in for ``main.run``: reads ``data.path`` as a phase's setup does (the real loader: a missing file is
    its ``DatasetError``), logs one row to its run dir's metrics.jsonl (the real ``JsonlLogger``), then writes the
    step's outputs (tagged with its settings) and its ``run_summary.json`` (the real ``collect_metrics``), or raises
    KeyboardInterrupt at ``fail_at`` (Ctrl-C mid-run; a real phase publishes nothing when interrupted), or at
    ``{fail_at}:after`` once its outputs are written (Ctrl-C after the publish)."""
    from agentforge.data.formats import load_jsonl
    from agentforge.evals.collect import collect_metrics
    from agentforge.tracking.loggers import JsonlLogger

    def run(child) -> dict:
        key, art = Path(child.paths.run_dir).name, Path(child.paths.artifacts)
        calls.append(key)
        if child.data.get("path"):
            load_jsonl(child.data.path, child.data.format or "gsm8k")
        JsonlLogger(child.paths.run_dir).log_metrics({"fake/loss": 1.0}, step=0)
        if key == fail_at:
            raise KeyboardInterrupt
        phase = child.phase.name
        if phase == "cognate":
            out = art / "cognate" / f"model{key[-1]}"
            _ckpt(out, {"steps": int(child.phase.steps_per_epoch)})
            (out / "metrics.json").write_text(json.dumps({"diversity/avg_halting_steps": 2.0 + int(key[-1]),
                                                          "diversity/ltm_usage": 0.5,
                                                          "diversity/inference_time_ms": 10.0}))
        elif phase == "evomerge":
            made = [read_checkpoint_config(art / "cognate" / f"model{i}")["meta"]["steps"] for i in (1, 2, 3)]
            _ckpt(art / "evomerge" / "champion", {"from": made, "generations": int(child.phase.generations)})
        elif phase == "quietstar":
            for d in ("baked", "reasoning"):
                _ckpt(art / "quietstar" / d, {"q": 1})
        else:
            raise AssertionError(f"the fake runs cognate, evomerge and quietstar only, not {key}")
        if f"{key}:after" == fail_at:
            raise KeyboardInterrupt
        collect_metrics(child.paths.run_dir)
        return {"metrics": {}}
    return run


def _pipeline(tmp_path, monkeypatch, args: list[str], fail_at: str | None = None,
              calls: list[str] | None = None, name: str = "t") -> list[str]:
    """``phase=pipeline phase.run_name=NAME ARGS`` in this process with the fake phases; the steps that ran (also
    appended to ``calls``, which a caller expecting an exception passes in)."""
    import agentforge.main
    from agentforge.phases import pipeline

    calls = [] if calls is None else calls
    monkeypatch.setattr(agentforge.main, "run", _fake_phase(calls, fail_at))
    # what Hydra forwards to every step from the command line (data.path=...), as the CLI does
    monkeypatch.setattr(pipeline, "_forwarded_overrides", lambda: [a for a in args if not a.startswith(("phase", "paths"))])
    cfg = compose_cfg(["phase=pipeline", "logger=none", f"phase.run_name={name}", "phase.overlap_train_draws=0", *args],
                      tmp_path)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            pipeline.run(cfg)
    finally:
        GlobalHydra.instance().clear()
    return calls


def _pipe(tmp_path) -> Path:
    return tmp_path / "outputs" / "pipeline" / "t"


def _state(tmp_path) -> dict[str, dict]:
    return {s["key"]: s for s in json.loads((_pipe(tmp_path) / "pipeline_state.json").read_text())["steps"]}


def _champion(tmp_path) -> dict:
    """The champion's meta as the fake EvoMerge wrote it (less the ``provenance`` every checkpoint gets)."""
    meta = read_checkpoint_config(_pipe(tmp_path) / "artifacts" / "evomerge" / "champion")["meta"]
    return {k: v for k, v in meta.items() if k != "provenance"}


FIRST = ["phase.phases=[cognate,evomerge]", _cognate(40)]


def _interrupted(tmp_path, monkeypatch) -> None:
    """A complete run with 40 steps per epoch, then the same with 41 interrupted during cognate-m2."""
    assert _pipeline(tmp_path, monkeypatch, FIRST) == ["cognate-m1", "cognate-m2", "cognate-m3", "evomerge"]
    assert (_pipe(tmp_path) / "pipeline_report.md").is_file()
    with pytest.raises(KeyboardInterrupt):
        _pipeline(tmp_path, monkeypatch, ["phase.phases=[cognate,evomerge]", _cognate(41)], fail_at="cognate-m2")


def test_an_interrupted_run_keeps_the_records_of_the_steps_it_did_not_reach(tmp_path, monkeypatch):
    """They still describe what is on disk (model3 and the champion of the first run): they used to be dropped, so
    nothing could tell a later subset that model3 was of the old settings. So does the interrupted step's own: it
    published nothing, so its outputs are still the first run's (it was recorded 'failed', as if they had gone)."""
    _interrupted(tmp_path, monkeypatch)
    state = _state(tmp_path)
    assert list(state) == ["cognate-m1", "cognate-m2", "cognate-m3", "evomerge"]   # pipeline order
    assert [state[k]["status"] for k in state] == ["done", "done", "done", "done"]
    assert state["cognate-m3"]["fingerprint"] != state["cognate-m1"]["fingerprint"]   # made with 40 steps, m1 41
    # model2's record is the first run's: what the first run's champion was made from
    assert state["cognate-m2"]["outputs_digest"] == state["evomerge"]["inputs"]["cognate-m2"]
    assert state["evomerge"]["inputs"]["cognate-m1"] != state["cognate-m1"]["outputs_digest"]   # the old model1


def test_the_last_report_does_not_survive_a_new_run_as_if_current(tmp_path, monkeypatch, capsys):
    """The interrupted run replaced model1: the old report (model1 'done' with the old model's figures) is moved
    to pipeline_report.previous.md, marked superseded, when model1 is replaced; no pipeline_report.md remains."""
    _interrupted(tmp_path, monkeypatch)
    pipe = _pipe(tmp_path)
    assert not (pipe / "pipeline_report.md").exists()
    previous = (pipe / "pipeline_report.previous.md").read_text()
    assert previous.startswith("> **Superseded:** step cognate-m1 of a later run") and \
        "| cognate-m1 | cognate | done |" in previous
    assert "the previous report is now pipeline_report.previous.md (superseded: cognate-m1 is replacing outputs it " \
           "describes)" in capsys.readouterr().out
    # a rerun that skips every step rewrites the report and moves nothing
    _pipeline(tmp_path, monkeypatch, ["phase.phases=[cognate,evomerge]", _cognate(41)])
    before = (pipe / "pipeline_report.previous.md").read_text()
    assert _pipeline(tmp_path, monkeypatch, ["phase.phases=[cognate,evomerge]", _cognate(41)]) == []
    assert (pipe / "pipeline_report.md").is_file() and (pipe / "pipeline_report.previous.md").read_text() == before


def test_a_subset_on_an_interrupted_lineage_is_refused_before_any_step_runs(tmp_path, monkeypatch):
    """The red-team's step (3): EvoMerge alone, with the new settings, after the interrupted run. It merged new
    model1 with old model2/model3 (rc 0, no warning); now it is refused, naming each step and why, and nothing runs."""
    _interrupted(tmp_path, monkeypatch)
    state = (_pipe(tmp_path) / "pipeline_state.json").read_text()
    with pytest.raises(ConfigError) as err:
        _pipeline(tmp_path, monkeypatch, ["phase.phases=[evomerge]", _cognate(41)])
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("phase.phases=['evomerge'] / phase.models=['m1', 'm2', 'm3'] leave out")
    assert "cognate-m2 (its settings differ from those its outputs were made with)" in msg   # still the 40-step one
    assert "cognate-m3 (its settings differ from those its outputs were made with)" in msg
    assert "cognate-m1" not in msg   # made by the interrupted run with these settings: current
    assert "Run those phases too, or drop phase.phases / phase.models" in msg
    assert _champion(tmp_path)["from"] == [40, 40, 40]                # untouched
    assert (_pipe(tmp_path) / "pipeline_state.json").read_text() == state
    # the whole pipeline repairs it: model2 (interrupted), model3 (other settings) and EvoMerge (new inputs) rerun
    assert _pipeline(tmp_path, monkeypatch, FIRST[:1] + [_cognate(41)]) == ["cognate-m2", "cognate-m3", "evomerge"]
    assert _champion(tmp_path)["from"] == [41, 41, 41]


def test_a_subset_on_one_lineage_runs_and_other_inputs_are_refused(tmp_path, monkeypatch):
    """A subset whose outside inputs are exactly what this command would make runs (the documented use: change one
    phase's settings, rerun that phase); one whose command gives those steps other settings, or whose inputs were
    replaced since (a standalone phase wrote there) or are missing, is refused."""
    _pipeline(tmp_path, monkeypatch, FIRST)
    assert _pipeline(tmp_path, monkeypatch, ["phase.phases=[evomerge]", _cognate(40),
                                             'phase.overrides.evomerge=["phase.generations=2"]']) == ["evomerge"]
    assert _champion(tmp_path) == {"from": [40, 40, 40], "generations": 2}
    report = (_pipe(tmp_path) / "pipeline_report.md").read_text()
    assert "All figures are measured by this pipeline's own runs" in report and "Warning" not in report
    with pytest.raises(ConfigError, match=r"cognate-m1 \(its settings differ.*give the same phase.overrides"):
        _pipeline(tmp_path, monkeypatch, ["phase.phases=[evomerge]"])   # without the Cognate overrides
    model3 = _pipe(tmp_path) / "artifacts" / "cognate" / "model3"
    _ckpt(model3, {"steps": 99})                                        # a standalone phase=cognate wrote here
    with pytest.raises(ConfigError, match=r": cognate-m3 \(its outputs changed since the pipeline made them\)\. Run"):
        _pipeline(tmp_path, monkeypatch, ["phase.phases=[evomerge]", _cognate(40)])
    for f in model3.iterdir():
        f.unlink()
    model3.rmdir()
    with pytest.raises(ConfigError, match=r": cognate-m3 \(outputs incomplete\)\. Run"):
        _pipeline(tmp_path, monkeypatch, ["phase.phases=[evomerge]", _cognate(40)])


def test_a_models_subset_is_checked_like_a_phases_subset(tmp_path, monkeypatch):
    """``phase.models=[m1,m2]`` still merges model3 (EvoMerge reads all three): it must be of this lineage too."""
    _pipeline(tmp_path, monkeypatch, FIRST)
    with pytest.raises(ConfigError, match=r"phase.models=\['m1', 'm2'\] leave out.*cognate-m3 \(its settings differ"):
        _pipeline(tmp_path, monkeypatch, [*FIRST[:1], _cognate(41), "phase.models=[m1,m2]"])


def test_a_report_over_mixed_lineages_says_so_at_the_top(tmp_path, monkeypatch, capsys):
    """Retraining model1 alone with other settings: the run is allowed (nothing it runs reads another lineage), but
    the report's Phase 1 figures mix the new model1 with model2/model3 of the old settings and the champion was made
    from the old model1. The report warns at the top, printed too, and no longer says every figure is this
    pipeline's own."""
    _pipeline(tmp_path, monkeypatch, FIRST)
    capsys.readouterr()
    assert _pipeline(tmp_path, monkeypatch, ["phase.phases=[cognate]", "phase.models=[m1]", _cognate(41)]) == \
        ["cognate-m1"]
    report = (_pipe(tmp_path) / "pipeline_report.md").read_text()
    top = report.split("## Phase overview")[0]
    assert "measured by this pipeline's own runs" not in report
    assert "**Warning — stale outputs:** evomerge was made from the earlier outputs of cognate-m1" in top
    assert "cognate-m2 (its settings differ from those its outputs were made with) is not what this command" in top
    assert "cognate-m3 (its settings differ" in top and "NOT all of one lineage" in top
    err = capsys.readouterr().err
    assert "warning: evomerge was made from the earlier outputs of cognate-m1" in err
    assert "warning: cognate-m2 (its settings differ" in err
    state = _state(tmp_path)
    assert list(state) == ["cognate-m1", "cognate-m2", "cognate-m3", "evomerge"]   # the others' records kept


@pytest.mark.slow   # ~15 s here (Lightning loads before the pipeline reads its overrides); the rule: the tests above
def test_the_refusal_through_the_cli_is_one_error_line(tmp_path, monkeypatch):
    """The red-team's command line after an interrupted run: exit 2, one ``error:`` line, no step started."""
    _interrupted(tmp_path, monkeypatch)
    proc = run_cli(["phase=pipeline", "logger=none", "phase.run_name=t", "phase.overlap_train_draws=0",
                    "phase.phases=[evomerge,quietstar,bitnet,eval]", _cognate(41)], tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith("error: phase.phases=['evomerge', 'quietstar', 'bitnet', 'eval']")
    assert "cognate-m2 (its settings differ" in lines[0] and "cognate-m3 (its settings differ" in lines[0], lines
    assert "cognate-m1" not in lines[0]   # the CLI composes the fingerprints the in-process runs recorded
    assert ": running" not in proc.stdout, proc.stdout[-2000:]
    assert _champion(tmp_path)["from"] == [40, 40, 40]


def test_a_subset_that_would_make_its_outside_inputs_stale_is_refused_before_any_step_runs(tmp_path, monkeypatch):
    """``phase.phases=[cognate,quietstar]`` with new Cognate settings reruns the models, which makes the champion
    quietstar reads (EvoMerge, outside the subset) stale: refused before the first step trains (a red team saw the
    refusal only after all three Cognate models had trained), the state untouched."""
    _pipeline(tmp_path, monkeypatch, ["phase.phases=[cognate,evomerge,quietstar]", _cognate(40)])
    before = json.loads((_pipe(tmp_path) / "pipeline_state.json").read_text())
    calls: list[str] = []
    with pytest.raises(ConfigError, match="evomerge"):
        _pipeline(tmp_path, monkeypatch, ["phase.phases=[cognate,quietstar]", _cognate(41)], calls=calls)
    assert calls == []
    assert json.loads((_pipe(tmp_path) / "pipeline_state.json").read_text()) == before
