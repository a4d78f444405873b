"""Multiple-choice scoring with the part a question's choices share computed once (Cognate, KV cache).

Scoring a choice is the summed log-probability of its tokens after the prompt. The plain way
(``tasks.score_sequences``) runs prompt + choice through the model for every choice, so an ARC-format
question with four short choices computes its long prompt four times, and a PIQA-format question its
prompt and the long identical start of its two solutions twice. Here the shared part of a question
is its prompt plus the longest common prefix of its choices' tokens, and a group of questions runs:

1. ``kv_cache.fill`` takes the first L0 tokens of every question's shared part (L0: the shortest shared
   part of the group) in one forward pass, one row per question; the choice tokens among them (the same
   for every choice of the question) are scored from its logits;
2. the decoder state is copied to one row per choice (``CognateDecoder.copy`` with per-question counts);
3. the decoder feeds every row its own next token one position at a time (the rest of its shared part,
   then its own tail) and the log-probability of each later choice token is read off the logits before it.

Every row holds its prompt followed by its choice with nothing in between (padding only after its end),
and the decoder's operations are per row, so each choice gets the score of a full forward pass over
prompt + choice up to floating-point rounding (``tests/test_eval.py`` compares both on a Cognate model:
scores to 1e-4, every prediction exactly). Used for models with a ``kv_decoder`` and sequences within
``max_seq_len`` where it saves work (``prefers``); the others are scored by full forward passes.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

GROUP_ROWS = 128   # choices (decoder rows) per group
# One decoder step, in forward-pass tokens: a figure on the safe side. Timed on 200 questions (default m1
# size trained 90 steps, one CPU thread, load 7-9; ``benchmarks/bench_eval.py --checkpoint DIR``): ARC-format
# 14.0 s full vs 6.0 s shared; PIQA-format 6.4-7.0 s full vs 5.2-6.1 s shared with 10, 3 or 1 here.
STEP_COST = 10


def supports(model) -> bool:
    """A model whose decoder can be filled from a prompt and copied per choice (the Cognate model)."""
    return hasattr(model, "kv_decoder") and hasattr(model, "memory")


def shared_length(prompt: list[int], choices: list[list[int]]) -> int:
    """Tokens every choice sequence of the question starts with: the prompt + the choices' common prefix."""
    common = len(os.path.commonprefix(choices)) if choices else 0
    return len(prompt) + common


def prefers(prompt: list[int], choices: list[list[int]], max_len: int) -> bool:
    """Whether sharing pays for this question. Full forward passes cost k (P + C) tokens (k choices of
    C tokens after a P-token prompt); sharing costs about S + STEP_COST sum(C - c), with S = P + c the
    shared part (c: the choices' common prefix): a decoder step runs every recursion step of a position
    (the forward pass stops where tokens halt) and pays per-step overheads. Both give the same scores;
    only the time differs."""
    if len(choices) < 2 or any(len(prompt) + len(c) > max_len for c in choices):
        return False
    s = shared_length(prompt, choices)
    tails = sum(len(prompt) + len(c) - s for c in choices)
    return s + STEP_COST * tails < sum(len(prompt) + len(c) for c in choices)


def groups(items: list[int], shared_lens: list[int], n_choices: list[int], rows: int | None = None) -> list[list[int]]:
    """``items`` sorted by shared length, cut into groups of at most ``rows`` (default ``GROUP_ROWS``, read at
    call time) choices (at least one item)."""
    rows = GROUP_ROWS if rows is None else rows
    order = sorted(range(len(items)), key=shared_lens.__getitem__)
    out, cur, used = [], [], 0
    for i in order:
        if cur and used + n_choices[i] > rows:
            out.append(cur)
            cur, used = [], 0
        cur.append(items[i])
        used += n_choices[i]
    return out + ([cur] if cur else [])


def _token_logp(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


@torch.no_grad()
def score_group(model, prompts: list[list[int]], choices: list[list[list[int]]], pad_id: int) -> list[list[float]]:
    """Per question, the summed log P(choice tokens | prompt) of each of its choices (lists of token ids).

    Every prompt must be non-empty and len(prompt) + len(choice) <= model.config.max_seq_len."""
    from agentforge.models.kv_cache import fill

    device = next(model.parameters()).device
    q = len(prompts)
    shared = [(p + cs[0])[: shared_length(p, cs)] for p, cs in zip(prompts, choices)]
    l0 = min(len(s) for s in shared)
    dec = model.kv_decoder(q)
    head = torch.tensor([s[:l0] for s in shared], device=device)
    out = fill(dec, head)
    # choice tokens inside the filled part: scored once per question (positions len(prompt) .. l0 - 1)
    logp = _token_logp(out.logits[:, :-1], head[:, 1:])                       # [q, l0 - 1]: position j + 1
    first = torch.tensor([len(p) for p in prompts], device=device)
    keep = torch.arange(1, l0, device=device)[None, :] >= first[:, None]
    head_scores = torch.where(keep, logp, torch.zeros_like(logp)).sum(1)       # [q]
    counts = torch.tensor([len(c) for c in choices])
    dec = dec.copy(repeat=counts)
    seqs = [p + c for p, cs in zip(prompts, choices) for c in cs]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = torch.tensor(s)
    ids = ids.to(device)
    lengths = torch.tensor([len(s) for s in seqs], device=device)
    start = first.repeat_interleave(counts.to(device))
    total = head_scores.repeat_interleave(counts.to(device), 0).float()
    logits = out.logits[:, -1].repeat_interleave(counts.to(device), 0)  # predicts position l0
    for pos in range(l0, width):
        scored = (start <= pos) & (pos < lengths)
        if bool(scored.any()):
            lp = _token_logp(logits, ids[:, pos])
            total += torch.where(scored, lp, torch.zeros_like(lp))
        if pos + 1 < width:   # width is the longest row's length: some row still has a token to score
            logits = dec.next_logits(ids[:, : pos + 1])
    flat = total.tolist()
    res, i = [], 0
    for cs in choices:
        res.append(flat[i: i + len(cs)])
        i += len(cs)
    return res
