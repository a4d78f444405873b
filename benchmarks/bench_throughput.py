"""Training throughput of the Cognate model against a plain causal transformer of the same width and
depth (same process, same batch, same optimizer), and achieved FLOP/s against this device's measured
matmul peak.

    python benchmarks/bench_throughput.py                         # CPU, tiny size, fp32
    python benchmarks/bench_throughput.py --device cuda --size 25m --batch 32 --seq 512   # GPU, bf16 autocast
    python benchmarks/bench_throughput.py --device cuda --size 25m --batch 32 --seq 512 --compile   # + both compiled
    python benchmarks/bench_throughput.py --no-grad-steps 2      # + TRM's cheaper recursion, timed alongside
    python benchmarks/bench_throughput.py --memory-off           # + the same Cognate with its memory off
    python benchmarks/bench_throughput.py --device cuda --eager-memory   # + the same Cognate, memory scan not graphed
    python benchmarks/bench_throughput.py --muon-grokfast        # + the same Cognate trained as the phase trains it

FLOPs are counted on one real training step (forward + backward), not estimated, by ``evals.flops.count_flops``
(torch.utils.flop_counter with attention on SDPA's math path, so attention's matmuls are counted on CPU too, and
QK-clip's max-logit bookkeeping left out, for both models alike); the peak is the best of several square matmuls (fp32 1024² on CPU, bf16 8192² on CUDA). The
two models' steps are timed interleaved (``evals.speed.interleaved_times``: each once per round, the
order rotated), so a change in machine load hits both; every ratio printed is the median of the per-round ratios with
its distribution-free 95 % CI and n (``ratio_ci.py``). The headline figure is the ratio of achieved FLOP/s (the Cognate
model does ~max_steps times the work per token, so tokens/s alone would not compare the kernels).
``--no-grad-steps K`` adds a third model, the same Cognate with ``no_grad_steps=K`` (TRM's cheaper recursion:
the first K steps without gradients), to the interleaved timing, with its FLOPs and speed against the full one.
Every model above steps with plain AdamW, so the figures compare models, not optimizers (and, as
``build_optimizer`` does for an optimizer without QK-clip, their attention layers skip the max-logit bookkeeping). ``--muon-grokfast`` adds the
same Cognate model stepped as ``phase=cognate`` steps it: the default optimizer preset (``conf/optimizer/
muon_grokfast.yaml``: Muon on the matrices, AdamW on the rest, the Grokfast filter, QK-clip) and gradient clipping at
1.0 after the filter (``optim.clip_grad_norm_``), and prints its step time against the AdamW step; with ``--compile``
as well, also that model compiled (the training step of ``phase=cognate hardware.compile=true``).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import statistics
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from ratio_ci import DEFAULT_ROUNDS, ratio_line
from torch import nn

from agentforge.evals.compare import MIN_TIMING_ROUNDS, median_ci
from agentforge.evals.flops import count_flops
from agentforge.evals.speed import interleaved_times
from agentforge.models import CognateConfig, CognateModel, graphs
from agentforge.models.layers import Block, RMSNorm, rope_cache
from agentforge.optim import build_optimizer, clip_grad_norm_, record_max_logits
from agentforge.training.trainer import compile_regions

SIZES = {"tiny": dict(d_model=128, n_layers=2, n_heads=4, ffn_hidden=352, window=64),
         "small": dict(d_model=256, n_layers=4, n_heads=4, ffn_hidden=688, window=128),
         "25m": dict(d_model=512, n_layers=8, n_heads=8, ffn_hidden=1376, window=256, max_seq_len=1024,
                     ltm_key_dim=64)}


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


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device: str, reps: int = 10) -> float:
    n, dtype = (8192, torch.bfloat16) if device == "cuda" else (1024, torch.float32)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


class Runner:
    """One model, its optimizer and batch; ``step()`` is one training step."""

    def __init__(self, model, batch, seq, device, compile_, cuda_graphs: bool = True, phase_optimizer: bool = False,
                 muon_impl: str = "grouped"):
        torch.manual_seed(0)
        self.cuda_graphs = cuda_graphs
        self.model, self.device = model.to(device).train(), device
        self.x = torch.randint(0, 256, (batch, seq), device=device)
        self.y = torch.randint(0, 256, (batch, seq), device=device)
        self.clip = phase_optimizer
        if phase_optimizer:  # what phase=cognate steps with by default (warm-up/cosine schedule left out: lr only)
            preset = OmegaConf.to_container(OmegaConf.load(Path(__file__).parents[1] / "conf/optimizer/muon_grokfast.yaml"))
            self.opt, _ = build_optimizer(model, {**preset, "muon_impl": muon_impl}, total_steps=1000)
        else:  # no QK-clip: the max-logit bookkeeping off, as build_optimizer leaves it for such an optimizer
            self.opt = torch.optim.AdamW(model.parameters(), 1e-3)
            record_max_logits(model, False)
        self.autocast = (lambda: torch.autocast("cuda", torch.bfloat16)) if device == "cuda" else contextlib.nullcontext
        self.flops = count_flops(lambda: self._loss().backward(), self.model)
        self.opt.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        if compile_:  # after the FLOP count: a frame Dynamo meets under FlopCounterMode is not compiled
            compile_regions(model)
        for _ in range(3 if compile_ or device == "cuda" else 1):  # warm-up (compilation, the memory's CUDA graphs)
            self.step()
        sync(device)
        self.warmup_s = time.perf_counter() - t0

    def _loss(self):
        with self.autocast():
            out = self.model(self.x, self.y)
        return out if torch.is_tensor(out) else out.loss

    def step(self) -> None:
        with graphs.switched(self.cuda_graphs):
            self._loss().backward()
        if self.clip:
            clip_grad_norm_(self.opt, self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


def tokens_ci(tokens: int, step_s: list[float]) -> str:
    """The distribution-free 95 % CI of the median tokens/s over the timed steps (``median_ci``), or why none."""
    if len(step_s) < MIN_TIMING_ROUNDS:
        return f"(no CI: {len(step_s)} < {MIN_TIMING_ROUNDS} steps)"
    lo, hi = median_ci([tokens / t for t in step_s])
    return f"tokens/s 95% CI [{lo:.0f}, {hi:.0f}]"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="tiny", choices=list(SIZES))
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=DEFAULT_ROUNDS, help="timed steps per model (interleaved rounds)")
    ap.add_argument("--compile", action="store_true",
                    help="also time both models compiled as hardware.compile=true does (compile_regions, inductor)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--no-grad-steps", type=int, default=0,
                    help="also time the Cognate model with its first K recursion steps without gradients")
    ap.add_argument("--memory-off", action="store_true", help="also time the Cognate model with its memory off")
    ap.add_argument("--eager-memory", action="store_true",
                    help="also time the Cognate model with its memory scan run eagerly (hardware.cuda_graphs=false)")
    ap.add_argument("--muon-grokfast", action="store_true",
                    help="also time the Cognate model stepped with the phase's default optimizer and gradient clipping")
    ap.add_argument("--torch-muon", action="store_true",
                    help="with --muon-grokfast: also step with torch.optim.Muon (optimizer.muon_impl=torch) beside the "
                         "default grouped Newton-Schulz")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.torch_muon and not a.muon_grokfast:
        raise SystemExit("error: --torch-muon compares Muon implementations inside --muon-grokfast: add --muon-grokfast")
    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA GPU is visible")
    cfg = CognateConfig(**SIZES[a.size], max_steps=3, ltm_gate_norm=True)   # the models' gate (conf/model)
    name = torch.cuda.get_device_name() if a.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    peak = matmul_peak(a.device)
    if not 0 <= a.no_grad_steps < cfg.max_steps:
        raise SystemExit(f"error: --no-grad-steps must be in [0, {cfg.max_steps - 1}], got {a.no_grad_steps}")
    runs = {"cognate (3 steps)": Runner(CognateModel(cfg), a.batch, a.seq, a.device, False),
            "plain transformer": Runner(PlainTransformer(cfg), a.batch, a.seq, a.device, False)}
    if a.compile:  # the same two models, regionally compiled, timed alongside
        runs["cognate, compiled"] = Runner(CognateModel(cfg), a.batch, a.seq, a.device, True)
        runs["plain, compiled"] = Runner(PlainTransformer(cfg), a.batch, a.seq, a.device, True)
    if a.memory_off:  # the memory's cost: the same Cognate model with its reads off (ablate(memory=False))
        off = CognateModel(cfg)
        off.memory.enabled = False
        runs["cognate, memory off"] = Runner(off, a.batch, a.seq, a.device, False)
    if a.eager_memory:  # what the memory's CUDA graph buys (memory_graph.py): the same model, its scan eager
        runs["cognate, eager memory"] = Runner(CognateModel(cfg), a.batch, a.seq, a.device, False, cuda_graphs=False)
    if a.muon_grokfast:
        runs["cognate, Muon-Grokfast"] = Runner(CognateModel(cfg), a.batch, a.seq, a.device, False, phase_optimizer=True)
        if a.compile:  # the whole training step as a compiled phase=cognate takes it (hardware.compile=true)
            runs["cognate, compiled, M-G"] = Runner(CognateModel(cfg), a.batch, a.seq, a.device, True,
                                                     phase_optimizer=True)
        if a.torch_muon:  # what GroupedMuon buys: the same step with torch.optim.Muon, matrix by matrix
            runs["M-G, torch Muon"] = Runner(CognateModel(cfg), a.batch, a.seq, a.device, a.compile,
                                             phase_optimizer=True, muon_impl="torch")
    cheap = f"cognate, {a.no_grad_steps} no-grad"
    if a.no_grad_steps:
        runs[cheap] = Runner(CognateModel(dataclasses.replace(cfg, no_grad_steps=a.no_grad_steps)), a.batch, a.seq,
                             a.device, False)
    times = interleaved_times({k: r.step for k, r in runs.items()}, a.steps, warmup=0,
                              sync=torch.cuda.synchronize if a.device == "cuda" else None)
    med = {k: statistics.median(v) for k, v in times.items()}
    tokens = a.batch * a.seq
    print(f"device: {name}; size={a.size} batch={a.batch} seq={a.seq} "
          f"{'bf16 autocast' if a.device == 'cuda' else 'fp32'}; "
          f"medians of {a.steps} interleaved steps")
    print(f"matmul peak ({'bf16 8192' if a.device == 'cuda' else 'fp32 1024'}^3): {peak / 1e12:.3f} TFLOP/s")
    for k, r in runs.items():
        dt = med[k]
        fps = r.flops / dt
        print(f"{k:22}: {tokens / dt:10.0f} tokens/s  {fps / 1e9:8.2f} GFLOP/s ({100 * fps / peak:5.1f}% of peak)"
              f"  {r.flops / tokens / 1e6:.2f} MFLOP/token  {tokens_ci(tokens, times[k])}")
    c, p = runs["cognate (3 steps)"], runs["plain transformer"]
    cog, plain = times["cognate (3 steps)"], times["plain transformer"]
    print(f"cognate/plain FLOP/token ratio {c.flops / p.flops:.2f} (counted, deterministic: not a timing)")
    print(ratio_line("cognate/plain achieved FLOP/s", plain, cog, scale=c.flops / p.flops))
    print(ratio_line("cognate/plain tokens/s", plain, cog))
    if a.compile:
        for k, ref in (("cognate, compiled", "cognate (3 steps)"), ("plain, compiled", "plain transformer")):
            print(ratio_line(f"{k} / eager tokens/s", times[ref], times[k]))
            print(f"  compile + 3 warm-up steps {runs[k].warmup_s:.1f} s (eager: {runs[ref].warmup_s:.1f} s for its warm-up)")
    if a.eager_memory:
        print(ratio_line(f"memory scan as a CUDA graph / eager tokens/s (graphs captured: "
                         f"{graphs.captured(c.model.memory)})", times["cognate, eager memory"], cog))
    if a.memory_off:
        print(ratio_line("cognate memory off / on tokens/s", cog, times["cognate, memory off"]))
    if a.muon_grokfast:
        print(ratio_line("Muon-Grokfast + clipping / AdamW step time (same model)", times["cognate, Muon-Grokfast"], cog))
        if a.compile:
            print(ratio_line("Muon-Grokfast + clipping / AdamW step time (both compiled)", times["cognate, compiled, M-G"],
                             times["cognate, compiled"]))
        if a.torch_muon:
            mg = "cognate, compiled, M-G" if a.compile else "cognate, Muon-Grokfast"
            print(ratio_line(f"{mg}: grouped Muon / torch.optim.Muon step time", times[mg], times["M-G, torch Muon"]))
    if a.no_grad_steps:
        g = runs[cheap]
        print(f"no_grad_steps={a.no_grad_steps} vs all steps with gradients: FLOPs per step {g.flops / c.flops:.2f}x")
        print(ratio_line(f"no_grad_steps={a.no_grad_steps} / all steps step time", times[cheap], cog))

if __name__ == "__main__":
    main()
