"""Autoregressive decoding shared by every model of the project.

A model with a ``kv_decoder(batch)`` method (the Cognate model: ``kv_cache.py``) is decoded
incrementally, one new position per token (the prompt in one pass where the decoder has ``prefill``),
when the whole sequence fits in ``max_seq_len``; any other model, or ``use_cache=False``, re-runs the
(truncated) context every token.

The loop never waits on the device per token: the next token stays a tensor, and "have all rows
emitted ``eos_id``?" is read back only every ``check_every`` tokens (one host sync each time) and once
at the end, where the tokens generated after the step at which the last row finished are trimmed off —
so the result is exactly the one a per-token check would give.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def generate(model, input_ids: torch.Tensor, max_new_tokens: int, max_seq_len: int, eos_id: int | None = None,
             temperature: float = 0.0, generator: torch.Generator | None = None,
             check_every: int = 16, use_cache: bool = True) -> torch.Tensor:
    """Greedy (temperature 0) or sampled continuation of input_ids [B, T]; returns [B, T + new].

    ``model(ids)`` may return logits or an object with ``.logits``; the context is truncated to the last
    ``max_seq_len`` tokens. Rows that emitted ``eos_id`` keep emitting it; decoding stops at the step at
    which all have (checked on the host every ``check_every`` tokens, the surplus trimmed).
    """
    ids = input_ids
    b, start = ids.shape
    decoder = getattr(model, "kv_decoder", None)
    if use_cache and decoder is not None and start + max_new_tokens <= max_seq_len:
        dec = decoder(b)
        prefill = getattr(dec, "prefill", dec.next_logits)  # the prompt in one forward pass where the decoder can

        def next_logits(ids):
            return prefill(ids) if ids.shape[1] == start else dec.next_logits(ids)
    else:
        def next_logits(ids):
            out = model(ids[:, -max_seq_len:])
            return (out.logits if hasattr(out, "logits") else out)[:, -1]
    done = torch.zeros(b, dtype=torch.bool, device=ids.device)
    finished_at = torch.full((b,), max_new_tokens, dtype=torch.long, device=ids.device)  # step of each row's eos
    for step in range(max_new_tokens):
        logits = next_logits(ids).float()
        if temperature > 0:
            nxt = torch.multinomial(F.softmax(logits / temperature, -1), 1, generator=generator)
        else:
            nxt = logits.argmax(-1, keepdim=True)
        if eos_id is not None:
            nxt = torch.where(done[:, None], torch.full_like(nxt, eos_id), nxt)
            newly = ~done & (nxt.squeeze(-1) == eos_id)
            finished_at = torch.where(newly, torch.full_like(finished_at, step), finished_at)
            done |= newly
        ids = torch.cat([ids, nxt], dim=1)
        if eos_id is not None and (step + 1) % check_every == 0 and bool(done.all()):
            break
    if eos_id is not None and ids.shape[1] > start:
        keep = min(int(finished_at.max()) + 1, ids.shape[1] - start)  # one sync, after the loop
        ids = ids[:, : start + keep]
    return ids
