"""Autoregressive decoding shared by every model of the project (no KV cache: the recursion and the
memory make one awkward, and the CPU models are small)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def generate(model, input_ids: torch.Tensor, max_new_tokens: int, max_seq_len: int, eos_id: int | None = None,
             temperature: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Greedy (temperature 0) or sampled continuation of input_ids [B, T]; returns [B, T + new].

    ``model(ids)`` may return logits or an object with ``.logits``; the context is truncated to the last
    ``max_seq_len`` tokens. Rows that emitted ``eos_id`` keep emitting it; decoding stops when all have.
    """
    ids = input_ids
    done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    for _ in range(max_new_tokens):
        out = model(ids[:, -max_seq_len:])
        logits = (out.logits if hasattr(out, "logits") else out)[:, -1].float()
        if temperature > 0:
            nxt = torch.multinomial(F.softmax(logits / temperature, -1), 1, generator=generator)
        else:
            nxt = logits.argmax(-1, keepdim=True)
        if eos_id is not None:
            nxt = torch.where(done[:, None], torch.full_like(nxt, eos_id), nxt)
            done |= nxt.squeeze(-1) == eos_id
        ids = torch.cat([ids, nxt], dim=1)
        if eos_id is not None and bool(done.all()):
            break
    return ids
