"""Reading ``{stage}_results.json`` files (written by ``phase=eval``) for the comparison, checked on the way in.

A file that parses but holds the wrong shape would otherwise fail deep in the statistics with a traceback
(``per_example: null``: an AttributeError; a sample count above ``n_samples``: a ValueError from pass@k) or, worse,
be compared silently; ``load_results`` turns each such file into one ``ConfigError`` naming the file and the key.
"""
from __future__ import annotations

from pathlib import Path

from agentforge.errors import ConfigError
from agentforge.io import pipeline_copy_hint, read_json

STANDARD_STAGES = ("baseline", "finetuned_vanilla", "after_surgery", "finetuned_recursive")
FORMATS = ("gsm8k", "arc", "piqa")
DICT_OR_NULL = ("finetune", "settings", "reference_fit", "memory_regime")   # read with .get() by the comparison
BOOL_METRICS = ("decode_cached",)   # the one metric phase=eval writes as true/false (the timing regime)


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _count(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def check_results(res, where: str, stage: str | None = None) -> None:
    """Raise a ConfigError naming ``where`` and the key when ``res`` is not what ``phase=eval`` writes in a way the
    comparison reads: the objects, the per-example lists (0/1 outcomes, numbers, id strings) and their lengths (one
    value per example id), and 0 <= each sample count <= ``n_samples``."""
    again = f"stage={stage}" if stage else "for this stage"

    def bad(key: str, what: str) -> ConfigError:
        return ConfigError(f"{where}: {key} {what}; re-run phase=eval {again}")

    if not isinstance(res, dict) or not isinstance(res.get("metrics"), dict):
        raise ConfigError(f"{where}: not a phase=eval results file (a JSON object with a \"metrics\" object); "
                          f"re-run phase=eval {again}")
    if not res["metrics"]:
        raise bad("metrics", "is empty: no figure to compare")
    for key, v in res["metrics"].items():
        if v is not None and not _number(v) and not (key in BOOL_METRICS and isinstance(v, bool)):
            raise bad(f"metrics.{key}", f"is {v!r}"[:80] + ", not a number or null")
    for key in DICT_OR_NULL:
        if res.get(key) is not None and not isinstance(res[key], dict):
            raise bad(key, f"is {type(res[key]).__name__}, not an object or null")
    per = res.get("per_example", {})
    if not isinstance(per, dict):
        raise bad("per_example", f"is {'null' if per is None else type(per).__name__}, not an object")

    def listed(key: str, ok, what: str) -> list | None:
        v = per.get(key)
        if v is None:
            return None
        if not isinstance(v, list):
            raise bad(f"per_example.{key}", f"is {type(v).__name__}, not a list of {what}")
        i = next((i for i, x in enumerate(v) if not ok(x)), None)
        if i is not None:
            raise bad(f"per_example.{key}[{i}]", f"is {v[i]!r}, not {what}")
        return v

    for fmt in FORMATS:
        correct = listed(f"{fmt}_correct", lambda x: isinstance(x, (int, float)) and x in (0, 1), "0 or 1")
        for key, ok, what in ((f"{fmt}_ids", lambda x: isinstance(x, str), "an example id string"),
                              (f"{fmt}_chance", _number, "a number"),
                              *([("gsm8k_num_correct", _count, "a count >= 0")] if fmt == "gsm8k" else [])):
            v = listed(key, ok, what)
            if key.endswith("_ids") and v is not None and len(set(v)) != len(v):
                dup = next(x for i, x in enumerate(v) if x in v[:i])
                raise bad(f"per_example.{key}", f"repeats the id {dup!r} (one value per example)")
            if v is not None and correct is not None and len(v) != len(correct):
                raise bad(f"per_example.{key}", f"has {len(v)} values for the {len(correct)} of "
                                                f"per_example.{fmt}_correct (one per example)")
    ids, counts, n = per.get("gsm8k_ids"), per.get("gsm8k_num_correct"), per.get("n_samples")
    if ids is not None and counts is not None and len(ids) != len(counts):
        raise bad("per_example.gsm8k_num_correct", f"has {len(counts)} values for the {len(ids)} per_example.gsm8k_ids")
    if n is not None and not _count(n):
        raise bad("per_example.n_samples", f"is {n!r}, not a count >= 0")
    i = next((i for i, c in enumerate(counts or []) if n is not None and c > n), None)
    if i is not None:
        raise bad(f"per_example.gsm8k_num_correct[{i}]", f"is {counts[i]}, more correct samples than "
                                                         f"per_example.n_samples = {n} (0 <= c <= n)")
    listed("row_loss", _number, "a number")


def load_results(results_dir: str | Path, stages: list[str] | None) -> dict[str, dict]:
    """{stage: results} in the given order; ``stages=None`` takes the standard stages that exist. Each file is
    checked (``check_results``)."""
    results_dir = Path(results_dir)
    strict = stages is not None
    out = {}
    for st in stages if strict else STANDARD_STAGES:
        path = results_dir / f"{st}_results.json"
        if not path.is_file():
            if strict:
                raise ConfigError(f"{path}: no results for stage {st!r}; run `python -m agentforge phase=eval "
                                  f"stage={st}` first, or set phase.results_dir"
                                  f"{pipeline_copy_hint(results_dir, holds=path.name)}")
            continue
        try:
            out[st] = read_json(path, "results JSON")
        except ValueError as exc:
            raise ConfigError(f"{path}: {exc}; re-run phase=eval stage={st}") from None
        check_results(out[st], str(path), st)
    if not out:
        present = sorted(p.name.removesuffix("_results.json") for p in results_dir.glob("*_results.json"))
        if present:
            raise ConfigError(f"{results_dir}: none of the standard stages {list(STANDARD_STAGES)}; it holds "
                              f"{', '.join(present)}: name them, e.g. stages=[{','.join(present[:2])}]")
        raise ConfigError(f"{results_dir}: no {{stage}}_results.json files; run phase=eval first or give stages=[...]"
                          f"{pipeline_copy_hint(results_dir, holds='*_results.json')}")
    return out


def require_two(found: dict, stages: list[str] | None, results_dir: str | Path) -> dict:
    """``found`` (``load_results``' answer) when it holds two stages or more; a comparison of one stage has no
    difference, no verdict and no stats.json, so it is a ConfigError naming what to do."""
    if len(found) >= 2:
        return found
    one = next(iter(found))
    if stages:
        pair = f"baseline,{one}" if one != "baseline" else "baseline,after_surgery"
        raise ConfigError(f"stages=[{one}] names one stage; a comparison needs two or more, e.g. stages=[{pair}]")
    raise ConfigError(f"{results_dir}: holds the results of one standard stage ({one}); a comparison needs two: "
                      f"run phase=eval stage=NAME for another, or name the stages, stages=[...]")
