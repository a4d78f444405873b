"""Every shipped config file composes and passes start-up validation; the smoke experiment runs."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from agentforge.config import validate
from agentforge.main import CONF_DIR
from agentforge.phases import get_phase
from tests.conftest import compose_cfg, run_cli

CONF = Path(CONF_DIR)
GROUPS = ["phase", "model", "size", "optimizer", "hardware", "logger", "data", "experiment"]
CHOICES = [(g, f.stem) for g in GROUPS for f in sorted((CONF / g).glob("*.yaml"))]


@pytest.mark.parametrize("group,choice", CHOICES, ids=[f"{g}={c}" for g, c in CHOICES])
def test_every_config_file_composes_and_validates(tmp_path, group, choice):
    cfg = compose_cfg([f"{group}={choice}"], tmp_path)
    validate(cfg, getattr(get_phase(str(cfg.phase.name)), "RULES", ()))
    for f in (CONF / group / f"{choice}.yaml").read_text().splitlines()[:1]:
        assert f.startswith("#"), f"{group}/{choice}.yaml should open with a comment giving the command"


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


@pytest.mark.slow   # ~10 s: two Optuna trials through the real CLI
@pytest.mark.skipif(not _has("hydra_plugins.hydra_optuna_sweeper"),
                    reason="hydra-optuna-sweeper not installed (pip install 'agentforge[optuna]')")
def test_optuna_search_config_composes(tmp_path):
    cfg = compose_cfg(["hparams_search=cognate_optuna"], tmp_path)
    assert cfg.optimized_metric == "final/val_loss"


@pytest.mark.slow  # an Optuna sweep of real trials, ~8 s on 2 cores: the fast tier stays under ~10 min
@pytest.mark.skipif(not _has("hydra_plugins.hydra_optuna_sweeper"),
                    reason="hydra-optuna-sweeper not installed (pip install 'agentforge[optuna]')")
def test_optuna_sweep_minimizes_the_trials_final_val_loss(tmp_path):
    """The README's ``-m hparams_search=cognate_optuna``, two tiny trials: Optuna's best value is the smallest
    ``final/val_loss`` the trials' checkpoints report, and its best parameters are that trial's overrides."""
    import json

    import yaml

    tiny = ["logger=none", "hardware=cpu", "phase.max_epochs=1", "phase.steps_per_epoch=1", "phase.val_rows=4",
            "phase.eval_examples=1", "phase.gen_tokens=2", "data.batch_size=2", "data.seq_len=32",
            "phase.halting_rows=4"]
    proc = run_cli(["-m", "hparams_search=cognate_optuna", "hydra.sweeper.n_trials=2", *tiny], tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = next((tmp_path / "outputs" / "multirun").rglob("optimization_results.yaml")).parent
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    trials = {}
    for row in (sweep / "sweep_status.jsonl").read_text().splitlines():
        job = json.loads(row)
        assert job["ok"], job
        loss = json.loads(next(Path(job["run_dir"]).rglob("metrics.json")).read_text())["final/val_loss"]
        trials[loss] = {k: float(v) for k, v in (o.split("=", 1) for o in job["overrides"])
                        if k in best["best_params"]}
    assert len(trials) == 2
    assert best["best_value"] == min(trials)
    assert best["best_params"] == pytest.approx(trials[min(trials)])


@pytest.mark.slow   # ~8 s; every phase's smoke composition and start-up checks stay in the default tier
def test_smoke_experiment_runs(tmp_path):
    proc = run_cli(["experiment=smoke"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "outputs" / "artifacts" / "cognate" / "model1" / "config.json").is_file()


SMOKE_PHASE_FILES = sorted((CONF / "experiment_phase").glob("*.yaml"))


def _leaf_keys(node, prefix: str = "") -> list[str]:
    from omegaconf import OmegaConf

    out = []
    for k, v in node.items():
        out += _leaf_keys(v, f"{prefix}{k}.") if OmegaConf.is_dict(v) and len(v) else [f"{prefix}{k}"]
    return out


@pytest.mark.parametrize("path", SMOKE_PHASE_FILES, ids=[p.stem for p in SMOKE_PHASE_FILES])
def test_experiment_phase_files_set_only_keys_their_phase_has(path):
    """conf/experiment_phase/<experiment>_<phase>.yaml (selected by config.yaml's `${experiment}_${phase}` entry) is
    merged while composing, where a misspelled key would be added silently: each key must be one the phase has."""
    from omegaconf import OmegaConf

    experiment, phase = next((e, path.stem[len(e) + 1:]) for e in (f.stem for f in (CONF / "experiment").glob("*.yaml"))
                             if path.stem.startswith(f"{e}_"))
    phase_cfg = OmegaConf.load(CONF / "phase" / f"{phase}.yaml")
    got = OmegaConf.load(path)
    assert set(got) == {"phase"}, f"{path.name}: set phase.* only (shared settings go in experiment/{experiment}.yaml)"
    for key in _leaf_keys(got.phase):
        assert OmegaConf.select(phase_cfg, key, default="<missing>") != "<missing>", f"{path.name}: phase.{key}"
    assert path.read_text().startswith("# @package _global_"), path.name


@pytest.mark.parametrize("phase", sorted(f.stem for f in (CONF / "phase").glob("*.yaml")))
def test_smoke_experiment_composes_for_every_phase(tmp_path, phase):
    """`experiment=smoke` with any phase composes, passes the start-up checks and picks up that phase's smoke file."""
    from agentforge.config import check
    from agentforge.phases.rules import PHASE_RULES

    cfg = compose_cfg([f"phase={phase}", "experiment=smoke"], tmp_path)
    validate(cfg)
    check(cfg, PHASE_RULES.get(phase, ()))
    assert cfg.hardware.accelerator == "cpu" and cfg.logger.name == "none" and cfg.data.seq_len == 32
    assert (CONF / "experiment_phase" / f"smoke_{phase}.yaml").is_file(), f"no smoke settings for phase={phase}"
    plain = compose_cfg([f"phase={phase}"], tmp_path)   # and without experiment=smoke, nothing of it
    assert plain.logger.name != "none" and plain.data.seq_len != 32


@pytest.mark.slow   # ~10 s; every phase's smoke composition is checked in the default tier
def test_smoke_experiment_runs_a_phase_that_needs_no_inputs(tmp_path):
    """`phase=grokking experiment=smoke`, the real CLI: it finishes (seconds, not the task's 60,000-step budget) with
    conf/experiment_phase/smoke_grokking.yaml's settings, as the run dir's config_resolved.yaml records."""
    import json

    from omegaconf import OmegaConf

    proc = run_cli(["phase=grokking", "experiment=smoke"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run_dir = next((tmp_path / "outputs" / "runs").rglob("grokking_results.json")).parent
    resolved = OmegaConf.load(run_dir / "config_resolved.yaml")
    smoke = OmegaConf.load(CONF / "experiment_phase" / "smoke_grokking.yaml")
    assert resolved.phase.max_steps == smoke.phase.max_steps and resolved.phase.eval_every == smoke.phase.eval_every
    assert resolved.hardware.accelerator == "cpu" and resolved.logger.name == "none"
    results = json.loads((run_dir / "grokking_results.json").read_text())
    assert results["task"]["max_steps"] == smoke.phase.max_steps
    assert results["grokking/steps_run"] <= smoke.phase.max_steps


@pytest.mark.skipif(not _has("hydra_plugins.hydra_submitit_launcher"),
                    reason="hydra-submitit-launcher not installed (pip install 'agentforge[slurm]')")
def test_slurm_launcher_config_composes(tmp_path):
    proc = run_cli(["--cfg", "hydra", "hydra/launcher=slurm"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "SlurmLauncher" in proc.stdout and "timeout_min: 240" in proc.stdout


def test_main_checks_every_phase_rule_before_the_phase_loads():
    """``main.run`` checks ``rules.PHASE_RULES[name]`` only (before Lightning): a phase's ``RULES`` must be that list."""
    from agentforge.phases import PHASES
    from agentforge.phases.rules import PHASE_RULES

    for name in PHASES:
        module = get_phase(name)  # every phase is built: an import error fails here
        assert getattr(module, "RULES", []) is PHASE_RULES.get(name, getattr(module, "RULES", [])), name
        assert not hasattr(module, "RULES") or name in PHASE_RULES, name


@pytest.mark.slow
def test_smoke_experiment_runs_the_whole_pipeline(tmp_path):
    """`phase=pipeline experiment=smoke` (~20 s on the 2-core CPU): every step runs with its own phase's smoke file
    (the pipeline forwards experiment=smoke to each step) into pipeline/smoke, not the default run's directory."""
    import json

    from omegaconf import OmegaConf

    proc = run_cli(["phase=pipeline", "experiment=smoke"], tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    pipe = tmp_path / "outputs" / "pipeline" / "smoke"
    steps = json.loads((pipe / "pipeline_state.json").read_text())["steps"]
    assert [s["status"] for s in steps] == ["done"] * 12, steps
    assert (pipe / "pipeline_report.md").is_file()
    for step in ("cognate-m2", "evomerge", "quietstar", "bitnet", "eval-phase2_champion"):
        phase = step.split("-")[0]
        resolved = OmegaConf.load(min((pipe / "runs" / step).rglob("config_resolved.yaml")))  # quietstar: per step
        smoke = OmegaConf.load(CONF / "experiment_phase" / f"smoke_{phase}.yaml")
        assert OmegaConf.merge(resolved.phase, smoke.phase) == resolved.phase, step   # the smoke values are there
        assert resolved.hardware.accelerator == "cpu" and resolved.data.seq_len == 32, step
    # the pipeline's own run summary carries the report's threshold rows (pipeline.threshold_summary; with W&B, its
    # run summary: Tracker.summary logs to every logger, here metrics.jsonl)
    rows = [json.loads(x) for f in (tmp_path / "outputs").rglob("metrics.jsonl") for x in f.read_text().splitlines()
            if "pipeline/steps_run" in x]
    assert len(rows) == 1 and rows[0]["pipeline/final/compression_ratio_verdict"] in ("PASS", "FAIL", "INCONCLUSIVE")
    assert rows[0]["pipeline/final/compression_ratio_threshold"] == "> 6×"


@pytest.mark.parametrize("overrides,message", [
    (["phase=compare", "phase.thresholds.min_pass_at_1=foo"], "phase.thresholds.min_pass_at_1 must be null or a number"),
    (["phase=compare", "+phase.thresholds.min_pass_at_5=2"], "phase.thresholds.min_pass_at_5 must be null or a number"),
    (["phase=compare", "phase.thresholds.max_latency_ratio=abc"], "phase.thresholds.max_latency_ratio must be null"),
    (["phase=codegen", "data=python_code", "phase.thresholds.max_latency_ratio=abc"], "max_latency_ratio must be"),
    (["phase=codegen", "data=python_code", "phase.thresholds.min_n=abc"], "phase.thresholds.min_n must be an integer"),
    (["phase=codegen", "data=python_code", "phase.thresholds.alpha=5"], "phase.thresholds.alpha must be a number"),
    (["phase=eval", "phase.pass_k=[0]"], "phase.pass_k must be a non-empty list of integers >= 1"),
    (["phase=eval", "phase.pass_k=[-1,2]"], "phase.pass_k must be a non-empty list"),
    (["phase=eval", "phase.gate={reasoning_accuracy: '=>0.3'}"], "phase.gate must be null or a mapping of metric keys"),
    (["phase=compare", "phase.gate={verdict_score: big}"], "phase.gate must be null or a mapping"),
    (["phase=eval", "phase.hf_datasets=gsm8k"], "phase.hf_datasets must be null or a list of gsm8k, arc, piqa"),
    (["phase=eval", "phase.finetune_mix={arithmetic: -1}"], "phase.finetune_mix must be a non-empty mapping"),
])
def test_values_read_only_after_the_whole_run_are_checked_at_start_up(tmp_path, overrides, message):
    """Thresholds, gates and pass@k are used only once the phase's work is done (a codegen run: minutes of training
    and sampling, then a traceback); their rules refuse a bad value before any work, naming the key."""
    from agentforge.config import check
    from agentforge.errors import ConfigError
    from agentforge.phases.rules import PHASE_RULES

    cfg = compose_cfg(overrides, tmp_path)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        check(cfg, PHASE_RULES[overrides[0].split("=")[1]])
    good = compose_cfg([overrides[0], *(["data=python_code"] if "codegen" in overrides[0] else []),
                        "phase.gate={reasoning_accuracy: '>=0.3', perplexity: '<=20'}"], tmp_path)
    check(good, PHASE_RULES[overrides[0].split("=")[1]])     # the defaults and a well-formed gate pass


@pytest.mark.parametrize("overrides,message", [
    (["phase=compare", "stages=[baseline,baseline]"], "names baseline more than once"),
    (["phase=compare", "stage=after_surgery"], "stage=after_surgery is phase=eval's; phase=compare takes stages="),
    (["phase=eval", "stages=[baseline,after_surgery]"], "is phase=compare's; phase=eval evaluates one stage=NAME"),
])
def test_the_other_phases_stage_keys_are_refused_not_ignored(tmp_path, overrides, message):
    """`stage=` means nothing to phase=compare, `stages=` nothing to phase=eval: each used to be silently ignored."""
    import importlib

    from agentforge.errors import ConfigError

    cfg = compose_cfg(overrides, tmp_path)
    phase = importlib.import_module(f"agentforge.phases.{overrides[0].split('=')[1]}")
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        phase.run(cfg)


def test_a_misspelt_eval_device_is_refused_naming_the_key(tmp_path):
    """hardware.eval_device is fit or cpu; 'gpu' (a guess) would otherwise silently mean the CPU."""
    from agentforge.errors import ConfigError

    with pytest.raises(ConfigError, match="hardware.eval_device must be one of"):
        validate(compose_cfg(["phase=cognate", "hardware.eval_device=gpu"], tmp_path))
    validate(compose_cfg(["phase=cognate", "hardware.eval_device=cpu"], tmp_path))


def test_a_numbers_upper_bound_is_inclusive_unless_open():
    """number(0, 1) takes 1; number(0, 1, hi_open=True) (model.ponder_prior) does not; each says which."""
    from agentforge.config import number

    closed_check, closed_desc = number(0, 1)
    open_check, open_desc = number(0, 1, lo_open=True, hi_open=True)
    assert closed_check(1) and closed_check(0) and not closed_check(1.01)
    assert not open_check(1) and not open_check(0) and open_check(0.999)
    assert (closed_desc, open_desc) == ("a number >= 0 <= 1", "a number > 0 < 1")
