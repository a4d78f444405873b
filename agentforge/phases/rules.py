"""Every phase's config rules (``config.rule``: key, predicate, what a valid value is), in a module that imports no
Lightning, so ``main.run`` checks ``phase.*`` before the phase's module (and Lightning, ~5 s) loads: a bad value is
one ``error:`` line in ~2 s (1.9 s on the 2-core CPU). The phase modules read their rules from here (``RULES = PHASE_RULES[name]``)."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from agentforge.config import Rule, boolean, integer, number, one_of, optional, rule, select
from agentforge.data import synthetic
from agentforge.errors import ConfigError
from agentforge.evals.collect import is_threshold
from agentforge.merge import fitness
from agentforge.merge.techniques import RESCALES
from agentforge.models.grokking import MODELS, OPERATIONS
from agentforge.scaling.variants import FRAMEWORKS

PASS_K = rule("phase.pass_k", (lambda x: isinstance(x, list) and len(x) > 0 and all(integer(1)[0](k) for k in x),
                               "a non-empty list of integers >= 1, e.g. [1, 10]"))
# a KPI gate: {metric key: threshold}, checked at start-up (it is applied only after the whole run)
GATE = rule("phase.gate", optional(((lambda x: isinstance(x, dict) and all(is_threshold(v) for v in x.values())),
                                    "a mapping of metric keys to thresholds like '>=0.3', '<=20', '<0.05'")))
NATIVE_KERNEL = rule("phase.native_kernel", ((lambda x: isinstance(x, bool) or x == "auto"), "true, false or auto"))
# the dashboard verdict's thresholds (phase=compare and phase=codegen); all are read only after the whole run
THRESHOLDS = [
    rule("phase.thresholds.alpha", number(0, 1, lo_open=True)),
    rule("phase.thresholds.failure_p", number(0, 1, lo_open=True)),
    rule("phase.thresholds.min_delta_pass1", optional(number())),
    *[rule(f"phase.thresholds.min_delta_pass{k}", optional(number())) for k in range(2, 101)],  # absent: skipped
    rule("phase.thresholds.min_n", integer(1)),
    *[rule(f"phase.thresholds.{k}", optional(number(0, lo_open=True)))
      for k in ("max_latency_ms", "max_peak_memory_mb", "min_throughput_tokens_per_sec", "max_latency_ratio",
                "max_memory_ratio", "min_throughput_ratio")],
    *[rule(f"phase.thresholds.min_pass_at_{k}", optional(number(0, 1))) for k in range(1, 101)],  # absent: skipped
    GATE,
]

BITNET = [
    rule("phase.sparsity_threshold", number(0, 1.5)),
    rule("phase.per_channel", boolean()),
    rule("phase.activation_bits", optional(integer(2, 8))),
    rule("phase.activation_scale", one_of("token", "static")),
    rule("phase.calibration_samples", integer(1)),
    rule("phase.calibration_percentile", number(0.5, 1.0)),
    rule("phase.calibration_batch_size", integer(1)),
    # a list: a bare string was iterated letter by letter ('lm_head' -> l, m, _, ...), preserving nothing
    rule("phase.preserved_layers", ((lambda x: isinstance(x, list) and all(isinstance(v, str) and v for v in x)),
                                    "a list of fnmatch patterns of module names, e.g. [embed, lm_head, '*norm']")),
    rule("phase.preserved_dtype", one_of("float16", "bfloat16", "float32")),
    rule("phase.packing", one_of("base3", "2bit")),
    rule("phase.val_rows", integer(1)),
    rule("phase.eval_examples", integer(1)),
    rule("phase.gen_tokens", integer(1)),
    rule("phase.min_compression", number(0)),
    rule("phase.max_accuracy_drop", number(0)),
    rule("phase.fine_tune", one_of("auto", "always", "never")),
    rule("phase.fine_tune_epochs", integer(0)),
    rule("phase.fine_tune_lr", number(0, 10, lo_open=True)),
    rule("phase.fine_tune_steps_per_epoch", integer(1)),
    rule("phase.gradient_clip", number(0)),
    rule("phase.speed_repeats", integer(1)),
    NATIVE_KERNEL,
]

CODEGEN = [
    rule("phase.benchmark", one_of("humaneval", "mbpp")),
    rule("phase.num_problems", optional(integer(1))),
    rule("phase.n_samples", integer(1)),
    PASS_K,
    rule("phase.temperature", number(0)),
    rule("phase.top_p", number(0, 1, lo_open=True)),
    rule("phase.max_new_tokens", integer(1)),
    rule("phase.context_tokens", optional(integer(16))),
    rule("phase.checkpoint", optional((lambda x: isinstance(x, str) and Path(x).is_dir(),
                                       "an existing Cognate checkpoint directory"))),
    rule("phase.max_epochs", integer(0)),
    rule("phase.steps_per_epoch", integer(1)),
    rule("phase.val_rows", integer(1)),
    rule("phase.gradient_clip", number(0)),
    rule("phase.timeout_s", number(0, lo_open=True)),
    rule("phase.memory_mb", integer(64)),
    rule("phase.workers", optional(integer(1))),
    rule("phase.sandbox", one_of("bwrap", "process")),
    rule("phase.self_check", boolean()),
    rule("phase.latency_tokens", integer(0)),
    rule("phase.latency_rounds", integer(1)),
    rule("phase.n_resamples", integer(100)),
    rule("baseline.name", one_of("gpt2_scratch", "gpt2")),
    # Muon takes nn.Linear matrices only (optim.split_muon); GPT-2's are transformers' Conv1D: it would train none
    rule("baseline.optimizer.name", (lambda x: x in ("adamw", "grokfast_adamw"),
                                     "adamw or grokfast_adamw (the GPT-2 baseline's matrices are transformers "
                                     "Conv1D, not nn.Linear: Muon would train none of them)")),
    *THRESHOLDS,
]


def checkpoint_max_seq_len(path) -> int | None:
    """A Cognate checkpoint's ``max_seq_len`` read from its ``config.json`` alone (no torch: start-up stays fast);
    None when it cannot be read (``load_model`` then says what is wrong with the checkpoint)."""
    try:
        return int(json.loads((Path(path) / "config.json").read_text())["model"]["max_seq_len"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_codegen_budget(cfg) -> None:
    """``phase.max_new_tokens`` below the context every model is evaluated with (``phases.codegen.eval_context``: the
    smallest of ``model.max_seq_len``, ``phase.context_tokens`` and a ``phase.checkpoint``'s own max_seq_len). Sampling
    keeps the last ``context - max_new_tokens`` prompt tokens, so a budget that fills the context leaves no room for
    the prompt; the phase found it only when it sampled, as a traceback after training, saving and publishing."""
    p = cfg.phase
    budget = int(p.max_new_tokens)
    limits = {"model.max_seq_len": (int(select(cfg, "model.max_seq_len")), "raise model.max_seq_len")}
    if p.get("context_tokens"):
        limits["phase.context_tokens"] = (int(p.context_tokens), "raise phase.context_tokens")
    if p.get("checkpoint") and (own := checkpoint_max_seq_len(p.checkpoint)):
        limits["phase.checkpoint's max_seq_len"] = (own, "use a checkpoint with a longer one")
    key, (ctx, fix) = min(limits.items(), key=lambda kv: kv[1][0])
    if budget >= ctx:
        raise ConfigError(f"phase.max_new_tokens must be below the context the models are evaluated with ({key} = "
                          f"{ctx} tokens), got {budget}: lower phase.max_new_tokens or {fix}")


def _task_weights(x) -> bool:
    """A mapping of synthetic task names to numbers >= 0 (a stage's mix, a model's dataset weights)."""
    return isinstance(x, dict) and all(t in synthetic.GENERATORS and number(0)[0](w) for t, w in x.items())


TASKS = f"a mapping of tasks ({', '.join(synthetic.GENERATORS)}) to weights >= 0"


def validate_curriculum(stages) -> None:
    """Cognate's ``phase.curriculum``: a non-empty list of stages, each ``{epochs: int >= 1, mix: {task: weight >= 0}}``
    with some weight > 0. A ConfigError naming the stage and key; run at start-up as the rule below (and by the
    pipeline's check of each step), so a wrong type never reaches the phase (a traceback, a run dir left behind)."""
    example = "e.g. [{epochs: 1, mix: {plain_text: 1.0, arithmetic: 0.3}}]"
    if not isinstance(stages, list) or not stages:
        raise ConfigError(f"phase.curriculum must be a non-empty list of stages {{epochs: N, mix: {{task: weight}}}}, "
                          f"{example}; got {stages!r}")
    for i, st in enumerate(stages):
        if not isinstance(st, dict) or "epochs" not in st or "mix" not in st:
            raise ConfigError(f"phase.curriculum[{i}] needs 'epochs' and 'mix' ({example}), got {st!r}")
        if not integer(1)[0](st["epochs"]):
            raise ConfigError(f"phase.curriculum[{i}].epochs must be an integer >= 1, got {st['epochs']!r}")
        mix = st["mix"]
        if not _task_weights(mix) or not any(w > 0 for w in mix.values()):
            raise ConfigError(f"phase.curriculum[{i}].mix must be {TASKS}, not all 0, got {mix!r}")


CKPT_PATH = rule("ckpt_path", ((lambda x: x is None or x is False or (isinstance(x, str) and x != "")),
                               "null (auto), 'last', 'fresh' or the path of a .ckpt file"))

COGNATE = [
    rule("phase.curriculum", ((lambda x: validate_curriculum(x) is None), "a list of stages")),  # raises its own line
    rule("model.dataset_weights", (_task_weights, TASKS)),
    CKPT_PATH,
    rule("phase.max_epochs", integer(1)),
    rule("phase.steps_per_epoch", integer(1)),
    rule("phase.val_rows", integer(2)),   # the ablations pair rows (a paired bootstrap needs 2)
    rule("phase.eval_examples", integer(0)),
    rule("phase.gen_tokens", integer(1)),
    rule("phase.early_stopping_patience", integer(1)),
    rule("phase.on_nonfinite", one_of("stop", "skip")),
    rule("phase.gradient_clip", number(0)),
    rule("phase.inject_nan_at_step", optional(integer(0))),
    rule("phase.recall_rows", integer(2)),
    rule("phase.halting_rows", integer(2)),
    rule("model.ponder_prior", number(0, 1, lo_open=True, hi_open=True)),
    rule("model.no_grad_steps", integer(0)),
    rule("model.ltm_chunk", optional(integer(1))),
]

COMPARE = [
    rule("phase.n_resamples", integer(100)),
    *THRESHOLDS,
]

EVAL = [
    NATIVE_KERNEL,
    rule("phase.recursive", one_of("auto", True, False)),
    rule("phase.max_inner_steps", integer(1, 64)),
    rule("phase.refine_hidden", optional(integer(1))),
    rule("phase.chunk_width", integer(1)),
    rule("phase.surgery_tolerance", number(0)),
    rule("phase.finetune_steps", optional(integer(0))),
    rule("phase.finetune_lr", optional(number(0, 10, lo_open=True))),
    rule("phase.eval_examples", integer(1)),
    rule("phase.choice_examples", optional(integer(1))),
    rule("phase.val_rows", integer(1)),
    rule("phase.gen_tokens", integer(1)),
    rule("phase.pass_k_samples", integer(0)),
    PASS_K,
    GATE,
    rule("phase.finetune_mix", ((lambda x: isinstance(x, dict) and len(x) > 0 and all(number(0)[0](v) for v in x.values())
                                 and sum(x.values()) > 0), "a non-empty mapping of task names to weights >= 0, "
                                                           "not all 0, e.g. {arithmetic: 1.0, choice: 0.5}")),
    rule("phase.hf_datasets", optional(((lambda x: isinstance(x, list) and set(x) <= {"gsm8k", "arc", "piqa"}),
                                        "a list of gsm8k, arc, piqa, e.g. [gsm8k]"))),
    rule("phase.temperature", number(0, 10, lo_open=True)),
    rule("phase.latency_tokens", integer(0)),
    rule("phase.batch_size", integer(1)),
    rule("phase.save_model", boolean()),
]

EVOMERGE = [
    rule("phase.population_size", integer(2)),
    rule("phase.generations", integer(1)),
    rule("phase.elite_count", integer(0)),
    rule("phase.mutation_rate", number(0, 1)),
    rule("phase.mutation_sigma", number(0)),
    rule("phase.crossover_rate", number(0, 1)),
    rule("phase.tournament_size", integer(1)),
    rule("phase.early_stopping_patience", integer(1)),
    rule("phase.early_stopping_threshold", number(0)),
    # the mapping itself first: null or an unknown term would otherwise fail only inside the run, with a traceback
    rule("phase.fitness_weights", ((lambda x: isinstance(x, dict) and set(x) <= set(fitness.DEFAULT_WEIGHTS)),
                                   f"a mapping of some of {sorted(fitness.DEFAULT_WEIGHTS)} to numbers >= 0")),
    rule("phase.fitness_weights.perplexity", number(0)),
    rule("phase.fitness_weights.accuracy", number(0)),
    rule("phase.fitness_weights.speed", number(0)),
    rule("phase.fitness_weights.memory", number(0)),
    rule("phase.eval.rows", integer(1)),
    rule("phase.eval.seq_len", integer(8)),
    rule("phase.eval.choice_examples", integer(0)),
    rule("phase.eval.gsm8k_examples", integer(0)),
    rule("phase.eval.gen_tokens", integer(1)),
    rule("phase.eval.speed_seq_len", integer(1)),
    rule("phase.eval.speed_batch", integer(1)),
    rule("phase.eval.speed_repeats", integer(1)),
    rule("phase.eval.test_rows", integer(2)),
    rule("phase.eval.test_choice_examples", integer(0)),
    rule("phase.eval.bootstrap_resamples", integer(100)),
    rule("phase.speed_term", one_of(*fitness.SPEED_MODES)),
    rule("phase.dare_rescale", one_of(*RESCALES)),
    rule("phase.improvement_threshold", number()),
]

GROKKING_TASK = [
    rule("phase.modulus", integer(3)),
    rule("phase.operation", one_of(*OPERATIONS)),
    rule("phase.train_fraction", number(0, 1, lo_open=True)),
    rule("phase.model", one_of(*MODELS)),
    rule("phase.d_model", integer(8)),
    rule("phase.n_layers", integer(1)),
    rule("phase.n_heads", integer(1)),
    rule("phase.ffn_hidden", integer(1)),
    rule("phase.batch_size", integer(0)),
    rule("phase.max_steps", integer(1)),
    rule("phase.eval_every", integer(1)),
]

# start-up checks of grokking's top-level keys (null = the task's value); its resolved task is checked in its run()
GROKKING = [rule(k, optional((pred, desc))) for k, pred, desc in GROKKING_TASK] + [
    rule("phase.target_accuracy", number(0, 1, lo_open=True)),
    rule("phase.stop_at_target", boolean()),
    rule("phase.task_optimizer_settings", boolean()),
]

def pipeline_sets(phase: str) -> tuple[str, ...]:
    """The keys the pipeline itself sets for a step of ``phase``: one Cognate step per entry of ``phase.models``
    (``model=``), the phase, where each step reads and writes (``paths.artifacts``, ``paths.run_dir``), and what each
    eval step evaluates. A ``phase.overrides.<phase>`` entry setting one of them would train ``model=m2`` under
    every Cognate step's name, or do nothing for the other phases."""
    return ("model", "phase", "paths.artifacts", "paths.run_dir",
            *(("phase.checkpoint", "phase.stage") if phase == "eval" else ()))


def override_key(override: str) -> str:
    """The key a command-line override sets: '+model=m2' -> 'model', '~phase.x' -> 'phase.x'."""
    return override.lstrip("+~").split("=", 1)[0].strip()


def _step_overrides(phase: str) -> Rule:
    reserved = pipeline_sets(phase)

    def ok(x) -> bool:
        return isinstance(x, list) and all(isinstance(o, str) and override_key(o) not in reserved for o in x)

    return rule(f"phase.overrides.{phase}", (ok, f"a list of overrides that leave what the pipeline sets alone "
                                                f"({', '.join(k + '=' for k in reserved)}); the Cognate models "
                                                f"are chosen with phase.models=[...]"))


PIPELINE = [CKPT_PATH, rule("phase.run_name", ((lambda x: isinstance(x, str) and x.replace("-", "").replace("_", "").isalnum()),
                                 "a name of letters, digits, '-' and '_'")),
         rule("phase.overlap_train_draws", integer(0)), rule("phase.overlap_heldout", integer(1)),
         # checked here, before Lightning loads, as well as by the phase
         rule("phase.phases", ((lambda x: isinstance(x, list)
                                and set(x) <= {"cognate", "evomerge", "quietstar", "bitnet", "eval"}),
                               "a list of cognate, evomerge, quietstar, bitnet, eval")),
         rule("phase.models", ((lambda x: isinstance(x, list) and set(x) <= {"m1", "m2", "m3"}),
                               "a list of m1, m2, m3")),
         *[_step_overrides(p) for p in ("cognate", "evomerge", "quietstar", "bitnet", "eval")]]

QUIETSTAR = [
    CKPT_PATH,
    rule("step", optional(one_of("baking", "rl", "both"))),
    rule("phase.step", one_of("baking", "rl", "both")),
    rule("phase.gradient_clip", number(0)),
    rule("phase.on_nonfinite", one_of("stop", "skip")),
    rule("phase.inject_nan_at_step", optional(integer(0))),
    *[rule(f"phase.baking.{k}", integer(1)) for k in ("epochs", "steps_per_epoch", "batch_size", "examples_per_strategy",
                                                       "val_per_strategy", "sample_tokens", "usage_tokens")],
    rule("phase.baking.sampled_fraction", number(0, 1)),
    rule("phase.baking.prompt_position", one_of("answer", "start")),
    rule("phase.baking.control", one_of("shuffled", "none")),
    rule("phase.baking.temperature", number(0)),
    rule("phase.baking.convergence_threshold", number(0, 1)),
    *[rule(f"phase.rl.{k}", integer(1)) for k in ("num_episodes", "thought_length", "n_true", "context_len",
                                                   "thought_positions", "batch_size", "seq_len", "anti_theater_every",
                                                   "eval_windows", "eval_examples", "gen_tokens", "inference_tokens")],
    rule("phase.rl.num_thoughts", integer(2)),
    rule("phase.rl.temperature", number(0, lo_open=True)),
    rule("phase.rl.mixing_init_weight", number()),
    *[rule(f"phase.{s}.optimizer.lr", number(0, 10, lo_open=True)) for s in ("baking", "rl")],
    *[rule(f"phase.{s}.optimizer.kl_coef", number(0)) for s in ("baking", "rl")],
]

SCALING = [
    rule("phase.variant", one_of(*FRAMEWORKS)),
    rule("phase.train.steps", integer(1)),
    rule("phase.train.warmup_steps", integer(0)),
    rule("phase.train.batch_size", integer(1)),
    rule("phase.train.seq_len", integer(8, 8192)),
    rule("phase.train.lr", number(0, 10, lo_open=True)),
    rule("phase.train.eval_every", integer(1)),
    rule("phase.train.val_rows", integer(1)),
    rule("phase.train.gradient_clip", number(0)),
    rule("phase.fit_params", one_of("total", "non_embedding")),
    rule("phase.check.seq_len", integer(2, 512)),
    rule("phase.sandbox", one_of("bwrap", "process")),
    rule("phase.limits.timeout_s", number(1)),
    rule("phase.limits.memory_mb", optional(integer(512))),
    rule("phase.trust.heldout_rows", integer(16)),
    rule("phase.trust.probe_rows", integer(1)),
    rule("phase.trust.loss_floor", number(0)),
    rule("phase.fitness.reference", optional(one_of("baseline"))),
    rule("phase.fitness.tolerance", number(0)),
    rule("phase.cache", boolean()),
]

# checks across keys, after the phase's rules (a rule sees one key's value): each takes the composed config and raises
# one ConfigError; ``main.check_start`` runs them before Lightning loads
PHASE_CHECKS: dict[str, list[Callable]] = {"codegen": [check_codegen_budget]}
PHASE_RULES: dict[str, list[Rule]] = {"bitnet": BITNET, "codegen": CODEGEN, "cognate": COGNATE, "compare": COMPARE,
                                      "eval": EVAL, "evomerge": EVOMERGE, "grokking": GROKKING, "pipeline": PIPELINE,
                                      "quietstar": QUIETSTAR, "scaling": SCALING}
