"""What a pipeline rerun reruns and what it leaves: a data file replaced under the same path, a bad input found
before any work, and each step's run directory (its metrics.jsonl history).

An audit found a rewritten ``data.path`` file reran nothing ("same settings and inputs, skipped", exit 0, the old
models); a typo'd ``data.path`` recorded a finished step as failed and retired a still-valid report; a rerun step
appended to the last run's metrics.jsonl (its ``run_summary.json`` counted two models). The pipeline runs in this
process with the fake phases of ``test_pipeline_lineage`` (seconds, no training); the real CLI's side is
``test_pipeline.py``'s slow tier.
"""
from __future__ import annotations

import hashlib
import json

import pytest
from omegaconf import OmegaConf

from agentforge.data.formats import DatasetError
from tests.test_pipeline_lineage import _cognate, _pipe, _pipeline, _state

ONE = ["phase.phases=[cognate]", "phase.models=[m1]"]
GSM8K = '{"question": "What is %d plus 1?", "answer": "%d + 1 = %d\\n#### %d"}\n'


def _data(path, n: int) -> None:
    path.write_text("".join(GSM8K % (i, i, i + 1, i + 1) for i in range(n)))


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _summary_count(run_dir) -> int:
    return json.loads((run_dir / "run_summary.json").read_text())["metrics"]["fake/loss"]["count"]


def test_the_fingerprint_counts_each_data_file_by_its_content(tmp_path, monkeypatch):
    """Same config, same (relative) path, another file there: another fingerprint, and the reason names the key. A
    missing file is None (the phase's own error line names it), not a traceback in the planner."""
    from agentforge.pipeline.lineage import what_changed
    from agentforge.pipeline.plan import forget_file_digests, made_with, step_fingerprint

    monkeypatch.chdir(tmp_path)   # relative paths resolve against the working directory, as the phases open them
    _data(tmp_path / "d.jsonl", 3)
    conf = OmegaConf.create({"data": {"path": "d.jsonl", "eval_paths": {"arc": "gone.jsonl", "piqa": None}}})
    before, fp = made_with(conf), step_fingerprint(conf)
    assert before["data_files"] == {"data.path": _sha(tmp_path / "d.jsonl"), "data.eval_paths.arc": None}
    assert before["version"] == __import__("agentforge").__version__
    _data(tmp_path / "d.jsonl", 4)
    assert step_fingerprint(conf) != fp
    assert what_changed(before, made_with(conf)) == "its data files changed since its outputs were made (data.path)"
    # data=python_code's corpus directory counts by its files' contents too
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.py").write_text("x = 1\n")
    code = OmegaConf.create({"data": {"source": "python_code", "root": "src", "path": None}})
    first = made_with(code)["data_files"]["data.root"]
    (tmp_path / "src" / "a.py").write_text("x = 22\n")
    assert made_with(code)["data_files"]["data.root"] != first
    # data.benchmark_paths, and the data files a phase's own config names: Quiet-STaR's baking examples, codegen's
    # benchmark file (rewriting the examples under the same path reran nothing: an audit)
    (tmp_path / "ex.jsonl").write_text("a\n")
    (tmp_path / "b.jsonl").write_text("b\n")
    conf = OmegaConf.create({"data": {"benchmark_paths": {"mbpp": "b.jsonl"}},
                             "phase": {"baking": {"examples_path": "ex.jsonl"}, "benchmark_path": "b.jsonl"}})
    before = made_with(conf)["data_files"]
    assert before == {"data.benchmark_paths.mbpp": _sha(tmp_path / "b.jsonl"), "phase.benchmark_path":
                      _sha(tmp_path / "b.jsonl"), "phase.baking.examples_path": _sha(tmp_path / "ex.jsonl")}
    (tmp_path / "ex.jsonl").write_text("changed\n")
    forget_file_digests()
    assert made_with(conf)["data_files"]["phase.baking.examples_path"] != before["phase.baking.examples_path"]


def test_a_data_file_replaced_under_the_same_path_reruns_its_steps_in_a_fresh_run_dir(tmp_path, monkeypatch, capsys):
    """The audit's case: the file at data.path rewritten, the same command: the step runs again, saying which data
    file changed, and its run_summary.json counts this run's rows only (the last run's dir is kept beside it)."""
    monkeypatch.chdir(tmp_path)
    _data(tmp_path / "d.jsonl", 30)
    args = [*ONE, "data.path=d.jsonl", "data.format=gsm8k"]
    assert _pipeline(tmp_path, monkeypatch, args) == ["cognate-m1"]
    assert _pipeline(tmp_path, monkeypatch, args) == []
    assert "cognate-m1: outputs complete, same settings, inputs and data files, skipped" in capsys.readouterr().out
    _data(tmp_path / "d.jsonl", 31)
    assert _pipeline(tmp_path, monkeypatch, args) == ["cognate-m1"]
    assert "cognate-m1: running (its data files changed since its outputs were made (data.path))" in \
        capsys.readouterr().out
    assert _state(tmp_path)["cognate-m1"]["made_with"]["data_files"] == {"data.path": _sha(tmp_path / "d.jsonl")}
    runs = _pipe(tmp_path) / "runs"
    assert _summary_count(runs / "cognate-m1") == 1 and _summary_count(runs / "cognate-m1.previous") == 1


def _resumable(monkeypatch) -> None:
    """The fake Cognate leaves an epoch checkpoint of its config in ``model<i>.work`` while it runs (the fake phase
    interrupted there leaves it, as a killed Cognate run does) and removes the dir when it finishes."""
    import shutil
    from pathlib import Path

    import torch

    from agentforge.phases.cognate import fingerprint
    from agentforge.training.trainer import FINGERPRINT_KEY
    from tests import test_pipeline_lineage as lineage

    def fake(calls, fail_at, inner=lineage._fake_phase):
        run = inner(calls, fail_at)

        def resumable(child):
            work = Path(child.paths.artifacts) / "cognate" / f"model{child.model.model_id}.work"
            work.mkdir(parents=True, exist_ok=True)
            torch.save({FINGERPRINT_KEY: fingerprint(child)}, work / "last.ckpt")
            result = run(child)
            shutil.rmtree(work)
            return result
        return resumable
    monkeypatch.setattr(lineage, "_fake_phase", fake)


def test_a_resumed_step_continues_its_run_history_and_a_rerun_starts_a_fresh_one(tmp_path, monkeypatch):
    """An interrupted step rerun with the same settings, whose phase resumes its checkpoint: its run dir, and the rows
    it logged, stay, less the temporary files of writes the kill cut short (W&B's own files are left alone). Rerun
    with other settings, it starts a fresh run dir (it appended to the last run's metrics.jsonl: count 3)."""
    _resumable(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        _pipeline(tmp_path, monkeypatch, [*ONE, _cognate(40)], fail_at="cognate-m1")
    runs = _pipe(tmp_path) / "runs"
    (runs / "cognate-m1" / "wandb").mkdir()
    torn = [runs / "cognate-m1" / ".provenance.json.k2j4x9_a.tmp", runs / "cognate-m1" / "tables" / ".t.csv.0abcdefg.tmp"]
    kept = [runs / "cognate-m1" / "wandb" / ".run.json.0abcdefg.tmp", runs / "cognate-m1" / "notes.tmp"]
    for f in [*torn, *kept]:
        f.parent.mkdir(exist_ok=True)
        f.write_text("half")
    assert _pipeline(tmp_path, monkeypatch, [*ONE, _cognate(40)]) == ["cognate-m1"]
    assert _summary_count(runs / "cognate-m1") == 2 and not (runs / "cognate-m1.previous").exists()
    assert not any(f.exists() for f in torn) and all(f.exists() for f in kept)
    assert _pipeline(tmp_path, monkeypatch, [*ONE, _cognate(41)]) == ["cognate-m1"]
    assert _summary_count(runs / "cognate-m1") == 1 and _summary_count(runs / "cognate-m1.previous") == 2


def test_an_interrupted_step_that_will_not_resume_starts_a_fresh_run_dir(tmp_path, monkeypatch, capsys):
    """The audit's case: a Cognate step killed (SIGKILL: its record unchanged) after it published new outputs and
    removed its ``.work`` dir, before it was marked finished. The rerun trains from scratch, so it must not log into
    the killed run's dir (the run dir held every step twice, two sets of final/*): that dir moves to
    ``runs/<key>.previous``. The reason names the interrupted run, not 'its outputs changed since the pipeline made
    them'. The same holds for a phase that never resumes (``pipeline.continues``), an eval step re-run on a re-made
    model (its run_summary.json averaged two models) among them."""
    from agentforge.pipeline.rundirs import ATTEMPT

    assert _pipeline(tmp_path, monkeypatch, ONE) == ["cognate-m1"]
    runs, fp = _pipe(tmp_path) / "runs", _state(tmp_path)["cognate-m1"]["fingerprint"]
    # the killed rerun: its attempt marked unfinished, its rows logged, its outputs republished (new timings inside)
    (runs / "cognate-m1" / ATTEMPT).write_text(json.dumps({"fingerprint": fp, "inputs": {}, "finished": False}))
    with (runs / "cognate-m1" / "metrics.jsonl").open("a") as f:
        f.write('{"_step": 0, "fake/loss": 2.0}\n')
    metrics = _pipe(tmp_path) / "artifacts" / "cognate" / "model1" / "metrics.json"
    metrics.write_text(metrics.read_text().replace("10.0", "11.0"))
    capsys.readouterr()
    assert _pipeline(tmp_path, monkeypatch, ONE) == ["cognate-m1"]
    assert "cognate-m1: running (its last run was interrupted after it had replaced its outputs)" in \
        capsys.readouterr().out
    assert _summary_count(runs / "cognate-m1") == 1   # this run's row only
    assert len((runs / "cognate-m1.previous" / "metrics.jsonl").read_text().splitlines()) == 2
    from agentforge.pipeline.continues import will_continue

    assert not will_continue("eval", None) and not will_continue("bitnet", None)


def test_a_bad_input_found_before_any_work_leaves_the_pipeline_as_it_was(tmp_path, monkeypatch, capsys):
    """A typo'd data.path after a finished run: the phase's error, and every file of the pipeline as it was (the
    step's record was 'failed', the valid report retired); the original command then skips every step. In a new
    pipeline dir, nothing is left. A step that did replace its outputs before failing is recorded failed, and the
    report that described them is retired."""
    monkeypatch.chdir(tmp_path)
    _data(tmp_path / "d.jsonl", 30)
    good, typo = [*ONE, "data.path=d.jsonl"], [*ONE, "data.path=d_typo.jsonl"]
    _pipeline(tmp_path, monkeypatch, good)
    pipe = _pipe(tmp_path)
    before = {p: p.read_bytes() for p in pipe.rglob("*") if p.is_file()}
    capsys.readouterr()
    calls: list[str] = []
    with pytest.raises(DatasetError, match=r"^d_typo.jsonl: dataset file not found"):
        _pipeline(tmp_path, monkeypatch, typo, calls=calls)
    assert calls == ["cognate-m1"] and "superseded" not in capsys.readouterr().out
    assert {p: p.read_bytes() for p in pipe.rglob("*") if p.is_file()} == before
    assert _pipeline(tmp_path, monkeypatch, good) == []
    with pytest.raises(DatasetError):
        _pipeline(tmp_path, monkeypatch, typo, name="new")
    assert not (tmp_path / "outputs" / "pipeline" / "new").exists()
    with pytest.raises(KeyboardInterrupt):   # published, then interrupted
        _pipeline(tmp_path, monkeypatch, [*good, _cognate(41)], fail_at="cognate-m1:after")
    assert _state(tmp_path)["cognate-m1"]["status"] == "failed"
    assert not (pipe / "pipeline_report.md").exists() and (pipe / "pipeline_report.previous.md").is_file()
