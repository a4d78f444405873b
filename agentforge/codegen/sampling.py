"""Sampling completions the way HumanEval / MBPP evaluations do, with the project's one decoding loop
(``agentforge.models.generation.generate``) for every model.

* n samples per problem, decoded as one batch; temperature sampling with nucleus (top-p) filtering
  (Holtzman et al. 2020: keep the smallest set of tokens whose probability sums to at least p), or greedy
  at temperature 0;
* stop sequences: decoding runs in chunks of ``chunk`` tokens and a row stops once its text contains a
  stop sequence (or the model's EOS); the completion is cut at the first stop sequence (Chen et al. 2021,
  section 2.3: ``\\nclass``, ``\\ndef``, ``\\n#``, ``\\nif``, ``\\nprint``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

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
    """Wraps a model so the decoding loop samples from the top-p nucleus (last position only)."""

    def __init__(self, model: nn.Module, top_p: float, temperature: float):
        super().__init__()
        self.model, self.top_p, self.temperature = model, top_p, temperature

    def forward(self, ids):
        out = self.model(ids)
        logits = (out.logits if hasattr(out, "logits") else out)[:, -1:].float()
        return nucleus_mask(logits, self.top_p, self.temperature)


@dataclass
class Samples:
    completions: list[str]
    new_tokens: int        # tokens generated (all rows, before truncation)
    seconds: float


@torch.no_grad()
def sample(lm, prompt: str, n: int, *, max_new_tokens: int, stop: tuple[str, ...], temperature: float = 0.8,
           top_p: float = 0.95, seed: int = 0, chunk: int = 32, context_tokens: int | None = None) -> Samples:
    """n completions of ``prompt`` by ``lm`` (a ``CodeLM``), each cut at the first stop sequence. The model
    sees at most the last ``context_tokens`` tokens (default: its max_seq_len)."""
    ctx = min(lm.max_seq_len, context_tokens or lm.max_seq_len)
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
        out = generate(model, ids, k, ctx, eos_id=lm.eos_id, temperature=temperature, generator=gen)
        new = out[:, ids.shape[1]:]
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
        ids = out[keep]
    return Samples([truncate(lm.decode(t), stop) for t in tokens], total, time.perf_counter() - t0)
