"""phase=codegen's two costs, measured in one run: samples executed per second by the sandboxed harness,
and generation tokens/s of Cognate vs the GPT-2-architecture baseline at (nearly) equal parameter count.

    OMP_NUM_THREADS=2 python benchmarks/bench_codegen.py [--problems 20] [--size tiny] [--model m1]
        [--batch 10] [--gen-tokens 64] [--context 512] [--repeats 9] [--sandbox auto|bwrap|process]

Execution: the canonical solution and one wrong completion of each of the first ``--problems`` HumanEval
problems, all run through ``agentforge.sandbox`` with one worker per CPU. Generation: fresh weights (speed
does not depend on training when no stop sequence can end a row), the same decoding loop and nucleus
sampling the harness uses (each model's KV cache; the prompt's prefill is included, as in the harness),
``--batch`` rows continuing HumanEval/0's prompt; Cognate and GPT-2 are timed in ``--repeats`` interleaved rounds
(``evals.speed.interleaved_times``, one untimed warm-up round, two where a decoder replays CUDA graphs): each model's tokens/s from its median, their ratio
the median of the per-round ratios with its 95 % CI and n (``ratio_ci.py``). Every figure is measured here.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ratio_ci import DEFAULT_ROUNDS, ratio_line  # noqa: E402  (needs the repository on sys.path: it imports agentforge)

from agentforge.artifacts import cognate_config_from
from agentforge.codegen import models
from agentforge.codegen.execution import execute, outcome_counts, split_program
from agentforge.codegen.problems import load_humaneval
from agentforge.codegen.sampling import sample
from agentforge.data.tokenizer import RESERVED_VOCAB
from agentforge.evals.speed import interleaved_times, warmup_runs
from agentforge.main import CONF_DIR
from agentforge.models import CognateModel
from agentforge.sandbox import strongest_mode


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", type=int, default=20)
    ap.add_argument("--size", default="tiny")
    ap.add_argument("--model", default="m1")
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=DEFAULT_ROUNDS, help="interleaved rounds")
    ap.add_argument("--sandbox", default="auto", choices=["auto", "bwrap", "process"])
    a = ap.parse_args(argv)
    probs = load_humaneval()[: a.problems]
    mode = strongest_mode() if a.sandbox == "auto" else a.sandbox
    programs = ([split_program(p, p.canonical_solution) for p in probs]
                + [split_program(p, "    return None\n") for p in probs])
    t0 = time.perf_counter()
    res = execute(programs, timeout_s=5.0, memory_mb=512, mode=mode)
    dt = time.perf_counter() - t0
    print(f"execution ({mode} sandbox, {os.cpu_count()} CPUs): {len(programs)} samples in {dt:.2f} s = "
          f"{len(programs) / dt:.1f} samples/s; outcomes {outcome_counts(res)}")

    conf = Path(CONF_DIR)
    size = OmegaConf.to_container(OmegaConf.merge(OmegaConf.load(conf / "model" / f"{a.model}.yaml"),
                                                  OmegaConf.load(conf / "size" / f"{a.size}.yaml")))
    base_cfg = OmegaConf.to_container(OmegaConf.load(conf / "baseline" / "gpt2_scratch.yaml"))
    torch.manual_seed(0)
    cog = CognateModel(cognate_config_from(size, RESERVED_VOCAB)).eval()
    lms = [models.byte_lm("cognate", "", cog, cog.config.max_seq_len),
           models.byte_lm("gpt2_scratch", "", models.gpt2_scratch(size, base_cfg, 0).eval(), int(size["max_seq_len"]))]
    new_tokens = {}

    def generate(lm):  # no stop sequence: every run generates the same number of tokens
        new_tokens[lm.name] = sample(lm, probs[0].prompt, a.batch, max_new_tokens=a.gen_tokens, stop=(),
                                     temperature=0.8, top_p=0.95, seed=0, context_tokens=a.context).new_tokens
    warm = max(warmup_runs(lm.model) for lm in lms)   # 2 where a decoder replays CUDA graphs (captured on a 2nd sighting)
    times = interleaved_times({lm.name: lambda lm=lm: generate(lm) for lm in lms}, a.repeats, warmup=warm)
    tps = {name: new_tokens[name] / statistics.median(ts) for name, ts in times.items()}
    print(f"generation tokens/s: medians of {a.repeats} interleaved rounds ({warm} untimed round(s) first)")
    for lm in lms:
        print(f"generation {lm.name:13s} {lm.num_params():>10,} params  {tps[lm.name]:8.1f} tokens/s "
              f"(batch {a.batch}, {len(lms[0].encode(probs[0].prompt))}-token prompt + {a.gen_tokens} new tokens, "
              f"{torch.get_num_threads()} threads)")
    print(speed_ratio_line(times, new_tokens))


def speed_ratio_line(times: dict[str, list[float]], new_tokens: dict[str, int]) -> str:
    """'ratio cognate / gpt2_scratch tokens/s: ...' from each round's generation seconds (``ratio_ci.py``)."""
    return ratio_line("cognate / gpt2_scratch tokens/s", times["gpt2_scratch"], times["cognate"],
                      scale=new_tokens["cognate"] / new_tokens["gpt2_scratch"])


if __name__ == "__main__":
    main()
