"""Optimizers and their schedules. ``build_optimizer`` is the one entry point the training code calls."""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

from agentforge.optim.schedule import warmup_cosine


def split_decay(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(matrices that get weight decay, everything else: embeddings, norms, biases)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and "embed" not in name else no_decay).append(p)
    return decay, no_decay


def build_adamw(model: nn.Module, cfg: dict) -> torch.optim.Optimizer:
    decay, no_decay = split_decay(model)
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg["weight_decay"]},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=cfg["lr"], betas=tuple(cfg.get("betas", (0.9, 0.95))))


BUILDERS = {"adamw": build_adamw}


def build_optimizer(model: nn.Module, cfg: dict, total_steps: int):
    """(optimizer, LambdaLR scheduler stepping per batch) for the ``optimizer`` config group."""
    name = cfg["name"]
    if name not in BUILDERS:
        raise ValueError(f"optimizer.name={name!r} is not available; choose from {sorted(BUILDERS)}")
    opt = BUILDERS[name](model, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, partial(warmup_cosine, warmup_steps=cfg["warmup_steps"], total_steps=total_steps,
                     min_ratio=cfg["min_lr_ratio"]))
    return opt, sched
