"""Generation statistics defined from measurable quantities (no judge model, no human rating).

* ``avg_length_tokens`` — mean number of generated tokens (bytes for the byte tokenizer).
* ``distinct_1`` / ``distinct_2`` — unique word uni-/bigrams over all n-grams of all generations
  (Li et al. 2016, "A Diversity-Promoting Objective Function for Neural Conversation Models").
* ``repetition_rate`` — seq-rep-4 of Welleck et al. 2019 ("Neural Text Generation with Unlikelihood
  Training"): per generation, 1 - unique 4-grams / 4-grams of words, averaged; 0 = no loops.
* ``coherence`` — share of generated words that are real words of the evaluation corpus (the
  prompts and reference answers): a byte-level model's first failure is inventing non-words, so this
  measures whether its output is made of the language it was asked about (1 = every word known).
* ``prompt_overlap`` — share of generated words that also occur in their own prompt (staying on topic).
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

_WORD = re.compile(r"[A-Za-z]+|\d+(?:\.\d+)?")


def words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def ngrams(seq: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(seq[i: i + n]) for i in range(len(seq) - n + 1)]


def distinct_n(texts: Iterable[str], n: int) -> float:
    grams = [g for t in texts for g in ngrams(words(t), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def seq_rep_n(text: str, n: int = 4) -> float:
    grams = ngrams(words(text), n)
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def coherence(texts: Iterable[str], vocabulary: set[str]) -> float:
    ws = [w for t in texts for w in words(t)]
    return sum(w in vocabulary for w in ws) / len(ws) if ws else 0.0


def prompt_overlap(prompts: Sequence[str], texts: Sequence[str]) -> float:
    hits = total = 0
    for p, t in zip(prompts, texts):
        pw, tw = set(words(p)), words(t)
        hits += sum(w in pw for w in tw)
        total += len(tw)
    return hits / total if total else 0.0


def generation_stats(prompts: Sequence[str], generations: Sequence[str], lengths: Sequence[int],
                     corpus: Iterable[str]) -> dict[str, float]:
    """All the statistics above for one set of (prompt, generation) pairs."""
    vocab = {w for t in corpus for w in words(t)}
    reps = [seq_rep_n(g, 4) for g in generations]
    return {
        "gen/avg_length_tokens": sum(lengths) / len(lengths) if lengths else 0.0,
        "gen/distinct_1": distinct_n(generations, 1),
        "gen/distinct_2": distinct_n(generations, 2),
        "gen/repetition_rate": sum(reps) / len(reps) if reps else 0.0,
        "gen/coherence": coherence(generations, vocab),
        "gen/prompt_overlap": prompt_overlap(prompts, generations),
    }
