"""A run that continues in the directory of a killed run counts each step once, and leaves no torn files behind.

An audit killed ``phase=pipeline`` runs and reran them: the resumed Cognate run logged steps 6-8 again after the
killed run had logged them past its last epoch checkpoint (15 train/loss rows for a 12-step run, and
``collect_metrics`` counted 15); SIGKILL left ``.<name>.*.tmp`` files of atomic writes in the kept run dirs; a
Quiet-STaR step that started fresh (its input had changed) was judged by the pipeline to continue its run. Here: the
logger's rule (``JsonlLogger.continue_from``) on a file shaped as the killed run's, a real resumed Cognate fit in the
same run dir, the temporary-file sweeps and the pipeline's "will this step continue" for Quiet-STaR. The pipeline's
side with its fake phases: ``test_pipeline_rerun.py``.
"""
from __future__ import annotations

import json

import torch

from agentforge.evals.collect import summarize_jsonl
from agentforge.tracking.loggers import SUPERSEDED, JsonlLogger
from tests.conftest import TINY, run_in_process


def _rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_resumed_run_sets_aside_the_rows_it_logs_again(tmp_path):
    """The killed run logged steps 0-7 (its checkpoint at step 6: the epoch's end rows at step 5 came after it), its
    config row, its step-0 check row and a torn last line; the resumed run logs its config and check rows again, then
    trains from step 6. Kept: the killed run's rows before step 6 but the two this run logged again; moved to
    metrics.superseded.jsonl: the rest (nothing deleted). Each step then counts once."""
    path = tmp_path / "metrics.jsonl"
    killed = [{"_step": None, "config/n": 3}, {"_step": 0, "check/gap": 0.1}]
    killed += [{"_step": s, "train/loss": 5.0 - s / 10} for s in range(8)]
    killed.insert(8, {"_step": 5, "val/loss": 4.0})   # the epoch's end, logged after its checkpoint at step 6
    path.write_text("".join(json.dumps(r) + "\n" for r in killed) + '{"_step": 8, "train/lo')   # torn by the kill
    log = JsonlLogger(tmp_path)
    log.log_metrics({"config/n": 3})
    log.log_metrics({"check/gap": 0.1}, step=0)
    assert log.continue_from(6) == 5   # steps 6 and 7, the torn line, the config and check rows logged again
    assert log.continue_from(6) == 0   # only the first call acts
    for s in (6, 7):
        log.log_metrics({"train/loss": 1.0}, step=s)
    rows = _rows(path)
    assert [r["_step"] for r in rows if "train/loss" in r] == list(range(8))
    assert [r["_step"] for r in rows if "val/loss" in r] == [5]
    assert [len([r for r in rows if key in r]) for key in ("config/n", "check/gap")] == [1, 1]
    assert summarize_jsonl(path)["metrics"]["train/loss"]["count"] == 8
    aside = (tmp_path / SUPERSEDED).read_text().splitlines()
    assert [json.loads(x) for x in aside[:-1]] == [killed[0], killed[1], *killed[-2:]] and aside[-1] == '{"_step": 8, "train/lo'


def test_a_fresh_run_in_a_killed_runs_dir_sets_all_its_rows_aside_and_ends_a_torn_line(tmp_path):
    """From step 0 (no checkpoint resumed) nothing of the killed run counts. A logger opened on a file whose last
    line a kill tore ends that line first: the next row is not glued onto it."""
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"_step": 0, "train/loss": 2.0}\n{"_step": 1, "train/lo')
    log = JsonlLogger(tmp_path)
    log.log_metrics({"train/loss": 1.0}, step=0)
    assert path.read_text().splitlines()[1:] == ['{"_step": 1, "train/lo', path.read_text().splitlines()[-1]]
    assert log.continue_from(0) == 2
    assert [r["train/loss"] for r in _rows(path)] == [1.0]


def test_a_cognate_run_resumed_in_its_own_run_dir_logs_each_step_once(tmp_path, capsys):
    """The real fit: killed at step 4 (a NaN; the epoch checkpoint is at step 3, and the killed run had logged step 3),
    resumed with ``ckpt_path=last`` in the same run dir (as a pipeline step's kept dir): train/loss counts 6 rows for
    6 steps, each once (7 before), and the resumed line says which of the killed run's rows count."""
    args = ["phase=cognate", "model=m3", *TINY, "phase.steps_per_epoch=3", f"paths.run_dir={tmp_path / 'run'}"]
    try:
        run_in_process([*args, "phase.inject_nan_at_step=4"], tmp_path, capsys)
    except Exception as exc:
        assert type(exc).__name__ == "NonFiniteError"
    again = run_in_process([*args, "ckpt_path=last"], tmp_path, capsys)
    path = tmp_path / "run" / "metrics.jsonl"
    steps = [r["_step"] for r in _rows(path) if "train/loss" in r]
    assert steps == list(range(6)) and summarize_jsonl(path)["metrics"]["train/loss"]["count"] == 6
    assert [r["_step"] for r in _rows(tmp_path / "run" / SUPERSEDED) if "train/loss" in r] == [3]
    assert "the earlier steps are logged in this run dir (the killed run's rows before step 3; those it logged from " \
           f"step 3 on were redone here, and moved to {SUPERSEDED})" in again.stdout


def test_the_temporary_files_of_killed_writes_are_swept(tmp_path):
    """``io.sweep_temporaries`` removes what ``atomic_write`` names its temporary files, not other ``.tmp`` files nor
    W&B's; a resumed run's work dir loses a killed save's ``.last.ckpt.*.tmp`` but keeps the checkpoint it resumes."""
    from agentforge.io import sweep_temporaries
    from agentforge.training.resume import start_work_dir

    (tmp_path / "wandb").mkdir()
    ours = [tmp_path / ".config.json.ab_cd123.tmp", tmp_path / ".m.jsonl.12345678.tmp"]
    others = [tmp_path / "notes.tmp", tmp_path / ".x.tmp", tmp_path / "wandb" / ".run.json.ab_cd123.tmp"]
    for f in [*ours, *others]:
        f.write_text("x")
    assert sorted(sweep_temporaries(tmp_path)) == sorted(ours)
    assert all(f.exists() for f in others)

    work = tmp_path / "work"
    work.mkdir()
    (work / "last.ckpt").write_bytes(b"ckpt")
    left = work / ".last.ckpt.k2j4x9_a.tmp"   # a save SIGKILL cut short
    left.write_bytes(b"half")
    start_work_dir(work, "fp", str(work / "last.ckpt"))
    assert not left.exists() and (work / "last.ckpt").read_bytes() == b"ckpt"


def test_quietstar_continues_only_a_checkpoint_of_its_input(tmp_path):
    """``quietstar_fit.resumes`` (what the pipeline asks before keeping the step's run dir): a baking checkpoint of
    this config and input is resumed; once the input (EvoMerge's champion) changed, the phase starts fresh, so the
    pipeline must not keep the run dir (it kept it: 22 rows for a 14-step history). ``ckpt_path=fresh``: never."""
    from omegaconf import open_dict

    from agentforge.phases.quietstar_fit import resumes, step_dirs, step_fingerprint, work_dir
    from agentforge.pipeline.rundirs import start_attempt
    from agentforge.training.trainer import FINGERPRINT_KEY
    from tests.conftest import compose_cfg

    cfg = compose_cfg(["phase=quietstar"], tmp_path)
    src, out = step_dirs(cfg)["baking"]
    src.mkdir(parents=True)
    (src / "config.json").write_text("{}")
    (src / "model.safetensors").write_bytes(b"weights")
    work_dir(out).mkdir(parents=True)
    torch.save({FINGERPRINT_KEY: step_fingerprint(cfg, "baking", src)}, work_dir(out) / "last.ckpt")
    assert resumes(cfg)
    with open_dict(cfg):
        cfg.ckpt_path = "fresh"
    assert not resumes(cfg)
    with open_dict(cfg):
        cfg.ckpt_path = None
    (src / "model.safetensors").write_bytes(b"other weights")
    assert not resumes(cfg)
    # the pipeline's side: an interrupted run with other inputs is not continued, whatever the phase says
    run = tmp_path / "runs" / "q"
    start_attempt(run, "fp", None, {"evomerge": "a"})
    assert start_attempt(run, "fp", None, {"evomerge": "a"}, continues=True) is None
    assert start_attempt(run, "fp", None, {"evomerge": "b"}, continues=True) == run.with_name("q.previous")


def test_the_pipeline_asks_quietstar_about_the_step_it_trains(tmp_path):
    """``will_continue("quietstar", cfg)`` is the phase's own answer (a constant True kept every interrupted run dir,
    also of a step that starts fresh); an RL checkpoint is judged on RL's fingerprint, and with ``step=baking`` a
    leftover RL checkpoint does not count (mutants of each survived the mutation audit of these changes)."""
    from omegaconf import open_dict

    from agentforge.phases.quietstar_fit import step_dirs, step_fingerprint, work_dir
    from agentforge.pipeline.continues import will_continue
    from agentforge.training.trainer import FINGERPRINT_KEY
    from tests.conftest import compose_cfg

    cfg = compose_cfg(["phase=quietstar"], tmp_path)
    assert not will_continue("quietstar", cfg)                      # no checkpoint: starts fresh
    given = tmp_path / "baked_in"
    given.mkdir()
    (given / "model.safetensors").write_bytes(b"weights")
    with open_dict(cfg):
        cfg.phase.step, cfg.phase.input = "rl", str(given)
    src, out = step_dirs(cfg)["rl"]
    work_dir(out).mkdir(parents=True)
    torch.save({FINGERPRINT_KEY: step_fingerprint(cfg, "rl", src)}, work_dir(out) / "last.ckpt")
    assert will_continue("quietstar", cfg)                          # RL resumes its own checkpoint
    with open_dict(cfg):
        cfg.phase.step = "baking"
    assert not will_continue("quietstar", cfg)                      # baking trains; RL's checkpoint is not its


def test_a_second_resume_adds_to_the_set_aside_rows_and_a_finished_run_is_never_continued(tmp_path):
    """Nothing is deleted: a second kill-and-resume appends to ``metrics.superseded.jsonl`` (a rewrite of only the
    new rows survived the mutation audit); and the pipeline moves a finished run's dir aside even when the phase would
    resume (the ``finished`` check survived too)."""
    from agentforge.pipeline.rundirs import ATTEMPT, start_attempt

    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"_step": s, "train/loss": 1.0}) + "\n" for s in range(8)))
    assert JsonlLogger(tmp_path).continue_from(6) == 2                 # steps 6, 7 aside
    assert JsonlLogger(tmp_path).continue_from(3) == 3                 # then 3, 4, 5
    assert sorted(r["_step"] for r in _rows(tmp_path / SUPERSEDED)) == [3, 4, 5, 6, 7]
    assert [r["_step"] for r in _rows(path)] == [0, 1, 2]
    run = tmp_path / "runs" / "q"
    run.mkdir(parents=True)
    (run / ATTEMPT).write_text(json.dumps({"fingerprint": "fp", "inputs": {}, "finished": True}))
    assert start_attempt(run, "fp", None, {}, continues=True) == run.with_name("q.previous")
