"""Embedded, procedurally generated tasks in the public formats of GSM8K, ARC-Easy and PIQA.

No download is needed: each generator draws examples from a seeded ``random.Random`` and returns
dicts shaped exactly like the public datasets, so every loader, renderer and metric treats synthetic
and real data the same way.

* ``plain_text``  — short templated sentences (stage 1 of the curriculum: learn the bytes)
* ``arithmetic``  — GSM8K format: ``question`` and an ``answer`` with worked steps, ``<<a+b=c>>``
                    calculator annotations and a final ``#### N`` line (stage 2)
* ``choice``      — ARC-Easy format (``question``, ``choices: {text, label}``, ``answerKey``) (stage 3)
* ``piqa``        — PIQA format (``goal``, ``sol1``, ``sol2``, ``label``) (stage 3): sums and differences
                    of numbers 1-50 in 9 wordings, the wrong solution off by 1-3 (~33k distinct goals)
* ``recall``      — plain text: a fact repeated after a gap beyond one attention window (``data/recall.py``)

Train / val / test are disjoint **by content**, not only by seed stream. Every example has a content
key (``content_key``): for a synthetic task the underlying problem — arithmetic ``(operation, a, b)``, PIQA
``(op, a, b)``, choice ``(largest|smallest, sorted numbers)`` — so two wordings of one computation (another name,
item or phrasing, the options in another order) are the same content; for anything else (the plain texts, a
user's file) the prompt the model is asked (``prompt_key``) with whitespace runs collapsed and each line stripped,
case folded and the spacing around punctuation removed (``fold``).
The BLAKE2b hash of the key puts it in one of 1000 buckets: buckets 0-99 are reserved for ``val``, 100-199 for
``test``, the rest is ``train`` (``split_of``). A draw for a split whose key hashes elsewhere is rejected and
redrawn (attempt 1, 2, ... of the same index), so a training draw never holds a held-out problem, whatever the
seeds: the partition does not depend on the seed. ``generate`` also drops repeated problems within a held-out set.
``overlap_check`` counts what it claims: held-out prompts, records and problems (content keys) seen among N
training draws (0 by construction). A plain text's key is its whole 2-4-sentence document, so its *sentences* are not
held out: ~56 % of test-split sentences occur in 5 000 training documents (an audit; docs/cognate.md, "held out by document,
not by sentence").
"""
from __future__ import annotations

import functools
import hashlib
import json
import multiprocessing
import os
import random
import re
import unicodedata

from agentforge.data import formats

NAMES = ["Ada", "Ben", "Cleo", "Dan", "Eve", "Finn", "Gus", "Hana", "Ivo", "Jun", "Kai", "Lena"]
ITEMS = ["apples", "books", "coins", "shells", "pencils", "stamps", "marbles", "cards"]
ADJS = ["small", "red", "quiet", "bright", "old", "quick", "green", "heavy"]
NOUNS = ["cat", "river", "lamp", "garden", "robot", "window", "teacher", "train"]
VERBS = ["sees", "follows", "paints", "finds", "moves", "likes", "builds", "opens"]
PLACES = ["the park", "the market", "the school", "the lake", "the library"]

SPLITS = ("train", "val", "test")
BUCKETS = 1000
RESERVED = {"val": range(0, 100), "test": range(100, 200)}   # the rest of the buckets is train
MAX_ATTEMPTS = 10_000
_PROMPT = {"text": lambda rec: rec["text"], "gsm8k": formats.gsm8k_prompt, "arc": formats.arc_prompt,
           "piqa": formats.piqa_prompt}


def prompt_key(task: str, rec: dict) -> str:
    """The text that identifies an example: the prompt a model is asked (the whole text for prose)."""
    return prompt_of(formats.TASK_FORMAT[task], rec)


def content_key(task: str, rec: dict) -> str:
    """What the splits keep apart: the canonical form of the prompt (``canonical``)."""
    return canonical(prompt_key(task, rec))


def normalize_ws(text: str) -> str:
    """Whitespace runs in each line collapsed to one space, each line and the whole stripped (newlines kept, so the
    prompt templates' ``\\nAnswer:`` stays): a question exported with double or trailing spaces is the same key."""
    return "\n".join(" ".join(line.split()) for line in text.split("\n")).strip()


def fold(text: str) -> str:
    """The case- and punctuation-spacing-blind form of a whitespace-normalized text: Unicode NFKC, case folded, and
    the whitespace around each punctuation mark removed ("How many ?" is "how many?", "3 , 4" is "3,4", the newline
    before a template's "Answer:" goes too), any other whitespace run one space (line breaks included). Two copies of a question that differ only so are one content key, so
    one cannot be trained on while the other is scored as held out (an audit: a lower-cased GSM8K test question in a
    user's file landed in the train split). Idempotent (applied until it no longer changes the text)."""
    for _ in range(4):
        out = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
        out = _PUNCT_SPACE.sub("", " ".join(out.split()))
        if out == text:
            break
        text = out
    return text


_PUNCT_SPACE = re.compile(r"\s+(?=[^\w\s])|(?<=[^\w\s])\s+")   # a space next to a punctuation mark
_W, _N = r"([^\W\d_]+)", r"(\d+)"


def _sum(a: str, b: str) -> tuple[str, ...]:
    return ("sum", *map(str, sorted((int(a), int(b)))))


def _product(a: str, b: str) -> tuple[str, ...]:
    return ("product", *map(str, sorted((int(a), int(b)))))


# (pattern over a prompt's ``fold``ed form, the problem it asks); a full match only. The problem is the computation,
# whatever task asks it: a GSM8K-format addition and a PIQA-format "find a plus b" are one problem, and so are a + b
# and b + a, a x b and b x a (the operands of a sum or product sorted; a difference keeps its order). Before, the key
# held the task and the operand order: 140 of 200 PIQA test items' computation was a train-split GSM8K-format
# problem, and 6 of 13 val multiplications had their swapped twin in the train split. The patterns read the folded
# text, so a template question re-cased or re-spaced around its punctuation is the same problem.
_CANON = [
    (rf"question:{_W} has {_N} {_W}\.\1 gets {_N} more\.how many \3 does \1 have now\?answer:",
     lambda m: _sum(m[2], m[4])),
    (rf"question:{_W} has {_N} {_W} and gives away {_N}\.how many \3 are left\?answer:",
     lambda m: ("difference", m[2], m[4])),
    (rf"question:{_W} buys {_N} bags with {_N} {_W} in each bag\.how many \4 does \1 buy\?answer:",
     lambda m: _product(m[2], m[3])),
    (rf"goal:to find {_N} plus {_N},solution:", lambda m: _sum(m[1], m[2])),
    (rf"goal:to count {_N} {_W} and then {_N} more \2,solution:", lambda m: _sum(m[1], m[3])),
    (rf"goal:to find {_N} minus {_N},solution:", lambda m: ("difference", m[1], m[2])),
    (rf"goal:to take {_N} {_W} away from {_N} \2,solution:", lambda m: ("difference", m[3], m[1])),
    (rf"question:which number is the (largest|smallest)\?\(a\){_N}\(b\){_N}\(c\){_N}\(d\){_N} answer:",
     lambda m: ("choice", m[1], ",".join(map(str, sorted(int(x) for x in m.groups()[1:]))))),
]
_CANON = [(re.compile(pat), key) for pat, key in _CANON]


@functools.lru_cache(maxsize=1 << 16)   # a pure function of a string, called per draw: template prompts recur
def canonical(prompt: str) -> str:
    """The content key of a prompt: the problem of a synthetic template (``sum|3|5``) whatever its task, name,
    item, wording, operand order (sums, products) or option order; else the prompt whitespace-normalized and
    ``fold``ed (case and the spacing around punctuation do not count). Idempotent."""
    text = fold(normalize_ws(prompt))
    for pat, key in _CANON:
        m = pat.fullmatch(text)
        if m:
            return "|".join(key(m))
    return text


def bucket(key: str) -> int:
    """0..999 from the BLAKE2b-64 hash of the key's canonical form (stable across runs and machines)."""
    return _hash_bucket(canonical(key))


def _hash_bucket(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "big") % BUCKETS


def split_of(task: str, rec: dict) -> str:
    return record_split(formats.TASK_FORMAT[task], rec)


def prompt_of(fmt: str, rec: dict) -> str:
    """The prompt of a record in format ``fmt`` (gsm8k, arc, piqa, text): what identifies it by content."""
    return _PROMPT[fmt](rec)


def record_key(fmt: str, rec: dict) -> str:
    """The content key of a record in format ``fmt`` (``canonical`` of its prompt)."""
    return canonical(prompt_of(fmt, rec))


def record_split(fmt: str, rec: dict) -> str:
    """The split of a record in format ``fmt`` (gsm8k, arc, piqa, text) by the hash of its content key: 10 % val,
    10 % test, the rest train — for the synthetic examples (``split_of``) and a user's file alike. Records that ask
    the same question land in the same split, so a file used for training and evaluation is held out by content."""
    b = _hash_bucket(record_key(fmt, rec))
    return next((sp for sp, r in RESERVED.items() if b in r), "train")


EVAL_FILE_BUCKETS = {"val": (range(0, 100), range(200, 600)), "test": (range(100, 200), range(600, BUCKETS))}


def eval_file_split(fmt: str, rec: dict) -> str:
    """The split of a record of an *evaluation* file (``data.eval_paths``, ``phase.hf_datasets``): its val and test
    buckets as in ``record_split``, and the train buckets halved (200-599 val, 600-999 test), so val (selection) and
    test (reported) are disjoint by content and a file's record of ``data.path``'s val/test split keeps that split."""
    b = _hash_bucket(record_key(fmt, rec))
    return "val" if any(b in r for r in EVAL_FILE_BUCKETS["val"]) else "test"


def _rng(seed: int, split: str, index: int, attempt: int = 0) -> random.Random:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {list(SPLITS)}")
    return random.Random(f"{seed}/{split}/{index}/{attempt}")  # str seeds hash with SHA-512: stable


def _plain_text(r: random.Random) -> dict:
    sents = []
    for _ in range(r.randint(2, 4)):
        a, b = r.sample(NOUNS, 2)
        sents.append(f"The {r.choice(ADJS)} {a} {r.choice(VERBS)} the {b} near {r.choice(PLACES)}.")
    return {"text": " ".join(sents)}


def _arithmetic(r: random.Random) -> dict:
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


def _choice(r: random.Random) -> dict:
    nums = r.sample(range(1, 100), 4)
    if r.random() < 0.5:
        q, correct = "Which number is the largest?", max(nums)
    else:
        q, correct = "Which number is the smallest?", min(nums)
    labels = ["A", "B", "C", "D"]
    return {"question": q, "choices": {"text": [str(n) for n in nums], "label": labels},
            "answerKey": labels[nums.index(correct)]}


_PIQA_GOALS = {op: [plain] + [worded.replace("{item}", it) for it in ITEMS] for op, plain, worded in
               (("+", "To find {a} plus {b},", "To count {a} {item} and then {b} more {item},"),
                ("-", "To find {a} minus {b},", "To take {b} {item} away from {a} {item},"))}
_PIQA_SOLS = {"+": "count {a} and then {b} more to get {x}.", "-": "start at {a} and take away {b} to get {x}."}


def _piqa(r: random.Random) -> dict:
    op = r.choice("+-")
    a, b = r.randint(1, 50), r.randint(1, 50)
    if op == "-":
        a, b = max(a, b) + 1, min(a, b)
    right = a + b if op == "+" else a - b
    wrong = right + r.choice([-3, -2, -1, 1, 2, 3])
    label = r.randint(0, 1)
    sols = [_PIQA_SOLS[op].format(a=a, b=b, x=x) for x in (right, wrong)]
    if label == 1:
        sols.reverse()
    return {"goal": r.choice(_PIQA_GOALS[op]).format(a=a, b=b), "sol1": sols[0], "sol2": sols[1], "label": label}


_RAW = {"plain_text": _plain_text, "arithmetic": _arithmetic, "choice": _choice, "piqa": _piqa}


def draw(task: str, seed: int, split: str, index: int) -> dict:
    """Example ``index`` of ``task`` in the ``split`` stream of ``seed``: the first attempt whose prompt
    hashes into ``split``'s part of the content space (see the module docstring)."""
    if task not in _RAW:
        raise ValueError(f"unknown synthetic task {task!r}; choose from {sorted(_RAW)}")
    for attempt in range(MAX_ATTEMPTS):
        rec = _RAW[task](_rng(seed, split, index, attempt))
        if split_of(task, rec) == split:
            return rec
    raise RuntimeError(f"{task}: no {split} example in {MAX_ATTEMPTS} draws")  # p < 0.9**10000


def _bind(task: str):
    def gen(seed: int, split: str, index: int) -> dict:
        return draw(task, seed, split, index)

    gen.__name__ = task
    gen.__doc__ = f"Example ``index`` of ``{task}`` from the ``split`` stream of ``seed`` (content-disjoint splits)."
    return gen


plain_text, arithmetic, choice, piqa = (_bind(t) for t in _RAW)


def recall(seed: int, split: str, index: int) -> dict:
    """The long-range recall task (``data/recall.py``: a fact repeated beyond one attention window)."""
    from agentforge.data.recall import recall as draw_recall  # late: recall.py uses this module's buckets
    return draw_recall(seed, split, index)


GENERATORS = {"plain_text": plain_text, "arithmetic": arithmetic, "choice": choice, "piqa": piqa, "recall": recall}


def generate(task: str, n: int, seed: int = 0, split: str = "train", partial: bool = False) -> list[dict]:
    """n examples of ``task`` from the ``split`` stream of ``seed``. A held-out set holds each problem once
    (``content_key``: no repeated computation, whatever its wording), so its n counts independent problems: with
    repeats, 200 PIQA-format val items held 159 distinct problems and a CI over the 200 claimed more than it knew.
    The held-out problem spaces are small (about 300 GSM8K-format and 240-270 PIQA-format problems per split):
    asking for more than exist raises, naming how many were found (``partial``: returns those found instead)."""
    if split == "train":
        return [draw(task, seed, split, i) for i in range(n)]
    out, seen, i = [], set(), 0
    while len(out) < n:
        rec = draw(task, seed, split, i)
        key, i = content_key(task, rec), i + 1
        if key not in seen:
            seen.add(key)
            out.append(rec)
        if i > 50 * n + 1000:
            if partial:
                return out
            raise ValueError(f"{task}: only {len(out)} distinct {split} problems found in {i} draws, fewer than the "
                             f"{n} asked for (a held-out set holds each problem once); ask for at most {len(out)}")
    return out


def overlap_check(seed: int = 0, n_train: int = 50_000, n_heldout: int = 200,
                  tasks: tuple[str, ...] = ("arithmetic", "choice", "piqa"), workers: int | None = None
                  ) -> dict[str, dict]:
    """Per task: how many of ``n_heldout`` val and test examples have their prompt, their whole record, or their
    problem (``content_key``: the same computation in another wording) among ``n_train`` training draws (the
    training stream the datamodule samples: random indices).

    The draws are split over ``workers`` processes (default: the CPUs this process may use; forked, so
    nothing is re-imported); the indices come from one seeded stream, so the counts do not depend on it."""
    rng = random.Random(seed * 7919)
    indices = {task: [rng.randrange(10**9) for _ in range(n_train)] for task in tasks}
    held = {task: {split: generate(task, n_heldout, seed, split) for split in ("val", "test")} for task in tasks}
    held_keys = {task: {prompt_key(task, r) for rs in held[task].values() for r in rs} for task in tasks}
    n = max(1, workers or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))
    size = max(1, -(-n_train // n))  # draws per job (n_train = 0: no job)
    jobs = [(task, seed, indices[task][c: c + size], held_keys[task]) for task in tasks for c in range(0, n_train, size)]
    if n > 1 and len(jobs) > 1 and "fork" in multiprocessing.get_all_start_methods():
        with multiprocessing.get_context("fork").Pool(min(n, len(jobs))) as pool:
            parts = pool.starmap(_train_draws, jobs)
    else:
        parts = [_train_draws(*job) for job in jobs]
    out = {}
    for task in tasks:
        mine = [part for job, part in zip(jobs, parts) if job[0] == task]
        keys = set().union(*(k for k, _, _ in mine))
        recs = set().union(*(r for _, r, _ in mine))
        problems = set().union(*(c for _, _, c in mine))
        row = {"train_draws": n_train, "train_distinct": len(keys), "train_distinct_problems": len(problems)}
        for split in ("val", "test"):
            row[split] = len(held[task][split])
            row[f"{split}_prompts_in_train"], row[f"{split}_records_in_train"] = seen_in(task, held[task][split],
                                                                                        keys, recs)
            row[f"{split}_problems_in_train"] = sum(content_key(task, r) in problems for r in held[task][split])
        out[task] = row
    return out


def _train_draws(task: str, seed: int, indices: list[int], held_keys: set[str]
                 ) -> tuple[set[str], set[str], set[str]]:
    """The prompt keys of the training draws at ``indices``, the whole records (sorted JSON) of those whose prompt
    is one of ``held_keys`` (a record can only equal a held-out one if its prompt does), and their content keys."""
    keys, recs, problems = set(), set(), set()
    for i in indices:
        rec = draw(task, seed, "train", i)
        key = prompt_key(task, rec)
        keys.add(key)
        problems.add(canonical(key))
        if key in held_keys:
            recs.add(json.dumps(rec, sort_keys=True))
    return keys, recs, problems


def seen_in(task: str, held: list[dict], train_keys: set[str], train_records: set[str]) -> tuple[int, int]:
    """(held-out examples whose prompt is a training prompt, those identical to a training record)."""
    return (sum(prompt_key(task, r) in train_keys for r in held),
            sum(json.dumps(r, sort_keys=True) in train_records for r in held))
