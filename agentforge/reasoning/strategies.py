"""The ten reasoning strategies baked in Phase 3: each a prompt that uses its special tokens, a
threshold for its baking accuracy (the seed's strategy table), and worked examples generated here.

Examples are built from the embedded GSM8K-format arithmetic problems (``agentforge.data.synthetic``):
the numbers of each problem are reused in a response written the strategy's way, wrapped in
``[thinking] ... [/endthinking]`` and ending with GSM8K's ``#### N``; validation responses are worded by a second
template per strategy that training never uses, so they are held out by content, not only by question. Nothing
is downloaded; a user may supply their own JSONL of ``{"strategy", "question", "response"}`` records instead.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from agentforge.data import formats, synthetic
from agentforge.data.formats import read_jsonl
from agentforge.reasoning.tokens import STRATEGY_TOKENS, THINK_END, THINK_START


@dataclass(frozen=True)
class Strategy:
    key: str          # metric suffix: baking/accuracy_{key}
    name: str         # row label of the strategy table
    token: str        # its special token
    threshold: float  # baking accuracy it should reach (seed table)
    prompt: str       # the prompt baked in; uses [thinking], its token and [/endthinking]
    template: str     # training responses' template over a, b, c (= result), op, wrong, item
    val_template: str  # validation responses' template: other wording, never trained on (held out by content)


def _prompt(instruction: str, token: str) -> str:
    """Short on purpose: the Cognate model attends over a sliding window (64 tokens by default)."""
    return f" {instruction} Use {THINK_START} {token} {THINK_END}.\n"


_S = [
    ("chain_of_thought", "Chain-of-Thought", "<step>", 0.90, "Reason step by step.",
     "{T} <step> start with {a}. <step> {a} {op} {b} = {c}. {E} #### {c}"),
    ("mece", "MECE", "<mece>", 0.85, "Split the problem into parts that do not overlap and miss nothing.",
     "{T} <mece> part one is {a}, part two is {b}; together they cover it: {a} {op} {b} = {c}. {E} #### {c}"),
    ("falsification", "Falsification", "<falsify>", 0.80, "Try to prove a wrong answer false.",
     "{T} <falsify> if it were {wrong}, then {a} {op} {b} would be {wrong}, but it is {c}. {E} #### {c}"),
    ("expert", "Expert", "<expert>", 0.85, "Answer as an expert in the field would.",
     "{T} <expert> a careful accountant computes {a} {op} {b} = {c} {item}. {E} #### {c}"),
    ("orthogonal", "Orthogonal", "<orthogonal>", 0.75, "Look at it from a different angle.",
     "{T} <orthogonal> picture {a} {item} on a table and apply {op} {b}: {c} are there. {E} #### {c}"),
    ("doubt", "Self-Doubt", "<doubt>", 0.85, "Doubt your first answer and check it.",
     "{T} <doubt> is {c} right? {a} {op} {b} = {c}, checked twice. {E} #### {c}"),
    ("bayesian", "Bayesian", "<bayesian>", 0.75, "Start from a prior guess and update it on the evidence.",
     "{T} <bayesian> prior guess {wrong}; the evidence {a} {op} {b} moves it to {c}. {E} #### {c}"),
    ("multidomain", "Multidomain", "<multidomain>", 0.85, "Use what other domains know about it.",
     "{T} <multidomain> as money, {a} {op} {b} coins is {c}; as {item}, also {c}. {E} #### {c}"),
    ("correction", "Self-Correction", "<correct>", 0.85, "Find and fix your own mistake.",
     "{T} first try {wrong}. <correct> {a} {op} {b} = {c}, so {wrong} was wrong. {E} #### {c}"),
    ("uncertainty", "Uncertainty", "<uncertain>", 0.85, "Say how sure you are.",
     "{T} <uncertain> {a} {op} {b} = {c}; exact arithmetic, so I am sure. {E} #### {c}"),
]
# The validation responses' templates: the same strategy in other words. Scored with the training templates, the
# baked model's agreement with the teacher was measured on responses worded exactly as the ones it was trained on;
# with these it is measured on responses it never saw, with only the numbers and the strategy's idea in common.
_VAL = {
    "chain_of_thought": "{T} <step> we have {a}. <step> then {op} {b} gives {c}. {E} #### {c}",
    "mece": "{T} <mece> no overlap, no gap: the whole splits as {a} {op} {b}, which is {c}. {E} #### {c}",
    "falsification": "{T} <falsify> suppose the answer is {wrong}; {a} {op} {b} gives {c}, not {wrong}. {E} #### {c}",
    "expert": "{T} <expert> an experienced teacher would say {c} {item}, as {a} {op} {b} shows. {E} #### {c}",
    "orthogonal": "{T} <orthogonal> think of {b} boxes beside {a} {item}; {op} gives {c}. {E} #### {c}",
    "doubt": "{T} <doubt> could {c} be wrong? recomputing {a} {op} {b} still gives {c}. {E} #### {c}",
    "bayesian": ("{T} <bayesian> my first belief was {wrong}; after seeing {a} {op} {b}, {c} is the new belief. "
                 "{E} #### {c}"),
    "multidomain": "{T} <multidomain> in minutes, {a} {op} {b} is {c}; counted as {item}, {c} again. {E} #### {c}",
    "correction": "{T} I guessed {wrong}. <correct> but {a} {op} {b} is {c}, so fix it to {c}. {E} #### {c}",
    "uncertainty": "{T} <uncertain> working out {a} {op} {b} gives {c}; whole numbers only, so no doubt. {E} #### {c}",
}
STRATEGIES: tuple[Strategy, ...] = tuple(Strategy(k, n, t, th, _prompt(ins, t), tpl, _VAL[k])
                                         for k, n, t, th, ins, tpl in _S)
BY_KEY = {s.key: s for s in STRATEGIES}
assert [s.token for s in STRATEGIES] == list(STRATEGY_TOKENS)

_CALC = re.compile(r"<<(\d+)([+\-*])(\d+)=(-?\d+)>>")


def _example(strategy: Strategy, seed: int, split: str, index: int) -> dict:
    rec = synthetic.arithmetic(seed, split, index)
    a, op, b, c = _CALC.search(rec["answer"]).groups()
    item = next((w for w in synthetic.ITEMS if w in rec["question"]), "items")
    wrong = int(c) + (1 if index % 2 else -1)
    template = strategy.val_template if split == "val" else strategy.template
    response = template.format(T=THINK_START, E=THINK_END, a=a, b=b, op=op, c=c, wrong=wrong, item=item)
    return {"strategy": strategy.key, "question": formats.gsm8k_prompt(rec), "response": " " + response}


def generate_examples(per_strategy: int, seed: int, split: str = "train") -> list[dict]:
    """``per_strategy`` examples of each strategy, from the ``split`` stream: train and val questions are disjoint
    and val responses are written with the held-out ``val_template`` (no response wording in both)."""
    return [_example(s, seed + i, split, j) for i, s in enumerate(STRATEGIES) for j in range(per_strategy)]


def load_examples(path: str | Path) -> list[dict]:
    """A user's JSONL of {"strategy", "question", "response"}; errors name the file and line."""

    def check(rec) -> str | None:
        if not isinstance(rec, dict) or not all(isinstance(rec.get(k), str) for k in ("strategy", "question", "response")):
            return "needs string keys 'strategy', 'question', 'response'"
        if rec["strategy"] not in BY_KEY:
            return f"unknown strategy {rec['strategy']!r}; choose from {sorted(BY_KEY)}"
        return None

    return read_jsonl(path, check, what="examples", key="phase.baking.examples_path")


def by_strategy(examples: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {s.key: [] for s in STRATEGIES}
    for ex in examples:
        out[ex["strategy"]].append(ex)
    return out


def question_key(question: str) -> str:
    """A question's content key (``synthetic.canonical`` of its GSM8K-format prompt): whitespace normalized, case
    and the spacing around punctuation folded, and a synthetic template's question reduced to its problem whatever its
    name or item."""
    return synthetic.canonical(formats.gsm8k_prompt({"question": question}))


def split_user_examples(records: list[dict], n_val: int) -> tuple[list[dict], list[dict]]:
    """Hold out the last n_val records of each strategy of a user file, less any whose question is also a training
    record's by content (``question_key``: a question repeated in the file, re-spaced, re-cased or, for a template question,
    under another name or item, must not be both trained on and validated; compared as exact strings, 'Ada  has'
    with two spaces was held out against a trained 'Ada has')."""
    train, val = [], []
    for recs in by_strategy(records).values():
        keep = max(len(recs) - n_val, 1) if recs else 0
        train += recs[:keep]
        val += recs[keep:] if len(recs) > 1 else []
    seen = {question_key(r["question"]) for r in train}
    return train, [r for r in val if question_key(r["question"]) not in seen]
