"""The Cognate KV cache (``models/kv_cache.py``) for thought sampling: a decoder filled from one forward
pass over each context (``kv_cache.fill``), repeated for the context's K thoughts.

``kv_cache.fill`` runs the model once over ids [B, P], with every recursion step on every position
(``targets`` given, as in training: the decoder needs each step's keys/values of every past position,
halted or not), and reads through forward hooks the state the decoder would have built position by
position:

* attention, per step and layer: the outputs of ``k_proj`` / ``v_proj``, split into heads and rotated
  with the positions' RoPE angles as ``CausalSelfAttention.forward`` does; the last ``window`` kept;
* memory, per step: the memory's input h (hook on its query projection). The bank after the last
  completed chunk is rebuilt with the memory's own ``_attend`` / ``end_chunk`` in the chunk order of
  ``SurpriseMemory.read``; the open chunk's keys, values, surprises and max read weights are the ones
  ``CognateDecoder._memory`` accumulates.

The test (tests/test_thought_cache.py) checks that prefill + decode steps give the full forward's logits.
"""
from __future__ import annotations

import torch

from agentforge.models.cognate import CognateModel
from agentforge.models.kv_cache import fill


def cacheable(model, total_len: int) -> bool:
    """True when ``prefill`` serves ``model`` for sequences of ``total_len`` tokens (a Cognate model,
    positions inside its RoPE table); other models take the uncached path."""
    return isinstance(model, CognateModel) and total_len <= model.config.max_seq_len


@torch.no_grad()
def prefill(model: CognateModel, ids: torch.Tensor):
    """(decoder at position P, the forward's ``CognateOutput``) for ids [B, P]; the model in eval mode."""
    dec = model.kv_decoder(ids.shape[0])
    return dec, fill(dec, ids)


def repeat_rows(dec, k: int):
    """The decoder with each row repeated ``k`` times (row i -> rows i*k .. i*k+k-1, as repeat_interleave):
    one prefill per context serves its ``k`` thoughts."""
    def rep(x):
        return x.repeat_interleave(k, 0) if torch.is_tensor(x) else x

    for step in dec.attn:
        for cache in step:
            cache.update({name: rep(x) for name, x in cache.items()})
    for st in dec.mem:
        st.update({name: rep(st[name]) for name in ("keys", "vals", "filled", "last", "amax", "prev")})
        st["chunk"] = [tuple(rep(x) for x in entry) for entry in st["chunk"]]
    return dec
