"""Task metrics computed from a model's own outputs: perplexity, choice accuracy, generated answers.

* Multiple choice (ARC-Easy, PIQA): each choice's summed log-likelihood as a continuation of the
  prompt; the prediction is the argmax (as in lm-eval-harness' ``acc``).
* GSM8K: greedy generation from the prompt, answer extracted by ``answers.extract_number`` and
  compared exactly with the reference's ``#### N``; a generation that hit the token limit (no EOS) gets no
  credit for a final number that runs to its end (it may be cut: ``answers.complete_part``).
* Perplexity: exp of the mean next-token cross-entropy over held-out rows.
"""
from __future__ import annotations

import math
from collections import Counter

import torch
import torch.nn.functional as F

from agentforge.data import formats
from agentforge.evals import answers, prefix
from agentforge.evals.answers import answers_match
from agentforge.models.cognate import CognateModel
from agentforge.models.generation import generate as decode


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    out = model(ids)
    return out.logits if hasattr(out, "logits") else out


def _continuation(prompt_ids: list[int], c_ids: list[int], max_len: int) -> tuple[list[int], int]:
    """(token ids of prompt + continuation, truncated on the left to max_len; number of continuation
    tokens scored, at most len - 1)."""
    seq = (prompt_ids + c_ids)[-max_len:]
    return seq, min(len(c_ids), len(seq) - 1)


@torch.no_grad()
def score_sequences(model, seqs: list[tuple[list[int], int]], pad_id: int, batch_rows: int = 32) -> list[float]:
    """Summed log-probability of the last n tokens of each (ids, n), given the tokens before them.

    Rows are sorted by length and run ``batch_rows`` at a time in right-padded batches: every model here
    is causal and per-row, so a row's logits at its own positions do not depend on the padding after it
    or on the other rows of the batch (``tests/test_eval.py`` checks the scores against one forward per
    question on a Cognate model)."""
    device = next(model.parameters()).device
    scores = [0.0] * len(seqs)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][0]))
    for start in range(0, len(order), max(1, batch_rows)):
        idx = order[start:start + max(1, batch_rows)]
        width = len(seqs[idx[-1]][0])
        batch = torch.full((len(idx), width), pad_id, dtype=torch.long)
        rows, pos, tgt = [], [], []
        for r, i in enumerate(idx):
            s, n_c = seqs[i]
            batch[r, : len(s)] = torch.tensor(s)
            rows += [r] * n_c
            pos += range(len(s) - n_c - 1, len(s) - 1)
            tgt += s[len(s) - n_c:]
        logp = F.log_softmax(_logits(model, batch.to(device))[rows, pos].float(), dim=-1)
        picked = logp[torch.arange(len(tgt)), torch.tensor(tgt, device=device)].cpu()
        owner = torch.tensor(rows, dtype=torch.long)
        sums = torch.zeros(len(idx), dtype=picked.dtype).index_add_(0, owner, picked)
        for r, i in enumerate(idx):
            scores[i] = float(sums[r])
    return scores


def continuation_logprobs(model, tokenizer, prompt: str, continuations: list[str]) -> list[float]:
    """Summed log P(continuation | prompt) for each continuation, in one padded batch."""
    max_len = getattr(getattr(model, "config", None), "max_seq_len", 10**9)
    p_ids = tokenizer.encode(prompt, bos=True)
    seqs = [_continuation(p_ids, tokenizer.encode(c), max_len) for c in continuations]
    return score_sequences(model, seqs, tokenizer.pad_id, batch_rows=len(seqs))


def choice_predictions(model, tokenizer, records: list[dict], fmt: str, batch_rows: int = 32) -> list[tuple[int, int]]:
    """(predicted index, right index) for each ARC ('arc') or PIQA ('piqa') record: the choice of highest
    summed log-likelihood (the first on a tie). A question whose choices share much (the prompt and their
    common start) is scored with that part computed once (``prefix.prefers``, Cognate models:
    ``prefix.score_group``, groups of about ``prefix.GROUP_ROWS`` choices); the others by full forward passes,
    ``batch_rows`` sequences at a time across questions (``score_sequences``). Both give the same scores."""
    prompt_fn, choices_fn = {"arc": (formats.arc_prompt, formats.arc_choices),
                             "piqa": (formats.piqa_prompt, formats.piqa_choices)}[fmt]
    max_len = getattr(getattr(model, "config", None), "max_seq_len", 10**9)
    items = []
    for rec in records:
        conts, right = choices_fn(rec)
        items.append((tokenizer.encode(prompt_fn(rec), bos=True), [tokenizer.encode(c) for c in conts], right))
    scores: list[list[float] | None] = [None] * len(items)
    if prefix.supports(model):
        shared = [i for i, (p, cs, _) in enumerate(items) if prefix.prefers(p, cs, max_len)]
        for group in prefix.groups(shared, [prefix.shared_length(*items[i][:2]) for i in shared],
                                   [len(items[i][1]) for i in shared]):
            for j, sc in zip(group, prefix.score_group(model, [items[j][0] for j in group],
                                                       [items[j][1] for j in group], tokenizer.pad_id)):
                scores[j] = sc
    rest = [i for i in range(len(items)) if scores[i] is None]
    seqs = [_continuation(items[i][0], c, max_len) for i in rest for c in items[i][1]]
    flat = score_sequences(model, seqs, tokenizer.pad_id, batch_rows)
    for i in rest:
        k = len(items[i][1])
        scores[i], flat = flat[:k], flat[k:]
    return [(max(range(len(sc)), key=sc.__getitem__), it[2]) for sc, it in zip(scores, items)]


def chance_rates(records: list[dict], fmt: str) -> list[float]:
    """Each record's accuracy by chance: what an accuracy near it (a model guessing) is read against. ARC ('arc') /
    PIQA ('piqa'): 1 / its number of choices. GSM8K ('gsm8k'): the majority baseline, 1 where the record's reference
    answer is the most common one among ``records`` (ties: the first seen), else 0, so their mean is the best
    constant answer's accuracy on them. 0 was used before, but a constant answer scores above it: on the synthetic
    test split (seed 0) 0.035 of 200 records, 0.047 of 64; chosen on the records themselves, the figure is
    optimistic on few (0.125 of 16: the mode of 16 answers is hit twice)."""
    if fmt == "gsm8k":
        refs = [answers.extract_number(r["answer"]) for r in records]
        modal = Counter(refs).most_common(1)[0][0] if refs else None
        return [float(x == modal) for x in refs]
    choices_fn = {"arc": formats.arc_choices, "piqa": formats.piqa_choices}[fmt]
    return [1.0 / len(choices_fn(rec)[0]) for rec in records]


def choice_accuracy(model, tokenizer, records: list[dict], fmt: str) -> float:
    preds = choice_predictions(model, tokenizer, records, fmt)
    return sum(p == r for p, r in preds) / max(len(preds), 1)


def choice_correct(model, tokenizer, records: list[dict], fmt: str) -> list[int]:
    """Per-example 1/0 correctness of the choice scoring (what the paired bootstrap needs)."""
    return [int(p == r) for p, r in choice_predictions(model, tokenizer, records, fmt)]


class Generation(str):
    """A decoded generation (a ``str``) that also says whether it hit the token limit without EOS
    (``truncated``), so ``gsm8k_correct`` scores it right wherever it is passed on to."""

    def __new__(cls, text: str, truncated: bool = False):
        obj = super().__new__(cls, text)
        obj.truncated = bool(truncated)
        return obj


def gsm8k_generations(model, tokenizer, records: list[dict], max_new_tokens: int = 48) -> list[Generation]:
    """Greedy completions of each GSM8K prompt (``gsm8k_greedy`` without the lengths)."""
    return gsm8k_greedy(model, tokenizer, records, max_new_tokens)[0]


def gsm8k_accuracy(model, tokenizer, records: list[dict], max_new_tokens: int = 48) -> float:
    correct = gsm8k_correct(gsm8k_generations(model, tokenizer, records, max_new_tokens), records)
    return sum(correct) / max(len(records), 1)


def gsm8k_correct(generations: list[str], records: list[dict], truncated: list[bool] | None = None) -> list[int]:
    """Per-example 1/0: the generation's final number equals the reference's ``#### N`` exactly. A generation
    that hit the token limit (``truncated[i]``, by default its ``Generation.truncated``) is not credited for a
    final number that runs to its end (``answers.complete_part``)."""
    if truncated is None:
        truncated = [getattr(g, "truncated", False) for g in generations]
    return [int(answers_match(g, r["answer"], t)) for g, r, t in zip(generations, records, truncated)]


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


def _decodes_in_batches(model) -> bool:
    """A Cognate model with its KV decoder and its own ``generate`` (not a subclass that decodes otherwise)."""
    return hasattr(model, "kv_decoder") and getattr(type(model), "generate", None) is CognateModel.generate


@torch.no_grad()
def greedy_batch(model, prompts: list[list[int]], max_new_tokens: int, eos_id: int | None) -> list[list[int]]:
    """Greedy new tokens (up to, not including, EOS) for prompts of different lengths, decoded together
    through one KV decoder (``model.kv_decoder``).

    The shortest prompt's length of every row is taken in one forward pass (``CognateDecoder.prefill``);
    then all rows advance one position per step: a row still inside its prompt is fed its next prompt token,
    after that its own argmax, so each row holds its prompt followed by its generation with nothing in
    between. The decoder's operations are per row, so each row computes what decoding it alone computes up
    to floating-point rounding (the single-row path, ``models/generation.py``, also prefills its prompt;
    ``tests/test_eval.py`` checks the greedy tokens equal). A row that emitted EOS keeps emitting it; the
    loop stops when every row has emitted EOS or its ``max_new_tokens`` (checked every 16 steps). Every
    prompt must satisfy len + max_new_tokens <= ``model.config.max_seq_len`` (the cached regime)."""
    device = next(model.parameters()).device
    lens = torch.tensor([len(x) for x in prompts], device=device)
    total = int(lens.max()) + max_new_tokens
    fill = eos_id if eos_id is not None else 0
    buf = torch.full((len(prompts), total), fill, dtype=torch.long, device=device)
    for i, x in enumerate(prompts):
        buf[i, : len(x)] = torch.tensor(x, device=device)
    end = lens + max_new_tokens
    done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    dec = model.kv_decoder(len(prompts))
    first = max(1, int(lens.min()))   # positions every row holds prompt tokens at: one forward pass
    logits = dec.prefill(buf[:, :first])
    for pos in range(first - 1, total - 1):
        if pos >= first:
            logits = dec.next_logits(buf[:, : pos + 1])
        nxt = logits.float().argmax(-1)
        gen = (lens <= pos + 1) & (pos + 1 < end)
        if eos_id is not None:
            nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
            done |= gen & (nxt == eos_id)
        buf[:, pos + 1] = torch.where(gen, nxt, buf[:, pos + 1])
        if eos_id is not None and (pos + 2) % 16 == 0 and bool((done | (end <= pos + 2)).all()):
            break
    rows = buf.tolist()
    return [_strip_eos(r[n: n + max_new_tokens], eos_id) if eos_id is not None else r[n: n + max_new_tokens]
            for r, n in zip(rows, lens.tolist())]


@torch.no_grad()
def greedy_tokens(model, prompts: list[list[int]], max_new_tokens: int, eos_id: int | None,
                  batch_size: int = 16) -> list[list[int]]:
    """Greedy new tokens (up to EOS) of each prompt: ``greedy_batch`` over batches of ``batch_size``
    prompts of similar length for a Cognate model in the cached regime, one prompt at a time otherwise."""
    device = next(model.parameters()).device
    out: list[list[int] | None] = [None] * len(prompts)
    if _decodes_in_batches(model) and max_new_tokens > 0:
        limit = int(model.config.max_seq_len)
        fits = sorted((i for i, x in enumerate(prompts) if len(x) + max_new_tokens <= limit),
                      key=lambda i: len(prompts[i]))
        for k in range(0, len(fits), max(1, batch_size)):
            idx = fits[k: k + max(1, batch_size)]
            for i, toks in zip(idx, greedy_batch(model, [prompts[i] for i in idx], max_new_tokens, eos_id)):
                out[i] = toks
    for i, x in enumerate(prompts):
        if out[i] is None:
            ids = torch.tensor([x], device=device)
            new = generate(model, ids, max_new_tokens, eos_id)[0, ids.shape[1]:].tolist()
            out[i] = _strip_eos(new, eos_id) if eos_id is not None else new
    return out


def gsm8k_greedy(model, tokenizer, records: list[dict], max_new_tokens: int = 48,
                 batch_size: int = 16) -> tuple[list[Generation], list[int]]:
    """Greedy completions and their lengths in tokens (up to EOS), decoded ``batch_size`` prompts at a
    time (``greedy_tokens``). A completion of ``max_new_tokens`` tokens emitted no EOS: it is marked
    ``truncated`` (``Generation``)."""
    prompts = [tokenizer.encode(formats.gsm8k_prompt(rec), bos=True) for rec in records]
    new = greedy_tokens(model, prompts, max_new_tokens, tokenizer.eos_id, batch_size)
    return [Generation(tokenizer.decode(t), len(t) >= max_new_tokens) for t in new], [len(t) for t in new]


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
        rows = [row[ids.shape[1]:].tolist() for row in out]
        counts.append(sum(answers_match(tokenizer.decode(_strip_eos(r, tokenizer.eos_id)), rec["answer"],
                                        truncated=tokenizer.eos_id not in r) for r in rows))
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
