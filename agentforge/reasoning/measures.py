"""What the Quiet-STaR RL step reports about the trained model besides its training curves: the cost of thinking
(milliseconds per generated token with and without a thought, interleaved timings) and the improvement over the
baked model, paired by question with its n, CI and test."""
from __future__ import annotations

import torch

from agentforge.data import formats, synthetic
from agentforge.evals.speed import interleaved_medians
from agentforge.evals.stats import paired_test
from agentforge.reasoning.thoughts import generate_with_thoughts


def inference_ms(model, head, tok, tc, tids, n_tokens: int, rounds: int = 3) -> tuple[float, float]:
    """Milliseconds per generated token (greedy) with one thought per token, and without thoughts: medians of
    ``rounds`` interleaved rounds after a warm-up (``speed.interleaved_medians``), so the ratio is not one timing
    of each taken one after the other."""
    device = next(model.parameters()).device
    ids = torch.tensor([tok.encode(formats.gsm8k_prompt(synthetic.arithmetic(0, "test", 0)), bos=True)], device=device)

    def gen(h):
        return lambda: generate_with_thoughts(model, h, ids, n_tokens, tc.thought_length, tids["start"], tids["end"],
                                              tc.context_len, tc.temperature, tids["banned"],
                                              torch.Generator().manual_seed(0))

    med = interleaved_medians({"with": gen(head), "without": gen(None)}, rounds, warmup=1,
                              sync=torch.cuda.synchronize if device.type == "cuda" else None)
    return med["with"] * 1000 / n_tokens, med["without"] * 1000 / n_tokens


def improvement_evidence(after: list[int] | None, before: list[int]) -> dict:
    """n, 95 % CI and test of ``rl/improvement_over_baked``: the RL model's (the last check's) and the baked model's
    answers to the same held-out GSM8K-format questions, 1/0 per question, paired (``stats.paired_test``: McNemar's
    exact p, the hull of Tango's and the exact conditional CI). A run resumed from a checkpoint of older code has no per-question answers: no evidence."""
    if not after:
        return {}
    if len(after) < 2:
        return {"rl/improvement_over_baked_n": len(after)}
    t = paired_test(after, before)
    return {"rl/improvement_over_baked_n": t["n"], "rl/improvement_over_baked_ci95": t["ci95"],
            "rl/improvement_over_baked_test": f"{t['test']}, p={t['p_value']:.3g}, paired by question"}
