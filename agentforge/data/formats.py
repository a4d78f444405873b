"""The public dataset formats: loading from local JSONL (or `datasets`), validating, rendering to text.

* GSM8K:    {"question": str, "answer": str ending in "#### N"}
* ARC-Easy: {"question": str, "choices": {"text": [...], "label": [...]}, "answerKey": str}
* PIQA:     {"goal": str, "sol1": str, "sol2": str, "label": 0|1}

The rendering is the single place that decides how an example looks to the model; evaluation builds
its prompts from the same functions, so training and scoring agree.
"""
from __future__ import annotations

import gzip
import json
import re
from collections.abc import Callable
from pathlib import Path

from agentforge.errors import AgentForgeError

REQUIRED_KEYS = {
    "gsm8k": ("question", "answer"),
    "arc": ("question", "choices", "answerKey"),
    "piqa": ("goal", "sol1", "sol2", "label"),
    "text": ("text",),
}
TASK_FORMAT = {"plain_text": "text", "arithmetic": "gsm8k", "choice": "arc", "piqa": "piqa", "recall": "text"}


class DatasetError(AgentForgeError, ValueError):
    """A dataset file is missing, empty or malformed."""


def read_jsonl(path: str | Path, check: Callable[[object], str | None], *, what: str, key: str,
               limit: int | None = None) -> list[dict]:
    """Records of a JSONL file, gzip-compressed when its name ends in ``.gz``; ``check(rec)`` returns what is
    wrong with a record (or None). Every error names the file (and line) and the config ``key`` that gave it."""
    path = Path(path)
    if not path.is_file():
        where = f" (relative to the working directory {Path.cwd()})" if not path.is_absolute() else ""
        env = "; the GSM8K default reads AGENTFORGE_GSM8K" if "gsm8k" in str(path).lower() else ""
        raise DatasetError(f"{path}: {what} file not found{where} ({key}); give an existing JSONL file{env}")
    records = []
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DatasetError(f"{path}:{lineno}: not valid JSON ({exc.msg}; {key})") from exc
                except RecursionError:
                    raise DatasetError(f"{path}:{lineno}: JSON nested too deeply to read ({key}); give one flat "
                                       f"record per line") from None
                problem = check(rec)
                if problem:
                    raise DatasetError(f"{path}:{lineno}: {problem} ({key})")
                records.append(rec)
                if limit is not None and len(records) >= limit:
                    break
    except UnicodeDecodeError as exc:  # a binary file given as JSONL
        raise DatasetError(f"{path}: not UTF-8 text ({exc.reason}; {key}); give a JSONL file") from exc
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError; a cut-off .gz ends in EOFError
        raise DatasetError(f"{path}: not a readable {'gzip ' if opener is gzip.open else ''}file ({exc}; {key})") from exc
    if not records:
        raise DatasetError(f"{path}: no records — the file is empty ({key})")
    return records


def load_jsonl(path: str | Path, fmt: str, limit: int | None = None, key: str = "data.path") -> list[dict]:
    """Read a JSONL file of ``fmt`` records, checking every record's keys; errors name the config ``key`` that gave
    the file, the file and the line."""
    if fmt not in REQUIRED_KEYS:
        raise DatasetError(f"data.format: unknown dataset format {fmt!r}; choose from {sorted(REQUIRED_KEYS)}")

    return read_jsonl(path, lambda rec: record_problem(fmt, rec), what="dataset", key=key, limit=limit)


def record_problem(fmt: str, rec) -> str | None:
    """What is wrong with one ``fmt`` record (None when nothing): missing keys, then what would crash or silently
    mis-score it later — a text that is not a string, an ARC answer key that is not one of its labels, ARC text and
    label lists of different lengths, a PIQA label other than 0/1, a GSM8K answer with no final number."""
    missing = [k for k in REQUIRED_KEYS[fmt] if not isinstance(rec, dict) or k not in rec]
    if missing:
        return f"a {fmt} record needs keys {list(REQUIRED_KEYS[fmt])}; missing {missing}"
    texts = [k for k in REQUIRED_KEYS[fmt] if k in ("question", "answer", "goal", "sol1", "sol2", "text")
             and not isinstance(rec[k], str)]
    if texts:
        return f"a {fmt} record's {texts} must be strings (got {type(rec[texts[0]]).__name__})"
    if fmt == "arc":
        ch = rec["choices"]
        if not (isinstance(ch, dict) and isinstance(ch.get("text"), list) and isinstance(ch.get("label"), list)):
            return 'an arc record\'s "choices" must be {"text": [...], "label": [...]}'
        if len(ch["text"]) != len(ch["label"]) or len(ch["label"]) < 2:
            return (f'an arc record\'s "choices" needs as many texts as labels, at least 2 '
                    f'(got {len(ch["text"])} texts, {len(ch["label"])} labels)')
        if rec["answerKey"] not in ch["label"]:
            return f'an arc record\'s "answerKey" {rec["answerKey"]!r} is not one of its labels {ch["label"]}'
    if fmt == "piqa" and (isinstance(rec["label"], bool) or str(rec["label"]).strip() not in ("0", "1")):
        return f'a piqa record\'s "label" must be 0 or 1 (got {rec["label"]!r})'
    if fmt == "gsm8k":
        from agentforge.evals.answers import extract_number  # late: keeps formats free of evals at import

        if extract_number(rec["answer"]) is None:
            return ('a gsm8k record\'s "answer" has no final number (GSM8K ends it in "#### N"); no answer could '
                    'ever match it')
    return None


def load_hf(name: str, split: str, limit: int | None = None) -> list[dict]:
    """Load GSM8K / ARC-Easy / PIQA through `datasets` (needs the package and a network or a cache)."""
    try:
        import datasets
    except ImportError as exc:
        raise DatasetError("the `datasets` package is not installed: pip install 'agentforge[hf]', "
                           "or use data.path=FILE.jsonl") from exc
    args = {"gsm8k": ("gsm8k", "main"), "arc": ("allenai/ai2_arc", "ARC-Easy"), "piqa": ("ybisk/piqa",)}[name]
    ds = datasets.load_dataset(*args, split=split)
    rows = [dict(r) for r in ds][:limit] if limit else [dict(r) for r in ds]
    for i, r in enumerate(rows):
        problem = record_problem(name, r)
        if problem:
            raise DatasetError(f"{args[0]} {split} row {i}: {problem} (phase.hf_datasets)")
    return rows


_CALC = re.compile(r"<<[^>]*>>")


def gsm8k_prompt(rec: dict) -> str:
    return f"Question: {rec['question']}\nAnswer:"


def gsm8k_target(rec: dict) -> str:
    return " " + _CALC.sub("", rec["answer"]).strip()


def arc_prompt(rec: dict) -> str:
    opts = " ".join(f"({lab}) {txt}" for lab, txt in zip(rec["choices"]["label"], rec["choices"]["text"]))
    return f"Question: {rec['question']} {opts}\nAnswer:"


def arc_choices(rec: dict) -> tuple[list[str], int]:
    """Continuations to score (" (A) text") and the index of the right one."""
    labels, texts = rec["choices"]["label"], rec["choices"]["text"]
    return [f" ({lab}) {txt}" for lab, txt in zip(labels, texts)], labels.index(rec["answerKey"])


def piqa_prompt(rec: dict) -> str:
    return f"Goal: {rec['goal']}\nSolution:"


def piqa_choices(rec: dict) -> tuple[list[str], int]:
    return [" " + rec["sol1"], " " + rec["sol2"]], int(rec["label"])


def render(rec: dict, fmt: str) -> str:
    """The full training text of one example."""
    if fmt == "text":
        return rec["text"]
    if fmt == "gsm8k":
        return gsm8k_prompt(rec) + gsm8k_target(rec)
    if fmt == "arc":
        conts, right = arc_choices(rec)
        return arc_prompt(rec) + conts[right]
    if fmt == "piqa":
        conts, right = piqa_choices(rec)
        return piqa_prompt(rec) + conts[right]
    raise DatasetError(f"unknown format {fmt!r}")
