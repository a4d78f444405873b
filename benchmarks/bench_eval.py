"""Evaluation throughput (examples/s) of the default model (size=tiny, model=m1), the cost of the
recursive-refinement wrapper measured against it in the same process, and what batching buys: GSM8K
greedy decoding one prompt at a time vs ``--batch`` prompts together, multiple-choice scoring one
sequence per forward pass vs ``--batch`` sequences vs the shared-prompt KV path (``evals/prefix.py``),
timed in ``--repeats`` interleaved rounds after one untimed round (the results are checked equal as they are timed):
times and throughputs are medians, every ratio (speed-up, +surgery / base) the median of the per-round ratios with
its 95 % CI and n (``ratio_ci.py``).

    OMP_NUM_THREADS=1 python benchmarks/bench_eval.py [--examples 4] [--gen-tokens 32] [--samples 5] [--repeats 9]
    OMP_NUM_THREADS=1 python benchmarks/bench_eval.py --batching-only --choice-examples 200 --examples 16 --gen-tokens 40

Weights are freshly initialized (speed does not depend on training, except through where a greedy
generation happens to stop); every figure is measured here, none is assumed.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ratio_ci import DEFAULT_ROUNDS, ci_header, ci_short  # noqa: E402  (needs the repository on sys.path: it imports agentforge)

from agentforge.artifacts import cognate_config_from
from agentforge.data.build import eval_sets
from agentforge.data.tokenizer import RESERVED_VOCAB, ByteTokenizer
from agentforge.evals import tasks
from agentforge.evals.runner import EvalSettings, evaluate
from agentforge.evals.speed import interleaved_times
from agentforge.main import CONF_DIR
from agentforge.models import CognateModel
from agentforge.models.surgery import wrap
from agentforge.phases.eval import eval_rows


def measures(model, tok, sets, rows, a) -> dict:
    g, arc, piqa = sets["gsm8k"], sets["arc"], sets["piqa"]
    return {
        "lm rows/s (perplexity, token acc)": (lambda: tasks.lm_metrics(model, rows), len(rows)),
        "gsm8k greedy examples/s": (lambda: tasks.gsm8k_greedy(model, tok, g, a.gen_tokens), len(g)),
        f"gsm8k sampled (n={a.samples}) examples/s": (
            lambda: tasks.gsm8k_sample_counts(model, tok, g, a.samples, a.gen_tokens), len(g)),
        "arc choice examples/s": (lambda: tasks.choice_correct(model, tok, arc, "arc"), len(arc)),
        "piqa choice examples/s": (lambda: tasks.choice_correct(model, tok, piqa, "piqa"), len(piqa)),
    }


def bench(models: dict, tok, sets, rows, a) -> tuple[dict[tuple[str, str], list[float]], dict[str, int]]:
    """(seconds of every (model, measure) in each of ``a.repeats`` interleaved rounds (every model and measure once per
    round), so machine load hits both models alike; each measure's item count)."""
    ms = {name: measures(m, tok, sets, rows, a) for name, m in models.items()}
    times = interleaved_times({(name, k): fn for name in ms for k, (fn, _) in ms[name].items()}, a.repeats)
    return times, {k: n for k, (_, n) in next(iter(ms.values())).items()}


def surgery_table(times: dict[tuple[str, str], list[float]], counts: dict[str, int]) -> list[str]:
    """Throughput of base and +surgery per measure (medians) and their ratio +surgery / base (``ratio_ci.ci_short``:
    base's seconds over +surgery's in each round; the header gives n and what the brackets are)."""
    n = len(next(iter(times.values())))
    lines = [f"throughput: medians of {n} interleaved rounds; ratio +surgery / base: {ci_header(n)}",
             f"{'measure':42s} {'base':>10s} {'+surgery':>10s} {'ratio [CI]':>18s}"]
    for k, count in counts.items():
        b, r = times["base", k], times["surgery", k]
        lines.append(f"{k:42s} {count / statistics.median(b):10.2f} {count / statistics.median(r):10.2f} "
                     f"{ci_short(b, r):>18s}")
    return lines


def batching_line(task: str, items: int, same: bool, times: dict[str, list[float]]) -> str:
    """One task's ways: median seconds of each, and each later way's speed-up over the first (``ci_short``: the first
    way's seconds over its own in each round)."""
    first = next(iter(times))
    return f"{task} ({items} items; identical results: {same}): " + "; ".join(
        f"{k} {statistics.median(v):.2f} s" + ("" if k == first else f" (speed-up {ci_short(times[first], v)})")
        for k, v in times.items())


def batching(model, tok, sets, a) -> None:
    """Interleaved medians of each way to run the same work; every way must give the same answers."""
    from agentforge.data import formats
    from agentforge.evals import prefix

    prompts = [tok.encode(formats.gsm8k_prompt(r), bos=True) for r in sets["gsm8k"]]
    no_prefix = lambda m: False  # noqa: E731

    def choice(fmt, rows, shared):
        saved = prefix.supports
        prefix.supports = saved if shared else no_prefix
        try:
            return tasks.choice_predictions(model, tok, sets[fmt], fmt, batch_rows=rows)
        finally:
            prefix.supports = saved
    ways = {"gsm8k greedy": {"1 prompt at a time": lambda: tasks.greedy_tokens(model, prompts, a.gen_tokens, tok.eos_id, 1),
                             f"{a.batch} together": lambda: tasks.greedy_tokens(model, prompts, a.gen_tokens, tok.eos_id,
                                                                                a.batch)}}
    for fmt in ("arc", "piqa"):
        ways[f"{fmt} choices"] = {"1 sequence per forward": lambda f=fmt: choice(f, 1, False),
                                  f"{a.batch * 2} per forward": lambda f=fmt: choice(f, a.batch * 2, False),
                                  "shared prompt (KV) where it pays": lambda f=fmt: choice(f, a.batch * 2, True)}
    for task, fns in ways.items():
        results = {}
        times = interleaved_times({k: lambda k=k, fn=fn: results.__setitem__(k, fn()) for k, fn in fns.items()},
                                  a.repeats)
        first = next(iter(fns))
        print(batching_line(task, len(results[first]), all(results[k] == results[first] for k in fns), times))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=4)
    ap.add_argument("--gen-tokens", type=int, default=32)
    ap.add_argument("--samples", type=int, default=5)
    ap.add_argument("--latency-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=DEFAULT_ROUNDS, help="interleaved rounds")
    ap.add_argument("--batch", type=int, default=16, help="prompts decoded together; 2x this = choice rows")
    ap.add_argument("--choice-examples", type=int, default=None, help="ARC/PIQA questions (default --examples)")
    ap.add_argument("--batching-only", action="store_true", help="only the batching comparison")
    ap.add_argument("--checkpoint", default=None, help="a trained checkpoint dir instead of fresh weights")
    a = ap.parse_args()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=["phase=eval"])
    torch.manual_seed(0)
    model = CognateModel(cognate_config_from(OmegaConf.to_container(cfg.model, resolve=True), RESERVED_VOCAB)).eval()
    tok = ByteTokenizer()
    if a.checkpoint:
        from agentforge.artifacts import load_any

        model, tok, _ = load_any(a.checkpoint)
    n_choice = a.choice_examples or a.examples
    sets = eval_sets({}, 0, {"gsm8k": a.examples, "arc": n_choice, "piqa": n_choice}, split="test")
    rows = eval_rows(sets, tok, 0, int(cfg.data.seq_len), 16)
    print(f"model: {a.checkpoint or 'size=tiny model=m1, fresh weights'}, {sum(x.numel() for x in model.parameters()):,} params, torch threads {torch.get_num_threads()}; "
          f"{a.examples} GSM8K and {n_choice} ARC/PIQA examples, {a.gen_tokens} generated tokens, rows {tuple(rows.shape)}")
    print(f"batching: seconds, medians of {a.repeats} interleaved rounds; speed-up over the first way: {ci_header(a.repeats)}")
    batching(model, tok, sets, a)
    if a.batching_only:
        return
    print("\n".join(surgery_table(*bench({"base": model, "surgery": wrap(model)}, tok, sets, rows, a))))
    s = EvalSettings(gen_tokens=a.gen_tokens, pass_k_samples=a.samples, latency_tokens=a.latency_tokens)
    t0 = time.perf_counter()
    res = evaluate(model, tok, sets, rows, s)
    total = time.perf_counter() - t0
    n = 3 * a.examples  # gsm8k + arc + piqa
    print(f"full phase=eval evaluation (all metrics, latency of {a.latency_tokens} tokens): {total:.1f} s, "
          f"{n / total:.2f} examples/s overall; task-only {res['metrics']['examples_per_sec']:.2f} examples/s; "
          f"generation {res['metrics']['throughput_tokens_per_sec']:.1f} tokens/s")


if __name__ == "__main__":
    main()
