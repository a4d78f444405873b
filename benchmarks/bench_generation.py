"""Greedy generation with the KV cache (``agentforge/models/kv_cache.py``) against the uncached loop that
re-runs the whole context every token: tokens/s of each, interleaved repeated medians, one process, and
whether the two produced the same tokens. The ratio is the median of the per-round ratios with its 95 % CI and n
(``ratio_ci.py``); the default is 9 rounds of 512 new tokens (the issue's figure; ``--tokens 128`` for a quicker look).

    python benchmarks/bench_generation.py                       # tiny Cognate model, 512 new tokens, CPU
    python benchmarks/bench_generation.py --tokens 128 --device cuda
    python benchmarks/bench_generation.py --device cuda --eager-decode   # + the cached decoder, its step not graphed

On a GPU the cached decoder's step is replayed from CUDA graphs (``kv_cache.CognateDecoder.graphed_step``): two full
generations run first, untimed, so the timed ones replay graphs captured then (how many is printed);
``--eager-decode`` times the same cached decoder with its step run eagerly alongside (``hardware.cuda_graphs=false``).

The model is a randomly initialised Cognate model of the default (tiny) size with ``max_seq_len`` raised
to hold prompt + new tokens (the cache serves sequences up to ``max_seq_len``); speed does not depend on
training, and every token runs the recursion steps its halting rule gives it.
"""
from __future__ import annotations

import argparse
import statistics

import torch
from ratio_ci import DEFAULT_ROUNDS, ratio_line

from agentforge.evals.speed import interleaved_times
from agentforge.models import CognateConfig, CognateModel, graphs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=512, help="new tokens per generation")
    ap.add_argument("--prompt", type=int, default=16, help="prompt tokens")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=DEFAULT_ROUNDS, help="interleaved rounds")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--eager-decode", action="store_true", help="also time the cached decoder with its step not graphed")
    a = ap.parse_args()
    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA GPU is visible")
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = CognateModel(CognateConfig(max_seq_len=max(512, a.prompt + a.tokens), ltm_gate_norm=True)).to(a.device).eval()
    ids = torch.randint(0, 256, (a.batch, a.prompt), device=a.device)
    name = torch.cuda.get_device_name() if a.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    model.generate(ids, 4), model.generate(ids, 4, use_cache=False)  # warm-up
    for _ in range(2 if a.device == "cuda" else 0):   # the decoder step's graphs are captured on a key's second sighting
        model.generate(ids, a.tokens)
    outs = {}

    def run(kind):
        with graphs.switched(kind != "cached, eager step"):
            outs[kind] = model.generate(ids, a.tokens, use_cache=kind != "uncached")
    kinds = ("cached", "uncached") + (("cached, eager step",) if a.eager_decode else ())
    times = interleaved_times({k: lambda k=k: run(k) for k in kinds}, a.repeats, warmup=0,
                              sync=torch.cuda.synchronize if a.device == "cuda" else None)
    med = {k: statistics.median(v) for k, v in times.items()}
    n = a.batch * a.tokens
    tps = {k: n / v for k, v in med.items()}
    print(f"device: {name}; Cognate {model.num_params():,} params (max_steps={model.config.max_steps}); "
          f"batch {a.batch}, prompt {a.prompt}, {a.tokens} new tokens greedy; medians of {a.repeats} interleaved runs")
    for k in med:
        print(f"{k:18}: {tps[k]:9.1f} tokens/s  ({med[k]:.2f} s per generation)")
    print(ratio_line("cached/uncached tokens/s", times["uncached"], times["cached"]))
    print(f"same tokens: {torch.equal(outs['cached'], outs['uncached'])}")
    if a.eager_decode:
        print(ratio_line("decoder step as CUDA graphs / eager tokens/s", times["cached, eager step"], times["cached"]))
        print(f"graphs captured: {graphs.captured(model)}; same tokens: "
              f"{torch.equal(outs['cached'], outs['cached, eager step'])}")


if __name__ == "__main__":
    main()
