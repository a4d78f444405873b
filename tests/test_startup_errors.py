"""Mistakes found by trying the CLI as a user would (bad values that used to fail deep inside a run, with a traceback
and a half-written run dir, or to run on and report nothing): each is now one ConfigError at start-up, before any
run dir, work dir or artifact exists."""
from __future__ import annotations

import re

import pytest
import torch

from agentforge.artifacts import save_model
from agentforge.config import validate
from agentforge.data.tokenizer import ByteTokenizer
from agentforge.errors import ConfigError
from agentforge.main import run
from agentforge.models import CognateConfig, CognateModel
from agentforge.quant.checkpoint import save_packed
from agentforge.quant.convert import convert_to_bitlinear
from tests.conftest import compose_cfg, run_cli

TINY = dict(d_model=32, n_layers=1, n_heads=2, ffn_hidden=64, window=16, max_steps=2, ltm_slots=4, ltm_key_dim=8,
            ltm_chunk=4, max_seq_len=64)


def _nothing_written(tmp_path):
    out = tmp_path / "outputs"
    assert not (tmp_path / "run").exists()
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()], sorted(out.rglob("*"))


@pytest.mark.parametrize("betas", [[0.9], [0.9, 1.0], [0.9, -0.1], "0.9", [0.9, 0.95, 0.99]])
def test_optimizer_betas_must_be_two_numbers_in_0_1(tmp_path, betas):
    """``optimizer.betas=[0.9]`` raised IndexError inside torch's Adam on the first step."""
    cfg = compose_cfg(["phase=cognate", "logger=none"], tmp_path)
    cfg.optimizer.betas = betas
    with pytest.raises(ConfigError, match=r"optimizer\.betas must be two numbers in \[0, 1\)"):
        validate(cfg)
    cfg.optimizer.betas = [0.9, 0.95]
    validate(cfg)


def test_cognate_seq_len_above_the_model_max_seq_len(tmp_path):
    cfg = compose_cfg(["phase=cognate", "logger=none", "hardware=cpu", "data.seq_len=1024"], tmp_path)
    with pytest.raises(ConfigError, match=r"data\.seq_len=1024 exceeds model\.max_seq_len=512"):
        run(cfg)
    _nothing_written(tmp_path)


def test_bitnet_seq_len_above_the_input_max_seq_len(tmp_path):
    ck = save_model(tmp_path / "in", CognateModel(CognateConfig(**TINY)), ByteTokenizer())
    cfg = compose_cfg(["phase=bitnet", "logger=none", "hardware=cpu", f"phase.input={ck}", "data.seq_len=128"],
                      tmp_path)
    with pytest.raises(ConfigError, match=r"data\.seq_len=128 exceeds the input model's max_seq_len=64"):
        run(cfg)
    _nothing_written(tmp_path)


@pytest.mark.parametrize("fraction, why", [(0.00001, r"leaves 0 training"), (1.0, r"and 0 validation pairs")])
def test_grokking_split_with_no_training_or_no_validation_pairs(tmp_path, fraction, why):
    """train_fraction=0.00001 raised IndexError in the first step; 1.0 ran to the end with a NaN validation accuracy."""
    cfg = compose_cfg(["phase=grokking", "logger=none", "hardware=cpu", f"phase.train_fraction={fraction}"], tmp_path)
    with pytest.raises(ConfigError, match=r"phase\.train_fraction=.* " + why):
        run(cfg)
    _nothing_written(tmp_path)


def test_eval_refuses_to_fine_tune_a_packed_bitnet_checkpoint(tmp_path):
    """A packed checkpoint's linear layers hold ternary codes: fine-tuning it raised AttributeError in QK-clip."""
    torch.manual_seed(0)
    model = CognateModel(CognateConfig(**TINY)).eval()
    convert_to_bitlinear(model)
    ck = save_packed(tmp_path / "packed", model, ByteTokenizer())
    cfg = compose_cfg(["phase=eval", "logger=none", "hardware=cpu", f"checkpoint={ck}", "stage=finetuned_vanilla",
                       "phase.finetune_steps=1"], tmp_path)
    with pytest.raises(ConfigError, match=r"stage=finetuned_vanilla: fine-tuning needs float weights.*packed BitNet"):
        run(cfg)
    _nothing_written(tmp_path)


def test_the_same_evomerge_input_twice_is_refused_naming_phase_inputs(tmp_path):
    """phase.inputs=[a/model1,a/model1,a/model1] ran and replaced the champion with model1 (an audit); the same dir
    twice, also spelt differently (a trailing '/.', a symlink), is one ConfigError naming phase.inputs, before any
    model is loaded."""
    from tests.test_evomerge import TINY_EVO, _save_tiny

    a, b = _save_tiny(tmp_path / "a", 0), _save_tiny(tmp_path / "b", 1)
    (tmp_path / "link").symlink_to(tmp_path / "a")
    for ins in ([a, a, a], [a, b, f"{a}/."], [a, b, str(tmp_path / "link")]):
        cfg = compose_cfg(TINY_EVO + [f"phase.inputs=[{','.join(ins)}]"], tmp_path)
        with pytest.raises(ConfigError, match=rf"phase\.inputs names {re.escape(str(tmp_path / 'a'))} more than once; "
                                              r"give three different checkpoint dirs"):
            run(cfg)
    _nothing_written(tmp_path)


def test_no_gpu_advice_fits_the_hardware_group():
    """hardware=cpu hardware.accelerator=gpu was told 'use hardware=cpu or hardware=auto' (an audit): under a group
    whose own accelerator is not gpu the advice is to drop the override (the CLI's line: test_cli.py)."""
    from agentforge.errors import no_gpu_error

    assert str(no_gpu_error("gpu")) == str(no_gpu_error()) == ("hardware.accelerator=gpu but no GPU is visible; use "
                                                                "hardware=cpu or hardware=auto")   # no Hydra run here
    for group in ("cpu", "auto", "ddp"):
        assert str(no_gpu_error(group)).startswith(f"hardware.accelerator=gpu overrides hardware={group}'s accelerator, "
                                                   f"but no GPU is visible; drop the hardware.accelerator override")


def test_phase_eval_without_stage_refuses_another_checkpoints_baseline(tmp_path):
    """The refusal of a forgotten ``stage=`` (it would replace another checkpoint's baseline results) is wired into
    ``phase=eval``'s run, not only its helper: an explicit stage gets a notice instead (``test_eval.py``)."""
    import json
    from pathlib import Path

    from agentforge.phases.eval import run as run_eval

    cfg = compose_cfg(["phase=eval", "experiment=smoke", f"checkpoint={tmp_path / 'mine'}"], tmp_path)
    art = Path(cfg.paths.artifacts) / "eval_results"
    art.mkdir(parents=True, exist_ok=True)
    (art / "baseline_results.json").write_text(json.dumps({"checkpoint": "/x/other"}))
    with pytest.raises(ConfigError, match=r"stage: not given, so it is 'baseline'"):
        run_eval(cfg)


def test_phase_eval_checks_its_native_kernel_setting(tmp_path):
    from agentforge.phases.rules import PHASE_RULES

    cfg = compose_cfg(["phase=eval", "experiment=smoke", "phase.native_kernel=maybe"], tmp_path)
    with pytest.raises(ConfigError, match="phase.native_kernel"):
        validate(cfg, PHASE_RULES["eval"])


def test_evomerge_recovers_a_cognate_model_left_aside_by_a_killed_publish(tmp_path):
    """A publish killed between moving ``model1`` aside and renaming the new copy in leaves ``model1.old``: EvoMerge's
    default inputs rename it back instead of asking for ``phase=cognate`` again."""
    from pathlib import Path

    from agentforge.phases.evomerge import input_dirs

    cfg = compose_cfg(["phase=evomerge", "experiment=smoke"], tmp_path)
    art = Path(cfg.paths.artifacts).absolute() / "cognate"
    for i in (1, 2, 3):
        save_model(art / f"model{i}", CognateModel(CognateConfig(**TINY)), ByteTokenizer())
    (art / "model1").rename(art / "model1.old")
    assert input_dirs(cfg) == [art / f"model{i}" for i in (1, 2, 3)]
    assert (art / "model1" / "config.json").is_file() and not (art / "model1.old").exists()


@pytest.mark.parametrize("key", ["phase.max_epochs", "seed", "optimizer.lr", "data.batch_size", "paths.artifacts",
                                 "model.d_model", "paths.outputs"])
def test_removing_a_key_of_the_defaults_is_one_line_and_leaves_nothing(tmp_path, key):
    """``~phase.max_epochs`` was a 40-line traceback and a run dir holding only agentforge.log; ``~model.d_model``
    silently ran on a code default; ``~paths.outputs`` was a Hydra traceback."""
    proc = run_cli(["phase=cognate", f"~{key}"], tmp_path, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"error: {key}: required; remove the ~{key} override (to change the value, give {key}=VALUE)"], proc.stderr
    _nothing_written(tmp_path)


def test_removing_an_entry_of_a_mapping_the_user_fills_is_allowed(tmp_path):
    from agentforge.cli_errors import added_key_problem, removed_key_problem

    cfg = compose_cfg(["phase=compare"], tmp_path)
    for fine in ("~data.eval_paths.gsm8k", "~phase.thresholds.min_n", "~phase.overrides.cognate", "~hydra.job.chdir"):
        assert removed_key_problem(fine) is None, fine
    assert added_key_problem(cfg, ["~seed"]).startswith("seed: required; remove the ~seed override")


def test_hydra_job_chdir_is_refused_before_the_run_dir_exists(tmp_path):
    """hydra.job.chdir=true published the artifacts inside the run dir (paths.outputs is relative, read after Hydra
    changed directory), where the next phase did not find them."""
    from omegaconf import OmegaConf

    proc = run_cli(["phase=cognate", "experiment=smoke", "hydra.job.chdir=true"], tmp_path, timeout=120)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1, proc.stderr
    assert err[0].startswith("error: hydra.job.chdir=true: not supported") and "hydra.run.dir" in err[0]
    _nothing_written(tmp_path)
    from agentforge.main import _check_chdir

    with pytest.raises(ConfigError, match="hydra.job.chdir=true"):   # set some other way: the start-up checks
        _check_chdir(OmegaConf.create({"hydra": {"job": {"chdir": True}}}))
    _check_chdir(OmegaConf.create({"hydra": {"job": {"chdir": False}}}))
