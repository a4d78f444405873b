"""The Cognate KV cache (``models/kv_cache.py``) for thought sampling: a decoder filled from one pass over
each context (``kv_cache.fill``, i.e. ``CognateDecoder.extend`` on a fresh decoder: every recursion step on
every position, as the decoder needs each step's keys/values of every past position, halted or not),
repeated for the context's K thoughts (``CognateDecoder.copy(repeat=K)``).

The tests (tests/test_thought_cache.py, tests/test_kv_extend.py) check that prefill + decode steps and
prefill + extensions give the full forward's logits (and its gradients).
"""
from __future__ import annotations

import torch

from agentforge.models.cognate import CognateModel
from agentforge.models.kv_cache import fill


def cacheable(model, total_len: int) -> bool:
    """True when ``prefill`` serves ``model`` for sequences of ``total_len`` tokens (a Cognate model,
    positions inside its RoPE table, no persistent memory: ``CognateDecoder.extend`` refuses one); other
    models take the uncached path."""
    return (isinstance(model, CognateModel) and total_len <= model.config.max_seq_len
            and not model.memory.persist)


def extendable(model, total_len: int) -> bool:
    """True when ``CognateDecoder.extend`` computes ``model``'s forward for ``total_len`` tokens, gradients
    included: ``cacheable`` and the model in eval mode (as the Quiet-STaR phase trains it; train mode adds TRM's
    no-grad early steps and QK-clip's statistics, which only the full forward has)."""
    return cacheable(model, total_len) and not model.training


@torch.no_grad()
def prefill(model: CognateModel, ids: torch.Tensor):
    """(decoder at position P, the ``kv_cache.Extension`` (logits, hidden) of ids [B, P]: the eval-mode forward's)."""
    dec = model.kv_decoder(ids.shape[0])
    return dec, fill(dec, ids)

