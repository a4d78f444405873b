"""Model FLOPs, counted one way everywhere (EvoMerge's FLOPs fitness term, the Cognate phase's and the diversity
figure's inference MFLOPs/token, ``benchmarks/bench_throughput.py``, ``bench_halting.py``, ``bench_thoughts.py``,
``bench_bitnet.py``).

``torch.utils.flop_counter.FlopCounterMode`` counts the ops it has a formula for: matmuls, and the fused SDPA
kernels of CUDA (flash, memory-efficient, cuDNN). It has none for the CPU's fused kernel
(``aten._scaled_dot_product_flash_attention_for_cpu``), so on CPU a plain count leaves attention out. Here the count
runs with SDPA on its math backend (``torch.nn.attention.sdpa_kernel(SDPBackend.MATH)``): attention becomes the
matmuls the math path computes (q·kᵀ and p·v forward, 2·B·H·Tq·Tk·Dh each; their gradients backward), which
``FlopCounterMode`` counts as it counts any matmul, on every device alike. The full Tq x Tk products are counted,
as the math path and torch's own flash formula compute them (a causal mask does not halve the count).

QK-clip's bookkeeping (``layers.max_logits``: a no-grad q·kᵀ reduction on train-mode passes, for the optimizer)
is not part of the model's computation and is left out: every attention module with ``record_max_logit`` has it
turned off while counting and restored after. The count is of the model's own ops; it does not depend on timing.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode


@contextlib.contextmanager
def counting_flops(*models: torch.nn.Module) -> Iterator[FlopCounterMode]:
    """A ``FlopCounterMode`` (read ``get_total_flops()`` after the block) with SDPA on the math backend and the
    QK-clip max-logit reduction of every attention module of ``models`` off for the block."""
    saved = [(m, m.record_max_logit) for model in models for m in model.modules() if hasattr(m, "record_max_logit")]
    try:
        for m, _ in saved:
            m.record_max_logit = False
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            yield counter
    finally:
        for m, was in saved:
            m.record_max_logit = was


def count_flops(fn: Callable[[], object], *models: torch.nn.Module) -> int:
    """FLOPs of ``fn()`` (``counting_flops`` over ``models``: attention counted, QK-clip bookkeeping not)."""
    with counting_flops(*models) as counter:
        fn()
    return int(counter.get_total_flops())
