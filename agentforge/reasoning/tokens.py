"""The 12 Phase-3 special tokens, and growing a Cognate model's vocabulary to hold them.

The output (lm_head) row of a new token follows Hewitt (2021, "Initializing New Word Embeddings for
Pretrained Language Models"): the mean of the n trained rows, so its logit is the average of their logits
and (Jensen) it takes at most 1/n of their probability mass instead of an arbitrary share. The input
(embedding) row departs from Hewitt's average on purpose: it is drawn from N(mean, std) of the trained rows,
per dimension, so the new tokens look like ordinary inputs but stay distinguishable from each other (twelve
equal rows would be one input). Rows of the old tokens are copied, so the old tokens' logits on old-token
inputs are unchanged.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from agentforge.data.tokenizer import FIRST_SPECIAL_ID

THINK_START, THINK_END = "[thinking]", "[/endthinking]"
STRATEGY_TOKENS = ("<step>", "<mece>", "<falsify>", "<expert>", "<orthogonal>", "<doubt>", "<bayesian>",
                   "<multidomain>", "<correct>", "<uncertain>")
SPECIAL_TOKENS = (THINK_START, THINK_END, *STRATEGY_TOKENS)


def add_reasoning_tokens(tokenizer) -> dict[str, int]:
    """Add the 12 tokens to the tokenizer (no-op for those it has); return token -> id."""
    ids = tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    return dict(zip(SPECIAL_TOKENS, ids))


@torch.no_grad()
def resize_vocab(model, vocab_size: int, new_ids: list[int], generator: torch.Generator | None = None):
    """Grow ``model.embed``/``model.lm_head`` to ``vocab_size`` rows when larger, and (re)initialize the
    rows of ``new_ids`` from the distribution of the trained rows (ids below the first special id and
    not in ``new_ids``). Updates ``model.config.vocab_size``; returns the model (changed in place)."""
    old_embed, old_head = model.embed.weight, model.lm_head.weight
    old_vocab = old_embed.shape[0]
    size = max(vocab_size, old_vocab)
    new = sorted({int(i) for i in new_ids})
    if any(i >= size or i < 0 for i in new):
        raise ValueError(f"new token ids {new} do not fit a vocabulary of {size}")
    trained = [i for i in range(min(old_vocab, FIRST_SPECIAL_ID)) if i not in new]
    if size > old_vocab:
        embed = nn.Embedding(size, old_embed.shape[1]).to(old_embed)
        head = nn.Linear(old_head.shape[1], size, bias=False).to(old_head)
        embed.weight[:old_vocab] = old_embed
        head.weight[:old_vocab] = old_head
        model.embed, model.lm_head = embed, head
        if model.config.tie_embeddings:
            model.lm_head.weight = model.embed.weight
        model.config = dataclasses.replace(model.config, vocab_size=size)
    if not new:
        return model
    e_rows = model.embed.weight[trained]
    mu, sd = e_rows.mean(0), e_rows.std(0)
    noise = torch.randn(len(new), mu.shape[0], generator=generator).to(mu)
    model.embed.weight[new] = mu + sd * noise
    if not model.config.tie_embeddings:
        model.lm_head.weight[new] = model.lm_head.weight[trained].mean(0)
    return model
