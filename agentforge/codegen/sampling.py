"""Sampling completions the way HumanEval / MBPP evaluations do, with the project's one decoding loop
(``agentforge.models.generation.generate``) for every model.

* n samples per problem, decoded as one batch; temperature sampling with nucleus (top-p) filtering
  (Holtzman et al. 2020: keep the smallest set of tokens whose probability sums to at least p), or greedy
  at temperature 0;
* stop sequences: the completion is cut at the first stop sequence (or the model's EOS); with ``chunk``,
  decoding runs in chunks and a row whose text already holds one stops early (Chen et al. 2021,
  section 2.3: ``\\nclass``, ``\\ndef``, ``\\n#``, ``\\nif``, ``\\nprint``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from agentforge.models.generation import generate


def truncate(text: str, stop: tuple[str, ...]) -> str:
    """``text`` up to the first occurrence of any stop sequence."""
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=len(text))
    return text[:cut]


def nucleus_mask(logits: torch.Tensor, top_p: float, temperature: float) -> torch.Tensor:
    """Logits with the tokens outside the top-p nucleus of softmax(logits / T) set to -inf."""
    if top_p >= 1.0 or temperature <= 0:
        return logits
    probs = F.softmax(logits / temperature, dim=-1)
    sorted_p, order = probs.sort(dim=-1, descending=True)
    before = sorted_p.cumsum(-1) - sorted_p  # mass of the strictly more likely tokens
    drop_sorted = before >= top_p             # the first token is always kept
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


class _Nucleus(nn.Module):
    """Wraps a model so the decoding loop samples from the top-p nucleus; keeps the model's KV-cache
    decoder (``kv_decoder``) when it has one, its prompt prefill included, so decoding stays incremental
    and the prompt takes one forward pass (without the prefill it took one decoder step per prompt token)."""

    def __init__(self, model: nn.Module, top_p: float, temperature: float):
        super().__init__()
        self.model, self.top_p, self.temperature = model, top_p, temperature

    def forward(self, ids):
        out = self.model(ids)
        logits = (out.logits if hasattr(out, "logits") else out)[:, -1:].float()
        return nucleus_mask(logits, self.top_p, self.temperature)

    @property
    def kv_decoder(self):
        inner = getattr(self.model, "kv_decoder", None)
        if inner is None:
            return None

        def make(batch: int):
            dec = inner(batch)

            def masked(step):
                return lambda ids: nucleus_mask(step(ids).float(), self.top_p, self.temperature)
            out = SimpleNamespace(next_logits=masked(dec.next_logits))
            if hasattr(dec, "prefill"):   # the prompt in one forward pass, as the inner decoder does it
                out.prefill = masked(dec.prefill)
            return out
        return make


@dataclass
class Samples:
    completions: list[str]
    new_tokens: int        # tokens generated (all rows, before truncation)
    seconds: float


@torch.no_grad()
def sample(lm, prompt: str, n: int, *, max_new_tokens: int, stop: tuple[str, ...], temperature: float = 0.8,
           top_p: float = 0.95, seed: int = 0, chunk: int | None = None, context_tokens: int | None = None) -> Samples:
    """n completions of ``prompt`` by ``lm`` (a ``CodeLM``), each cut at the first stop sequence.

    The window is ``ctx = min(lm.max_seq_len, context_tokens)`` tokens: each call of the decoding loop gets
    the last ``ctx - k`` tokens and generates ``k`` (``chunk``, default all ``max_new_tokens`` at once), so a
    model with a KV cache decodes incrementally; between chunks, rows whose text holds a stop sequence stop.
    """
    ctx = min(lm.max_seq_len, context_tokens or lm.max_seq_len)
    chunk = min(chunk or max_new_tokens, max_new_tokens)
    if ctx <= chunk:
        raise ValueError(f"the context ({ctx} tokens) must exceed the tokens generated per call ({chunk})")
    device = next(lm.model.parameters()).device
    prompt_ids = torch.tensor([lm.encode(prompt)], device=device)
    model = _Nucleus(lm.model, top_p, temperature)
    gen = torch.Generator(device=device).manual_seed(seed)
    tokens: list[list[int]] = [[] for _ in range(n)]
    active = list(range(n))
    ids = prompt_ids.expand(n, -1)
    total, t0 = 0, time.perf_counter()
    steps = 0
    while active and steps < max_new_tokens:
        k = min(chunk, max_new_tokens - steps)
        window = ids[:, -(ctx - k):]
        out = generate(model, window, k, ctx, eos_id=lm.eos_id, temperature=temperature, generator=gen)
        new = out[:, window.shape[1]:]
        total += new.numel()
        steps += k
        keep = []
        for row, i in enumerate(active):
            toks = new[row].tolist()
            hit_eos = lm.eos_id is not None and lm.eos_id in toks
            if hit_eos:
                toks = toks[: toks.index(lm.eos_id)]
            tokens[i] += toks
            text = lm.decode(tokens[i])
            if not hit_eos and not any(s in text for s in stop):
                keep.append(row)
        active = [active[r] for r in keep]
        ids = torch.cat([ids[keep], new[keep]], dim=1)
    return Samples([truncate(lm.decode(t), stop) for t in tokens], total, time.perf_counter() - t0)
