"""Cost of thinking: time per generated token (greedy) with a Quiet-STaR thought before every token ÷
without thoughts, on the same model and truncated context, in one process — thoughts sampled with the
KV cache and without it; and the time of one Quiet-STaR RL step (rl_step + backward) with cached and
uncached thought sampling.

    python benchmarks/bench_thoughts.py                                  # a fresh tiny-size Cognate model
    python benchmarks/bench_thoughts.py --checkpoint outputs/artifacts/quietstar/reasoning --tokens 16

Every configuration is timed once per round, rounds interleaved, and the medians compared. Uncached, a
thought of L tokens costs L + 1 extra forward passes over the growing sequence per generated token (L to
sample it, one to read the prediction after [/endthinking]): ~L + 2 times no thoughts. Cached, it costs
one forward pass over context + [thinking] with every recursion step on every position (the prefill,
which also gives the prediction without the thought) and L + 1 decode steps; the breakdown printed
at the end (prefill, one decode step, one plain forward) says where the time goes.
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from pathlib import Path

import torch

from agentforge.artifacts import load_model
from agentforge.data.tokenizer import ByteTokenizer
from agentforge.io import load_tensors
from agentforge.models import CognateConfig, CognateModel
from agentforge.reasoning import thought_cache
from agentforge.reasoning.rl import ThoughtConfig, rl_step, sample_windows
from agentforge.reasoning.thoughts import MixingHead, generate_with_thoughts
from agentforge.reasoning.tokens import THINK_END, THINK_START, add_reasoning_tokens


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved_medians(cases: dict, repeats: int) -> dict:
    """name -> median seconds of ``cases[name]()``, one call of each per round, rounds interleaved."""
    times = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            times[name].append(timed(fn))
    return {name: statistics.median(ts) for name, ts in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=None, help="a Cognate checkpoint dir (default: fresh tiny model)")
    ap.add_argument("--tokens", type=int, default=8, help="tokens generated per measurement")
    ap.add_argument("--thought-lengths", default="4,12", help="thought lengths to time, comma-separated")
    ap.add_argument("--context", type=int, default=64, help="context tokens each prediction sees")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rl-repeats", type=int, default=3, help="RL steps timed per path (0: skip)")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    torch.manual_seed(0)
    if args.checkpoint:
        model, tok, _ = load_model(args.checkpoint)
    else:
        model, tok = CognateModel(CognateConfig()).eval(), ByteTokenizer()
    tids = add_reasoning_tokens(tok)
    start, end, banned = tids[THINK_START], tids[THINK_END], [256, 257, tids[THINK_START], tids[THINK_END]]
    head = MixingHead(model.config.d_model, init_weight=0.5)  # w = 0.5: the thought changes the prediction
    head_file = args.checkpoint / "mixing_head.safetensors" if args.checkpoint else None
    if head_file and head_file.is_file():
        head.load_state_dict(load_tensors(head_file))
    ids = torch.tensor([tok.encode("Question: Ada has 12 apples. Ada gets 7 more. How many apples does Ada have now?\n"
                                   "Answer:", bos=True)])
    print(f"model: {args.checkpoint or 'fresh CognateConfig()'} ({model.num_params():,} params), "
          f"{torch.get_num_threads()} thread(s), {args.tokens} tokens, context {args.context}, "
          f"{args.repeats} interleaved rounds")

    def gen(h, length, cache, seed=0):
        return lambda: generate_with_thoughts(model, h, ids, args.tokens, length, start, end, args.context, 1.0,
                                              banned, torch.Generator().manual_seed(seed), use_cache=cache)

    lengths = [int(x) for x in args.thought_lengths.split(",")]
    cases = {"no thoughts": gen(None, 0, True)}
    for length in lengths:
        cases[f"L={length} uncached"] = gen(head, length, False)
        cases[f"L={length} cached"] = gen(head, length, True)
    for length in lengths:
        same = torch.equal(gen(head, length, True)(), gen(head, length, False)())
        print(f"L={length}: cached and uncached generate the same tokens: {same}")
    med = interleaved_medians(cases, args.repeats)
    base = med["no thoughts"]
    for name, sec in med.items():
        print(f"{name:<16} {args.tokens / sec:8.2f} tokens/s  {sec / base:6.2f}x the time of no thoughts")

    with torch.no_grad():  # where the time of a cached thought goes
        ctx = ids[:, -args.context:]
        pre = torch.cat([ctx, torch.full((1, 1), start)], 1)
        dec, _ = thought_cache.prefill(model, pre)
        parts = interleaved_medians({"forward": lambda: model(ctx), "prefill": lambda: thought_cache.prefill(model, pre),
                                     "decode": lambda: (dec.step(ctx[:, -1]), setattr(dec, "pos", dec.pos - 1))},
                                    max(args.repeats, 10))
    print(f"per generated token: plain forward {parts['forward'] * 1e3:.2f} ms; cached thought = prefill "
          f"{parts['prefill'] * 1e3:.2f} ms + (L + 1) x decode step {parts['decode'] * 1e3:.2f} ms "
          f"(model: {model.config.max_steps} recursion steps, every one run by the prefill and each decode step)")

    if args.rl_repeats > 0:
        tcs = {cache: ThoughtConfig(thought_length=max(lengths), use_cache=cache) for cache in (True, False)}
        tc = tcs[True]
        ref = copy.deepcopy(model).eval()
        stream = torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0))
        windows = sample_windows(stream, 2, 64, 2, tc.context_len, tc.n_true, torch.Generator().manual_seed(0))
        rl_ids = {"start": start, "end": end, "banned": banned}
        model.train()

        def rl(cache):
            def run():
                loss, _ = rl_step(model, head, ref, windows, tcs[cache], rl_ids, torch.Generator().manual_seed(0))
                loss.backward()
                model.zero_grad(set_to_none=True)
            return run
        rl_med = interleaved_medians({"cached": rl(True), "uncached": rl(False)}, args.rl_repeats)
        print(f"Quiet-STaR RL step ({len(windows)} windows x {tc.num_thoughts} thoughts x {tc.thought_length} tokens, "
              f"context {tc.context_len}, forward + backward): uncached {rl_med['uncached'] * 1e3:.0f} ms, "
              f"cached {rl_med['cached'] * 1e3:.0f} ms ({rl_med['uncached'] / rl_med['cached']:.2f}x faster)")


if __name__ == "__main__":
    main()
