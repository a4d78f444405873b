"""phase=codegen's context and start-up refusals: both models evaluated at one context when a ``phase.checkpoint``
keeps a max_seq_len of its own, a ``phase.max_new_tokens`` that fills the context refused at start-up, and an
unreachable pretrained GPT-2 refused before anything trains or is published."""
from __future__ import annotations

import pytest

from agentforge.artifacts import save_model
from agentforge.codegen import evaluate as ev
from agentforge.codegen.problems import load_humaneval
from agentforge.data.tokenizer import ByteTokenizer
from agentforge.errors import ConfigError
from agentforge.models import CognateConfig, CognateModel
from tests.conftest import compose_cfg, run_cli, run_in_process
from tests.test_codegen import EXEC, MODE


def _checkpoint(path, max_seq_len: int = 256):
    """A Cognate checkpoint of ``max_seq_len`` (untrained: what is checked is the context, not the scores)."""
    return save_model(path, CognateModel(CognateConfig(d_model=32, n_layers=1, n_heads=2, ffn_hidden=64,
                                                       max_seq_len=max_seq_len)), ByteTokenizer(), {"phase": "test"})


def test_a_checkpoint_and_the_baseline_are_evaluated_at_one_context(tmp_path):
    """A 256-token checkpoint against the scratch baseline sized from model.max_seq_len (512): each model used its
    own max_seq_len, and on HumanEval/0-1 with the default 160 new tokens the checkpoint left-truncated 2 prompts,
    the baseline 1. Now both get the smaller context, truncate the same prompts, and time the same tokens."""
    from agentforge.phases.codegen import build_models, eval_context, train_kwargs

    ckpt = _checkpoint(tmp_path / "ckpt")
    cfg = compose_cfg(["phase=codegen", "data=python_code", "hardware=cpu", "logger=none", f"phase.checkpoint={ckpt}",
                       "phase.max_epochs=0"], tmp_path)
    assert cfg.model.max_seq_len == 512 and cfg.phase.max_new_tokens == 160
    lms, trainings = build_models(cfg, None, tmp_path / "run", tmp_path / "artifacts", isolate=False)
    he = load_humaneval()[:2]
    truncated = {lm.name: ev.evaluate(lm, he, n=1, temperature=0.0, top_p=1.0, max_new_tokens=160, seed=0,
                                      exec_kw=EXEC)["prompts_truncated"] for lm in lms}
    assert truncated == {"cognate": 2, "gpt2_scratch": 2}
    assert trainings == {} and [lm.max_seq_len for lm in lms] == [256, 256]
    assert lms[1].model.config.max_seq_len == 512   # the baseline keeps its positions; it is evaluated at 256
    assert eval_context(cfg, [256]) == 256 and train_kwargs(cfg, tmp_path, 256)["data_cfg"]["seq_len"] == 256
    assert len({ev._fit(lm, 512)[1] for lm in lms}) == 1   # the latency KPI times the same token count
    cfg.phase.context_tokens = 200
    assert eval_context(cfg, [256]) == 200


def test_the_pretrained_baselines_positions_bound_the_context_too(tmp_path):
    """baseline=gpt2 is not sized by ``model``: its positions (1024 for the real one; here a 128-position stand-in,
    the hub not needed) bound the one context as a checkpoint's do."""
    from agentforge.codegen import models
    from agentforge.phases.codegen import build_models

    cfg = compose_cfg(["phase=codegen", "data=python_code", "hardware=cpu", "logger=none", "baseline=gpt2",
                       "phase.max_epochs=0"], tmp_path)
    stand_in = models.byte_lm("gpt2", "a stand-in", models.gpt2_scratch(
        dict(d_model=32, n_layers=1, n_heads=2, ffn_hidden=64, max_seq_len=128), {}, 0), 128)
    lms, _ = build_models(cfg, None, tmp_path / "run", tmp_path / "artifacts", isolate=False, pretrained=stand_in)
    assert [(lm.name, lm.max_seq_len) for lm in lms] == [("cognate", 128), ("gpt2", 128)]
    assert lms[0].model.config.max_seq_len == 512


def test_a_budget_that_fills_the_context_is_one_error_line_at_start_up(tmp_path):
    """phase.context_tokens=100 with the default 160 new tokens failed only when sampling, a ValueError traceback
    after the training, saving and publishing; now one error: line at start-up, before a run dir or artifact."""
    proc = run_cli(["phase=codegen", "data=python_code", "logger=none", "phase.context_tokens=100",
                    # on the old code: as little as possible before the sampling that raised
                    "phase.max_epochs=0", "phase.self_check=false", "phase.num_problems=1", "phase.n_samples=1",
                    "phase.latency_tokens=0", f"phase.sandbox={MODE}"], tmp_path, timeout=120)
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert proc.returncode != 0 and len(errors) == 1, proc.stderr[-2000:]
    assert errors[0].startswith("error: phase.max_new_tokens must be below") and "phase.context_tokens = 100" in errors[0]
    assert "Traceback" not in proc.stderr
    assert not list((tmp_path / "outputs" / "runs").glob("*/*"))
    assert not (tmp_path / "outputs" / "artifacts" / "codegen").exists()


def test_the_budget_rule_by_hand(tmp_path):
    from agentforge.phases.rules import check_codegen_budget

    def error(*overrides):
        try:
            check_codegen_budget(compose_cfg(["phase=codegen", "data=python_code", *overrides], tmp_path))
        except ConfigError as exc:
            return str(exc)
    assert error() is None and error("phase.context_tokens=161") is None and error("phase.max_new_tokens=511") is None
    assert "(phase.context_tokens = 160 tokens), got 160" in error("phase.context_tokens=160")
    assert "(model.max_seq_len = 512 tokens), got 512: lower phase.max_new_tokens or raise model.max_seq_len" in \
        error("phase.max_new_tokens=512")
    ckpt = _checkpoint(tmp_path / "ckpt", 128)
    assert "(phase.checkpoint's max_seq_len = 128 tokens), got 160" in error(f"phase.checkpoint={ckpt}")
    assert error(f"phase.checkpoint={ckpt}", "phase.max_new_tokens=100") is None
    assert error(f"phase.checkpoint={tmp_path}") is None   # no config.json: load_model says what is wrong, later


GPT2_OFFLINE = ["phase=codegen", "data=python_code", "logger=none", "baseline=gpt2", "hardware=cpu",
                f"phase.sandbox={MODE}", "phase.self_check=false", "phase.steps_per_epoch=1", "phase.max_epochs=1",
                "phase.val_rows=2", "data.max_files=20"]


def test_gpt2_baseline_offline_is_refused_before_any_training_or_publishing(monkeypatch, tmp_path, capsys):
    """README: '`baseline=gpt2` ... offline with an empty cache it is one `error:` line at once'. The error came only
    after a whole Cognate training, saved and published to artifacts/codegen; now before the corpus, a run dir, a
    training or a publish (in this process: the CLI's own run is the slow test below)."""
    import huggingface_hub.constants as hub

    from agentforge.phases import codegen

    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))   # an empty cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in ("train", "train_isolated", "publish", "save_model"):
        monkeypatch.setattr(codegen, name, lambda *a, name=name, **k: pytest.fail(f"{name} ran before the error"))
    with pytest.raises(ConfigError, match="baseline=gpt2: cannot load 'gpt2'.*HF_HUB_OFFLINE is set"):
        run_in_process(GPT2_OFFLINE, tmp_path, capsys)
    assert not (tmp_path / "run").exists() and not (tmp_path / "outputs" / "artifacts" / "codegen").exists()


@pytest.mark.slow
def test_gpt2_baseline_offline_is_one_error_line_before_any_training(tmp_path):
    """The test above through the real CLI, offline by the environment (~5-12 s: in the slow tier)."""
    proc = run_cli(GPT2_OFFLINE, tmp_path, timeout=300, env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home")})
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert proc.returncode != 0 and len(errors) == 1, proc.stderr[-2000:]
    assert "baseline=gpt2: cannot load 'gpt2'" in errors[0] and "HF_HUB_OFFLINE is set" in errors[0]
    assert not (tmp_path / "outputs" / "artifacts" / "codegen").exists()  # nothing published
    assert not list((tmp_path / "outputs" / "runs").glob("*/*"))          # no run dir, so no checkpoint
    assert "corpus:" not in proc.stdout and "Trainer" not in proc.stdout + proc.stderr



def test_a_budget_the_pretrained_baselines_positions_cannot_hold_is_refused_before_any_work(monkeypatch, tmp_path, capsys):
    """The start-up rule cannot know the hub model's positions; ``run`` refuses right after loading it: a 128-position
    stand-in with phase.max_new_tokens=128 (equal is too many: no prompt token would be left)."""
    from agentforge.codegen import models
    from agentforge.phases import codegen

    stand_in = models.byte_lm("gpt2", "a stand-in", models.gpt2_scratch(
        dict(d_model=32, n_layers=1, n_heads=2, ffn_hidden=64, max_seq_len=128), {}, 0), 128)
    monkeypatch.setattr(models, "pretrained_gpt2", lambda hub_id: stand_in)
    for name in ("train", "train_isolated", "publish", "save_model"):
        monkeypatch.setattr(codegen, name, lambda *a, name=name, **k: pytest.fail(f"{name} ran before the error"))
    args = [a for a in GPT2_OFFLINE if not a.startswith("phase.max_new_tokens")] + ["phase.max_new_tokens=128"]
    with pytest.raises(ConfigError, match="phase.max_new_tokens must be below .* 128 positions"):
        run_in_process(args, tmp_path, capsys)


def test_the_scratch_baseline_trains_on_rows_of_the_shared_context(monkeypatch, tmp_path):
    """With a 256-token checkpoint the scratch baseline is evaluated at 256 tokens, so it trains on 256-token rows
    (it trained on model.max_seq_len's 512 in a mutant: positions it is never evaluated at)."""
    from agentforge.phases import codegen

    seen = {}

    def fake_train(name, model, corpus, **kw):
        seen[name] = kw["data_cfg"]["seq_len"]
        return {"peak_train_ram_mb": 1.0}
    monkeypatch.setattr(codegen, "train", fake_train)
    monkeypatch.setattr(codegen, "_baseline_training", lambda p, trainings: "trained here")
    cfg = compose_cfg(["phase=codegen", "data=python_code", "hardware=cpu", "logger=none", "phase.max_epochs=1",
                       f"phase.checkpoint={_checkpoint(tmp_path / 'ckpt')}"], tmp_path)
    lms, _ = codegen.build_models(cfg, None, tmp_path / "run", tmp_path / "artifacts", isolate=False)
    assert seen == {"gpt2_scratch": 256} and [lm.max_seq_len for lm in lms] == [256, 256]
