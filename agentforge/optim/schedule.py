"""Learning-rate schedule shared by every optimizer: linear warmup, then cosine decay to a floor."""
from __future__ import annotations

import math


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float, from_zero: bool = False) -> float:
    """Multiplier of the base learning rate at ``step`` (0-based: the update about to be made).

    Warmup: ``(step + 1) / warmup_steps`` for step < warmup_steps (0.1, ..., 1.0 over 10 steps), or, with
    ``from_zero``, ``step / warmup_steps`` for step <= warmup_steps (0.0, 0.1, ..., 1.0 for steps 0..10, so the
    first update runs at lr 0): the Grokfast reference's schedule, github.com/ironjr/grokfast main.py,
    ``LambdaLR(optimizer, lambda update: 1 if update > 10 else update / 10)``. After warmup: cosine from 1.0
    at step ``warmup_steps`` down to ``min_ratio`` at ``total_steps`` (constant 1.0 when min_ratio is 1)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step if from_zero else step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / span, 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
