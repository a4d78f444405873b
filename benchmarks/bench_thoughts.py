"""Inference cost of thinking: tokens/s of greedy generation with a Quiet-STaR thought before every
token vs plain generation, on the same model and truncated context, in one process.

    python benchmarks/bench_thoughts.py                                  # a fresh tiny-size Cognate model
    python benchmarks/bench_thoughts.py --checkpoint outputs/artifacts/quietstar/reasoning --tokens 16

Without a KV cache, each thought of L tokens costs L + 1 extra forward passes per generated token
(L to sample it, one to read the prediction after [/endthinking]), so the expected ratio is ~L + 2.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from agentforge.artifacts import load_model
from agentforge.data.tokenizer import ByteTokenizer
from agentforge.io import load_tensors
from agentforge.models import CognateConfig, CognateModel
from agentforge.reasoning.thoughts import MixingHead, generate_with_thoughts
from agentforge.reasoning.tokens import THINK_END, THINK_START, add_reasoning_tokens


def tokens_per_second(model, head, ids, n_tokens, thought_length, tids, context_len, repeats) -> float:
    times = []
    for r in range(repeats):
        t0 = time.perf_counter()
        generate_with_thoughts(model, head, ids, n_tokens, thought_length, tids[THINK_START], tids[THINK_END],
                               context_len, 1.0, [256, 257, tids[THINK_START], tids[THINK_END]],
                               torch.Generator().manual_seed(r))
        times.append(time.perf_counter() - t0)
    return n_tokens / statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=None, help="a Cognate checkpoint dir (default: fresh tiny model)")
    ap.add_argument("--tokens", type=int, default=8, help="tokens generated per measurement")
    ap.add_argument("--thought-lengths", default="4,12", help="thought lengths to time, comma-separated")
    ap.add_argument("--context", type=int, default=64, help="context tokens each prediction sees")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    torch.manual_seed(0)
    if args.checkpoint:
        model, tok, _ = load_model(args.checkpoint)
    else:
        model, tok = CognateModel(CognateConfig()).eval(), ByteTokenizer()
    tids = add_reasoning_tokens(tok)
    head = MixingHead(model.config.d_model)
    head_file = args.checkpoint / "mixing_head.safetensors" if args.checkpoint else None
    if head_file and head_file.is_file():
        head.load_state_dict(load_tensors(head_file))
    ids = torch.tensor([tok.encode("Question: Ada has 12 apples. Ada gets 7 more. How many apples does Ada have now?\n"
                                   "Answer:", bos=True)])
    print(f"model: {args.checkpoint or 'fresh CognateConfig()'} ({model.num_params():,} params), "
          f"{torch.get_num_threads()} thread(s), {args.tokens} tokens, context {args.context}")
    base = tokens_per_second(model, None, ids, args.tokens, 0, tids, args.context, args.repeats)
    print(f"{'no thoughts':<22} {base:8.2f} tokens/s   1.00x time")
    for length in (int(x) for x in args.thought_lengths.split(",")):
        tps = tokens_per_second(model, head, ids, args.tokens, length, tids, args.context, args.repeats)
        print(f"{f'thought_length={length}':<22} {tps:8.2f} tokens/s  {base / tps:5.2f}x time "
              f"(expected ~{length + 2}x without a KV cache)")


if __name__ == "__main__":
    main()
