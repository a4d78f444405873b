"""Task metrics computed from a model's own outputs: perplexity, choice accuracy, generated answers.

* Multiple choice (ARC-Easy, PIQA): each choice's summed log-likelihood as a continuation of the
  prompt; the prediction is the argmax (as in lm-eval-harness' ``acc``).
* GSM8K: greedy generation from the prompt, answer extracted by ``answers.extract_number`` and
  compared exactly with the reference's ``#### N``.
* Perplexity: exp of the mean next-token cross-entropy over held-out rows.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from agentforge.data import formats
from agentforge.evals.answers import answers_match
from agentforge.models.generation import generate as decode


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    out = model(ids)
    return out.logits if hasattr(out, "logits") else out


@torch.no_grad()
def continuation_logprobs(model, tokenizer, prompt: str, continuations: list[str]) -> list[float]:
    """Summed log P(continuation | prompt) for each continuation, in one padded batch."""
    device = next(model.parameters()).device
    p_ids = tokenizer.encode(prompt, bos=True)
    seqs = [p_ids + tokenizer.encode(c) for c in continuations]
    max_len = getattr(getattr(model, "config", None), "max_seq_len", 10**9)
    seqs = [s[-max_len:] for s in seqs]
    width = max(len(s) for s in seqs)
    batch = torch.full((len(seqs), width), tokenizer.pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        batch[i, : len(s)] = torch.tensor(s)
    logp = F.log_softmax(_logits(model, batch.to(device)).float(), dim=-1)
    scores = []
    for i, (s, c) in enumerate(zip(seqs, continuations)):
        n_c = min(len(tokenizer.encode(c)), len(s) - 1)
        tgt = torch.tensor(s[len(s) - n_c:], device=device)
        pos = torch.arange(len(s) - n_c - 1, len(s) - 1, device=device)
        scores.append(float(logp[i, pos, tgt].sum()))
    return scores


def choice_predictions(model, tokenizer, records: list[dict], fmt: str) -> list[tuple[int, int]]:
    """(predicted index, right index) for each ARC ('arc') or PIQA ('piqa') record."""
    prompt_fn, choices_fn = {"arc": (formats.arc_prompt, formats.arc_choices),
                             "piqa": (formats.piqa_prompt, formats.piqa_choices)}[fmt]
    out = []
    for rec in records:
        conts, right = choices_fn(rec)
        scores = continuation_logprobs(model, tokenizer, prompt_fn(rec), conts)
        out.append((max(range(len(scores)), key=scores.__getitem__), right))
    return out


def choice_accuracy(model, tokenizer, records: list[dict], fmt: str) -> float:
    preds = choice_predictions(model, tokenizer, records, fmt)
    return sum(p == r for p, r in preds) / max(len(preds), 1)


def choice_correct(model, tokenizer, records: list[dict], fmt: str) -> list[int]:
    """Per-example 1/0 correctness of the choice scoring (what the paired bootstrap needs)."""
    return [int(p == r) for p, r in choice_predictions(model, tokenizer, records, fmt)]


@torch.no_grad()
def gsm8k_generations(model, tokenizer, records: list[dict], max_new_tokens: int = 48) -> list[str]:
    """Greedy completions of each GSM8K prompt (one at a time: prompts differ in length)."""
    device = next(model.parameters()).device
    outs = []
    for rec in records:
        ids = torch.tensor([tokenizer.encode(formats.gsm8k_prompt(rec), bos=True)], device=device)
        gen = model.generate(ids, max_new_tokens, eos_id=tokenizer.eos_id)
        outs.append(tokenizer.decode(gen[0, ids.shape[1]:]))
    return outs


def gsm8k_accuracy(model, tokenizer, records: list[dict], max_new_tokens: int = 48) -> float:
    gens = gsm8k_generations(model, tokenizer, records, max_new_tokens)
    return sum(answers_match(g, r["answer"]) for g, r in zip(gens, records)) / max(len(records), 1)


def gsm8k_correct(generations: list[str], records: list[dict]) -> list[int]:
    """Per-example 1/0: the generation's final number equals the reference's ``#### N`` exactly."""
    return [int(answers_match(g, r["answer"])) for g, r in zip(generations, records)]


def generate(model, ids: torch.Tensor, max_new_tokens: int, eos_id: int | None = None, temperature: float = 0.0,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """``model.generate`` when the model has one, else a plain loop over ``forward(ids).logits``."""
    if hasattr(model, "generate"):
        if temperature > 0:
            return model.generate(ids, max_new_tokens, eos_id=eos_id, temperature=temperature, generator=generator)
        return model.generate(ids, max_new_tokens, eos_id=eos_id)
    max_len = getattr(getattr(model, "config", None), "max_seq_len", 10**9)
    return decode(model, ids, max_new_tokens, max_len, eos_id, temperature, generator)


def _strip_eos(tokens: list[int], eos_id: int) -> list[int]:
    return tokens[: tokens.index(eos_id)] if eos_id in tokens else tokens


@torch.no_grad()
def gsm8k_greedy(model, tokenizer, records: list[dict], max_new_tokens: int = 48) -> tuple[list[str], list[int]]:
    """Greedy completions and their lengths in tokens (up to EOS)."""
    device = next(model.parameters()).device
    gens, lengths = [], []
    for rec in records:
        ids = torch.tensor([tokenizer.encode(formats.gsm8k_prompt(rec), bos=True)], device=device)
        new = _strip_eos(generate(model, ids, max_new_tokens, tokenizer.eos_id)[0, ids.shape[1]:].tolist(),
                         tokenizer.eos_id)
        gens.append(tokenizer.decode(new))
        lengths.append(len(new))
    return gens, lengths


@torch.no_grad()
def gsm8k_sample_counts(model, tokenizer, records: list[dict], n: int, max_new_tokens: int = 48,
                        temperature: float = 0.8, seed: int = 0) -> list[int]:
    """Per problem, how many of n sampled completions (temperature > 0) are correct — pass@k's c."""
    if temperature <= 0:
        raise ValueError("sampling for pass@k needs temperature > 0")
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    counts = []
    for rec in records:
        ids = torch.tensor([tokenizer.encode(formats.gsm8k_prompt(rec), bos=True)], device=device).repeat(n, 1)
        out = generate(model, ids, max_new_tokens, tokenizer.eos_id, temperature=temperature, generator=gen)
        texts = [tokenizer.decode(_strip_eos(row[ids.shape[1]:].tolist(), tokenizer.eos_id)) for row in out]
        counts.append(sum(answers_match(t, rec["answer"]) for t in texts))
    return counts


@torch.no_grad()
def mean_loss(model, rows: torch.Tensor, batch_size: int = 16) -> float:
    """Mean next-token cross-entropy (nats/token) over [N, T+1] rows."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for i in range(0, len(rows), batch_size):
        r = rows[i: i + batch_size].to(device)
        logits = _logits(model, r[:, :-1]).float()
        total += float(F.cross_entropy(logits.flatten(0, 1), r[:, 1:].flatten(), reduction="sum"))
        count += r[:, 1:].numel()
    return total / max(count, 1)


def perplexity(model, rows: torch.Tensor, batch_size: int = 16) -> float:
    return math.exp(min(mean_loss(model, rows, batch_size), 50.0))


@torch.no_grad()
def lm_metrics(model, rows: torch.Tensor, batch_size: int = 16) -> dict:
    """Perplexity and next-token accuracy (torchmetrics) over [N, T+1] rows, plus each row's mean loss."""
    from torchmetrics.classification import MulticlassAccuracy
    from torchmetrics.text import Perplexity

    device = next(model.parameters()).device
    ppl, acc, row_losses = None, None, []
    for i in range(0, len(rows), batch_size):
        r = rows[i: i + batch_size].to(device)
        logits = _logits(model, r[:, :-1]).float()
        if ppl is None:
            ppl = Perplexity().to(device)
            acc = MulticlassAccuracy(num_classes=logits.shape[-1], average="micro").to(device)
        ppl.update(logits, r[:, 1:])
        acc.update(logits.flatten(0, 1).argmax(-1), r[:, 1:].flatten())
        ce = F.cross_entropy(logits.transpose(1, 2), r[:, 1:], reduction="none").mean(dim=1)
        row_losses.extend(ce.tolist())
    p = float(ppl.compute())
    return {"loss": math.log(p), "perplexity": p, "token_accuracy": float(acc.compute()), "row_losses": row_losses}
