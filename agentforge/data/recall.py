"""A long-range recall task: a fact stated early is repeated after a gap longer than one attention window.

    "Kai's code is 4821. The red lamp finds the river. ... Kai's code is 4821."

The digits of the second statement can only be predicted by remembering the first, which lies further
back than one sliding attention window when the gap exceeds it; this is the data on which the long-term
memory has work to do. It is not out of the backbone's reach: stacked sliding-window layers reach
n_layers * (window - 1) tokens back per recursion step, and the steps add up
(``models.ablation.backbone_reach``: 126 per step, 504 over 4 steps at the default m1, against ~92 tokens
from the first code to its repeat), so the attention could carry the code in principle. The memory on/off
ablation measures what the trained model actually gets from its memory, not a capability only the memory
has. ``recall`` is registered in the synthetic mix (task name ``recall``, text format); ``recall_rows``
builds one item per row (padded), with the positions of the repeated digits, for the memory on/off
ablation and its test.

Items come from their own seeded stream per (seed, split, index) and, like the other synthetic tasks,
are kept only when the hash of their text falls in their split's buckets (``synthetic.RESERVED``), so a
training item is never a held-out one.
"""
from __future__ import annotations

import hashlib
import random

import torch

from agentforge.data import synthetic
from agentforge.data.tokenizer import ByteTokenizer

NAMES = ["Ada", "Ben", "Cleo", "Dan", "Eve", "Finn", "Gus", "Hana", "Ivo", "Jun", "Kai", "Lena"]
WORDS = {"adj": ["small", "red", "quiet", "bright", "old", "quick", "green", "heavy"],
         "noun": ["cat", "river", "lamp", "garden", "robot", "window", "teacher", "train"],
         "verb": ["sees", "follows", "paints", "finds", "moves", "likes", "builds", "opens"],
         "place": ["the park", "the market", "the school", "the lake", "the library"]}
FACT_CHARS = 20   # the longest statement, "Cleo's code is 1234."
DEFAULT_GAP = 72  # filler characters between the two statements: beyond one default 64-token window
MIX_REPEATS = 3   # repeats of the fact in a training-mix item (``recall``)


def _rng(seed: int, split: str, index: int, attempt: int = 0) -> random.Random:
    digest = hashlib.sha256(f"recall/{seed}/{split}/{index}/{attempt}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _draw(seed: int, split: str, index: int, gap: int = DEFAULT_GAP, repeats: int = 1) -> tuple[str, int, int]:
    """Item ``index`` of ``split``, redrawn until its text hashes to that split's buckets
    (``synthetic.split_of``, as for the other tasks), so train / val / test are disjoint by content."""
    for attempt in range(synthetic.MAX_ATTEMPTS):
        text, start, length = item(_rng(seed, split, index, attempt), gap, repeats)
        if synthetic.split_of("recall", {"text": text}) == split:
            return text, start, length
    raise ValueError(f"recall: no {split} item after {synthetic.MAX_ATTEMPTS} attempts")


def _filler(r: random.Random, min_chars: int) -> str:
    """Short sentences cut to about ``min_chars`` characters."""
    out = []
    while sum(len(s) + 1 for s in out) < min_chars:
        a, b = r.sample(WORDS["noun"], 2)
        out.append(f"The {r.choice(WORDS['adj'])} {a} {r.choice(WORDS['verb'])} the {b}.")
    return " ".join(out)[:min_chars].rstrip()


def item(r: random.Random, gap: int = DEFAULT_GAP, repeats: int = 1) -> tuple[str, int, int]:
    """(text, character offset of the last repeated code, its length): the fact, then ``repeats`` times a
    fresh filler of ``gap`` characters and the fact again."""
    fact = f"{r.choice(NAMES)}'s code is {r.randint(1000, 9999)}."
    text = fact
    for _ in range(repeats):
        text = f"{text} {_filler(r, gap)} {fact}"
    return text, len(text) - 5, 4


def recall(seed: int, split: str, index: int) -> dict:
    """One recall item of the training mix in the plain-text format ({"text": ...}), the fact repeated
    ``MIX_REPEATS`` times: mix texts are packed into rows of ``data.seq_len`` + 1 tokens regardless of their
    boundaries, and a one-repeat item (~115 tokens) lies whole in a 129-token row only ~12 % of the time;
    with a repeat every ~93 tokens about a third of the rows cut from an item hold a statement and its
    repeat (the ablation's held-out items, ``recall_rows``, keep one repeat)."""
    return {"text": _draw(seed, split, index, repeats=MIX_REPEATS)[0]}


def recall_rows(n: int, seq_len: int, seed: int, split: str = "val", gap: int = DEFAULT_GAP,
                tokenizer: ByteTokenizer | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """n rows [n, seq_len + 1] of one item each (BOS first, padded) and a mask [n, seq_len] that is True
    where the target is a digit of the repeated code (beyond one attention window from the first statement,
    though not beyond the stacked layers' and recursion steps' reach: see the module docstring)."""
    tok = tokenizer or ByteTokenizer()
    rows = torch.full((n, seq_len + 1), tok.pad_id, dtype=torch.long)
    mask = torch.zeros(n, seq_len, dtype=torch.bool)
    for i in range(n):
        text, start, length = _draw(seed, split, i, gap)
        ids = tok.encode(text, bos=True, eos=True)
        if len(ids) > seq_len + 1:
            raise ValueError(f"recall item of {len(ids)} tokens does not fit seq_len={seq_len}; lower the gap")
        rows[i, : len(ids)] = torch.tensor(ids)
        # target index j predicts token j + 1; the code's first byte is token start + 1 (after BOS)
        mask[i, start: start + length] = True
    return rows, mask
