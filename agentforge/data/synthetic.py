"""Embedded, procedurally generated tasks in the public formats of GSM8K, ARC-Easy and PIQA.

No download is needed: each generator draws examples from a seeded ``random.Random`` and returns
dicts shaped exactly like the public datasets, so every loader, renderer and metric treats synthetic
and real data the same way.

* ``plain_text``  — short templated sentences (stage 1 of the curriculum: learn the bytes)
* ``arithmetic``  — GSM8K format: ``question`` and an ``answer`` with worked steps, ``<<a+b=c>>``
                    calculator annotations and a final ``#### N`` line (stage 2)
* ``choice``      — ARC-Easy format (``question``, ``choices: {text, label}``, ``answerKey``) (stage 3)
* ``piqa``        — PIQA format (``goal``, ``sol1``, ``sol2``, ``label``) (stage 3)

Train and held-out examples come from disjoint seed streams (``split="train"`` / ``"val"``).
"""
from __future__ import annotations

import random

NAMES = ["Ada", "Ben", "Cleo", "Dan", "Eve", "Finn", "Gus", "Hana", "Ivo", "Jun", "Kai", "Lena"]
ITEMS = ["apples", "books", "coins", "shells", "pencils", "stamps", "marbles", "cards"]
ADJS = ["small", "red", "quiet", "bright", "old", "quick", "green", "heavy"]
NOUNS = ["cat", "river", "lamp", "garden", "robot", "window", "teacher", "train"]
VERBS = ["sees", "follows", "paints", "finds", "moves", "likes", "builds", "opens"]
PLACES = ["the park", "the market", "the school", "the lake", "the library"]

_SPLIT_OFFSET = {"train": 0, "val": 1_000_003, "test": 2_000_003}


def _rng(seed: int, split: str, index: int) -> random.Random:
    if split not in _SPLIT_OFFSET:
        raise ValueError(f"unknown split {split!r}; use one of {sorted(_SPLIT_OFFSET)}")
    return random.Random(seed * 10_000_019 + _SPLIT_OFFSET[split] + index)


def plain_text(seed: int, split: str, index: int) -> dict:
    r = _rng(seed, split, index)
    sents = []
    for _ in range(r.randint(2, 4)):
        a, b = r.sample(NOUNS, 2)
        sents.append(f"The {r.choice(ADJS)} {a} {r.choice(VERBS)} the {b} near {r.choice(PLACES)}.")
    return {"text": " ".join(sents)}


def arithmetic(seed: int, split: str, index: int) -> dict:
    r = _rng(seed, split, index)
    name, item = r.choice(NAMES), r.choice(ITEMS)
    a, b = r.randint(2, 60), r.randint(2, 40)
    kind = r.choice(["add", "sub", "mul"])
    if kind == "add":
        q = f"{name} has {a} {item}. {name} gets {b} more. How many {item} does {name} have now?"
        res, step = a + b, f"{name} has {a} + {b} = <<{a}+{b}={a + b}>>{a + b} {item}."
    elif kind == "sub":
        a, b = max(a, b), min(a, b)
        q = f"{name} has {a} {item} and gives away {b}. How many {item} are left?"
        res, step = a - b, f"{name} has {a} - {b} = <<{a}-{b}={a - b}>>{a - b} {item} left."
    else:
        a, b = r.randint(2, 12), r.randint(2, 9)
        q = f"{name} buys {a} bags with {b} {item} in each bag. How many {item} does {name} buy?"
        res, step = a * b, f"{name} buys {a} * {b} = <<{a}*{b}={a * b}>>{a * b} {item}."
    return {"question": q, "answer": f"{step}\n#### {res}"}


def choice(seed: int, split: str, index: int) -> dict:
    r = _rng(seed, split, index)
    nums = r.sample(range(1, 100), 4)
    if r.random() < 0.5:
        q, correct = "Which number is the largest?", max(nums)
    else:
        q, correct = "Which number is the smallest?", min(nums)
    labels = ["A", "B", "C", "D"]
    return {"question": q, "choices": {"text": [str(n) for n in nums], "label": labels},
            "answerKey": labels[nums.index(correct)]}


def piqa(seed: int, split: str, index: int) -> dict:
    r = _rng(seed, split, index)
    a, b = r.randint(1, 30), r.randint(1, 30)
    right, wrong = a + b, a + b + r.choice([-3, -2, -1, 1, 2, 3])
    label = r.randint(0, 1)
    sols = [f"count {a} and then {b} more to get {right}.", f"count {a} and then {b} more to get {wrong}."]
    if label == 1:
        sols.reverse()
    return {"goal": f"To find {a} plus {b},", "sol1": sols[0], "sol2": sols[1], "label": label}


GENERATORS = {"plain_text": plain_text, "arithmetic": arithmetic, "choice": choice, "piqa": piqa}


def generate(task: str, n: int, seed: int = 0, split: str = "train") -> list[dict]:
    """n examples of ``task`` from the ``split`` stream of ``seed``."""
    if task not in GENERATORS:
        raise ValueError(f"unknown synthetic task {task!r}; choose from {sorted(GENERATORS)}")
    return [GENERATORS[task](seed, split, i) for i in range(n)]
