"""Optimizers and their schedules. ``build_optimizer`` is the one entry point the training code calls.

``optimizer.name`` picks a builder: ``adamw`` (plain torch AdamW), ``grokfast_adamw`` (AdamW + Grokfast),
``muon`` (Muon + AdamW, no Grokfast) and ``muon_grokfast`` (Muon + AdamW + Grokfast + QK-clip); the last
three are all ``MuonGrokfast`` with parts switched off, so the comparisons differ only in those parts.

``optimizer.weight_decay_mode``: ``decoupled`` (default; AdamW / Muon shrink the weights directly) or
``coupled`` (L2 added to the gradient, ``g + wd*p``, exactly as ``torch.optim.Adam(weight_decay=wd)``;
``adamw`` then *is* ``torch.optim.Adam``). Gradient clipping: use ``clip_grad_norm_`` below (or
Lightning's ``gradient_clip_val`` with ``LMModule``), which runs the Grokfast filter first.

``optimizer.weight_decay_scope``: ``matrices`` (default; decay on 2-D non-embedding weights only, never
embeddings — any ``nn.Embedding``'s weight, whatever its name — norms or biases) or ``all`` (every trainable
parameter, as ``torch.optim.Adam(model.parameters(), weight_decay=...)`` in the Grokfast reference,
github.com/ironjr/grokfast main.py).
``optimizer.warmup_from_zero``: false (default; warmup factors (step+1)/warmup) or true (step/warmup, the
reference's ``LambdaLR(lambda update: 1 if update > 10 else update / 10)``: the first update runs at lr 0);
see ``schedule.warmup_cosine``.
"""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

from agentforge.errors import ConfigError
from agentforge.optim.muon_grokfast import MuonGrokfast
from agentforge.optim.schedule import warmup_cosine

SCOPES = ("matrices", "all")


def embedding_ids(model: nn.Module) -> set[int]:
    """ids of the weights of the model's ``nn.Embedding`` modules (an output head tied to one is the same tensor), the
    one definition of "embedding" both splits use: by type, not by name (the HF GPT-2's ``wte`` and ``wpe`` have no
    "embed" in their names)."""
    return {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}


def split_decay(model: nn.Module, scope: str = "matrices") -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(parameters that get weight decay, those that do not), each trainable parameter once (tied ones too).

    ``scope="matrices"``: decay on 2-D weights that are not an ``nn.Embedding``'s (``embedding_ids``; a head tied
    to one included); embeddings, norms and biases get none. ``scope="all"``: decay on every parameter, as
    ``torch.optim.Adam(model.parameters(), weight_decay=wd)`` in the Grokfast reference (github.com/ironjr/grokfast
    main.py); the second list is then empty."""
    _check_scope(scope)
    embed_ids = embedding_ids(model)
    decay, no_decay = [], []
    for p in model.parameters():   # deduplicated: a tied weight appears once
        if not p.requires_grad:
            continue
        (decay if scope == "all" or (p.ndim >= 2 and id(p) not in embed_ids) else no_decay).append(p)
    return decay, no_decay


def _check_scope(scope: str) -> None:
    if scope not in SCOPES:
        raise ConfigError(f"optimizer.weight_decay_scope must be one of {list(SCOPES)}, got {scope!r}")


def split_muon(model: nn.Module, scope: str = "matrices") -> tuple[list[nn.Parameter], list[nn.Parameter],
                                                                   list[nn.Parameter]]:
    """(Muon: 2-D weights of hidden nn.Linear layers, AdamW with decay, AdamW without decay).

    Muon is for hidden matrices only (Jordan 2024): embeddings, output heads (any Linear whose name ends
    in ``head``, e.g. ``lm_head``, ``halt_head``), vectors-as-matrices (a dimension of 1), norms and
    biases go to AdamW; weight decay skips embeddings, norms and biases with ``scope="matrices"``, and
    skips nothing with ``scope="all"`` (every AdamW parameter decays, as in the Grokfast reference's
    ``torch.optim.Adam(model.parameters(), weight_decay=...)``, github.com/ironjr/grokfast main.py).

    Only ``nn.Linear`` layers count: the HF GPT-2 baseline's matrices are ``transformers``' ``Conv1D``, so on it Muon
    would route no matrix and train nothing (all would be AdamW's); the codegen phase's rules refuse
    ``baseline.optimizer.name`` muon / muon_grokfast (``phases/rules.py``).
    """
    _check_scope(scope)
    muon_ids = set()
    for mod_name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and not mod_name.rsplit(".", 1)[-1].endswith("head"):
            w = mod.weight
            if w.requires_grad and w.ndim == 2 and min(w.shape) > 1:
                muon_ids.add(id(w))
    embed_ids = embedding_ids(model)
    muon, decay, no_decay = [], [], []
    for p in model.parameters():  # deduplicated, so a tied lm_head/embedding appears once
        if not p.requires_grad:
            continue
        if id(p) in muon_ids and id(p) not in embed_ids:
            muon.append(p)
        elif scope == "all" or (p.ndim >= 2 and id(p) not in embed_ids):
            decay.append(p)
        else:
            no_decay.append(p)
    return muon, decay, no_decay


def build_adamw(model: nn.Module, cfg: dict) -> torch.optim.Optimizer:
    """torch AdamW (decoupled decay), or torch Adam with L2 (``weight_decay_mode: coupled``), decaying the
    parameters ``weight_decay_scope`` names (``split_decay``)."""
    decay, no_decay = split_decay(model, cfg.get("weight_decay_scope", "matrices"))
    cls = torch.optim.Adam if cfg.get("weight_decay_mode", "decoupled") == "coupled" else torch.optim.AdamW
    return cls([{"params": decay, "weight_decay": cfg["weight_decay"]},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=cfg["lr"], betas=tuple(cfg.get("betas", (0.9, 0.95))))


def _groups(params_wd: list[tuple[list, float]]) -> list[dict]:
    return [{"params": ps, "weight_decay": wd} for ps, wd in params_wd if ps]


def build_muon_grokfast(model: nn.Module, cfg: dict, *, use_muon: bool = True, use_grokfast: bool = True,
                        use_qk_clip: bool = True) -> MuonGrokfast:
    wd, scope = float(cfg["weight_decay"]), cfg.get("weight_decay_scope", "matrices")
    if use_muon:
        muon, decay, no_decay = split_muon(model, scope)
    else:
        (decay, no_decay), muon = split_decay(model, scope), []
    attn = getattr(model, "attention_modules", None)
    return MuonGrokfast(
        _groups([(muon, wd)]), _groups([(decay, wd), (no_decay, 0.0)]),
        lr=float(cfg["lr"]), adamw_lr=cfg.get("adamw_lr"), weight_decay=wd,
        momentum=float(cfg.get("momentum", 0.95)), nesterov=bool(cfg.get("nesterov", True)),
        ns_steps=int(cfg.get("ns_steps", 5)), adjust_lr_fn=cfg.get("adjust_lr_fn", "match_rms_adamw"),
        betas=tuple(cfg.get("betas", (0.9, 0.95))),
        grokfast=str(cfg.get("grokfast", "ema")) if use_grokfast else "none",
        grokfast_alpha=float(cfg.get("grokfast_alpha", 0.98)),
        grokfast_lambda=float(cfg.get("grokfast_lambda", 0.0)) if use_grokfast else 0.0,
        grokfast_window=int(cfg.get("grokfast_window", 100)),
        qk_clip=cfg.get("qk_clip") if use_qk_clip else None,
        weight_decay_mode=str(cfg.get("weight_decay_mode", "decoupled")),
        muon_impl=str(cfg.get("muon_impl", "grouped")),
        attention_modules=attn() if callable(attn) and use_qk_clip else ())


BUILDERS = {
    "adamw": build_adamw,
    "grokfast_adamw": partial(build_muon_grokfast, use_muon=False, use_qk_clip=False),
    "muon": partial(build_muon_grokfast, use_grokfast=False),
    "muon_grokfast": build_muon_grokfast,
}


def check_config(cfg: dict) -> None:
    """One-line ConfigError naming the optimizer.* key that is wrong (the shared keys are checked at
    start-up by agentforge.config; these are the Muon/Grokfast/QK-clip ones)."""
    def bad(key, want):
        raise ConfigError(f"optimizer.{key} must be {want}, got {cfg.get(key)!r}")

    def num(x):
        return isinstance(x, (int, float)) and not isinstance(x, bool)

    if cfg.get("name") not in BUILDERS:
        bad("name", f"one of {sorted(BUILDERS)}")
    if cfg.get("weight_decay_mode", "decoupled") not in ("decoupled", "coupled"):
        bad("weight_decay_mode", "one of ['decoupled', 'coupled']")
    if cfg.get("weight_decay_scope", "matrices") not in SCOPES:
        bad("weight_decay_scope", f"one of {list(SCOPES)}")
    if not isinstance(cfg.get("warmup_from_zero", False), bool):
        bad("warmup_from_zero", "true or false")
    if "grokfast" in cfg and cfg["grokfast"] not in ("ema", "ma", "none"):
        bad("grokfast", "one of ['ema', 'ma', 'none']")
    if "grokfast_alpha" in cfg and not (num(cfg["grokfast_alpha"]) and 0 <= cfg["grokfast_alpha"] < 1):
        bad("grokfast_alpha", "a number in [0, 1)")
    if "grokfast_lambda" in cfg and not (num(cfg["grokfast_lambda"]) and cfg["grokfast_lambda"] >= 0):
        bad("grokfast_lambda", "a number >= 0")
    if "grokfast_window" in cfg and not (isinstance(cfg["grokfast_window"], int) and cfg["grokfast_window"] >= 1):
        bad("grokfast_window", "an integer >= 1")
    if cfg.get("qk_clip") is not None and not (num(cfg["qk_clip"]) and cfg["qk_clip"] > 0):
        bad("qk_clip", "null or a number > 0")
    if "momentum" in cfg and not (num(cfg["momentum"]) and 0 <= cfg["momentum"] < 1):
        bad("momentum", "a number in [0, 1)")
    if "ns_steps" in cfg and not (isinstance(cfg["ns_steps"], int) and 1 <= cfg["ns_steps"] < 100):
        bad("ns_steps", "an integer in [1, 99]")
    if cfg.get("adjust_lr_fn") not in (None, "original", "match_rms_adamw"):
        bad("adjust_lr_fn", "null, original or match_rms_adamw")
    if cfg.get("muon_impl", "grouped") not in ("grouped", "torch"):
        bad("muon_impl", "one of ['grouped', 'torch']")
    if cfg.get("adamw_lr") is not None and not (num(cfg["adamw_lr"]) and cfg["adamw_lr"] > 0):
        bad("adamw_lr", "null or a number > 0")


def clip_grad_norm_(optimizer, parameters, max_norm: float) -> torch.Tensor:
    """Clip the gradient the optimizer will use: the Grokfast filter runs first, on the raw gradients
    (its EMA state sees them unclipped, as in the reference), then ``torch.nn.utils.clip_grad_norm_``
    bounds the *filtered* gradient. Clipping first would let ``g + lambda*ema`` exceed ``max_norm`` by up
    to (1 + lambda). With ``weight_decay_mode=coupled`` the step then adds ``wd*p`` (L2) to the clipped gradient, so
    the gradient used can exceed ``max_norm`` by up to wd*|p|. Returns the total norm before clipping (of the
    filtered gradient)."""
    prepare = getattr(optimizer, "filter_gradients_", None)
    if callable(prepare):
        prepare()
    return torch.nn.utils.clip_grad_norm_(parameters, max_norm)


def record_max_logits(model: nn.Module, on: bool) -> None:
    """Switch the attention layers' max-logit bookkeeping (``layers.max_logits``: a no-grad q·kᵀ reduction on every
    training pass, see ``models/layers.py``) on or off: only QK-clip reads it, so an optimizer that does not clip should not pay for it
    (measured on the CPU: ~5 % of a tiny Cognate training step)."""
    for m in model.modules():
        if hasattr(m, "record_max_logit"):
            m.record_max_logit = on


def clips(opt) -> bool:
    """Whether ``opt`` runs QK-clip (and so reads the attention layers' max logits)."""
    return bool(getattr(opt, "qk_clip", None) and getattr(opt, "attention_modules", ()))


def build_optimizer(model: nn.Module, cfg: dict, total_steps: int):
    """(optimizer, LambdaLR scheduler stepping per batch) for the ``optimizer`` config group; the model's
    max-logit bookkeeping is on only when the optimizer runs QK-clip (``record_max_logits``).

    The LambdaLR multiplies every param group's own base lr (Muon's and AdamW's alike) by the same
    warmup-cosine factor (``warmup_from_zero``: the warmup starts at 0, see ``schedule.warmup_cosine``)."""
    check_config(cfg)
    opt = BUILDERS[cfg["name"]](model, cfg)
    record_max_logits(model, clips(opt))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, partial(warmup_cosine, warmup_steps=cfg["warmup_steps"], total_steps=total_steps,
                     min_ratio=cfg["min_lr_ratio"], from_zero=bool(cfg.get("warmup_from_zero", False))))
    return opt, sched
