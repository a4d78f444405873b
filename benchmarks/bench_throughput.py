"""Training throughput of the Cognate model against a plain causal transformer of the same width and
depth (same process, same batch), and achieved FLOP/s against this machine's measured matmul peak.

    python benchmarks/bench_throughput.py [--size tiny|small] [--steps 8]

FLOPs are counted by torch.utils.flop_counter on one real training step (forward + backward), not
estimated; the peak is the best of several 1024x1024 fp32 matmuls.
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from agentforge.models import CognateConfig, CognateModel
from agentforge.models.layers import Block, RMSNorm, rope_cache

SIZES = {"tiny": dict(d_model=128, n_layers=2, n_heads=4, ffn_hidden=352, window=64),
         "small": dict(d_model=256, n_layers=4, n_heads=4, ffn_hidden=688, window=128)}


class PlainTransformer(nn.Module):
    """The baseline: the same blocks once, no recursion, no halting, no memory."""

    def __init__(self, c: CognateConfig):
        super().__init__()
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        self.blocks = nn.ModuleList(Block(c.d_model, c.n_heads, c.window, c.ffn_hidden) for _ in range(c.n_layers))
        self.norm, self.lm_head = RMSNorm(c.d_model), nn.Linear(c.d_model, c.vocab_size, bias=False)
        cos, sin = rope_cache(c.max_seq_len, c.d_model // c.n_heads, c.rope_base)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, ids, targets):
        h = self.embed(ids)
        for b in self.blocks:
            h = b(h, self.cos[: ids.shape[1]], self.sin[: ids.shape[1]])
        logits = self.lm_head(self.norm(h))
        return nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())


def matmul_peak(n: int = 1024, reps: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def train_step(model, opt, x, y):
    out = model(x, y)
    loss = out if torch.is_tensor(out) else out.loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def measure(model, batch, seq, steps):
    torch.manual_seed(0)
    x, y = torch.randint(0, 256, (batch, seq)), torch.randint(0, 256, (batch, seq))
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    model.train()
    with FlopCounterMode(display=False) as fc:
        out = model(x, y)
        (out if torch.is_tensor(out) else out.loss).backward()
    opt.zero_grad(set_to_none=True)
    flops = fc.get_total_flops()
    train_step(model, opt, x, y)  # warmup
    t = time.perf_counter()
    for _ in range(steps):
        train_step(model, opt, x, y)
    dt = (time.perf_counter() - t) / steps
    return batch * seq / dt, flops / dt, flops


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="tiny", choices=list(SIZES))
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=8)
    a = ap.parse_args()
    cfg = CognateConfig(**SIZES[a.size], max_steps=3)
    peak = matmul_peak()
    cog_tps, cog_fps, cog_f = measure(CognateModel(cfg), a.batch, a.seq, a.steps)
    plain_tps, plain_fps, plain_f = measure(PlainTransformer(cfg), a.batch, a.seq, a.steps)
    print(f"threads={torch.get_num_threads()} size={a.size} batch={a.batch} seq={a.seq}")
    print(f"matmul peak (fp32 1024^3): {peak / 1e9:.1f} GFLOP/s")
    print(f"plain transformer : {plain_tps:9.0f} tokens/s  {plain_fps / 1e9:6.2f} GFLOP/s "
          f"({100 * plain_fps / peak:.1f}% of peak)  {plain_f / (a.batch * a.seq) / 1e6:.2f} MFLOP/token")
    print(f"cognate (3 steps) : {cog_tps:9.0f} tokens/s  {cog_fps / 1e9:6.2f} GFLOP/s "
          f"({100 * cog_fps / peak:.1f}% of peak)  {cog_f / (a.batch * a.seq) / 1e6:.2f} MFLOP/token")
    print(f"ratio cognate/plain tokens/s: {cog_tps / plain_tps:.2f}  (FLOP/token ratio {cog_f / plain_f:.2f})")


if __name__ == "__main__":
    main()
