"""Sweeps under the other launchers and sweepers, and sweeps whose jobs would share outputs. A job that a launcher
starts in a process of its own (``hydra/launcher=submitit_local``, ``slurm``) re-composes its config from a pickled
copy: the sweep dir's ``${af_uid:}`` must resolve to the sweep's id there too (it resolved to the job's own, so every
job wrote its record into a sweep dir of its own, and the sweep ended with no summary, exit 0, every job failed)."""
from __future__ import annotations

import importlib.util
import json
import pickle

import pytest
from omegaconf import OmegaConf

from tests.conftest import run_cli


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def test_the_sweep_id_survives_pickling_into_a_job_process():
    """What the submitit launcher does: pickle the sweep's config, and in the job's process (a new ``_uid``) compose
    the job's config and copy the sweep's resolver cache into it (Hydra's ``load_sweep_config``)."""
    from agentforge import main

    tree = {"hydra": {"sweep": {"dir": "multirun/${af_uid:}"}}}
    sweep_cfg = OmegaConf.create(tree)
    first = sweep_cfg.hydra.sweep.dir
    blob = pickle.dumps(sweep_cfg)
    saved = dict(main._UID)
    main._UID.clear()
    main._UID["v"] = "another-process"   # what _uid gives in the job's process
    try:
        job_cfg = OmegaConf.create(tree)
        OmegaConf.copy_cache(from_config=pickle.loads(blob), to_config=job_cfg)
        assert job_cfg.hydra.sweep.dir == first
    finally:
        main._UID.clear()
        main._UID.update(saved)


def test_a_sweep_without_records_says_so(tmp_path, capsys):
    from agentforge.tracking.sweep import SweepSummary

    SweepSummary().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: no job of this sweep recorded its outcome"), err


@pytest.mark.slow
@pytest.mark.faults
@pytest.mark.skipif(not _has("hydra_plugins.hydra_submitit_launcher"),
                    reason="hydra-submitit-launcher not installed (pip install 'agentforge[slurm]')")
def test_a_submitit_sweep_has_one_sweep_dir_a_summary_and_fails_when_its_jobs_fail(tmp_path):
    proc = run_cli(["-m", "hydra/launcher=submitit_local", "phase=eval", "stage=s", "experiment=smoke",
                    "checkpoint=/nonexistent,/nonexistent2"], tmp_path, timeout=600)
    sweeps = [p for p in (tmp_path / "outputs" / "multirun").glob("*/*") if p.is_dir()]
    assert len(sweeps) == 1, sweeps
    rows = [json.loads(x) for x in (sweeps[0] / "sweep_status.jsonl").read_text().splitlines()]
    assert sorted(r["job"] for r in rows) == [0, 1] and not any(r["ok"] for r in rows)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "sweep: 0 of 2 jobs succeeded" in proc.stdout
    assert proc.stderr.count("FAILED job") == 2, proc.stderr[-2000:]


def test_a_pipeline_sweep_whose_jobs_share_a_run_name_is_refused_before_any_job(tmp_path):
    """``-m phase=pipeline seed=1,2``: both jobs would run in ``pipeline/<phase.run_name>``, the second redoing the
    steps over the first's outputs, and the summary said 2 of 2 succeeded. One line, exit 2, nothing written."""
    proc = run_cli(["-m", "phase=pipeline", "experiment=smoke", "seed=1,2"], tmp_path, timeout=120)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1, proc.stderr[-2000:]
    assert err[0].startswith("error: jobs 0, 1 of 2 would all run phase=pipeline as phase.run_name=smoke"), err
    assert "give each job its own phase.run_name" in err[0]
    assert not (tmp_path / "outputs").exists() or not list((tmp_path / "outputs").rglob("*.*"))


def test_a_run_name_naming_the_swept_key_gives_each_pipeline_job_its_own_directory(tmp_path):
    """What the refusal suggests: ``phase.run_name=seed${seed}`` resolves per job."""
    from agentforge.pipeline import pipeline_dir
    from agentforge.tracking.sweep import shared_pipeline_problem
    from tests.conftest import compose_cfg

    cfgs = [compose_cfg(["phase=pipeline", "phase.run_name=seed${seed}", f"seed={s}"], tmp_path) for s in (1, 2)]
    dirs = [str(pipeline_dir(c.paths.outputs, c.phase.run_name)) for c in cfgs]
    assert [d.rsplit("/", 1)[1] for d in dirs] == ["seed1", "seed2"]
    assert shared_pipeline_problem({d: [n] for n, d in enumerate(dirs)}, 2) is None


@pytest.mark.skipif(not _has("hydra_plugins.hydra_submitit_launcher"),
                    reason="hydra-submitit-launcher not installed (pip install 'agentforge[slurm]')")
def test_the_slurm_launcher_without_srun_is_one_line_and_leaves_nothing(tmp_path):
    """It was submitit's ``RuntimeError: Could not detect "srun"`` traceback, after a sweep dir holding only
    multirun.yaml was made."""
    import shutil

    if shutil.which("srun"):
        pytest.skip("srun is on PATH here")
    proc = run_cli(["-m", "hydra/launcher=slurm", "phase=cognate", "model=m1,m2", "experiment=smoke",
                    "hydra.launcher.partition=gpu"], tmp_path, timeout=120)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1, proc.stderr[-2000:]
    assert err[0].startswith("error: hydra/launcher=slurm needs a SLURM cluster: srun was not found on PATH"), err
    assert not (tmp_path / "outputs").exists() or not list((tmp_path / "outputs").rglob("*.*"))


def test_an_eval_sweep_that_overwrites_its_results_file_is_warned_of(tmp_path, monkeypatch, capsys):
    """``-m phase=eval stage=s checkpoint=C seed=1,2``: each job rewrote artifacts/eval_results/s_results.json and the
    summary said nothing (eval recorded what it published only when it fine-tuned). Its jobs now record the results
    file (``published``, a list) and the summary's overwrite warning names it."""
    from types import SimpleNamespace as NS

    from agentforge.tracking import sweep

    results = str(tmp_path / "artifacts" / "eval_results" / "s_results.json")
    for job in (0, 1):
        hc = NS(sweep=NS(dir=str(tmp_path / "s")), overrides=NS(task=[f"seed={job + 1}"]), job=NS(num=job),
                runtime=NS(output_dir=str(tmp_path / "s" / str(job))))
        monkeypatch.setattr(sweep.HydraConfig, "get", staticmethod(lambda hc=hc: hc))
        sweep.record_job(None, True, published=[results])
    sweep.SweepSummary().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "s")}}}))
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"warning: jobs 0, 1 of this sweep all published to {results}: it holds job 1's results (the last "
                   f"to finish); the others' are in their run dirs ({tmp_path / 's' / '0'})"], err
    # a model directory (a string, as before) and a fine-tuned eval's model and results
    rows = [{"job": 0, "ok": True, "published": "/a/m", "run_dir": "/r/0"},
            {"job": 1, "ok": True, "published": ["/a/m", "/a/r.json"], "run_dir": "/r/1"}]
    assert sweep.shared_publications(rows) == [
        "warning: jobs 0, 1 of this sweep all published to /a/m: it holds job 1's model (the last to finish); the "
        "others' are in their run dirs (/r/0)"]


def test_an_optuna_sweep_none_of_whose_trials_finished_is_the_summary_and_one_line(tmp_path, monkeypatch, capsys):
    """Optuna's ``ValueError: No trials are completed yet`` (raised for the best trial, before the sweep's summary)
    becomes the summary and ``error: all N trials failed``; any other ValueError is left alone (a bug's traceback)."""
    from agentforge.tracking import sweep

    (tmp_path / sweep.STATUS_FILE).write_text("".join(
        json.dumps({"job": j, "ok": False, "overrides": [f"optimizer.lr={j}"], "error": "DatasetError: x",
                    "run_dir": str(tmp_path / str(j)), "published": None, "metrics": {}}) + "\n" for j in (0, 1)))
    monkeypatch.setattr(sweep, "_started", [tmp_path])
    assert sweep.all_trials_failed(ValueError("something else")) is None
    assert sweep.all_trials_failed(ValueError("No trials are completed yet.")) == (
        "all 2 trials failed; see the FAILED lines")
    printed = capsys.readouterr()
    assert "sweep: 0 of 2 jobs succeeded" in printed.out
    assert printed.err.count("  FAILED job") == 2


@pytest.mark.slow
@pytest.mark.faults
@pytest.mark.skipif(not _has("hydra_plugins.hydra_optuna_sweeper"),
                    reason="hydra-optuna-sweeper not installed (pip install 'agentforge[optuna]')")
def test_an_optuna_sweep_whose_trials_all_fail_ends_with_its_summary_not_a_traceback(tmp_path):
    proc = run_cli(["-m", "hparams_search=cognate_optuna", "experiment=smoke", "hydra.sweeper.n_trials=2", "data=gsm8k",
                    "data.path=/nonexistent.jsonl"], tmp_path, timeout=600)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "sweep: 0 of 2 jobs succeeded" in proc.stdout and proc.stderr.count("  FAILED job") == 2
    assert proc.stderr.strip().splitlines()[-1] == "error: all 2 trials failed; see the FAILED lines"
