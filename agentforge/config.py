"""Start-up validation of the composed config: every rule names its key, so a bad value fails in the
first second with one line (``model.n_layers must be an integer >= 1, got 0``).

The shared groups are checked here; each phase's own rules are in ``agentforge/phases/rules.py`` (``PHASE_RULES``).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from agentforge.errors import ConfigError

Rule = tuple[str, Callable[[Any], bool], str]  # (dotted key, predicate, "what it must be")


def _num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def integer(lo: int | None = None, hi: int | None = None) -> tuple[Callable[[Any], bool], str]:
    desc = "an integer" + (f" >= {lo}" if lo is not None else "") + (f" <= {hi}" if hi is not None else "")
    return (lambda x: isinstance(x, int) and not isinstance(x, bool) and (lo is None or x >= lo)
            and (hi is None or x <= hi)), desc


def number(lo: float | None = None, hi: float | None = None, lo_open: bool = False,
           hi_open: bool = False) -> tuple[Callable, str]:
    op, hi_op = (">" if lo_open else ">="), ("<" if hi_open else "<=")
    desc = "a number" + (f" {op} {lo}" if lo is not None else "") + (f" {hi_op} {hi}" if hi is not None else "")
    return (lambda x: _num(x) and (lo is None or (x > lo if lo_open else x >= lo))
            and (hi is None or (x < hi if hi_open else x <= hi))), desc


def one_of(*choices) -> tuple[Callable, str]:
    return (lambda x: x in choices), f"one of {list(choices)}"


def boolean() -> tuple[Callable, str]:
    return (lambda x: isinstance(x, bool)), "true or false"


def optional(check: tuple[Callable, str]) -> tuple[Callable, str]:
    pred, desc = check
    return (lambda x: x is None or pred(x)), f"null or {desc}"


def rule(key: str, check: tuple[Callable, str]) -> Rule:
    return key, check[0], check[1]


_KNOWN_STRATEGIES = {"auto", "ddp", "ddp_spawn", "ddp_fork", "ddp_notebook", "ddp_find_unused_parameters_true",
                     "ddp_find_unused_parameters_false", "fsdp", "single_device", "deepspeed"}


def _strategy(x) -> bool:
    """A Lightning strategy name: the common ones without importing Lightning (start-up checks stay fast), any other
    looked up in Lightning's registry."""
    if not isinstance(x, str):
        return False
    if x in _KNOWN_STRATEGIES:
        return True
    from lightning.pytorch.strategies import StrategyRegistry

    return x in StrategyRegistry.available_strategies()


def _devices(x) -> bool:
    """Lightning's ``devices``: a count >= 1, -1 (all), "auto", or a list of device indices."""
    if isinstance(x, list):
        return bool(x) and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in x)
    return x == "auto" or (isinstance(x, int) and not isinstance(x, bool) and (x >= 1 or x == -1))


SHARED_RULES: list[Rule] = [
    rule("seed", integer(0)),
    rule("hardware.accelerator", one_of("auto", "cpu", "gpu", "cuda", "mps")),
    rule("hardware.precision", one_of("auto", "32-true", "32", "bf16-mixed", "16-mixed", "bf16-true", "64-true")),
    rule("hardware.compile", (lambda x: isinstance(x, bool) or x in ("inductor", "aot_eager", "eager", "cudagraphs"),
                              "true, false or a torch.compile backend (inductor, aot_eager, eager, cudagraphs)")),
    rule("hardware.cuda_graphs", boolean()),
    rule("hardware.eval_device", one_of("fit", "cpu")),
    rule("hardware.threads", optional(integer(1))),
    rule("hardware.devices", (_devices, "a device count >= 1, -1 (all), 'auto' or a list of device indices")),
    rule("hardware.strategy", (_strategy, "a Lightning strategy name (auto, ddp, ddp_spawn, fsdp, ...)")),
    rule("hardware.deterministic", (lambda x: isinstance(x, bool) or x == "warn", "true, false or 'warn'")),
    rule("logger.name", one_of("wandb", "csv", "tensorboard", "none")),
    rule("data.seq_len", integer(8, 8192)),
    rule("data.batch_size", integer(1)),
    rule("data.eval_paths", (lambda x: x is None or (isinstance(x, dict) and set(x) <= {"gsm8k", "arc", "piqa"}
                                                     and all(v is None or isinstance(v, str) for v in x.values())),
                             "a mapping of gsm8k / arc / piqa to a JSONL file path (or null)")),
    rule("optimizer.lr", number(0, 10, lo_open=True)),
    rule("optimizer.weight_decay", number(0, 1)),
    rule("optimizer.warmup_steps", integer(0)),
    rule("optimizer.warmup_from_zero", boolean()),
    rule("optimizer.weight_decay_scope", one_of("matrices", "all")),
    rule("optimizer.muon_impl", one_of("grouped", "torch")),
    rule("optimizer.adjust_lr_fn", optional(one_of("original", "match_rms_adamw"))),
    rule("optimizer.min_lr_ratio", number(0, 1)),
    rule("optimizer.kl_coef", number(0)),
    rule("optimizer.betas", (lambda x: isinstance(x, list) and len(x) == 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1 for v in x),
        "two numbers in [0, 1), e.g. [0.9, 0.95] (AdamW's beta1, beta2)")),
]

MODEL_RULES: list[Rule] = [
    rule("model.model_id", integer(1)),
    rule("model.d_model", integer(8)),
    rule("model.n_layers", integer(1)),
    rule("model.n_heads", integer(1)),
    rule("model.ffn_hidden", integer(1)),
    rule("model.window", integer(1)),
    rule("model.max_steps", integer(1, 64)),
    rule("model.act_threshold", number(0, 1, lo_open=True)),
    rule("model.ponder_cost", number(0)),
    rule("model.deep_supervision", number(0)),
    rule("model.ltm_slots", integer(1)),
    rule("model.ltm_key_dim", integer(1)),
    rule("model.surprise_threshold", number(0)),
    rule("model.vocab_size", integer(1)),
    rule("model.max_seq_len", integer(1, 1 << 20)),   # the RoPE table is built to it: 10^12 exhausts memory
    rule("model.rope_base", number(0, lo_open=True)),
    rule("model.ponder_prior", number(0, 1, lo_open=True, hi_open=True)),  # 1: no mass past step 1, KL infinite
    rule("model.halt_bias_init", optional(number())),
    rule("model.no_grad_steps", integer(0)),
    rule("model.ltm_max_writes", integer(0)),
    rule("model.ltm_chunk", optional(integer(1))),
    rule("model.tie_embeddings", boolean()),
    rule("model.memory", boolean()),
    rule("model.ltm_gate_norm", boolean()),
]

_MISSING = object()


def select(cfg: DictConfig, key: str):
    try:
        value = OmegaConf.select(cfg, key, default=_MISSING, throw_on_missing=True)
    except Exception as exc:  # interpolation errors, missing mandatory values
        raise ConfigError(f"{key}: cannot be resolved ({exc})") from None
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=True)
    return value


def check(cfg: DictConfig, rules: Iterable[Rule]) -> None:
    """Raise ConfigError for the first rule that fails; keys absent from cfg are skipped."""
    for key, pred, desc in rules:
        value = select(cfg, key)
        if value is _MISSING:
            continue
        if not pred(value):
            raise ConfigError(f"{key} must be {desc}, got {value!r}")


def validate(cfg: DictConfig, phase_rules: Iterable[Rule] = ()) -> None:
    """Check the shared groups, the model (when the phase uses one) and the phase's own rules."""
    check(cfg, SHARED_RULES)
    if select(cfg, "model") is not _MISSING:
        _check_model(cfg)
    check(cfg, phase_rules)


def _check_model(cfg: DictConfig) -> None:
    check(cfg, MODEL_RULES)
    _check_heads(select(cfg, "model.d_model"), select(cfg, "model.n_heads"))


def _check_heads(d, h) -> None:
    if d is not _MISSING and h is not _MISSING and (d % h or (d // h) % 2):
        raise ConfigError(f"model.d_model ({d}) must split into model.n_heads ({h}) heads of even size")


def check_model_dict(model: dict) -> None:
    """The model rules on a plain dict (a checkpoint's ``config.json`` "model"; read as data, never resolved):
    ConfigError naming ``model.<key>`` for the first bad value, so a hand-edited or foreign checkpoint fails in one
    line instead of deep inside PyTorch, or worse, loads."""
    if not isinstance(model, dict):
        raise ConfigError(f"model must be a mapping of config keys, got {type(model).__name__}")
    for key, pred, desc in MODEL_RULES:
        value = model.get(key.removeprefix("model."), _MISSING)
        if value is not _MISSING and not pred(value):
            raise ConfigError(f"{key} must be {desc}, got {value!r}")
    _check_heads(model.get("d_model", _MISSING), model.get("n_heads", _MISSING))


# the top-level shortcuts (conf/config.yaml) and the phases that read them
SHORTCUT_READERS = {"checkpoint": ("eval",), "stage": ("eval",), "stages": ("compare",), "step": ("quietstar",)}
OWN_MESSAGE = {("compare", "stage"), ("eval", "stages")}   # those phases name the shortcut they take instead


def check_shortcuts(cfg: DictConfig) -> None:
    """A shortcut the chosen phase does not read is refused: ``step=rl`` with ``phase=cognate`` ran, ignored. The
    pipeline would hand it to every step (its Quiet-STaR step would skip baking), so it refuses them all."""
    phase = str(cfg.phase.name)
    for key, readers in SHORTCUT_READERS.items():
        if cfg.get(key) is None or phase in readers or (phase, key) in OWN_MESSAGE:
            continue
        where = ("runs every phase in full (a step's own settings go in phase.overrides.<phase>=[...])"
                 if phase == "pipeline" else f"does not read it (phase={' or '.join(readers)} does)")
        raise ConfigError(f"{key}={cfg.get(key)}: phase={phase} {where}; drop it, or run that phase")
