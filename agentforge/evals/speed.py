"""Speed and memory measurements shared by every phase (fitness speed term, diversity, eval)."""
from __future__ import annotations

import statistics
import time

import torch


@torch.no_grad()
def forward_latency_ms(model, seq_len: int, batch: int = 1, repeats: int = 5, vocab: int = 256, warmup: int = 1) -> float:
    """Median wall time (ms) of one forward pass over a [batch, seq_len] input, after warmup."""
    device = next(model.parameters()).device
    ids = torch.randint(0, vocab, (batch, seq_len), generator=torch.Generator().manual_seed(0)).to(device)
    was = model.training
    model.eval()
    times = []
    try:
        for i in range(warmup + repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            model(ids)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                times.append((time.perf_counter() - t0) * 1000)
    finally:
        model.train(was)
    return statistics.median(times)


def forward_tokens_per_second(model, seq_len: int, batch: int = 4, repeats: int = 3, vocab: int = 256) -> float:
    ms = forward_latency_ms(model, seq_len, batch, repeats, vocab)
    return batch * seq_len / (ms / 1000)


def param_bytes(model) -> int:
    """Bytes of parameters and persistent buffers as stored (the model's memory footprint)."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    total += sum(b.numel() * b.element_size() for b in model.buffers())
    return total


@torch.no_grad()
def halting_distribution(model, rows: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """Per-token ACT halting counts over [N, T+1] rows (flattened), in eval mode."""
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    try:
        out = [model(rows[i: i + batch_size, :-1].to(device)).halting_steps.flatten().cpu()
               for i in range(0, len(rows), batch_size)]
    finally:
        model.train(was)
    return torch.cat(out)
