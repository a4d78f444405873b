"""A real, offline Python corpus: the running interpreter's standard library (PSF licence), made safe to
train a code model on before it is tested on HumanEval / MBPP.

1. Every ``.py`` file under ``sysconfig.get_paths()["stdlib"]`` (or ``data.root``), minus the test suites,
   ``site-packages`` and the vendored 2to3 grammar tests (``data.exclude_dirs``).
2. Exact duplicates (same bytes) are dropped, keeping the first path in sorted order.
3. Decontamination: a file is dropped when it contains a benchmark problem's function signature as a line
   (``def name(args):`` after whitespace normalisation), a function of the same name and argument names however
   it is laid out (``ast``: a signature wrapped over lines, other annotations or defaults; an audit's reformatted
   HumanEval copy passed the line rule), or its canonical solution as a block of normalised lines (solutions
   shorter than ``MIN_SOLUTION_CHARS`` are too generic to test, e.g. ``return a + b``).
   The count and the names of the dropped files are reported.
4. Split by file (a file's path hash decides), so no file is on both sides; each file is cut into chunks
   of whole top-level blocks (``def``/``class``/decorators) of at most ``chunk_chars`` characters, which the
   datamodule packs into rows with the project's byte tokenizer. A val chunk whose text is also a train chunk
   (a licence header, a generated codec table repeated across files) is dropped, so validation holds no text
   the model trained on (counted in ``val_chunks_in_train_dropped``; tested), and so is a near copy: at least half
   of its long lines in the training text (``drop_near_copies``, ``val_chunks_near_train_dropped``; tested).
"""
from __future__ import annotations

import ast
import hashlib
import random
import re
import sysconfig
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from agentforge.errors import ConfigError

MIN_SOLUTION_CHARS = 40
DEFAULT_EXCLUDE = ("test", "tests", "site-packages", "lib2to3", "idlelib", "turtledemo", "__pycache__")
_TOP = re.compile(r"^(?:def |class |async def |@)")
_WS = re.compile(r"\s+")


def normalize_lines(text: str) -> list[str]:
    """Non-empty lines with surrounding whitespace stripped and inner runs collapsed to one space."""
    return [ln for ln in (_WS.sub(" ", line).strip() for line in text.splitlines()) if ln]


def signature(code: str, entry_point: str) -> str | None:
    """The normalised ``def entry_point(...)`` line of a prompt or solution, if there is one."""
    for ln in normalize_lines(code):
        if ln.startswith((f"def {entry_point}(", f"async def {entry_point}(")):
            return ln
    return None


def function_keys(code: str, names: set[str] | None = None) -> set[tuple[str, tuple[str, ...]]]:
    """(name, argument names) of every function ``code`` defines (of those named in ``names``, when given); none
    when it does not parse. The keys say which function it is whatever its layout, annotations or defaults."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return set()
    keys = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and (names is None or node.name in names):
            a = node.args
            args = [x.arg for x in (*a.posonlyargs, *a.args)] + [f"*{a.vararg.arg}" if a.vararg else "*"] \
                + [x.arg for x in a.kwonlyargs] + ([f"**{a.kwarg.arg}"] if a.kwarg else [])
            keys.add((node.name, tuple(args)))
    return keys


def contamination_markers(problems: Iterable) -> tuple[set[str], list[str], set[tuple[str, tuple[str, ...]]]]:
    """(signature lines, normalised solution blocks, (entry point, argument names) keys) of the benchmark problems."""
    sigs, blocks, funcs = set(), [], set()
    for p in problems:
        if p.entry_point:
            funcs |= function_keys(p.prompt + p.canonical_solution, {p.entry_point})
        for src in (p.prompt, p.canonical_solution):
            s = signature(src, p.entry_point) if p.entry_point else None
            if s:
                sigs.add(s)
        block = "\n".join(normalize_lines(p.canonical_solution))
        if len(block) >= MIN_SOLUTION_CHARS:
            blocks.append(block)
    return sigs, blocks, funcs


def is_contaminated(text: str, sigs: set[str], blocks: list[str],
                    funcs: set[tuple[str, tuple[str, ...]]] = frozenset()) -> bool:
    lines = normalize_lines(text)
    if sigs and not sigs.isdisjoint(lines):
        return True
    norm = "\n".join(lines)
    if any(b in norm for b in blocks):
        return True
    names = {name for name, _ in funcs}
    if names and re.search(r"\bdef\s+(?:" + "|".join(map(re.escape, sorted(names))) + r")\b", text):
        return not funcs.isdisjoint(function_keys(text, names))   # parsed only where such a name is defined
    return False


def chunks(text: str, chunk_chars: int) -> list[str]:
    """Whole top-level blocks grouped up to chunk_chars; a longer block is cut at line boundaries."""
    blocks, cur = [], []
    for line in text.splitlines(keepends=True):
        if _TOP.match(line) and cur and not (cur[-1].startswith("@")):
            blocks.append("".join(cur))
            cur = []
        cur.append(line)
    if cur:
        blocks.append("".join(cur))
    out, buf = [], ""
    for b in blocks:
        while len(b) > chunk_chars:  # one long block: cut at the last newline before the limit
            cut = b.rfind("\n", 0, chunk_chars) + 1 or chunk_chars
            if buf:
                out.append(buf)
                buf = ""
            out.append(b[:cut])
            b = b[cut:]
        if buf and len(buf) + len(b) > chunk_chars:
            out.append(buf)
            buf = ""
        buf += b
    if buf.strip():
        out.append(buf)
    return [c for c in out if c.strip()]


@dataclass
class CodeCorpus:
    train: list[str]
    val: list[str]
    stats: dict = field(default_factory=dict)


def corpus_root(root: str | Path | None) -> Path:
    """The directory ``data.root`` names; null: this interpreter's standard library."""
    return Path(root) if root else Path(sysconfig.get_paths()["stdlib"])


def source_files(root: Path, exclude_dirs: Iterable[str]) -> list[Path]:
    exclude = set(exclude_dirs)
    return sorted(p for p in root.rglob("*.py") if not exclude.intersection(p.relative_to(root).parts[:-1]))


def build_corpus(problems: Iterable = (), *, root: str | Path | None = None, val_fraction: float = 0.1,
                 chunk_chars: int = 2000, exclude_dirs: Iterable[str] = DEFAULT_EXCLUDE,
                 max_files: int | None = None) -> CodeCorpus:
    """The deduplicated, decontaminated corpus split by file into train/val chunks (see module doc)."""
    root = corpus_root(root)
    if not root.is_dir():
        raise ConfigError(f"data.root={root}: not a directory of Python files")
    files = source_files(root, exclude_dirs)
    if max_files:
        files = files[:max_files]
    sigs, blocks, funcs = contamination_markers(problems)
    seen, train, val = set(), [], []
    dropped, dup, unreadable, n_train, n_val = [], 0, 0, 0, 0
    for path in files:
        try:
            raw = path.read_bytes()
            text = raw.decode("utf-8")
        except (OSError, UnicodeDecodeError):
            unreadable += 1
            continue
        digest = hashlib.sha256(raw).hexdigest()
        if digest in seen:
            dup += 1
            continue
        seen.add(digest)
        rel = path.relative_to(root).as_posix()
        if is_contaminated(text, sigs, blocks, funcs):
            dropped.append(rel)
            continue
        to_val = int(hashlib.sha256(rel.encode()).hexdigest(), 16) % 10_000 < val_fraction * 10_000
        parts = chunks(text, chunk_chars)
        (val if to_val else train).extend(parts)
        n_val, n_train = n_val + to_val, n_train + (not to_val)
    in_train = {hashlib.sha256(c.encode()).digest() for c in train}   # held out by content, not only by file:
    kept = [c for c in val if hashlib.sha256(c.encode()).digest() not in in_train]   # a chunk (license header,
    val_overlap, val = len(val) - len(kept), kept                          # codec table) may repeat across files
    val, near = drop_near_copies(val, train)
    if not train or not val:
        raise ConfigError(f"data.root={root}: {len(files)} Python files give {n_train} train and {n_val} val files; "
                          f"need at least one of each (check data.root and data.val_fraction)")
    stats = {"root": str(root), "files_found": len(files), "duplicates_dropped": dup, "unreadable": unreadable,
             "val_chunks_in_train_dropped": val_overlap, "val_chunks_near_train_dropped": near,
             "contaminated_dropped": len(dropped), "contaminated_files": dropped,
             "signatures_checked": len(sigs), "solutions_checked": len(blocks), "functions_checked": len(funcs),
             "train_files": n_train, "val_files": n_val, "train_chunks": len(train), "val_chunks": len(val),
             "train_chars": sum(map(len, train)), "val_chars": sum(map(len, val))}
    return CodeCorpus(train, val, stats)


NEAR_LINE_CHARS = 16   # a normalised line this long says something of its own ("return None" does not)
NEAR_SHARE = 0.5       # a val chunk with at least this share of such lines in the training text is a near copy


def drop_near_copies(val: list[str], train: list[str]) -> tuple[list[str], int]:
    """(``val`` less its near copies of training text, how many were dropped): a chunk at least ``NEAR_SHARE`` of
    whose normalised lines of ``NEAR_LINE_CHARS``+ characters occur in the training chunks. Exact copies are dropped
    before; near ones are generated tables that differ in a few entries (the stdlib's codec tables: 6.7 % of the val
    characters were such, in an audit). On the stdlib the median val chunk shares 12 % of its lines with training;
    83 of 475 chunks (15.7 % of the val characters) share at least half, 40 (7.7 %) at least 90 %."""
    seen = {ln for c in train for ln in normalize_lines(c) if len(ln) >= NEAR_LINE_CHARS}
    kept = []
    for c in val:
        lines = [ln for ln in normalize_lines(c) if len(ln) >= NEAR_LINE_CHARS]
        if not lines or sum(ln in seen for ln in lines) < NEAR_SHARE * len(lines):
            kept.append(c)
    return kept, len(val) - len(kept)


class CodePool:
    """The datamodule's text source for ``data=python_code``: random corpus chunks of the asked split
    (the task mix is ignored: there is one task, code)."""

    def __init__(self, corpus: CodeCorpus):
        self.corpus = corpus

    def sample_texts(self, mix: Mapping[str, float], n_tokens: int, rng: random.Random, split: str,
                     distinct: bool = False) -> list[str]:
        """Chunks of ``split`` until ``n_tokens`` bytes (+ BOS/EOS each); ``distinct``: each chunk at most once (held-out
        rows, ``datamodule.heldout_rows``), stopping early when every chunk has been drawn."""
        pool = self.corpus.val if split == "val" else self.corpus.train
        picks = iter(rng.sample(pool, len(pool))) if distinct else iter(lambda: rng.choice(pool), None)
        texts, total = [], 0
        while total < n_tokens and (t := next(picks, None)) is not None:   # a distinct draw can run out
            texts.append(t)
            total += len(t.encode("utf-8")) + 2
        return texts


def corpus_from_config(data_cfg: dict, problems: Iterable = ()) -> CodeCorpus:
    """The corpus a ``data=python_code`` config describes, decontaminated against ``problems`` plus the
    benchmarks named in ``data.decontaminate`` (HumanEval always loadable offline)."""
    from agentforge.codegen.problems import load_problems

    probs = list(problems)
    names = {p.benchmark for p in probs}
    for bench in data_cfg.get("decontaminate") or []:
        if bench not in names:
            probs += load_problems(bench, (data_cfg.get("benchmark_paths") or {}).get(bench))
    return build_corpus(probs, root=data_cfg.get("root"), val_fraction=float(data_cfg.get("val_fraction", 0.1)),
                        chunk_chars=int(data_cfg.get("chunk_chars", 2000)),
                        exclude_dirs=data_cfg.get("exclude_dirs") or DEFAULT_EXCLUDE,
                        max_files=data_cfg.get("max_files"))
