"""A run directory that already holds a run is refused (``cli_errors.earlier_run_problem``): a fixed
``hydra.run.dir`` given twice, or a rerun from a saved ``config_resolved.yaml`` (whose ``paths.run_dir`` is the saved
run's), used to append the second run's steps to the first's ``metrics.jsonl`` and replace its ``overrides.yaml``."""
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
