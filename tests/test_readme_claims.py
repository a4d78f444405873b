"""README.md's checkable claims that no other test covered, each test quoting the README line it checks.

The README's commands and config keys are read from README.md itself (its backtick spans), so a key or a
benchmark flag renamed in the code without the README fails here; the stated defaults are checked against
conf/*.yaml as written (OmegaConf.load of the file, not a composed config, so the file is what is tested).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from agentforge.main import CONF_DIR

REPO = Path(__file__).resolve().parent.parent
CONF = Path(CONF_DIR)
README = (REPO / "README.md").read_text()
SPANS = re.findall(r"`([^`\n]+)`", README)


def _yaml(rel: str):
    return OmegaConf.load(CONF / rel)


# ---------------------------------------------------------------------------------------------- credentials
def test_redaction_keeps_token_count_settings_and_drops_credentials():
    """'Credentials never reach saved configs, command-line records or W&B' -- and only credentials: the
    run's `config_resolved.yaml` / `overrides.yaml` must still record settings such as `phase.gen_tokens`."""
    from agentforge.tracking.loggers import redact, redact_args

    cfg = {"phase": {"gen_tokens": 24, "latency_tokens": 512, "max_new_tokens": 64, "tokenizer": "byte",
                     "baking": {"usage_tokens": 10, "sample_tokens": 8}},
           "logger": {"api_key": "sk-1", "WANDB_API_KEY": "sk-2", "hf_token": "hf-3", "password": "p",
                      "client_secret": "s", "token": "t"}}
    out = redact(cfg)
    assert out["phase"] == cfg["phase"]
    assert all(v == "<redacted>" for v in out["logger"].values())
    args = ["phase.gen_tokens=4", "phase.baking.sample_tokens=2", "+logger.api_key=sk-1", "+hf_token=hf-3",
            "+logger.auth_token=x"]
    assert redact_args(args) == ["phase.gen_tokens=4", "phase.baking.sample_tokens=2", "+logger.api_key=<redacted>",
                                 "+hf_token=<redacted>", "+logger.auth_token=<redacted>"]


# ---------------------------------------------------------------------------------------- config defaults
# (file under conf/, dotted key, the value README.md states, the README's words)
DEFAULTS = [
    ("logger/wandb.yaml", "project", "agent-forge-v2", "Project `agent-forge-v2`"),
    ("logger/wandb.yaml", "mode", None, "W&B runs offline ... unless ... `logger.mode=online`"),
    ("model/m1.yaml", "act_threshold", 0.5, "a token halts at the median of its p (`act_threshold` 0.5)"),
    ("model/m1.yaml", "ponder_prior", 0.5, "m1 0.5 over 4 steps"),
    ("model/m1.yaml", "max_steps", 4, "m1 0.5 over 4 steps"),
    ("model/m2.yaml", "ponder_prior", 0.6, "m2 0.6 over 3"),
    ("model/m2.yaml", "max_steps", 3, "m2 0.6 over 3"),
    ("model/m3.yaml", "ponder_prior", 0.7, "m3 0.7 over 2"),
    ("model/m3.yaml", "max_steps", 2, "m3 0.7 over 2"),
    ("model/m1.yaml", "ponder_cost", 0.02, "β on the scale of the gains (m1 0.02, m2 0.01, m3 0.01)"),
    ("model/m2.yaml", "ponder_cost", 0.01, "β ... m2 0.01"),
    ("model/m3.yaml", "ponder_cost", 0.01, "β ... m3 0.01"),
    ("model/m1.yaml", "ltm_max_writes", 16, "m1 and m2 write all 16"),
    ("model/m2.yaml", "ltm_max_writes", 16, "m1 and m2 write all 16"),
    ("model/m1.yaml", "ltm_slots", 128, "m1's 128 slots"),
    ("model/m2.yaml", "ltm_slots", 256, "(m2 256)"),
    ("phase/cognate.yaml", "val_rows", 32, "a paired-bootstrap 95% CI over the 32 validation rows"),
    ("phase/cognate.yaml", "recall_rows", 64, "memory on vs off on 64 held-out `recall` items"),
    ("phase/cognate.yaml", "halting_rows", 64, "the same 64 held-out GSM8K-format rows"),
    ("optimizer/muon_grokfast.yaml", "weight_decay_mode", "decoupled", "`optimizer.weight_decay_mode=decoupled` (default"),
    ("optimizer/muon_grokfast.yaml", "grokfast", "ema", "Grokfast-EMA ... `optimizer.grokfast=ma` for the windowed variant"),
    ("optimizer/muon_grokfast.yaml", "qk_clip", 30.0, "Muon and Muon-Grokfast ... QK-clip τ 30"),
    ("hardware/gpu.yaml", "precision", "bf16-mixed", "`hardware=gpu` trains in bf16 mixed precision on one GPU"),
    ("hardware/fsdp.yaml", "strategy", "fsdp", "`hardware=fsdp` shards models"),
    ("hparams_search/cognate_optuna.yaml", "optimized_metric", "final/val_loss", "default `final/val_loss`"),
    ("hparams_search/cognate_optuna.yaml", "hydra.sweeper.direction", "minimize", "(minimizes `optimized_metric`"),
    ("experiment/phase2_seed.yaml", "phase.generations", 50, "`experiment=phase2_seed` for the seed's 50 generations"),
    ("phase/grokking.yaml", "task", "paper", "Default task `paper`"),
    ("phase/grokking.yaml", "tasks.paper.modulus", 97, "a/b mod 97"),
    ("phase/grokking.yaml", "tasks.paper.operation", "div", "a/b mod 97"),
    ("phase/grokking.yaml", "tasks.paper.train_fraction", 0.5, "half of the 9,312 pairs for training"),
    ("phase/grokking.yaml", "tasks.paper.n_layers", 2, "its 2-layer, width-128 decoder"),
    ("phase/grokking.yaml", "tasks.paper.d_model", 128, "its 2-layer, width-128 decoder"),
    ("phase/grokking.yaml", "tasks.paper.batch_size", 512, "batch 512"),
    ("phase/grokking.yaml", "tasks.paper.max_steps", 60000, "60,000-step budget"),
    ("phase/grokking.yaml", "tasks.paper.eval_every", 10, "checked every 10 steps"),
    ("phase/grokking.yaml", "tasks.paper.optimizers.adamw.lr", 1e-3, "Adam, lr 1e-3"),
    ("phase/grokking.yaml", "tasks.paper.optimizers.adamw.betas", [0.9, 0.98], "β (0.9, 0.98)"),
    ("phase/grokking.yaml", "tasks.paper.optimizers.adamw.weight_decay", 0.0, "no decay"),
    ("phase/grokking.yaml", "tasks.paper.optimizers.adamw.warmup_steps", 10, "10-step warmup"),
    ("phase/grokking.yaml", "tasks.paper.optimizers.grokfast_adamw.weight_decay", 0.005, "Adam + coupled L2 0.005"),
    ("phase/grokking.yaml", "tasks.paper.optimizers.grokfast_adamw.weight_decay_mode", "coupled", "coupled L2 0.005"),
    ("phase/grokking.yaml", "tasks.paper.optimizers.grokfast_adamw.grokfast_alpha", 0.98, "EMA α 0.98"),
    ("phase/grokking.yaml", "tasks.paper.optimizers.grokfast_adamw.grokfast_lambda", 2.0, "λ 2"),
    ("phase/grokking.yaml", "tasks.strong_wd.optimizers.adamw.weight_decay", 1.0, "decoupled decay 1.0"),
    ("phase/grokking.yaml", "tasks.strong_wd.optimizers.adamw.weight_decay_mode", "decoupled", "decoupled decay 1.0"),
    ("phase/grokking.yaml", "tasks.strong_wd.optimizers.muon_grokfast.lr", 3e-3, "lr 3e-3 for all"),
    ("phase/evomerge.yaml", "population_size", 8, "Population 8"),
    ("phase/evomerge.yaml", "elite_count", 2, "2 elites"),
    ("phase/evomerge.yaml", "early_stopping_patience", 5, "early stopping (patience 5"),
    ("phase/evomerge.yaml", "early_stopping_threshold", 0.001, "threshold 0.001)"),
    ("phase/evomerge.yaml", "fitness_weights", {"perplexity": 0.4, "accuracy": 0.3, "speed": 0.2, "memory": 0.1},
     "weighted geometric mean (0.4 perplexity, 0.3 accuracy, 0.2 speed, 0.1 memory)"),
    ("phase/evomerge.yaml", "dare_rescale", "l1", "`phase.dare_rescale=l1`: the L1 norm ... (mergekit's default)"),
    ("phase/evomerge.yaml", "speed_term", "flops", "by default fitness is a deterministic function of the weights"),
    ("phase/evomerge.yaml", "eval.test_rows", 64, "on 64 test rows"),
    ("phase/evomerge.yaml", "eval.test_choice_examples", 32, "and 2×32 test questions"),
    ("phase/evomerge.yaml", "improvement_threshold", 20.0, "the seed's \"> 20 %\""),
    ("phase/quietstar.yaml", "rl.eval_windows", 64, "`phase.rl.eval_windows` = 64 held-out windows"),
    ("phase/quietstar.yaml", "rl.mixing_init_weight", 0.0, "The mixing head starts at weight w = 0"),
    ("phase/quietstar.yaml", "baking.convergence_threshold", 0.85, "baking accuracy ≥ 0.85"),
    ("phase/bitnet.yaml", "sparsity_threshold", 0.5, "0.5 = the paper's RoundClip"),
    ("phase/bitnet.yaml", "per_channel", False, "`phase.per_channel=true` per row"),
    ("phase/bitnet.yaml", "packing", "base3", "5 trits/byte = 1.6 bits, or `phase.packing=2bit`"),
    ("phase/bitnet.yaml", "native_kernel", False, "(off by default: a one-time ~30 s C++ build per machine)"),
    ("phase/bitnet.yaml", "preserved_layers", ["embed", "lm_head", "*norm"],
     "Every linear layer except embeddings, lm_head and norms (`phase.preserved_layers`)"),
    ("phase/bitnet.yaml", "min_compression", 6.0, "compression > 6×"),
    ("phase/bitnet.yaml", "max_accuracy_drop", 10.0, "accuracy drop < 10 %"),
    ("phase/eval.yaml", "eval_examples", 16, "`phase.eval_examples` (GSM8K, default 16)"),
    ("phase/eval.yaml", "choice_examples", 200, "`phase.choice_examples` (ARC / PIQA, default 200"),
    ("phase/eval.yaml", "latency_tokens", 512, "latency of a 512-token generation"),
    ("phase/compare.yaml", "thresholds.min_n", 30, "INCONCLUSIVE below `phase.thresholds.min_n` (30)"),
    ("phase/compare.yaml", "n_resamples", 10000, "a paired bootstrap (10 000 resamples)"),
    ("phase/codegen.yaml", "num_problems", 6, "the CPU default is 6 problems"),
    ("phase/codegen.yaml", "temperature", 0.8, "temperature 0.8 with top-p 0.95"),
    ("phase/codegen.yaml", "top_p", 0.95, "temperature 0.8 with top-p 0.95"),
    ("phase/codegen.yaml", "sandbox", "bwrap", "(bubblewrap; `phase.sandbox=process` is unisolated and warns)"),
    ("phase/codegen.yaml", "timeout_s", 5.0, "5 s wall/CPU and 512 MB per sample"),
    ("phase/codegen.yaml", "memory_mb", 512, "5 s wall/CPU and 512 MB per sample"),
    ("phase/codegen.yaml", "workers", None, "one worker per CPU"),
    ("phase/codegen.yaml", "wandb_project", "hrm-vs-gpt2", "project `hrm-vs-gpt2`, `phase.wandb_project`"),
    ("phase/codegen.yaml", "n_resamples", 10000, "the paired bootstrap, 10 000 resamples"),
    ("phase/codegen.yaml", "thresholds", {"min_pass_at_1": 0.30, "min_pass_at_10": 0.45, "min_delta_pass1": 0.04,
                                          "max_latency_ratio": 0.54, "max_memory_ratio": 0.5,
                                          "min_throughput_ratio": 2.0, "min_n": 30},
     "targets pass@1 ≥ 0.30, pass@10 ≥ 0.45, Δ ≥ 4 pp, latency ≤ 0.54×, RAM ≤ 0.5×, throughput ≥ 2× ... min_n = 30"),
    ("data/python_code.yaml", "val_fraction", 0.1, "split by file (10 % val)"),
    ("phase/scaling.yaml", "fitness.tolerance", 0.05, "by more than `tolerance` (0.05 nats)"),
    ("phase/scaling.yaml", "sandbox", "bwrap", "`phase.sandbox=bwrap` (default)"),
    ("phase/pipeline.yaml", "overlap_train_draws", 50000, "(`phase.overlap_train_draws`, default 50 000)"),
    ("phase/pipeline.yaml", "phases", ["cognate", "evomerge", "quietstar", "bitnet", "eval"],
     "runs cognate m1, m2, m3 → evomerge → quietstar → bitnet → eval"),
    ("phase/pipeline.yaml", "models", ["m1", "m2", "m3"], "runs cognate m1, m2, m3"),
]


@pytest.mark.parametrize("rel,key,value,quote", DEFAULTS, ids=[f"{r}:{k}" for r, k, _, _ in DEFAULTS])
def test_config_default_is_what_the_readme_states(rel, key, value, quote):
    got = OmegaConf.select(_yaml(rel), key, throw_on_missing=True)
    got = OmegaConf.to_container(got) if OmegaConf.is_config(got) else got
    if isinstance(value, dict):  # the README's entries; the file may hold more
        got = {k: got[k] for k in value}
    assert got == value, f"README: {quote!r}; conf/{rel} {key} = {got!r}"


def test_config_groups_and_their_defaults_are_the_readme_list():
    """'Config groups (`conf/`): `phase`, `model`, `size` (`tiny` default ...), `optimizer` (`muon_grokfast` default,
    ...), `hardware` (...), `logger` (...), `data` (...), `baseline` (`gpt2_scratch`, `gpt2`), `experiment` (...),
    `hparams_search`.'"""
    readme = {"size": {"tiny", "small", "25m"},
              "optimizer": {"muon_grokfast", "muon_grokfast_baking", "muon_grokfast_rl", "muon", "grokfast_adamw",
                            "adamw"},
              "hardware": {"auto", "cpu", "gpu", "ddp", "fsdp"}, "logger": {"wandb", "csv", "tensorboard", "none"},
              "data": {"synthetic", "gsm8k", "python_code"}, "baseline": {"gpt2_scratch", "gpt2"},
              "experiment": {"smoke", "phase1_seed", "phase2_seed"}, "model": {"m1", "m2", "m3"},
              "phase": {"cognate", "evomerge", "quietstar", "bitnet", "eval", "compare", "scaling", "grokking",
                        "pipeline", "codegen"}}
    for group, choices in readme.items():
        assert {f.stem for f in (CONF / group).glob("*.yaml")} == choices, group
    assert (CONF / "hparams_search").is_dir()
    defaults = {k: v for d in _yaml("config.yaml").defaults if isinstance(d, dict) or OmegaConf.is_dict(d)
                for k, v in d.items()}
    assert defaults["size"] == "tiny" and defaults["optimizer"] == "muon_grokfast"
    assert defaults["logger"] == "wandb" and defaults["baseline"] == "gpt2_scratch"  # "(default)" in the README
    assert defaults["phase"] == "cognate" and defaults["model"] == "m1"  # `python -m agentforge` = Cognate m1


def test_cognate_curriculum_has_three_stages_with_recall_at_0_6():
    """'pretrain one Cognate model ... over a 3-stage curriculum'; the `recall` task 'is in the training mix ...
    at curriculum weight 0.6'."""
    stages = OmegaConf.to_container(_yaml("phase/cognate.yaml").curriculum)
    assert len(stages) == 3 and [st["mix"]["recall"] for st in stages] == [0.6, 0.6, 0.6]


def test_the_priors_tails_are_the_readme_figures():
    """'the truncated prior with λ_p = 0.25 put 42 % on step 4'; 'priors with a small tail (m1 0.5 over 4 steps,
    12.5 % on step 4; m2 0.6 over 3; m3 0.7 over 2)'."""
    from agentforge.models.halting import geometric_prior

    assert float(geometric_prior(0.25, 4)[-1]) == pytest.approx(0.421875)
    for m, tail in (("m1", 0.125), ("m2", 0.16), ("m3", 0.3)):
        cfg = _yaml(f"model/{m}.yaml")
        assert float(geometric_prior(cfg.ponder_prior, cfg.max_steps)[-1]) == pytest.approx(tail), m


def test_compile_is_off_by_default_on_every_hardware_preset():
    """'**`hardware.compile=true`** ... Off by default everywhere'."""
    presets = sorted((CONF / "hardware").glob("*.yaml"))
    assert presets and all(OmegaConf.load(f).compile is False for f in presets)


def test_pipeline_thresholds_are_the_seeds_the_readme_lists():
    """'the seed's critical thresholds ... (Phase-1 diversity ... > 0.3, EvoMerge improvement > 20 %, baking
    accuracy ≥ 0.85, anti-theater divergence > 0.3 and ablation drop > 0.02, compression > 6×, accuracy drop < 10 %)'
    and Phase 3: 'correlation > 0.5'; Phase 1: 'a margin of 0.01 nats/token declared before the runs'."""
    from agentforge.models.ablation import NONINFERIORITY_MARGIN
    from agentforge.pipeline.report import THRESHOLDS

    got = {key: (op, thr) for _, key, op, thr in THRESHOLDS}
    assert got == {"phase1/diversity": (">", 0.3), "final/fitness_improvement": (">", 20.0),
                   "baking/final_accuracy": (">=", 0.85), "anti_theater/final_divergence": (">", 0.3),
                   "anti_theater/final_ablation_drop": (">", 0.02), "anti_theater/final_correlation": (">", 0.5),
                   "final/compression_ratio": (">", 6.0), "final/accuracy_drop": ("<", 10.0)}
    assert NONINFERIORITY_MARGIN == 0.01


# ------------------------------------------------------------------------- README keys, commands, make
def _readme_keys() -> list[str]:
    keys = set()
    for s in SPANS:
        for m in re.finditer(r"(?<![\w/])((?:phase|model|optimizer|hardware|logger|data)\.[A-Za-z_][\w.]*)", s):
            keys.add(m.group(1).rstrip("."))
    return sorted(keys)


GROUP_FILES = {"phase": ["phase"], "model": ["model", "size"], "optimizer": ["optimizer"], "hardware": ["hardware"],
               "logger": ["logger"], "data": ["data"]}
# README spans that name a Python attribute of a model object, not a config key
ATTRIBUTES = {"model.generate", "model.memory.persist", "model.bitnet_kernel"}


@pytest.mark.parametrize("key", [k for k in _readme_keys() if k not in ATTRIBUTES])
def test_every_config_key_the_readme_names_exists(key):
    group, rest = key.split(".", 1)
    files = [f for g in GROUP_FILES[group] for f in sorted((CONF / g).glob("*.yaml"))]
    found = [f.name for f in files if OmegaConf.select(OmegaConf.load(f), rest, default="<absent>") != "<absent>"]
    if group == "model":
        from agentforge.models.cognate import CognateConfig
        found += ["CognateConfig"] * (rest in CognateConfig.__dataclass_fields__)
    assert found, f"README names `{key}`, which no conf/{'|'.join(GROUP_FILES[group])}/*.yaml defines"


def test_the_attributes_the_readme_names_exist(tiny_model):
    """'`model.generate` decodes a Cognate model incrementally'; 'unless `model.memory.persist = True`'."""
    assert callable(tiny_model.generate) and tiny_model.memory.persist is False
    assert "model.bitnet_kernel" in ATTRIBUTES  # the packed model's: checked in tests/test_speed.py


def _phase_table_commands() -> list[str]:
    section = README.split("\n## Phases", 1)[1].split("Config groups", 1)[0]
    return re.findall(r"^\| `([^`]+)` \|", section, re.M) + ["phase=quietstar step=baking", "phase=quietstar step=rl"]


@pytest.mark.parametrize("command", _phase_table_commands())
def test_every_phase_table_command_composes_and_validates(command, tmp_path):
    """The README's phase table (`phase=eval checkpoint=DIR stage=NAME`, `-m phase=cognate model=m1,m2,m3`, ...):
    each command's overrides are valid keys and values (a multirun's comma list: each of its values)."""
    import itertools

    from agentforge.config import validate
    from agentforge.phases import get_phase
    from tests.conftest import compose_cfg

    args = [a.split("=", 1) for a in command.split() if a != "-m"]
    sweeps = [[f"{k}={v}" for v in (vals.split(",") if "[" not in vals else [vals])] for k, vals in args]
    for value_set in itertools.product(*sweeps):
        cfg = compose_cfg(list(value_set), tmp_path)
        validate(cfg, getattr(get_phase(str(cfg.phase.name)), "RULES", ()))
        for a in value_set:
            key, value = a.split("=", 1)
            got = OmegaConf.select(cfg, f"{key}.name") if key in GROUP_FILES or key == "baseline" else cfg[key]
            got = OmegaConf.to_container(got) if OmegaConf.is_config(got) else got
            assert str(got).replace("'", "").replace(" ", "") == value, (command, key, got)


BENCH_CMD = re.compile(r"(?:benchmarks/)?\b(bench_\w+\.py|gpu_figures\.sh)((?: [^`]*)?)")


def test_every_benchmark_command_in_the_readme_exists_with_its_flags():
    """Each `python benchmarks/bench_*.py --flag ...` / `bash benchmarks/gpu_figures.sh part` the README gives."""
    cmds = [(m.group(1), m.group(2)) for s in SPANS for m in BENCH_CMD.finditer(s)]
    assert len(cmds) >= 19
    for name, args in cmds:
        path = f"benchmarks/{name}"
        src = (REPO / path).read_text()
        for flag in re.findall(r"(--[a-z][\w-]*)", args):
            assert f'"{flag}"' in src, f"README: `{path}{args}`: {path} declares no {flag}"
        if path.endswith(".sh"):
            for part in re.findall(r"\b(kernels|pipeline)\b", args):
                assert re.search(rf"^\s*{part}\)", src, re.M), (path, part)
    for script in {m for s in SPANS for m in re.findall(r"scripts/\w+\.py", s)}:
        assert (REPO / script).is_file(), script


def test_every_source_path_the_readme_names_exists():
    """Each `agentforge/...`, `tests/...`, `scripts/...`, `benchmarks/...`, `openevolve/...` path and each module
    named by its file (`halting.py`, `quant/fuse.py`, `bench_bitnet.py`) that the README gives."""
    pat = re.compile(r"(?<![\w.{}/-])([\w/-]*[\w-]+\.(?:py|yaml|sh)|(?:agentforge|conf)/[\w/]*)(?![\w.])")
    outputs = {"config_resolved.yaml", "overrides.yaml"}  # a run directory's files (test_run_dir_holds_...)
    names = {m.group(1) for s in SPANS for m in pat.finditer(s)} - outputs
    assert len(names) >= 40
    missing = [n for n in sorted(names) if not any((root / n).exists() for root in (REPO, REPO / "agentforge",
                                                                                      REPO / "benchmarks"))
               and not ("/" not in n and list((REPO / "agentforge").rglob(n)))]
    assert not missing, missing


def test_make_help_lists_the_readme_targets():
    """'`make help` lists them: `install`, `test` (fast tier, CI), `test-slow`, `test-faults`, `run` (Cognate m1),
    `pipeline`, `sweep`, `bench` (...), `lint`, `clean`.'"""
    proc = subprocess.run(["make", "-s", "help"], cwd=REPO, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    listed = [ln.split()[0] for ln in proc.stdout.splitlines() if ln.strip()]
    assert listed == ["help", "install", "test", "test-slow", "test-faults", "run", "pipeline", "sweep", "bench",
                      "lint", "clean"]
    make = (REPO / "Makefile").read_text()
    assert "agentforge phase=cognate model=m1\n" in make and '-m "not slow"' in make and "-m faults" in make
    ci = (REPO / ".ci" / "run").read_text()  # '`make test` # the test suite CI runs (fast tier)'
    assert ci.rstrip().endswith("make install\nmake test")
    # '`make install` # pip install torch==2.13.0 (CPU build) + this project (editable, dev extras)'; bubblewrap
    # '(`make install` installs it with apt-get when run as root)'; 'pip install 'agentforge[slurm]'' / '[optuna]'
    assert "pip install torch==2.13.0" in make and 'pip install -e ".[dev]"' in make
    assert "apt-get install -y -qq bubblewrap" in make and '"$$(id -u)" = 0' in make
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert {"dev", "slurm", "optuna"} <= set(extras)


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
    assert tiny_model.num_params() == 500_610  # README says 504,706: the count before W_K left the memory


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
    `agentforge.log`, `metrics.jsonl`, `tables/*.csv`, `plots/*.png`' (the W&B offline run: tests/test_cli.py);
    'Every Cognate run ends with ablations (`ablation/*` keys, `ablation/table`' (its printing: not checked here)."""
    assert OmegaConf.to_container(_yaml("config.yaml").hydra.run)["dir"].startswith(
        "${paths.outputs}/runs/${now:%Y-%m-%d}/${now:%H-%M-%S}_${phase.name}_")
    jobs = sorted(p.parent for p in (cognate_artifacts.parent / "multirun").rglob("config_resolved.yaml"))
    assert len(jobs) == 3
    for job in jobs:
        for name in ("config_resolved.yaml", "overrides.yaml", "agentforge.log", "metrics.jsonl"):
            assert (job / name).stat().st_size > 0, (job, name)
        assert list(job.glob("tables/*.csv")) and list(job.glob("plots/*.png"))
        table = (job / "tables" / "ablation__table.csv").read_text().splitlines()
        assert [row.split(",")[0] for row in table[1:]] == ["trained", "steps1", "no_memory", "max_steps"]
        resolved = OmegaConf.load(job / "config_resolved.yaml")
        assert resolved.phase.name == "cognate" and resolved.phase.gen_tokens == 4  # a setting, not a secret
        assert "phase.gen_tokens=4" in OmegaConf.to_container(OmegaConf.load(job / "overrides.yaml"))
        keys = set().union(*(json.loads(ln) for ln in (job / "metrics.jsonl").read_text().splitlines()))
        assert {"ablation/steps1_loss_delta", "ablation/no_memory_loss_delta", "ablation/max_steps_loss_delta",
                "ablation/halting_noninferior"} <= keys


# ------------------------------------------------------------------------------------------- statistics
def test_200_choice_questions_give_about_plus_minus_007_at_one_half():
    """'`phase.choice_examples` (ARC / PIQA, default 200: about ±0.07 on an accuracy near 0.5, 95% Wilson)'."""
    from agentforge.evals.stats import wilson_ci

    lo, hi = wilson_ci(100, 200)
    assert (hi - lo) / 2 == pytest.approx(0.07, abs=0.005)


# ------------------------------------------------------------------------------------------- bad values
@pytest.mark.faults  # 'Bad config values ... `make test-faults` runs these tests'
def test_a_bad_shared_or_model_value_fails_before_torch_or_lightning_load(tmp_path):
    """'A bad value fails in the first second with one line naming the key': the shared groups' and the model's
    values are checked before torch / Lightning are imported (importing Lightning alone takes ~5 s here), exit 2
    ('Bad config values ... each give one `error:` line and exit 2'). `phase.*` values need the phase's module
    (and so Lightning) and fail after it loads: tests/test_cli.py, tests/test_grokking.py."""
    env = dict(os.environ, AGENTFORGE_OUTPUTS=str(tmp_path / "outputs"), WANDB_MODE="offline")
    for bad, key in (["optimizer.lr=-0.1", "optimizer.lr"], ["model.n_heads=3", "model.d_model"]):
        proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "agentforge", bad, "logger=none"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr[-2000:]
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1 and key in errors[0], proc.stderr[-2000:]
        imported = {ln.rsplit("|", 1)[-1].strip() for ln in proc.stderr.splitlines() if ln.startswith("import time:")}
        assert "omegaconf" in imported and not imported & {"torch", "lightning"}, bad


def test_gpt2_baseline_offline_is_one_config_error(monkeypatch, tmp_path):
    """'`baseline=gpt2` loads the real 124 M weights and tokenizer from the hub (an `error:` offline).'"""
    import huggingface_hub.constants as hub

    from agentforge.codegen import models
    from agentforge.errors import ConfigError

    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path))  # an empty cache: nothing to fall back on
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="baseline=gpt2: cannot load 'gpt2'.*use baseline=gpt2_scratch offline"):
        models.pretrained_gpt2("gpt2")


def test_constants_the_readme_states(tmp_path):
    """'inputs of at most `BitLinear.decode_rows` (8, fixed, not measured) rows take the decode choice';
    'end-of-sequence is read back every 16 tokens'; 'under 20 windows always INCONCLUSIVE'; the sandbox's tree
    memory 'polled every 20–250 ms'; 'Everything lands under `outputs/` (or `$AGENTFORGE_OUTPUTS`)';
    '`scripts/collect_metrics.py` aggregates `metrics.jsonl` into `run_summary.json`'."""
    import inspect

    from agentforge.evals.collect import collect_metrics
    from agentforge.models.generation import generate
    from agentforge.quant.bitlinear import BitLinear
    from agentforge.reasoning.anti_theater import MIN_WINDOWS
    from agentforge.sandbox.runner import POLL_S

    assert BitLinear.decode_rows == 8
    assert inspect.signature(generate).parameters["check_every"].default == 16
    assert MIN_WINDOWS == 20 and POLL_S == (0.02, 0.25)
    # 'Variants: `phase.variant=baseline|coefficient_dynamics|test_time_regression|matrix_mixer`'; 'Failure kinds:
    # `timeout`, `memory`, `forbidden`, `outside_block`, `crash`, `non_causal`, `non_finite`, `forged`; only verdicts
    # the trusted side reached on reproducible input are cached (static checks; `non_causal`/`non_finite`/`forged`
    # ...), never timeouts, memory, crashes'
    from agentforge.scaling.failures import CACHEABLE, KINDS
    from agentforge.scaling.variants import FRAMEWORKS

    assert set(FRAMEWORKS) == {"baseline", "coefficient_dynamics", "test_time_regression", "matrix_mixer"}
    # 'cut at HumanEval's stop sequences (`\\nclass`, `\\ndef`, `\\n#`, `\\nif`, `\\nprint`...)'; 'MBPP ... (test split =
    # task ids 11–510'
    from agentforge.codegen.problems import HUMANEVAL_STOP, MBPP_TEST_IDS

    assert HUMANEVAL_STOP == ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
    assert (MBPP_TEST_IDS[0], MBPP_TEST_IDS[-1]) == (11, 510)
    assert KINDS == ("timeout", "memory", "forbidden", "outside_block", "crash", "non_causal", "non_finite", "forged")
    assert CACHEABLE == {"forbidden", "outside_block", "non_causal", "non_finite", "forged"}
    assert OmegaConf.to_container(_yaml("config.yaml").paths)["outputs"] == "${oc.env:AGENTFORGE_OUTPUTS,outputs}"
    (tmp_path / "metrics.jsonl").write_text('{"_step": 0, "train/loss": 2.5}\n')
    summary = collect_metrics(tmp_path)
    assert summary == tmp_path / "run_summary.json"
    assert json.loads(summary.read_text())["metrics"]["train/loss"]["last"] == 2.5


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
    145 solutions (...), 525 train / 51 val files, 10.2 M / 0.8 M characters.'"""
    from agentforge.codegen.corpus import corpus_from_config

    st = corpus_from_config(OmegaConf.to_container(_yaml("data/python_code.yaml"))).stats
    assert (st["files_found"], st["duplicates_dropped"], st["contaminated_dropped"]) == (580, 4, 0)
    assert (st["signatures_checked"], st["solutions_checked"], st["train_files"], st["val_files"]) == (162, 145, 525, 51)
    assert (round(st["train_chars"] / 1e6, 1), round(st["val_chars"] / 1e6, 1)) == (10.2, 0.8)


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
        with pytest.raises(AgentForgeError, match="non-finite gradient norm at step 0"):
            module.on_before_optimizer_step(None)
    else:
        module.on_before_optimizer_step(None)
        assert module.skipped_steps == 1 and all(p.grad is None for p in model.parameters())


def test_splits_are_blake2b_buckets_val_0_99_test_100_199():
    """'the BLAKE2b hash of each example's prompt puts it in one of 1000 buckets, 0–99 are reserved for val and
    100–199 for test, and a draw whose prompt hashes outside its split is redrawn — whatever the seeds.'"""
    import hashlib

    from agentforge.data import synthetic

    key = "What is 2 + 3?"
    assert synthetic.bucket(key) == int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") % 1000
    for task in ("arithmetic", "choice", "piqa"):
        for seed in (0, 7):
            for split, lo, hi in (("val", 0, 100), ("test", 100, 200), ("train", 200, 1000)):
                for i in range(5):
                    b = synthetic.bucket(synthetic.prompt_key(task, synthetic.draw(task, seed, split, i)))
                    assert lo <= b < hi, (task, seed, split, i, b)
