"""One evaluation of one model: every metric of the evaluation plan, plus the per-example results the
statistics need. Knows nothing of Hydra or W&B; the ``eval`` phase wires it.

The model only has to provide ``forward(ids).logits``, ``config.max_seq_len`` and parameters
(``generate`` is used when present); a surgery-wrapped model adds the recursive statistics.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from agentforge.data import formats
from agentforge.data.ids import example_ids
from agentforge.evals import speed, tasks
from agentforge.evals.generation_stats import generation_stats
from agentforge.evals.pass_at_k import mean_pass_at_k
from agentforge.evals.reference_fit import reference_fit

# Which way is better, for the comparison table (+1 higher, -1 lower, 0 neither). Refinement steps and
# chunk length are neither: the plan wants 1-2 steps (fewer = recursion unused) and "natural" chunk lengths.
DIRECTION = {
    "perplexity": -1, "loss": -1, "token_accuracy": 1, "reasoning_accuracy": 1, "arc_easy_accuracy": 1,
    "piqa_accuracy": 1, "gen/avg_length_tokens": 0, "gen/distinct_1": 1, "gen/distinct_2": 1,
    "gen/repetition_rate": -1, "gen/coherence": 1, "gen/prompt_overlap": 1, "throughput_tokens_per_sec": 1,
    "forward_tokens_per_sec": 1, "latency_ms": -1, "peak_memory_mb": -1, "param_count": 0,
    "param_memory_mb": -1, "avg_refine_steps": 0, "commit_rate": 1, "avg_chunk_length": 0, "stability_at_k": 1,
    "examples_per_sec": 1, "surgery_max_abs_diff": -1, "gen/truncated_rate": -1,
}


def direction(metric: str) -> int:
    if metric.startswith("pass_at_"):
        return 1
    return DIRECTION.get(metric, 0)


@dataclass
class EvalSettings:
    gen_tokens: int = 48          # greedy tokens per GSM8K question
    pass_k_samples: int = 10      # sampled completions per question for pass@k (0 = greedy only)
    pass_k: tuple = (1, 10)       # the k of pass@k (those <= pass_k_samples are reported)
    temperature: float = 0.8      # sampling temperature for pass@k
    latency_tokens: int = 512     # tokens asked for the latency figure (capped to what the KV cache holds)
    chunk_width: int = 16         # positions per chunk for the recursive statistics
    batch_size: int = 16
    seed: int = 0


def evaluate(model, tokenizer, sets: dict[str, list[dict]], rows: torch.Tensor, s: EvalSettings) -> dict:
    """{"metrics": {...}, "per_example": {...}, "timings_s": {...}, "reference_fit": {...} or None} for one model;
    ``reference_fit`` (``evals.reference_fit``): whether the GSM8K reference answers fit ``gen_tokens`` at all."""
    device = next(model.parameters()).device
    model.eval()
    metrics, per, times, fit = {}, {}, {}, None
    t_all = time.perf_counter()

    t0 = time.perf_counter()
    lm = tasks.lm_metrics(model, rows.to(device), s.batch_size)
    metrics.update(perplexity=lm["perplexity"], loss=lm["loss"], token_accuracy=lm["token_accuracy"])
    per["row_loss"] = lm["row_losses"]
    times["lm"] = time.perf_counter() - t0

    gsm = sets.get("gsm8k") or []
    if gsm:
        t0 = time.perf_counter()
        fit = reference_fit(tokenizer, gsm, s.gen_tokens, getattr(getattr(model, "config", None), "max_seq_len", None))
        metrics["gen/reference_fit_rate"] = fit["rate"]
        gens, lengths = tasks.gsm8k_greedy(model, tokenizer, gsm, s.gen_tokens)
        truncated = [n >= s.gen_tokens for n in lengths]  # no EOS within gen_tokens: the answer may be cut
        per["gsm8k_correct"], per["gsm8k_ids"] = tasks.gsm8k_correct(gens, gsm, truncated), example_ids(gsm)
        per["gsm8k_chance"] = tasks.chance_rates(gsm, "gsm8k")
        per["generations"], per["gsm8k_truncated"] = [str(g) for g in gens], [int(t) for t in truncated]
        metrics["reasoning_accuracy"] = sum(per["gsm8k_correct"]) / len(gsm)
        metrics["gen/truncated_rate"] = sum(truncated) / len(gsm)
        prompts = [formats.gsm8k_prompt(r) for r in gsm]
        corpus = prompts + [formats.gsm8k_target(r) for r in gsm]
        metrics.update(generation_stats(prompts, gens, lengths, corpus))
        times["gsm8k_greedy"] = time.perf_counter() - t0
        if s.pass_k_samples > 0:
            t0 = time.perf_counter()
            counts = tasks.gsm8k_sample_counts(model, tokenizer, gsm, s.pass_k_samples, s.gen_tokens,
                                               s.temperature, s.seed)
            per["gsm8k_num_correct"], per["n_samples"] = counts, s.pass_k_samples
            for k in s.pass_k:
                if k <= s.pass_k_samples:
                    metrics[f"pass_at_{k}"] = mean_pass_at_k(s.pass_k_samples, counts, k)
                else:
                    print(f"note: pass@{k} not measured: phase.pass_k_samples={s.pass_k_samples} < {k}")
            times["gsm8k_sampled"] = time.perf_counter() - t0
    for fmt, key in (("arc", "arc_easy_accuracy"), ("piqa", "piqa_accuracy")):
        if sets.get(fmt):
            t0 = time.perf_counter()
            per[f"{fmt}_correct"] = tasks.choice_correct(model, tokenizer, sets[fmt], fmt)
            per[f"{fmt}_ids"] = example_ids(sets[fmt])  # what the comparison pairs by
            per[f"{fmt}_chance"] = tasks.chance_rates(sets[fmt], fmt)
            metrics[key] = sum(per[f"{fmt}_correct"]) / len(per[f"{fmt}_correct"])
            times[fmt] = time.perf_counter() - t0
    n_examples = len(gsm) + len(sets.get("arc") or []) + len(sets.get("piqa") or [])
    task_time = sum(v for k, v in times.items() if k != "lm")
    metrics["examples_per_sec"] = n_examples / task_time if task_time > 0 else float("nan")

    if hasattr(model, "refine"):
        from agentforge.models.surgery import refinement_stats

        rs = refinement_stats(model, rows.to(device), s.chunk_width, s.batch_size)
        per["chunk_lengths"] = rs.pop("chunk_lengths")
        metrics.update({k: rs[k] for k in ("avg_refine_steps", "commit_rate", "avg_chunk_length", "stability_at_k")})

    t0 = time.perf_counter()
    seq = min(int(rows.shape[1]) - 1, int(model.config.max_seq_len))
    metrics["forward_tokens_per_sec"] = speed.forward_tokens_per_second(model, seq, batch=4, repeats=3)
    if s.latency_tokens > 0:
        n, cached = speed.latency_fit(model, s.latency_tokens, prompt_len=8)
        if n < s.latency_tokens:
            print(f"note: latency measured over {n} generated tokens, not phase.latency_tokens={s.latency_tokens}: "
                  f"an 8-token prompt + {n} fills max_seq_len={model.config.max_seq_len} (the KV cache)")
        with speed.PeakMemory(device) as mem:
            lat = speed.generation_latency_ms(model, n, prompt_len=8)
        metrics.update(latency_ms=lat, latency_tokens=n, decode_cached=cached,
                       throughput_tokens_per_sec=n / (lat / 1000), peak_memory_mb=mem.peak_mb)
    times["speed"] = time.perf_counter() - t0
    metrics["param_count"] = sum(p.numel() for p in model.parameters())
    metrics["param_memory_mb"] = speed.param_bytes(model) / 2**20
    times["total"] = time.perf_counter() - t_all
    return {"metrics": metrics, "per_example": per, "timings_s": times, "reference_fit": fit}
