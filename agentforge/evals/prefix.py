"""Multiple-choice scoring with each question's prompt computed once (Cognate models, KV cache).

Scoring a choice is the summed log-probability of its tokens after the prompt. The plain way
(``tasks.score_sequences``) runs prompt + choice through the model for every choice, so an ARC-format
question with four short choices computes its long prompt four times. Here a group of questions runs
as follows:

1. ``kv_cache.fill`` takes the first L0 tokens of every prompt (L0: the shortest prompt of the group)
   in one forward pass, one row per question;
2. the decoder state is copied to one row per choice (``_repeat_rows``);
3. the decoder then feeds every row its own next token one position at a time (the rest of its prompt,
   then its choice) and the log-probability of each choice token is read off the logits before it.

Every row holds its prompt followed by its choice with nothing in between (padding only after its end),
and the decoder's operations are per row, so each choice gets the score of a full forward pass over
prompt + choice up to floating-point rounding (``tests/test_eval.py`` compares both on a Cognate model,
scores to 1e-4 and every prediction exactly). Used for models with a ``kv_decoder`` and sequences within
``max_seq_len``; any other model or sequence is scored by full forward passes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def supports(model) -> bool:
    """A model whose decoder can be filled from a prompt and copied per choice (the Cognate model)."""
    return hasattr(model, "kv_decoder") and hasattr(model, "memory")


GROUP_ROWS = 128   # choices (decoder rows) per group


def prefers(prompt: list[int], choices: list[list[int]], max_len: int) -> bool:
    """Whether sharing the prompt pays for this question: a full forward pass costs k (P + C) tokens
    (k choices, prompt P, choice C tokens); sharing costs about P + 3 k C, since one decoder step costs
    about three forward tokens on the CPU (measured: ``benchmarks/bench_eval.py``). So share when
    2 sum(C) < (k - 1) P, e.g. ARC-format (P ~ 75, four choices of ~7 tokens), not PIQA-format (P ~ 55,
    two solutions of ~38). Both give the same scores; only the time differs."""
    return (all(len(prompt) + len(c) <= max_len for c in choices) and len(choices) > 1
            and 2 * sum(len(c) for c in choices) < (len(choices) - 1) * len(prompt))


def groups(items: list[int], prompt_lens: list[int], n_choices: list[int], rows: int = GROUP_ROWS) -> list[list[int]]:
    """``items`` sorted by prompt length, cut into groups of at most ``rows`` choices (at least one item)."""
    order = sorted(range(len(items)), key=prompt_lens.__getitem__)
    out, cur, used = [], [], 0
    for i in order:
        if cur and used + n_choices[i] > rows:
            out.append(cur)
            cur, used = [], 0
        cur.append(items[i])
        used += n_choices[i]
    return out + ([cur] if cur else [])


def _repeat_rows(obj, batch: int, counts: torch.Tensor):
    """``obj`` (tensors in dicts/lists/tuples) with every tensor's batch rows repeated ``counts`` times."""
    if isinstance(obj, torch.Tensor):
        return obj.repeat_interleave(counts.to(obj.device), 0) if obj.dim() and obj.shape[0] == batch else obj
    if isinstance(obj, dict):
        return {k: _repeat_rows(v, batch, counts) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_repeat_rows(v, batch, counts) for v in obj)
    return obj


@torch.no_grad()
def score_group(model, prompts: list[list[int]], choices: list[list[list[int]]], pad_id: int) -> list[list[float]]:
    """Per question, the summed log P(choice tokens | prompt) of each of its choices (lists of token ids).

    Every prompt must be non-empty and len(prompt) + len(choice) <= model.config.max_seq_len."""
    from agentforge.models.kv_cache import fill

    device = next(model.parameters()).device
    q = len(prompts)
    l0 = min(len(p) for p in prompts)
    dec = model.kv_decoder(q)
    out = fill(dec, torch.tensor([p[:l0] for p in prompts], device=device))
    counts = torch.tensor([len(c) for c in choices])
    for name in [k for k in vars(dec) if k != "model"]:
        setattr(dec, name, _repeat_rows(getattr(dec, name), q, counts))
    seqs = [p + c for p, cs in zip(prompts, choices) for c in cs]
    starts = [len(p) for p, cs in zip(prompts, choices) for _ in cs]  # first choice position of each row
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = torch.tensor(s)
    ids = ids.to(device)
    lengths = torch.tensor([len(s) for s in seqs], device=device)
    start = torch.tensor(starts, device=device)
    total = torch.zeros(len(seqs), dtype=torch.float32, device=device)
    logits = out.logits[:, -1].repeat_interleave(counts.to(device), 0)  # predicts position l0
    for pos in range(l0, width):
        scored = (start <= pos) & (pos < lengths)
        if bool(scored.any()):
            logp = F.log_softmax(logits.float(), dim=-1).gather(1, ids[:, pos: pos + 1]).squeeze(1)
            total += torch.where(scored, logp, torch.zeros_like(logp))
        if pos + 1 < width:
            logits = dec.next_logits(ids[:, : pos + 1])
    flat = total.tolist()
    res, i = [], 0
    for cs in choices:
        res.append(flat[i: i + len(cs)])
        i += len(cs)
    return res
