"""Whether the GSM8K reference answers can be written within the generation budget at all: a check of the evaluation
protocol, independent of the model's weights.

Greedy and sampled GSM8K answers get ``phase.gen_tokens`` new tokens, and an answer cut there is not credited
(``answers.answers_match``). An accuracy therefore measures the model only where the reference worked answers
themselves fit: on the real GSM8K test questions (answer + EOS: median 246 tokens, min 60) the old budget of 48 fit
none of 142, an oracle writing the reference solution scored 6 / 142 there, and the comparison still said FAILURE or
SUCCESS. ``reference_fit`` counts the evaluated questions whose reference answer, tokenized as the model emits it
(``formats.gsm8k_target`` + EOS), fits ``gen_tokens`` and, after its prompt, the model's context (``max_seq_len``:
generation past it slides the window off the question). Below ``MIN_REFERENCE_FIT`` ``phase=eval`` warns and
``phase=compare``'s verdict does not decide on the accuracy targets (INCONCLUSIVE, with ``shortfall``'s reason).
"""
from __future__ import annotations

import math

from agentforge.data import formats

# The share of reference answers the budget must fit: at 0.95 an oracle can still score 0.95, and the budget needed is
# the answers' 95th percentile (nearest rank), the figure the reason names.
MIN_REFERENCE_FIT = 0.95


def _p95(xs: list[int]) -> int:
    """The nearest-rank 95th percentile: the smallest value that at least 95 % of ``xs`` do not exceed."""
    return sorted(xs)[math.ceil(0.95 * len(xs)) - 1]


def reference_fit(tokenizer, records: list[dict], gen_tokens: int, max_seq_len: int | None = None) -> dict:
    """{rate, fit, n, gen_tokens, max_seq_len, answer_tokens_p95, context_tokens_p95}: the share (and count) of
    ``records`` whose reference answer + EOS fits ``gen_tokens`` and whose prompt (with BOS) + answer fits
    ``max_seq_len`` (None: no context limit); the p95 figures are the budget and context 95 % of them need."""
    answer = [len(tokenizer.encode(formats.gsm8k_target(r), eos=True)) for r in records]
    context = [len(tokenizer.encode(formats.gsm8k_prompt(r), bos=True)) + a for r, a in zip(records, answer)]
    limit = math.inf if max_seq_len is None else max_seq_len
    fit = sum(a <= gen_tokens and c <= limit for a, c in zip(answer, context))
    return {"rate": fit / len(records) if records else None, "fit": fit, "n": len(records), "gen_tokens": gen_tokens,
            "max_seq_len": max_seq_len, "answer_tokens_p95": _p95(answer) if records else None,
            "context_tokens_p95": _p95(context) if records else None}


def shortfall(fit: dict | None) -> str | None:
    """The reason an accuracy on these questions measures the budget, not the model (the rate is below
    ``MIN_REFERENCE_FIT``): naming ``phase.gen_tokens``, the fit rate and what 95 % of the answers need; None when
    the budget fits or nothing was recorded."""
    rate = (fit or {}).get("rate")
    if rate is None or rate >= MIN_REFERENCE_FIT:
        return None
    budget, n = fit.get("gen_tokens"), fit.get("n")
    out = (f"phase.gen_tokens{'' if budget is None else f'={budget}'} fits {rate:.0%} of the "
           f"{'' if n is None else f'{n} '}GSM8K reference answers (gen/reference_fit_rate {rate:.3f} < {MIN_REFERENCE_FIT})")
    need, ctx, seq = fit.get("answer_tokens_p95"), fit.get("context_tokens_p95"), fit.get("max_seq_len")
    if need is not None:
        out += f"; 95 % of them need phase.gen_tokens >= {need}"
        if seq is not None and ctx is not None and ctx > seq:
            out += f" and {ctx} tokens of context with the prompt (the model's max_seq_len is {seq})"
    return out + ": an answer cut at the budget is not credited, so its accuracies measure the budget"
