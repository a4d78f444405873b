"""What the Quiet-STaR RL step reports about the trained model besides its training curves: the cost of thinking
(milliseconds per generated token with and without a thought, interleaved timings, and their per-round ratio with
a CI), the held-out accuracies with n and CI, and the improvement over the baked model, paired by question with its
n, CI and test. The accuracies are answered directly, without thoughts (``DIRECT``): they measure what RL and its
LM/KL losses did to the weights, not what thinking adds, and the mixing head is used by nothing downstream."""
from __future__ import annotations

import statistics

import torch

from agentforge.data import formats, synthetic
from agentforge.evals.compare import round_ratios
from agentforge.evals.speed import interleaved_times
from agentforge.evals.stats import exact_proportion_ci, paired_test
from agentforge.reasoning.thoughts import generate_with_thoughts

DIRECT = "answered directly, without thoughts (greedy decoding; the mixing head is not used)"


def inference_ms(model, head, tok, tc, tids, n_tokens: int, rounds: int = 7) -> dict:
    """The cost of thinking: milliseconds per generated token (greedy) with one thought per token and without
    thoughts, medians of ``rounds`` interleaved rounds after a warm-up (``speed.interleaved_times``), and the
    thinking-cost ratio as the median of the per-round ratios with its distribution-free 95 % CI (``median_ci``;
    7 rounds cover 98.4 %, fewer than 6 give the range, which covers less) and n (rounds)."""
    device = next(model.parameters()).device
    ids = torch.tensor([tok.encode(formats.gsm8k_prompt(synthetic.arithmetic(0, "test", 0)), bos=True)], device=device)

    def gen(h):
        return lambda: generate_with_thoughts(model, h, ids, n_tokens, tc.thought_length, tids["start"], tids["end"],
                                              tc.context_len, tc.temperature, tids["banned"],
                                              torch.Generator().manual_seed(0))

    t = interleaved_times({"with": gen(head), "without": gen(None)}, rounds, warmup=1,
                          sync=torch.cuda.synchronize if device.type == "cuda" else None)
    ratio, ci, n = round_ratios(t["with"], t["without"])
    return {"rl/inference_time_ms": statistics.median(t["with"]) * 1000 / n_tokens,
            "rl/inference_time_ms_without_thoughts": statistics.median(t["without"]) * 1000 / n_tokens,
            "rl/thinking_cost_ratio": ratio, "rl/thinking_cost_ratio_ci95": ci, "rl/thinking_cost_ratio_n": n,
            "rl/thinking_cost_ratio_test": "median of per-round ratios of interleaved rounds; order-statistic CI"}


def accuracy_evidence(check: dict) -> dict:
    """n and the 95 % exact (Clopper-Pearson) CI of the last check's held-out GSM8K- and ARC-format accuracies (a
    handful of questions by default: the CI says how little they resolve), and how they were answered (``DIRECT``)."""
    out = {}
    for task in ("gsm8k", "arc"):
        out[f"rl/final_{task}_accuracy_test"] = f"{DIRECT}; exact (Clopper-Pearson) 95% CI over questions"
        c = check.get(f"{task}_correct")
        if c:
            out[f"rl/final_{task}_accuracy_n"] = len(c)
            out[f"rl/final_{task}_accuracy_ci95"] = exact_proportion_ci(int(sum(c)), len(c))
    return out


def improvement_evidence(after: list[int] | None, before: list[int]) -> dict:
    """n, 95 % CI and test of ``rl/improvement_over_baked``: the RL model's (the last check's) and the baked model's
    answers to the same held-out GSM8K-format questions, 1/0 per question, paired (``stats.paired_test``: McNemar's
    exact p, the hull of Tango's and the exact conditional CI). A run resumed from a checkpoint of older code has no per-question answers: no evidence."""
    if not after:
        return {}
    if len(after) < 2:
        return {"rl/improvement_over_baked_n": len(after), "rl/improvement_over_baked_test": f"both models {DIRECT}"}
    t = paired_test(after, before)
    return {"rl/improvement_over_baked_n": t["n"], "rl/improvement_over_baked_ci95": t["ci95"],
            "rl/improvement_over_baked_test": f"{t['test']}, p={t['p_value']:.3g}, paired by question; both models "
                                              f"{DIRECT}"}


def accuracy_line(summary: dict) -> str:
    """The printed line of the held-out accuracies and the improvement over the baked model, with n and CIs, saying
    how they were answered (``DIRECT``), so nobody reads them as the benefit of thinking."""
    def fig(key: str, fmt: str) -> str:
        ci, n = summary.get(f"{key}_ci95"), summary.get(f"{key}_n")
        return (format(summary[key], fmt) + (f" [{format(ci[0], fmt)}, {format(ci[1], fmt)}]" if ci else "")
                + (f" n={n}" if n is not None else ""))
    return (f"held-out accuracy, {DIRECT}; it shows what RL did to the weights, not what thinking adds: "
            f"GSM8K-format {fig('rl/final_gsm8k_accuracy', '.3f')}, ARC-format {fig('rl/final_arc_accuracy', '.3f')}; "
            f"vs the baked model (also without thoughts, paired) {fig('rl/improvement_over_baked', '+.3f')}")


def thinking_cost_line(cost: dict) -> str:
    """The printed thinking-cost line (``inference_ms``' keys). Each figure is a median over the rounds, and the ratio
    is the median of the per-round ratios, not the ratio of the two printed medians (they can differ a lot with few
    rounds: 93.7 / 17.4 = 5.4 beside a 9.6x median ratio), so the line says which is which."""
    lo, hi = cost["rl/thinking_cost_ratio_ci95"]
    return (f"thinking cost: median {cost['rl/inference_time_ms']:.1f} ms/token with a thought vs median "
            f"{cost['rl/inference_time_ms_without_thoughts']:.1f} without; median of per-round ratios "
            f"{cost['rl/thinking_cost_ratio']:.1f}x, 95% CI [{lo:.1f}, {hi:.1f}], {cost['rl/thinking_cost_ratio_n']} "
            f"interleaved rounds")
