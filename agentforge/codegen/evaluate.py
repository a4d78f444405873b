"""One model on one benchmark subset: sample n completions per problem, execute them all in the sandbox,
count the passes; and the harness's self-check (the canonical solutions must all pass)."""
from __future__ import annotations

import statistics
import time

import torch

from agentforge.codegen.execution import execute, outcome_counts
from agentforge.codegen.problems import Problem
from agentforge.codegen.sampling import sample
from agentforge.evals.speed import interleaved_times
from agentforge.models.generation import generate


def evaluate(lm, problems: list[Problem], *, n: int, temperature: float, top_p: float, max_new_tokens: int,
             seed: int, exec_kw: dict, context_tokens: int | None = None) -> dict:
    """Per-problem {task_id, num_samples, num_correct, outcomes} and the samples with their outcomes."""
    per_problem, samples, programs = [], [], []
    gen_tokens, gen_s, truncated = 0, 0.0, 0
    ctx = min(lm.max_seq_len, context_tokens or lm.max_seq_len)
    for i, p in enumerate(problems):
        truncated += len(lm.encode(p.prompt)) + max_new_tokens > ctx
        s = sample(lm, p.prompt, n, max_new_tokens=max_new_tokens, stop=p.stop, temperature=temperature,
                   top_p=top_p, seed=seed + i, context_tokens=context_tokens)
        gen_tokens, gen_s = gen_tokens + s.new_tokens, gen_s + s.seconds
        print(f"  {p.task_id}: {n} samples, {s.new_tokens} tokens in {s.seconds:.1f} s", flush=True)
        for j, c in enumerate(s.completions):
            samples.append({"task_id": p.task_id, "sample": j, "completion": c})
            programs.append(p.program(c))
    t0 = time.perf_counter()
    results = execute(programs, **exec_kw)
    exec_s = time.perf_counter() - t0
    for s, r in zip(samples, results):
        s.update(outcome=r.outcome, detail=r.detail)
    for i, p in enumerate(problems):
        rs = results[i * n:(i + 1) * n]
        per_problem.append({"task_id": p.task_id, "num_samples": n, "num_correct": sum(r.outcome == "passed" for r in rs),
                            **outcome_counts(rs)})
    unique = len(set(programs))
    return {"problems": per_problem, "samples": samples, "outcomes": outcome_counts(results),
            "generated_tokens": gen_tokens, "generation_seconds": gen_s,
            "sampling_tokens_per_sec": gen_tokens / gen_s if gen_s else float("nan"),
            "prompts_truncated": truncated, "executed_programs": unique, "execution_seconds": exec_s,
            "samples_executed_per_sec": len(programs) / exec_s if exec_s else float("nan")}


def self_check(problems: list[Problem], exec_kw: dict) -> dict:
    """Run every problem's canonical solution; the harness is sound only if all pass (pass@1 = 1.0)."""
    results = execute([p.program(p.canonical_solution) for p in problems], **exec_kw)
    failures = [{"task_id": p.task_id, "outcome": r.outcome, "detail": r.detail}
                for p, r in zip(problems, results) if r.outcome != "passed"]
    return {"n": len(problems), "pass_at_1": 1 - len(failures) / max(len(problems), 1), "failures": failures}


@torch.no_grad()
def generation_latency_ms(lm, tokens: int, prompt: str = "def") -> tuple[float, int]:
    """(ms, tokens) of one greedy generation of ``tokens`` tokens (capped so prompt + tokens fit the model's
    max_seq_len, the KV-cache condition) through the harness's decoding loop, after a short warmup."""
    device = next(lm.model.parameters()).device
    ids = torch.tensor([lm.encode(prompt)], device=device)
    n = min(tokens, lm.max_seq_len - ids.shape[1])
    generate(lm.model, ids, 2, lm.max_seq_len)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    out = generate(lm.model, ids, n, lm.max_seq_len)
    sync()
    assert out.shape[1] - ids.shape[1] == n
    return (time.perf_counter() - t0) * 1000, n


@torch.no_grad()
def _greedy(lm, tokens: int, prompt: str = "def", run: bool = True) -> int:
    """Greedy-generate ``tokens`` tokens after ``prompt`` (capped so they fit max_seq_len); returns how many."""
    ids = torch.tensor([lm.encode(prompt)], device=next(lm.model.parameters()).device)
    n = min(tokens, lm.max_seq_len - ids.shape[1])
    if run:
        generate(lm.model, ids, n, lm.max_seq_len)
    return n


def efficiency(lms: list, trainings: dict, latency_tokens: int, evals: dict, rounds: int = 7) -> dict[str, dict]:
    """The dashboard's efficiency KPIs of every model, under the keys ``evals.compare`` checks. The latency of a
    ``latency_tokens``-token greedy generation is timed for all models in the same process, interleaved
    (``speed.interleaved_times``: ``rounds`` rounds, each model once per round, the order rotating), so the ratio
    targets are decided from per-round ratios and their CI (``compare._ratio_check``), not from two single
    timings minutes apart. Memory is the RSS growth during the model's own training (``train_ram_growth_mb``; the
    process's peak would count the other model's training), NaN when it did not train here or ran on a GPU."""
    out = {lm.name: {"param_count": lm.num_params(),
                     "peak_memory_mb": (trainings.get(lm.name) or {}).get("train_ram_growth_mb", float("nan")),
                     "sampling_tokens_per_sec": evals[lm.name]["sampling_tokens_per_sec"]} for lm in lms}
    if latency_tokens:
        counts = {lm.name: _greedy(lm, 2) for lm in lms}   # warm each model's decoding path
        counts = {lm.name: _greedy(lm, latency_tokens, run=False) for lm in lms}
        cuda = any(next(lm.model.parameters()).is_cuda for lm in lms)
        times = interleaved_times({lm.name: (lambda lm=lm: _greedy(lm, latency_tokens)) for lm in lms}, rounds,
                                  warmup=0, sync=torch.cuda.synchronize if cuda else None)
        for lm in lms:
            ms = [t * 1000 for t in times[lm.name]]
            med = statistics.median(ms)
            out[lm.name].update(latency_ms=med, latency_rounds_ms=ms, latency_tokens=counts[lm.name],
                                throughput_tokens_per_sec=counts[lm.name] / (med / 1000))
    return out
