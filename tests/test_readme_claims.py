"""The documentation's config, command and constant claims that no other test covered (README.md and the topic
files under docs/ it links; "README" below means both), each test quoting the line it checks (its behavioural
claims: tests/test_readme_claims_behaviour.py).

The commands and config keys are read from the documentation itself (its backtick spans), so a key or a
benchmark flag renamed in the code without the documentation fails here; the stated defaults are checked against
conf/*.yaml as written (OmegaConf.load of the file, not a composed config, so the file is what is tested).
"""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from agentforge.main import CONF_DIR
from tests.docs_text import DOC_FILES, all_docs

REPO = Path(__file__).resolve().parent.parent
CONF = Path(CONF_DIR)
README = (REPO / "README.md").read_text()   # the overview alone: its phase table, its links
DOCS = all_docs()                            # README.md + docs/*.md: every span a claim test reads
SPANS = re.findall(r"`([^`\n]+)`", DOCS)


def _yaml(rel: str):
    return OmegaConf.load(CONF / rel)


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
    ("phase/bitnet.yaml", "native_kernel", "auto", "`phase.native_kernel=auto` (the default) offers it"),
    ("phase/bitnet.yaml", "preserved_layers", ["embed", "lm_head", "*norm"],
     "Every linear layer except embeddings, lm_head and norms (`phase.preserved_layers`)"),
    ("phase/bitnet.yaml", "min_compression", 6.0, "compression > 6×"),
    ("phase/bitnet.yaml", "max_accuracy_drop", 10.0, "accuracy drop < 10 %"),
    ("phase/eval.yaml", "eval_examples", 16, "`phase.eval_examples` (GSM8K, default 16)"),
    ("phase/eval.yaml", "choice_examples", 200, "`phase.choice_examples` (ARC / PIQA, default 200"),
    ("phase/eval.yaml", "latency_tokens", 512, "latency of a 512-token generation"),
    ("phase/compare.yaml", "thresholds.min_n", 30, "INCONCLUSIVE below `phase.thresholds.min_n` (30)"),
    ("phase/compare.yaml", "n_resamples", 10000, "a paired bootstrap (10 000 resamples)"),
    ("phase/compare.yaml", "thresholds.min_delta_pass10", 0.03, "Δ pass@10 ≥ 3 pp"),
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
                                          "min_delta_pass10": 0.03, "max_latency_ratio": 0.54, "max_memory_ratio": 0.5,
                                          "min_throughput_ratio": 2.0, "min_n": 30},
     "targets pass@1 ≥ 0.30, pass@10 ≥ 0.45, Δ ≥ 4 pp, Δ pass@10 ≥ 3 pp (and a candidate significantly worse at any k "
     "is FAILURE), latency ≤ 0.54×, RAM ≤ 0.5×, throughput ≥ 2× ... min_n = 30"),
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
    defaults = {k: v for d in OmegaConf.to_container(_yaml("config.yaml").defaults) if isinstance(d, dict)
                for k, v in d.items()}   # unresolved: the experiment_phase entry is a Hydra defaults-list interpolation
    assert defaults["size"] == "tiny" and defaults["optimizer"] == "muon_grokfast"
    assert defaults["logger"] == "wandb" and defaults["baseline"] == "gpt2_scratch"  # "(default)" in the README
    assert defaults["phase"] == "cognate" and defaults["model"] == "m1"  # `python -m agentforge` = Cognate m1


def test_cognate_curriculum_has_three_stages_with_recall_at_0_6():
    """'pretrain one Cognate model ... over a 3-stage curriculum'; the `recall` task 'is in the training mix ...
    at curriculum weight 0.6'."""
    stages = OmegaConf.to_container(_yaml("phase/cognate.yaml").curriculum)
    assert len(stages) == 3 and [st["mix"]["recall"] for st in stages] == [0.6, 0.6, 0.6]
    # the seed's Phase 1 run too: its stages replace the default list, and a task missing there is never trained
    seed_run = OmegaConf.to_container(_yaml("experiment/phase1_seed.yaml").phase.curriculum)
    assert len(seed_run) == 3 and [st["mix"]["recall"] for st in seed_run] == [0.6, 0.6, 0.6]


def test_the_priors_tails_are_the_readme_figures():
    """'the truncated prior with λ_p = 0.25 put 42 % on step 4'; 'priors with a small tail (m1 0.5 over 4 steps,
    12.5 % on step 4; m2 0.6 over 3; m3 0.7 over 2)'."""
    from agentforge.models.halting import geometric_prior

    assert float(geometric_prior(0.25, 4)[-1]) == pytest.approx(0.421875)
    for m, tail in (("m1", 0.125), ("m2", 0.16), ("m3", 0.3)):
        cfg = _yaml(f"model/{m}.yaml")
        assert float(geometric_prior(cfg.ponder_prior, cfg.max_steps)[-1]) == pytest.approx(tail), m


def test_compile_is_off_by_default_on_every_hardware_preset():
    """'**`hardware.compile=true`** ... **Off by default**'."""
    presets = sorted((CONF / "hardware").glob("*.yaml"))
    assert presets and all(OmegaConf.load(f).compile is False for f in presets)


def test_pipeline_thresholds_are_the_seeds_the_readme_lists():
    """'the seed's critical thresholds ... (Phase-1 diversity ... > 0.3, EvoMerge improvement > 20 %, baking
    accuracy ≥ 0.85, anti-theater divergence > 0.3 and ablation drop > 0.02, compression > 6×, accuracy drop < 10 %)'
    and Phase 3: 'correlation > 0.5'; Phase 1: 'a margin of 0.01 nats/token declared before the runs'."""
    from agentforge.models.ablation import NONINFERIORITY_MARGIN
    from agentforge.pipeline.thresholds import THRESHOLDS

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
TYPO_EXAMPLES = {"phase.max_epoch", "phase.epocs"}  # the README's misspelled-key examples: they must stay so


@pytest.mark.parametrize("key", [k for k in _readme_keys() if k not in ATTRIBUTES])
def test_every_config_key_the_readme_names_exists(key):
    group, rest = key.split(".", 1)
    files = [f for g in GROUP_FILES[group] for f in sorted((CONF / g).glob("*.yaml"))]
    found = [f.name for f in files if OmegaConf.select(OmegaConf.load(f), rest, default="<absent>") != "<absent>"]
    if group == "model":
        from agentforge.models.cognate import CognateConfig
        found += ["CognateConfig"] * (rest in CognateConfig.__dataclass_fields__)
    if key in TYPO_EXAMPLES:
        assert not found, f"the README's misspelled-key example `{key}` is a real key now"
        return
    assert found, f"README names `{key}`, which no conf/{'|'.join(GROUP_FILES[group])}/*.yaml defines"


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


def gpu_parts() -> list[str]:
    """The parts ``benchmarks/gpu_figures.sh``'s ``case "$part" in a|b|...)`` line accepts."""
    src = (REPO / "benchmarks" / "gpu_figures.sh").read_text()
    return re.search(r'^case "\$part" in ([\w|]+)\)', src, re.M).group(1).split("|")


def test_every_benchmark_command_in_the_readme_exists_with_its_flags():
    """Each `python benchmarks/bench_*.py --flag ...` / `bash benchmarks/gpu_figures.sh part` the README gives."""
    cmds = [(m.group(1), m.group(2)) for s in SPANS for m in BENCH_CMD.finditer(s)]
    assert len(cmds) >= 19
    for name, args in cmds:
        path = f"benchmarks/{name}"
        src = (REPO / path).read_text()
        for flag in re.findall(r"(--[a-z][\w-]*)", args):
            assert f'"{flag}"' in src, f"README: `{path}{args}`: {path} declares no {flag}"
        if path.endswith(".sh"):   # the part named after the script is one its `case` line accepts
            first = args.split()[0] if args.split() else ""
            if first and not first.startswith(("-", "[", "<")):
                assert first in gpu_parts(), (path, first)
    # the "To rerun" sentence's `... part` spans name more parts of the same script
    for part in (m.group(1) for s in SPANS for m in [re.match(r"\.\.\. ([a-z]\w*)", s)] if m):
        assert part in gpu_parts(), part
    for script in {m for s in SPANS for m in re.findall(r"scripts/\w+\.py", s)}:
        assert (REPO / script).is_file(), script


def test_every_source_path_the_readme_names_exists():
    """Each `agentforge/...`, `tests/...`, `scripts/...`, `benchmarks/...`, `openevolve/...` path and each module
    named by its file (`halting.py`, `quant/fuse.py`, `bench_bitnet.py`) that the README gives."""
    pat = re.compile(r"(?<![\w.{}/-])([\w/-]*[\w-]+\.(?:py|yaml|sh)|(?:agentforge|conf)/[\w/]*)(?![\w.])")
    outputs = {"config_resolved.yaml", "overrides.yaml",  # a run directory's files (test_run_dir_holds_...)
               "multirun.yaml",  # Hydra's record of a multirun (test_faults::test_api_key_never_reaches_a_multiruns_records)
               "optimization_results.yaml"}  # an Optuna sweep's (test_configs::test_optuna_sweep_minimizes_...)
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
    # `timeout`, `memory`, `forbidden`, `outside_block`, `crash`, `non_causal`, `non_finite`, `forged`, `params`; only
    # verdicts the trusted side reached on reproducible input are cached (static checks; `non_causal`/`non_finite`/`forged`/`params`
    # ...), never timeouts, memory, crashes'
    from agentforge.scaling.failures import CACHEABLE, KINDS
    from agentforge.scaling.variants import FRAMEWORKS

    assert set(FRAMEWORKS) == {"baseline", "coefficient_dynamics", "test_time_regression", "matrix_mixer"}
    # 'cut at HumanEval's stop sequences (`\\nclass`, `\\ndef`, `\\n#`, `\\nif`, `\\nprint`...)'; 'MBPP ... (test split =
    # task ids 11–510'
    from agentforge.codegen.problems import HUMANEVAL_STOP, MBPP_TEST_IDS

    assert HUMANEVAL_STOP == ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
    assert (MBPP_TEST_IDS[0], MBPP_TEST_IDS[-1]) == (11, 510)
    assert KINDS == ("timeout", "memory", "forbidden", "outside_block", "crash", "non_causal", "non_finite", "forged",
                     "params")
    assert CACHEABLE == {"forbidden", "outside_block", "non_causal", "non_finite", "forged", "params"}
    assert OmegaConf.to_container(_yaml("config.yaml").paths)["outputs"] == "${oc.env:AGENTFORGE_OUTPUTS,outputs}"
    (tmp_path / "metrics.jsonl").write_text('{"_step": 0, "train/loss": 2.5}\n')
    summary = collect_metrics(tmp_path)
    assert summary == tmp_path / "run_summary.json"
    assert json.loads(summary.read_text())["metrics"]["train/loss"]["last"] == 2.5


def test_the_readme_links_every_docs_file_and_every_relative_link_resolves():
    """The README's documentation table links each ``docs/*.md`` (a topic file nobody links is lost), and every
    relative Markdown link in the README and the docs names a file that exists."""
    docs = sorted(f.name for f in (REPO / "docs").glob("*.md"))
    assert len(docs) >= 10
    linked = set(re.findall(r"\]\(docs/([\w-]+\.md)\)", README))
    assert linked == set(docs), (sorted(set(docs) - linked), sorted(linked - set(docs)))
    for f in DOC_FILES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", f.read_text()):
            if not re.match(r"[a-z]+://", target):
                assert (f.parent / target).exists(), f"{f.relative_to(REPO)} links {target}, which does not exist"
