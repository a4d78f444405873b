"""README.md's behavioural claims that no other test covered (the config, command and constant claims:
tests/test_readme_claims.py), each test quoting the README line it checks."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from tests.test_readme_claims import REPO, _yaml


# ------------------------------------------------------------------------------------------ sizes, params
@pytest.fixture(scope="module")
def tiny_model():
    from agentforge.artifacts import cognate_config_from
    from agentforge.data.tokenizer import RESERVED_VOCAB
    from agentforge.models import CognateModel

    torch.manual_seed(0)
    cfg = OmegaConf.merge(_yaml("model/m1.yaml"), _yaml("size/tiny.yaml"))
    return CognateModel(cognate_config_from(OmegaConf.to_container(cfg), RESERVED_VOCAB))


def test_size_presets_have_the_readme_parameter_counts(tiny_model):
    """'`size` (`tiny` default ~0.5M params, `small` ~3M, `25m` the full ~25M models)' (25m: tests/test_model.py)."""
    from agentforge.artifacts import cognate_config_from
    from agentforge.data.tokenizer import RESERVED_VOCAB
    from agentforge.models import CognateModel

    assert 0.45e6 <= tiny_model.num_params() <= 0.55e6
    small = OmegaConf.merge(_yaml("model/m1.yaml"), _yaml("size/small.yaml"))
    n_small = CognateModel(cognate_config_from(OmegaConf.to_container(small), RESERVED_VOCAB)).num_params()
    assert 2.5e6 <= n_small <= 3.5e6


def test_memory_starts_as_documented(tiny_model):
    """'Each chunk of `ltm_chunk` (16) tokens ... read sharpness β learned from 32'."""
    mem = tiny_model.memory
    assert tiny_model.config.ltm_chunk == 16 and mem.chunk == 16
    assert mem.log_beta.requires_grad and float(mem.log_beta.exp()) == pytest.approx(32.0)


def test_gpt2_scratch_baseline_and_cognate_m1_parameter_counts(tiny_model):
    """'`baseline=gpt2_scratch` (default) ... (tiny: 505,376 params vs Cognate m1's ...)': the README's figure
    for the baseline, and for Cognate m1 the count the codegen phase builds (models.gpt2_scratch / CognateModel
    from the composed `model` group and the byte vocabulary)."""
    from agentforge.codegen import models

    size = OmegaConf.to_container(OmegaConf.merge(_yaml("model/m1.yaml"), _yaml("size/tiny.yaml")))
    gpt = models.gpt2_scratch(size, OmegaConf.to_container(_yaml("baseline/gpt2_scratch.yaml")), 0)
    assert gpt.num_params() == 505_376
    assert tiny_model.num_params() == 500_610  # the README's figure (504,706 in its older timing run: before W_K left)


# ------------------------------------------------------------------------------------- W&B, files, loading
def test_wandb_is_offline_unless_logged_in_or_asked(monkeypatch, tmp_path):
    """'W&B runs offline (...) unless you are logged in (`wandb login`), set `WANDB_MODE=online`, or pass
    `logger.mode=online`.'"""
    from agentforge.tracking.loggers import wandb_mode

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert wandb_mode(None) == "offline"
    assert wandb_mode("online") == "online"
    monkeypatch.setenv("WANDB_MODE", "online")
    assert wandb_mode(None) == "online"
    monkeypatch.delenv("WANDB_MODE")
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password abc\n")  # what `wandb login` writes
    assert wandb_mode(None) == "online"
    (tmp_path / ".netrc").unlink()
    monkeypatch.setenv("WANDB_API_KEY", "k")
    assert wandb_mode(None) == "online"


def test_checkpoint_files_are_written_then_fsynced_then_renamed(monkeypatch, tmp_path, tiny_model):
    """'Checkpoints are safetensors + `config.json`, written atomically (write, fsync, rename)'."""
    from agentforge import io
    from agentforge.artifacts import save_model
    from agentforge.data.tokenizer import ByteTokenizer

    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(io.os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                    real_fsync(fd))[1])
    monkeypatch.setattr(io.os, "replace", lambda a, b: (events.append(("rename", str(a), str(b))),
                                                        real_replace(a, b))[1])
    d = save_model(tmp_path / "ck", tiny_model, ByteTokenizer())
    assert sorted(p.name for p in d.iterdir()) == ["config.json", "model.safetensors"]
    for name in ("model.safetensors", "config.json"):
        i = next(i for i, e in enumerate(events) if e[0] == "rename" and e[2].endswith(name))
        tmp = events[i][1]
        assert events[i - 1] == ("fsync", tmp), "the temporary file is fsynced right before its rename"
        assert events[i + 1] == ("fsync", str(d)), "then the directory, so the rename itself is durable"
    renames = [e[2].rsplit("/", 1)[-1] for e in events if e[0] == "rename"]
    assert renames == ["model.safetensors", "config.json"]  # config.json last: its presence means complete

    def boom(p):
        p.write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        io.atomic_write(d / "config.json", boom)
    assert json.loads((d / "config.json").read_text())["architecture"] == "TRM-Titans-MAG"  # the good file stays
    assert sorted(p.name for p in d.iterdir()) == ["config.json", "model.safetensors"]  # no temporary left


def test_a_checkpoint_with_the_old_memory_key_does_not_load(tmp_path, tiny_model):
    """'Old checkpoints (with `memory.key.weight`) no longer load.'"""
    from agentforge.artifacts import load_model, save_model
    from agentforge.data.tokenizer import ByteTokenizer
    from agentforge.io import CheckpointError, load_tensors, save_tensors

    d = save_model(tmp_path / "old", tiny_model, ByteTokenizer())
    assert load_model(d)[0].num_params() == tiny_model.num_params()
    state = load_tensors(d / "model.safetensors")
    cfg = tiny_model.config
    state["memory.key.weight"] = torch.zeros(cfg.ltm_key_dim, cfg.d_model)
    save_tensors(d / "model.safetensors", state)
    with pytest.raises(CheckpointError, match=r"unexpected \['memory\.key\.weight'\]"):
        load_model(d)


def test_run_dir_holds_the_files_the_readme_lists(cognate_artifacts):
    """'`outputs/runs/<date>/<time>_<phase>_<id>/` — one directory per run: `config_resolved.yaml`, `overrides.yaml`,
    `provenance.json` (...), `agentforge.log` (its log and everything it printed: the results)', `metrics.jsonl`, `tables/*.csv`, `plots/*.png`' (the W&B offline run: tests/test_cli.py);
    'Every Cognate run ends with ablations (`ablation/*` keys, `ablation/table`' (its printing: not checked here)."""
    assert OmegaConf.to_container(_yaml("config.yaml").hydra.run)["dir"].startswith(
        "${paths.outputs}/runs/${now:%Y-%m-%d}/${now:%H-%M-%S}_${phase.name}_")
    jobs = sorted(p.parent for p in (cognate_artifacts.parent / "multirun").rglob("config_resolved.yaml"))
    git = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=30)
    head = git.stdout.strip() if git.returncode == 0 else None   # None: the tests run from a copy without git
    assert len(jobs) == 3
    for job in jobs:
        for name in ("config_resolved.yaml", "overrides.yaml", "agentforge.log", "metrics.jsonl"):
            assert (job / name).stat().st_size > 0, (job, name)
        printed = [ln.split(" - ", 1)[1] for ln in (job / "agentforge.log").read_text().splitlines()
                   if "[agentforge.console][INFO] - " in ln]      # 'agentforge.log' (everything the run printed)
        assert [ln for ln in printed if ln.startswith("val loss ")] and "  steps1 " in "\n".join(printed)
        assert f"run_dir: {job}" in printed and not [ln for ln in printed if "━" in ln]
        assert list(job.glob("tables/*.csv")) and list(job.glob("plots/*.png"))
        table = (job / "tables" / "ablation__table.csv").read_text().splitlines()
        assert [row.split(",")[0] for row in table[1:]] == ["trained", "steps1", "no_memory", "max_steps"]
        resolved = OmegaConf.load(job / "config_resolved.yaml")
        assert resolved.phase.name == "cognate" and resolved.phase.gen_tokens == 4  # a setting, not a secret
        assert "phase.gen_tokens=4" in OmegaConf.to_container(OmegaConf.load(job / "overrides.yaml"))
        # 'provenance.json' (the git commit and dirty flag, versions, torch's thread count, the selected environment)
        prov = json.loads((job / "provenance.json").read_text())
        assert prov["git"]["commit"] == head and prov["torch_threads"] == 1 and prov["env"]["OMP_NUM_THREADS"] == "1"
        assert prov["versions"]["torch"] and any(a.startswith("model=") for a in prov["argv"])
        keys = set().union(*(json.loads(ln) for ln in (job / "metrics.jsonl").read_text().splitlines()))
        assert {"ablation/steps1_loss_delta", "ablation/no_memory_loss_delta", "ablation/max_steps_loss_delta",
                "ablation/halting_noninferior"} <= keys


# ------------------------------------------------------------------------------------------- statistics
def test_200_choice_questions_give_about_plus_minus_007_at_one_half():
    """'`phase.choice_examples` (ARC / PIQA, default 200: about ±0.07 on an accuracy near 0.5, 95% exact CI)'."""
    from agentforge.evals.stats import exact_proportion_ci

    lo, hi = exact_proportion_ci(100, 200)
    assert (hi - lo) / 2 == pytest.approx(0.07, abs=0.005)


# ------------------------------------------------------------------------------------------- bad values
@pytest.mark.faults  # 'Bad config values ... `make test-faults` runs these tests'
def test_a_bad_shared_or_model_value_fails_before_torch_or_lightning_load(tmp_path):
    """'A bad value fails in the first second with one line naming the key': the shared groups' and the model's
    values are checked before torch / Lightning are imported (importing Lightning alone takes ~5 s here), exit 2
    ('Bad config values ... each give one `error:` line and exit 2'); `phase.*` values ('their rules ... load torch
    but not Lightning or the phase's module') before Lightning and the phase's module."""
    env = dict(os.environ, AGENTFORGE_OUTPUTS=str(tmp_path / "outputs"), WANDB_MODE="offline")
    for bad, key in (["optimizer.lr=-0.1", "optimizer.lr"], ["model.n_heads=3", "model.d_model"]):
        proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "agentforge", bad, "logger=none"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr[-2000:]
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1 and key in errors[0], proc.stderr[-2000:]
        imported = {ln.rsplit("|", 1)[-1].strip() for ln in proc.stderr.splitlines() if ln.startswith("import time:")}
        assert "omegaconf" in imported and not imported & {"torch", "lightning"}, bad
    for bad in (["phase=cognate", "phase.max_epochs=0"], ["phase=quietstar", "phase.rl.num_thoughts=1"],
                ["phase=evomerge", "phase.dare_rescale=sometimes"]):
        proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "agentforge", *bad, "logger=none"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr[-2000:]
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1 and bad[1].split("=")[0] in errors[0], proc.stderr[-2000:]
        imported = {ln.rsplit("|", 1)[-1].strip() for ln in proc.stderr.splitlines() if ln.startswith("import time:")}
        phase_module = "agentforge.phases." + bad[0].split("=")[1]
        assert "agentforge.phases.rules" in imported and not imported & {"lightning", phase_module}, bad


def test_gpt2_baseline_offline_is_one_config_error(monkeypatch, tmp_path):
    """'`baseline=gpt2` loads the real 124 M weights ... from the local Hugging Face cache ..., else from the hub; offline with an empty cache it is one `error:` line'."""
    import huggingface_hub.constants as hub

    from agentforge.codegen import models
    from agentforge.errors import ConfigError

    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path))  # an empty cache: nothing to fall back on
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="baseline=gpt2: cannot load 'gpt2'.*use baseline=gpt2_scratch offline"):
        models.pretrained_gpt2("gpt2")


def test_gpt2_baseline_without_a_network_fails_at_once_naming_the_host(monkeypatch, tmp_path):
    """Not offline by setting, but the hub unreachable (here: a closed local port as the endpoint) and the cache
    empty: the error names the host and why, from one connect attempt, instead of after the hub client's retries."""
    import huggingface_hub.constants as hub

    from agentforge.codegen import models
    from agentforge.errors import ConfigError

    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "ENDPOINT", "http://127.0.0.1:9")   # the discard port: nothing listens there
    with pytest.raises(ConfigError, match=r"not in the Hugging Face cache.*127\.0\.0\.1:9 unreachable.*gpt2_scratch"):
        models.pretrained_gpt2("gpt2")


def test_gpt2_baseline_loads_from_the_cache_without_touching_the_network(monkeypatch, tmp_path):
    """A (tiny) GPT-2 in the hub cache's own layout loads with the hub unreachable: the cache is tried first."""
    import json

    import huggingface_hub.constants as hub
    from transformers import GPT2Config, GPT2LMHeadModel

    from agentforge.codegen import models

    snapshot = tmp_path / "models--gpt2" / "snapshots" / ("0" * 40)
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=4, n_positions=16)).save_pretrained(snapshot)
    (snapshot / "vocab.json").write_text(json.dumps({"a": 0, "b": 1, "ab": 2, "<|endoftext|>": 3}))
    (snapshot / "merges.txt").write_text("#version: 0.2\na b\n")
    (tmp_path / "models--gpt2" / "refs").mkdir()
    (tmp_path / "models--gpt2" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(hub, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(models, "hub_unreachable", lambda: pytest.fail("the network was consulted"))
    lm = models.pretrained_gpt2("gpt2")
    assert lm.name == "gpt2" and lm.max_seq_len == 16 and lm.encode("ab") == [2]


def test_hub_reachability_is_one_real_connect(monkeypatch):
    import socket

    import huggingface_hub.constants as hub

    from agentforge.codegen.models import hub_unreachable

    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        monkeypatch.setattr(hub, "ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert hub_unreachable() is None
    assert "unreachable" in hub_unreachable()          # the same port, closed now
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    assert hub_unreachable() == "HF_HUB_OFFLINE is set"


def test_the_attributes_the_readme_names_exist(tiny_model):
    """'`model.generate` decodes a Cognate model incrementally'; 'unless `model.memory.persist = True`'."""
    assert callable(tiny_model.generate) and tiny_model.memory.persist is False


def test_compare_results_script_gives_the_compare_phases_stats(tmp_path):
    """'`phase=compare` (or `scripts/compare_results.py`) writes the cross-stage table and plots and `stats.json`'."""
    import importlib.util

    from agentforge.evals.compare import run_comparison
    from agentforge.evals.stats import MIN_N
    from agentforge.phases.compare import thresholds_of

    d = tmp_path / "eval_results"
    d.mkdir()
    for stage, correct in (("baseline", [0] * 25 + [1] * 15), ("finetuned_recursive", [0] * 10 + [1] * 30)):
        (d / f"{stage}_results.json").write_text(json.dumps({"stage": stage, "metrics": {"perplexity": 10.0},
                                                             "per_example": {"gsm8k_correct": correct}}))
    spec = importlib.util.spec_from_file_location("compare_results", REPO / "scripts" / "compare_results.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main([str(s) for s in ("baseline", "finetuned_recursive")] +
                       ["--results-dir", str(d), "--out", str(tmp_path / "script"), "--n-resamples", "500"]) == 0
    th = {k: v for k, v in thresholds_of(OmegaConf.to_container(_yaml("phase/compare.yaml").thresholds)).items()
          if v is not None}
    run_comparison(d, ["baseline", "finetuned_recursive"], tmp_path / "phase", thresholds=th, n_resamples=500)
    for name in ("comparison.md", "comparison.csv"):
        assert (tmp_path / "script" / name).read_text() == (tmp_path / "phase" / name).read_text(), name
    mine, phase = (json.loads((tmp_path / w / "stats.json").read_text()) for w in ("script", "phase"))
    assert mine.pop("thresholds") | {"min_n": MIN_N} == phase.pop("thresholds")  # the script leaves min_n at 30
    assert mine == phase and phase["verdict"]
    assert sorted(p.name for p in (tmp_path / "script").glob("plots/*.png"))


@pytest.mark.skipif(sys.version_info[:3] != (3, 11, 7), reason="the README's corpus figures are for Python 3.11.7")
def test_python_code_corpus_figures_on_this_interpreter():
    """'Here (Python 3.11.7): 580 files, 4 duplicates, 0 contaminated against HumanEval's 162 signatures and
    145 solutions (...), 525 train / 51 val files, 10.2 M / 0.65 M characters' and 'here 83 of 475 val chunks, 15.7 %
    of the val characters' were near copies."""
    from agentforge.codegen.corpus import corpus_from_config

    st = corpus_from_config(OmegaConf.to_container(_yaml("data/python_code.yaml"))).stats
    assert (st["files_found"], st["duplicates_dropped"], st["contaminated_dropped"]) == (580, 4, 0)
    assert (st["signatures_checked"], st["solutions_checked"], st["train_files"], st["val_files"]) == (162, 145, 525, 51)
    assert (round(st["train_chars"] / 1e6, 1), round(st["val_chars"] / 1e6, 2)) == (10.2, 0.65)
    assert (st["val_chunks_near_train_dropped"], st["val_chunks"] + st["val_chunks_near_train_dropped"]) == (83, 475)


@pytest.mark.parametrize("mode", ["stop", "skip"])
def test_a_non_finite_gradient_stops_naming_the_step_or_is_skipped(mode):
    """'NaN/Inf losses or gradients stop the run naming the step (`phase.on_nonfinite=skip` skips the step
    instead)' -- the gradient half (the loss half: tests/test_faults.py)."""
    from agentforge.errors import AgentForgeError
    from agentforge.models import CognateConfig, CognateModel
    from agentforge.training.lm_module import LMModule

    model = CognateModel(CognateConfig(d_model=32, n_layers=1, n_heads=2, ffn_hidden=64, ltm_key_dim=8))
    module = LMModule(model, {"name": "adamw", "lr": 1e-3}, 10, on_nonfinite=mode)
    module.print = lambda *a, **k: None  # Lightning's print needs a Trainer
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    next(model.parameters()).grad.view(-1)[0] = float("inf")
    if mode == "stop":
        with pytest.raises(AgentForgeError, match=r"non-finite gradient norm at step 0 .*no checkpoint was written "
                                                  r"\(the first epoch had not ended\)"):
            module.on_before_optimizer_step(None)
    else:
        module.on_before_optimizer_step(None)
        assert module.skipped_steps == 1 and all(p.grad is None for p in model.parameters())


def test_splits_are_blake2b_buckets_val_0_99_test_100_199():
    """'the BLAKE2b hash of each example's prompt puts it in one of 1000 buckets, 0–99 are reserved for val and
    100–199 for test, and a draw whose prompt hashes outside its split is redrawn — whatever the seeds.'"""
    import hashlib

    from agentforge.data import synthetic

    key = "what is 2+3?"   # a content key (``synthetic.canonical``: folded), which ``bucket`` hashes as it is
    assert synthetic.canonical(key) == key and synthetic.bucket("What is  2 + 3 ?") == synthetic.bucket(key)
    assert synthetic.bucket(key) == int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") % 1000
    for task in ("arithmetic", "choice", "piqa"):
        for seed in (0, 7):
            for split, lo, hi in (("val", 0, 100), ("test", 100, 200), ("train", 200, 1000)):
                for i in range(5):
                    b = synthetic.bucket(synthetic.prompt_key(task, synthetic.draw(task, seed, split, i)))
                    assert lo <= b < hi, (task, seed, split, i, b)


def test_resume_choice_auto_last_fresh_or_a_file(tmp_path):
    """'A killed run resumes from its last epoch checkpoint when the same command runs again (or with
    `ckpt_path=last`)'; '`ckpt_path=last`, a `.ckpt` file with `step=...`, or `ckpt_path=fresh`'; conf/config.yaml:
    'null/auto = resume an interrupted identical run' -- cognate.resume_path and its fingerprint."""
    from agentforge.io import CheckpointError
    from agentforge.phases.cognate import fingerprint, resume_path
    from tests.conftest import compose_cfg

    work = tmp_path / "work"
    with pytest.raises(CheckpointError, match="ckpt_path=last: no"):
        resume_path("last", work, "fp")
    work.mkdir()
    (work / "fingerprint").write_text("fp\n")   # the run's marker first, then its checkpoint, as a run writes them
    torch.save({"state_dict": {}}, work / "last.ckpt")   # a readable one: an unreadable file is never resumed
    last = str(work / "last.ckpt")
    assert resume_path(None, work, "fp") == resume_path("auto", work, "fp") == resume_path("last", work, "fp") == last
    assert resume_path(None, work, "another config") is None  # not the same run: start afresh
    assert resume_path("last", work, "another config") == last  # asked for: resumed whatever the config
    assert resume_path("fresh", work, "fp") is None
    own = tmp_path / "epoch=1-step=30.ckpt"
    torch.save({"state_dict": {}}, own)   # a torch zip archive, as Lightning writes
    assert resume_path(str(own), work, "fp") == str(own)
    other = tmp_path / "other.ckpt"
    other.write_bytes(b"x")                # not one: refused before the run starts
    with pytest.raises(CheckpointError, match="not a training checkpoint this tool saved"):
        resume_path(str(other), work, "fp")
    with pytest.raises(CheckpointError, match="file not found"):
        resume_path(str(tmp_path / "missing.ckpt"), work, "fp")
    with pytest.raises(CheckpointError, match="a directory; ckpt_path takes a training checkpoint file"):
        resume_path(str(work), work, "fp")
    from agentforge.io import read_checkpoint_config

    with pytest.raises(CheckpointError, match="a file; a checkpoint is the directory that holds config.json"):
        read_checkpoint_config(other)
    a, b = (compose_cfg(o, tmp_path) for o in (["model=m1"], ["model=m1", "optimizer.lr=0.002"]))
    assert fingerprint(a) == fingerprint(compose_cfg(["model=m1"], tmp_path)) != fingerprint(b)


def test_the_evaluation_plans_training_keys_are_logged_under_the_readmes_names(cognate_artifacts):
    """'`train/loss/total` is `train/objective`, `train/loss/final_ce` is `train/loss`, ... `act/avg_halting_steps`,
    ... `system/tokens_per_second` ... `system/ram_used_gb` on the CPU ... (tested on a Cognate run's
    `metrics.jsonl`)'."""
    runs = sorted(cognate_artifacts.parent.parent.rglob("metrics.jsonl"))
    assert runs
    rows = [json.loads(line) for line in runs[0].read_text().splitlines()]
    keys = set().union(*rows)
    assert {"train/objective", "train/loss", "act/avg_halting_steps", "system/tokens_per_second",
            "system/ram_used_gb"} <= keys
    assert not {"train/loss/total", "train/loss/final_ce"} & keys   # the plan's names are the README's mapping only
