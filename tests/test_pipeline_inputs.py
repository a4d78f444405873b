"""What a pipeline step reads decides whether a rerun may reuse it: the plan's dependencies (which step reads which),
the digests of everything a step publishes, an input an override names, and the reason a subset is refused. From a
mutation audit of the pipeline's decisions (60 mutants, 28 survived) and its two confirmed bugs. The pipeline runs in
this process with the fake phases of ``test_pipeline_lineage`` (seconds, no training)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from agentforge.errors import ConfigError
from agentforge.io import save_checkpoint
from agentforge.pipeline.plan import MODEL_IDS, Step, build_plan, outputs_digest
from tests.test_pipeline_lineage import _ckpt, _cognate, _pipeline, _state

PHASES = ["cognate", "evomerge", "quietstar", "bitnet", "eval"]


def test_each_step_reads_exactly_the_step_that_made_its_input():
    """Retraining a model must re-evaluate it and nothing else; a new Quiet-STaR model must be recompressed: the eval
    and BitNet steps' dependencies (a mutant emptying either survived every fast test)."""
    steps = build_plan(PHASES, list(MODEL_IDS), Path("/a"), {})
    assert {s.key: s.needs for s in steps} == {
        "cognate-m1": [], "cognate-m2": [], "cognate-m3": [],
        "evomerge": ["cognate-m1", "cognate-m2", "cognate-m3"], "quietstar": ["evomerge"], "bitnet": ["quietstar"],
        "eval-phase1_model1": ["cognate-m1"], "eval-phase1_model2": ["cognate-m2"], "eval-phase1_model3": ["cognate-m3"],
        "eval-phase2_champion": ["evomerge"], "eval-phase3_reasoning": ["quietstar"],
        "eval-phase4_compressed": ["bitnet"]}


def test_a_steps_digest_covers_every_directory_it_publishes(tmp_path):
    """Quiet-STaR publishes baked/ and reasoning/: rewriting the second must change the step's digest (a digest of the
    first directory alone survived the mutation audit, and a hand-edited reasoning model would have been reused)."""
    dirs = [tmp_path / "baked", tmp_path / "reasoning"]
    for d in dirs:
        save_checkpoint(d, {"w": torch.zeros(2)}, architecture="fake", model_config={}, meta={})
    step = Step("quietstar", "quietstar", [], dirs)
    before = outputs_digest(step)
    save_checkpoint(dirs[1], {"w": torch.ones(2)}, architecture="fake", model_config={}, meta={})
    assert outputs_digest(step) != before


def test_a_step_on_an_input_outside_the_pipeline_reruns_when_that_input_changes(tmp_path, monkeypatch, capsys):
    """``phase.input`` pointing outside the pipeline: the step was fingerprinted on the path string only, and a rerun
    after the checkpoint there was rewritten said "skipped" and reused outputs made from the old weights (the audit's
    confirmed bug). The input's contents are now among what the step was made from."""
    ext = tmp_path / "external"
    _ckpt(ext, {"v": 1})
    args = ["phase.phases=[quietstar]", f'phase.overrides.quietstar=["phase.input={ext}"]']
    assert _pipeline(tmp_path, monkeypatch, args) == ["quietstar"]
    assert _pipeline(tmp_path, monkeypatch, args) == []                  # the same input: reused
    _ckpt(ext, {"v": 2})
    capsys.readouterr()
    assert _pipeline(tmp_path, monkeypatch, args) == ["quietstar"]
    assert f"the outputs it was made from changed since (input:{ext})" in capsys.readouterr().out


def test_a_refused_subset_names_the_steps_that_are_not_current_without_saying_they_ran(tmp_path, monkeypatch):
    """Outside steps of other settings were reported as "a step it reads from ran again (...)" though nothing ran."""
    assert _pipeline(tmp_path, monkeypatch, ["phase.phases=[cognate,evomerge,quietstar]", _cognate(40)])[-1] == \
        "quietstar"
    with pytest.raises(ConfigError) as err:
        _pipeline(tmp_path, monkeypatch, ["phase.phases=[quietstar]", _cognate(41)])
    msg = str(err.value)
    assert "evomerge (a step it reads from is not current (cognate-m1, cognate-m2, cognate-m3))" in msg
    assert "ran again" not in msg


def test_a_subset_reads_its_current_outside_inputs_and_keeps_their_lineage(tmp_path, monkeypatch):
    """A subset whose outside inputs are current: a Quiet-STaR setting changed reruns Quiet-STaR alone (a Lineage
    that dropped the outside steps' own inputs refused it), and an EvoMerge subset with nothing changed reruns
    nothing and keeps its record's inputs (starting from no digests reran it and recorded none)."""
    _pipeline(tmp_path, monkeypatch, ["phase.phases=[cognate,evomerge,quietstar]", _cognate(40)])
    recorded = _state(tmp_path)["evomerge"]["inputs"]
    assert _pipeline(tmp_path, monkeypatch, ["phase.phases=[evomerge]", _cognate(40)]) == []
    assert _state(tmp_path)["evomerge"]["inputs"] == recorded and set(recorded) == {"cognate-m1", "cognate-m2",
                                                                                    "cognate-m3"}
    assert _pipeline(tmp_path, monkeypatch, ["phase.phases=[quietstar]", _cognate(40),
                                             'phase.overrides.quietstar=["seed=5"]']) == ["quietstar"]


def test_what_a_step_is_made_with_names_each_change_and_only_those(tmp_path):
    """``made_with``: the seed is a setting (a seed among the unfingerprinted keys survived the audit), a moved
    artifacts dir is not; ``what_changed`` names both a setting and a data file when both changed, and only the
    changed file; ``stale`` names an outside step only for an output this run replaced."""
    from omegaconf import OmegaConf

    from agentforge.pipeline.lineage import SETTINGS_DIFFER, stale, what_changed
    from agentforge.pipeline.plan import made_with

    def child(seed, art):
        return OmegaConf.create({"seed": seed, "phase": {"name": "eval", "checkpoint": f"{art}/cognate/model1"},
                                 "paths": {"artifacts": art}, "data": {}})
    assert made_with(child(1, "/a"), Path("/a"))["settings"] != made_with(child(2, "/a"), Path("/a"))["settings"]
    assert made_with(child(1, "/a"), Path("/a")) == made_with(child(1, "/b"), Path("/b"))
    before = {"settings": "s1", "data_files": {"data.path": "d1", "data.eval_paths.arc": "e1"}, "version": "1"}
    now = {"settings": "s2", "data_files": {"data.path": "d2", "data.eval_paths.arc": "e1"}, "version": "1"}
    assert what_changed(before, now) == (f"{SETTINGS_DIFFER}; its data files changed since its outputs were made "
                                         "(data.path)")
    records = {"e": {"inputs": {"a": "1"}}}
    assert stale(records, {"a": "2"}, set()) == []
    assert stale(records, {"a": "2"}, {"a"}) == ["e was made from the earlier outputs of a"]
