"""What a run records must be what ran. A run directory that already holds a run is refused (``cli_errors.earlier_run_problem``): a fixed
``hydra.run.dir`` given twice, or a rerun from a saved ``config_resolved.yaml`` (whose ``paths.run_dir`` is the saved
run's), used to append the second run's steps to the first's ``metrics.jsonl`` and replace its ``overrides.yaml``. A group's setting added with ``+`` that nothing reads is refused
(it ran ignored while ``config_resolved.yaml`` recorded it), and a key given twice is named in a warning."""
from __future__ import annotations

from omegaconf import OmegaConf

from tests.conftest import compose_cfg, run_cli


def _earlier_run(tmp_path):
    """A run dir as ``run_context`` leaves it: the resolved config (``paths.run_dir`` = the dir), the overrides, the
    step records."""
    cfg = compose_cfg(["phase=cognate", "experiment=smoke", "logger=none"], tmp_path)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(OmegaConf.to_container(cfg, resolve=True)))
    (run_dir / "overrides.yaml").write_text(OmegaConf.to_yaml(["phase=cognate", "experiment=smoke", "logger=none",
                                                               f"hydra.run.dir={run_dir}"]))
    (run_dir / "metrics.jsonl").write_text('{"_step": 0, "train/loss": 5.0}\n')
    (run_dir / "agentforge.log").write_text("[the earlier run's log]\n")
    return run_dir


def test_a_run_dir_holding_a_run_is_refused_with_the_replay_recipe(tmp_path):
    run_dir = _earlier_run(tmp_path)
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    for args in (["phase=cognate", "experiment=smoke", "logger=none", f"hydra.run.dir={run_dir}", "seed=3"],
                 ["--config-path", str(run_dir), "--config-name", "config_resolved"]):
        proc = run_cli(args, tmp_path / "cwd", timeout=120)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        err = proc.stderr.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: the run directory {run_dir} already holds a run"), err
        assert err[0].endswith("replay its overrides: python -m agentforge phase=cognate experiment=smoke logger=none")
        assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before   # the earlier run's records untouched
        assert not (tmp_path / "cwd" / "outputs").exists()   # Hydra's own default dir (saved config) removed


def test_an_empty_run_dir_given_by_the_user_is_used():
    """Only a dir with another run's records is refused: an empty (or new) one is where the run goes."""
    from agentforge.cli_errors import earlier_run_problem

    assert earlier_run_problem("/nonexistent/dir") is None


def test_added_keys_are_refused_in_the_groups_and_allowed_in_the_open_mappings(tmp_path):
    """+KEY: another phase's setting, or a typo, in a config group is refused; the mappings a user fills
    (held-out files, the pipeline's per-step overrides, compare's thresholds) and keys outside the groups are not."""
    from agentforge.cli_errors import added_key_problem

    cfg = compose_cfg(["phase=cognate"], tmp_path)
    assert added_key_problem(cfg, ["+phase.population_size=4"]).startswith(
        "+phase.population_size: phase=cognate has no such setting")
    assert "did you mean optimizer.lr?" in added_key_problem(cfg, ["seed=1", "+optimizer.lrr=0.1"])
    assert added_key_problem(cfg, ["experiment_phase=smoke_evomerge"]).startswith(
        "experiment_phase=smoke_evomerge: experiment_phase is internal (experiment=X adds X_<phase> for the phase "
        "that runs, e.g. smoke_cognate)")
    for fine in ("+data.eval_paths.gsm8k=/x.jsonl", "+phase.thresholds.min_pass_at_5=2", "+logger.api_key=x",
                 "++phase.max_epochs=3", "phase.max_epochs=3", "+phase.overrides.cognate=[]", "+experiment=smoke",
                 "+model=m2"):
        assert added_key_problem(cfg, [fine]) is None, fine


def test_a_key_given_twice_is_named_in_a_warning_with_every_value():
    from agentforge.cli_errors import repeated_overrides

    assert repeated_overrides(["-m", "seed=1", "model=m1,m2", "+phase.x=3", "seed=2", "phase.x=4", "--cfg", "job"]) == [
        "warning: seed is given 2 times (1, 2); the last, 2, is used",
        "warning: phase.x is given 2 times (3, 4); the last, 4, is used"]
    assert repeated_overrides(["+logger.api_key=sk-1", "+logger.api_key=sk-2"]) == [
        "warning: logger.api_key is given 2 times (<redacted>, <redacted>); the last, <redacted>, is used"]
    assert repeated_overrides(["seed=1", "model=m2"]) == []


def test_the_cli_prints_the_warning_before_its_error(tmp_path):
    proc = run_cli(["phase=cognate", "seed=1", "seed=2", "phase.max_epochs=abc"], tmp_path, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and lines[0] == "warning: seed is given 2 times (1, 2); the last, 2, is used", lines
    assert len(lines) == 2 and lines[1].startswith("error: phase.max_epochs")


def test_a_shortcut_the_phase_does_not_read_is_refused(tmp_path):
    """step=rl with phase=cognate ran with it ignored; the pipeline would hand it to every step."""
    import pytest

    from agentforge.config import check_shortcuts
    from agentforge.errors import ConfigError

    for args, msg in ((["phase=cognate", "step=rl"], "step=rl: phase=cognate does not read it (phase=quietstar does)"),
                      (["phase=evomerge", "stage=baseline"], "stage=baseline: phase=evomerge does not read it"),
                      (["phase=pipeline", "checkpoint=/x"], "checkpoint=/x: phase=pipeline runs every phase in full")):
        with pytest.raises(ConfigError, match=msg.replace("(", r"\(").replace(")", r"\)")):
            check_shortcuts(compose_cfg(args, tmp_path))
    for args in (["phase=quietstar", "step=rl"], ["phase=eval", "stage=x", "checkpoint=/x"],
                 ["phase=compare", "stages=[a,b]"], ["phase=compare", "stage=x"]):   # the last: compare's own message
        check_shortcuts(compose_cfg(args, tmp_path))


def test_the_sweep_table_puts_the_jobs_results_side_by_side(tmp_path):
    """Two finished jobs: the CSV holds the override that differs (seed) and every metric both report; the console
    shows the sweep's optimized metric first. A failed job and a lone finished job make no table."""
    import csv

    from agentforge.tracking.sweep import sweep_table

    rows = [{"job": 0, "ok": True, "overrides": ["phase=cognate", "seed=1"],
             "metrics": {"final/val_loss": 4.5, "final/acc": 0.25, "time/fit_s": 3.0}},
            {"job": 1, "ok": True, "overrides": ["phase=cognate", "seed=2"],
             "metrics": {"final/val_loss": 4.25, "final/acc": 0.5}},
            {"job": 2, "ok": False, "overrides": ["phase=cognate", "seed=3"], "metrics": {}}]
    lines = sweep_table(rows, tmp_path / "t.csv", first="final/val_loss")
    assert lines == [f"sweep table: 2 jobs x 2 metrics in {tmp_path / 't.csv'}",
                     "  job 0 [seed=1]: final/val_loss 4.5, final/acc 0.25",
                     "  job 1 [seed=2]: final/val_loss 4.25, final/acc 0.5"]
    with (tmp_path / "t.csv").open() as f:
        assert list(csv.reader(f)) == [["job", "seed", "final/acc", "final/val_loss"], ["0", "1", "0.25", "4.5"],
                                       ["1", "2", "0.5", "4.25"]]
    assert sweep_table(rows[:1] + rows[2:], tmp_path / "u.csv") == [] and not (tmp_path / "u.csv").exists()


def test_a_forced_key_is_refused_only_when_the_defaults_lack_it(tmp_path):
    """++KEY sets a key whether or not it exists: ++phase.epocs=2 ran ignored as +phase.epocs did (mutation audit);
    ++phase.max_epochs=3 stays a plain override."""
    from agentforge.cli_errors import added_key_problem

    defaults = compose_cfg(["phase=cognate"], tmp_path)
    assert added_key_problem(defaults, ["++phase.epocs=2"], defaults).startswith(
        "++phase.epocs: phase=cognate has no such setting, so nothing would read it (did you mean phase.max_epochs?")
    for fine in ("++phase.max_epochs=3", "++data.eval_paths.gsm8k=/x", "++logger.api_key=x"):
        assert added_key_problem(defaults, [fine], defaults) is None, fine
    assert added_key_problem(defaults, ["++phase.epocs=2"]) is None   # no defaults known: not judged
    assert "did you mean data.seq_len?" in added_key_problem(defaults, ["+data.seq_lenn=2"])
    assert added_key_problem(defaults, ["+experiment_phase=x"]).startswith("experiment_phase=x: experiment_phase is")
    assert added_key_problem(defaults, ["+phase.thresholds={a: 1}"]) is None


def test_the_start_up_checks_include_the_shortcut_check(tmp_path):
    import pytest

    from agentforge.errors import ConfigError
    from agentforge.main import check_start

    with pytest.raises(ConfigError, match="step=rl: phase=cognate does not read it"):
        check_start(compose_cfg(["phase=cognate", "step=rl"], tmp_path))


def test_any_earlier_record_refuses_the_dir_and_the_recipe_never_names_the_dir(tmp_path):
    """Either record alone refuses the dir, the message names the first found, and the replay recipe (from
    overrides.yaml, when there is one) drops hydra.run.dir and paths.run_dir, which would be refused again."""
    from agentforge.cli_errors import earlier_run_problem

    d = tmp_path / "d"
    d.mkdir()
    (d / "metrics.jsonl").write_text("{}\n")
    only = earlier_run_problem(str(d))
    assert only.startswith(f"the run directory {d} already holds a run (metrics.jsonl)") and "replay" not in only
    (d / "config_resolved.yaml").write_text("seed: 1\n")
    (d / "overrides.yaml").write_text(OmegaConf.to_yaml(["seed=1", "paths.run_dir=/x", "+hydra.run.dir=/y"]))
    both = earlier_run_problem(str(d))
    assert "(config_resolved.yaml)" in both and both.endswith("replay its overrides: python -m agentforge seed=1")


def test_a_sweep_job_whose_dir_holds_a_run_is_recorded_as_failed_and_leaves_it_alone(tmp_path):
    sweep = tmp_path / "sweep"
    for job in ("0", "1"):
        (sweep / job).mkdir(parents=True)
        (sweep / job / "metrics.jsonl").write_text('{"_step": 0}\n')
    proc = run_cli(["-m", "phase=cognate", "experiment=smoke", "logger=none", f"hydra.sweep.dir={sweep}", "seed=1,2"],
                   tmp_path, timeout=300)
    import json

    rows = [json.loads(x) for x in (sweep / "sweep_status.jsonl").read_text().splitlines()]
    assert proc.returncode == 1 and len(rows) == 2, proc.stderr[-2000:]
    assert all(not r["ok"] and r["error"].startswith("the run directory") for r in rows)
    assert all((sweep / job / "metrics.jsonl").read_text() == '{"_step": 0}\n' for job in ("0", "1"))


def test_the_sweep_table_edges_and_what_record_job_keeps(tmp_path, monkeypatch):
    """An optimized metric the jobs lack falls back to the final/* keys (three shown); a finished job without
    results makes no table; record_job keeps numbers only (a string or a bool would break the table's format)."""
    import json
    from types import SimpleNamespace as NS

    from agentforge.tracking import sweep

    m = {"final/a": 1.0, "final/b": 2.0, "final/c": 3.0, "final/d": 4.0}
    rows = [{"job": j, "ok": True, "overrides": [f"seed={j + 1}"], "metrics": m} for j in (0, 1)]
    assert sweep.sweep_table(rows, tmp_path / "t.csv", first="nope")[1] == "  job 0 [seed=1]: final/a 1, final/b 2, final/c 3"
    assert sweep.sweep_table([rows[0], {**rows[1], "metrics": {}}], tmp_path / "u.csv") == []
    hc = NS(sweep=NS(dir=str(tmp_path / "s")), overrides=NS(task=["seed=1"]), job=NS(num=0),
            runtime=NS(output_dir=str(tmp_path / "s" / "0")))
    monkeypatch.setattr(sweep.HydraConfig, "get", staticmethod(lambda: hc))
    sweep.record_job(None, True, metrics={"final/x": 1.5, "final/shipped": "compressed", "final/flag": True, "n": 3})
    row = json.loads((tmp_path / "s" / "sweep_status.jsonl").read_text())
    assert row["metrics"] == {"final/x": 1.5, "n": 3}


def test_the_replay_recipe_is_quoted_for_the_shell(tmp_path):
    """A path with a space (or a list value) in the earlier run's overrides is quoted, so the printed command pastes
    into a shell as the same overrides (it split into two words)."""
    import shlex

    from agentforge.cli_errors import earlier_run_problem

    d = tmp_path / "d"
    d.mkdir()
    (d / "config_resolved.yaml").write_text("seed: 1\n")
    given = ["paths.outputs=/tmp/with space/out", "phase.phases=[cognate]", "seed=1"]
    (d / "overrides.yaml").write_text(OmegaConf.to_yaml(given))
    recipe = earlier_run_problem(str(d)).split("replay its overrides: ", 1)[1]
    assert shlex.split(recipe) == ["python", "-m", "agentforge", *given], recipe


def test_a_new_top_level_key_is_refused_with_a_did_you_mean(tmp_path):
    """``+sede=3`` (for seed=3) and ``+foo=1`` ran, the key read by nothing (nor is a top-level ``+hf_token``: no code
    reads one); the groups and the keys of conf/config.yaml may still be given with +."""
    from agentforge.cli_errors import added_key_problem

    proc = run_cli(["phase=cognate", "experiment=smoke", "logger=none", "+sede=3"], tmp_path, timeout=120)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and err == ["error: +sede: sede is no setting of the config, so nothing would read it "
                                            "(did you mean seed? `python -m agentforge --cfg job` prints every key)"], err
    assert not (tmp_path / "outputs").exists() or not list((tmp_path / "outputs").rglob("*.*"))
    cfg = compose_cfg(["phase=cognate"], tmp_path)
    for new in ("+foo=1", "+hf_token=x", "+x.secret=1"):
        assert " is no setting of the config, so nothing would read it" in added_key_problem(cfg, [new]), new
