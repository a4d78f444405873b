"""One model on one benchmark subset: sample n completions per problem, execute them all in the sandbox,
count the passes; and the harness's self-check (the canonical solutions must all pass)."""
from __future__ import annotations

import statistics
import time

import torch

from agentforge.codegen.execution import execute, outcome_counts, split_program
from agentforge.codegen.problems import Problem
from agentforge.codegen.sampling import sample, truncate
from agentforge.evals.speed import interleaved_times, warmup_runs
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
            programs.append(split_program(p, c))
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
    chars = [len(s["completion"]) for s in samples]
    return {"problems": per_problem, "samples": samples, "outcomes": outcome_counts(results),
            "completion_chars_mean": sum(chars) / len(chars) if chars else float("nan"),
            "completion_chars_max": max(chars, default=0),
            "generated_tokens": gen_tokens, "generation_seconds": gen_s,
            "sampling_tokens_per_sec": gen_tokens / gen_s if gen_s else float("nan"),
            "prompts_truncated": truncated, "executed_programs": unique, "execution_seconds": exec_s,
            "samples_executed_per_sec": len(programs) / exec_s if exec_s else float("nan")}


def self_check(problems: list[Problem], exec_kw: dict) -> dict:
    """Run every problem's canonical solution; the harness is sound only if all pass (pass@1 = 1.0)."""
    results = execute([split_program(p, p.canonical_solution) for p in problems], **exec_kw)
    failures = [{"task_id": p.task_id, "outcome": r.outcome, "detail": r.detail}
                for p, r in zip(problems, results) if r.outcome != "passed"]
    return {"n": len(problems), "pass_at_1": 1 - len(failures) / max(len(problems), 1), "failures": failures}


def budget_cut(lm, solution: str, max_new_tokens: int, stop: tuple[str, ...]) -> str:
    """``solution`` as ``lm`` could at best write it within ``max_new_tokens`` of its own tokens: its first
    ``max_new_tokens`` tokens (no BOS), decoded, then cut at the first stop sequence, as ``sample`` cuts."""
    prefix = lm.encode("")                       # the BOS a byte LM puts first; [] for a BPE tokenizer
    ids = lm.encode(solution)
    ids = ids[len(prefix):] if ids[:len(prefix)] == prefix else ids
    return truncate(lm.decode(ids[:max_new_tokens]), stop)


def budget_ceiling(lms: list, problems: list[Problem], max_new_tokens: int, exec_kw: dict) -> dict[str, float]:
    """{model: pass@1 of the canonical solutions cut to that model's ``max_new_tokens`` budget (``budget_cut``)}: the
    score a perfect model could reach under the budget; identical programs run once (``execute``)."""
    cut = {lm.name: [split_program(p, budget_cut(lm, p.canonical_solution, max_new_tokens, p.stop)) for p in problems]
           for lm in lms}
    results = execute([prog for progs in cut.values() for prog in progs], **exec_kw)
    out, i = {}, 0
    for name, progs in cut.items():
        out[name] = sum(r.outcome == "passed" for r in results[i:i + len(progs)]) / max(len(progs), 1)
        i += len(progs)
    return out


def truncation_warning(name: str, truncated: int, n: int, ctx: int, max_new_tokens: int,
                       limit: float = 0.10) -> str | None:
    """A warning when more than ``limit`` of the prompts were left-truncated (they lose their start: imports, the
    signature), else None."""
    if n and truncated > limit * n:
        return (f"warning: {name}: {truncated} of {n} prompts ({truncated / n:.0%}) outgrow the context ({ctx} tokens "
                f"- {max_new_tokens} new) and are left-truncated, losing their start (imports, the signature); raise "
                f"model.max_seq_len (size=25m: 1024) or phase.context_tokens (both models share the smallest context, a "
                f"phase.checkpoint's own max_seq_len included), or lower phase.max_new_tokens")
    return None


PROBE = "def add(a, b):\n    return a + b  # sum\n"


def token_units_differ(lms: list) -> bool:
    """True when the models' tokenizers encode the same text differently (bytes vs GPT-2 BPE): their token counts
    (max_new_tokens, context, the latency's tokens) then measure different amounts of text."""
    return len({tuple(lm.encode(PROBE)) for lm in lms}) > 1


def generation_latency_ms(lm, tokens: int, prompt: str = "def") -> tuple[float, int]:
    """(ms, tokens) of one greedy generation of ``tokens`` tokens (capped so prompt + tokens fit the model's
    max_seq_len, the KV-cache condition) through the harness's decoding loop, after a short warmup."""
    _greedy(lm, 2, prompt)
    sync = torch.cuda.synchronize if next(lm.model.parameters()).is_cuda else (lambda: None)
    sync()
    t0 = time.perf_counter()
    n = _greedy(lm, tokens, prompt)
    sync()
    return (time.perf_counter() - t0) * 1000, n


def _fit(lm, tokens: int, prompt: str = "def") -> tuple[torch.Tensor, int]:
    """(prompt ids [1, P], ``tokens`` capped so that P + tokens fit max_seq_len)."""
    ids = torch.tensor([lm.encode(prompt)], device=next(lm.model.parameters()).device)
    return ids, min(tokens, lm.max_seq_len - ids.shape[1])


@torch.no_grad()
def _greedy(lm, tokens: int, prompt: str = "def", chars: bool = False) -> int:
    """Greedy-generate ``tokens`` tokens after ``prompt`` (``_fit``); returns how many (``chars``: how many
    characters they decode to)."""
    ids, n = _fit(lm, tokens, prompt)
    out = generate(lm.model, ids, n, lm.max_seq_len)
    assert out.shape[1] - ids.shape[1] == n
    return len(lm.decode(out[0, ids.shape[1]:].tolist())) if chars else n


def efficiency(lms: list, trainings: dict, latency_tokens: int, evals: dict, rounds: int = 7) -> dict[str, dict]:
    """The dashboard's efficiency KPIs of every model, under the keys ``evals.compare`` checks. The latency of a
    ``latency_tokens``-token greedy generation is timed for all models in the same process, interleaved
    (``speed.interleaved_times``: ``rounds`` rounds, each model once per round, the order rotating), so the ratio
    targets are decided from per-round ratios and their CI (``compare._ratio_check``), not from two single
    timings minutes apart. Memory (``peak_memory_mb``) is the training's ``peak_train_ram_mb``, NaN when the model
    did not train here. Trained each in a fresh process of its own (``training.train_isolated``, every training
    ``isolated``), it is that process's high-water mark (on a GPU the CUDA allocator's peak), a true peak comparable
    between the models: ``memory_shared_process`` False, and the ratio target decides. Trained one after the other
    in this process (``training.train``, a multi-process hardware group), it is the largest RSS (on a GPU, CUDA
    allocation) logged during that training, which also holds what the earlier training left behind:
    ``memory_shared_process`` True, and the ratio check decides nothing ("not comparable"). When the tokenizers
    differ (``token_units_differ``: bytes vs BPE), the same token count is a different amount of text:
    ``token_units_differ`` tells the ratio checks so, and ``latency_chars`` says how many characters were timed."""
    differ = token_units_differ(lms)
    shared = any(not t.get("isolated") for t in trainings.values())
    out = {lm.name: {"param_count": lm.num_params(), "memory_shared_process": shared, "token_units_differ": differ,
                     "peak_memory_mb": (trainings.get(lm.name) or {}).get("peak_train_ram_mb", float("nan")),
                     "sampling_tokens_per_sec": evals[lm.name]["sampling_tokens_per_sec"],
                     "device": next(lm.model.parameters()).device.type} for lm in lms}
    if latency_tokens:
        chars = {lm.name: _greedy(lm, latency_tokens, chars=True) for lm in lms}   # warms each decoding path
        counts = {lm.name: _fit(lm, latency_tokens)[1] for lm in lms}
        cuda = any(next(lm.model.parameters()).is_cuda for lm in lms)
        # a second untimed round where a decoder replays CUDA graphs (speed.warmup_runs): its first timed round held
        # every capture, against Cognate only (GPT-2's decoder has no graphs)
        times = interleaved_times({lm.name: (lambda lm=lm: _greedy(lm, latency_tokens)) for lm in lms}, rounds,
                                  warmup=max(warmup_runs(lm.model) for lm in lms) - 1,
                                  sync=torch.cuda.synchronize if cuda else None)
        for lm in lms:
            ms = [t * 1000 for t in times[lm.name]]
            med = statistics.median(ms)
            out[lm.name].update(latency_ms=med, latency_rounds_ms=ms, latency_tokens=counts[lm.name],
                                latency_chars=chars[lm.name],
                                throughput_tokens_per_sec=counts[lm.name] / (med / 1000))
    return out
