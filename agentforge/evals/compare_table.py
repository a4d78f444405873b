"""The stage-comparison table (Markdown, CSV): each later stage's change against the first, with its evidence.

A marker claims a change only where the evidence carries it:

* metrics with per-example results on the same examples in both stages (``PAIRED``: the accuracies from
  per-question correct/incorrect, pass@k from per-problem sample counts, loss and perplexity from per-row losses)
  get the paired difference's 95 % CI, n and p (``stats.paired_test``: McNemar's exact p with the hull of Tango's and the exact conditional CI for 0/1
  outcomes, the exact sign-flip test below ``min_n`` pairs, the paired bootstrap otherwise); ▲ / ▼ when the CI
  excludes 0 and Holm's adjusted p (``p_holm``, over every paired test of the table: loss and perplexity, one test
  of the same row losses, count once) is below 0.05, on the metric's better / worse side, ``~`` (no significant
  change) otherwise. A table runs ~15 tests: without the correction a third of tables of four stages that differ
  in nothing showed a marker (150 simulated tables, 0.04 false markers per test). The one exception is the verdict's
  pre-registered primary test (``primary``: the candidate's pass@1 against the first stage, when that is the
  baseline): it is no member of the exploratory family, so its marker uses its own p, as the verdict does (with
  Holm's p the table put ``~`` beside a SUCCESS verdict on the same comparison: p 0.043, Holm 0.129);
* quantities that carry no sampling noise (``DETERMINISTIC``: the parameter count and memory) keep the marker
  of their exact difference, ``=`` when equal;
* everything else — timings, throughput, peak memory, generation statistics, anything measured once per run —
  shows the bare difference with no marker: separate runs on a machine, unpaired, no test.

``change`` is the raw direction of a difference (no test); the table uses it for deterministic quantities only.
"""
from __future__ import annotations

import csv
import io
import math

import numpy as np

from agentforge.errors import ConfigError
from agentforge.evals.pass_at_k import pass_at_k_per_problem
from agentforge.evals.runner import direction
from agentforge.evals.stats import MIN_N, holm, paired_test

PLOT_GROUPS = {
    "quality": ["perplexity", "loss", "token_accuracy", "reasoning_accuracy", "pass_at_1", "pass_at_10",
                "arc_easy_accuracy", "piqa_accuracy"],
    "generation": ["gen/avg_length_tokens", "gen/distinct_1", "gen/distinct_2", "gen/repetition_rate",
                   "gen/coherence", "gen/prompt_overlap"],
    "efficiency": ["throughput_tokens_per_sec", "forward_tokens_per_sec", "latency_ms", "peak_memory_mb",
                   "param_count", "param_memory_mb", "examples_per_sec"],
    "recursive": ["avg_refine_steps", "commit_rate", "avg_chunk_length", "stability_at_k", "surgery_max_abs_diff"],
}
SKIP = {"latency_tokens"}
ACCURACY_FORMATS = (("gsm8k", "reasoning_accuracy"), ("arc", "arc_easy_accuracy"), ("piqa", "piqa_accuracy"))
ACCURACY_KEYS = frozenset(key for _, key in ACCURACY_FORMATS)   # the metrics that are proportions (a [0, 1] axis)
DETERMINISTIC = ("param_count", "param_memory_mb")   # counted from the weights: no sampling or timing noise
CONFIDENCE = 0.95
UNPAIRED = "unpaired: no test"
MARK = {"improved": "▲", "regressed": "▼", "no significant change": "~", "differs": "≠", "same": "=", "": ""}
TEST_NAMES = {"mcnemar_exact + hull_ci": "McNemar exact p, Tango ∪ exact CI", "bootstrap": "paired bootstrap",
              "sign_flip_exact": "sign-flip exact", "sign_flip_monte_carlo": "sign-flip (Monte Carlo)"}
COLUMNS = ["metric", "better", "stage", "value", "delta_vs_first", "ci_low", "ci_high", "n", "p", "p_holm", "test",
           "pairing", "change"]


def metric_names(results: dict[str, dict]) -> list[str]:
    order = [m for g in PLOT_GROUPS.values() for m in g]
    seen = {m for r in results.values() for m, v in r["metrics"].items() if _num(v) and m not in SKIP}
    return [m for m in order if m in seen] + sorted(seen - set(order))


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def change(metric: str, base, value, rel_tol: float = 1e-9) -> str:
    """'improved', 'regressed', 'same' or '' (no direction / missing): the sign of the bare difference, no test."""
    if not (_num(base) and _num(value)) or math.isnan(base) or math.isnan(value):
        return ""
    if math.isclose(base, value, rel_tol=rel_tol, abs_tol=1e-12):
        return "same"
    d = direction(metric)
    if d == 0:
        return ""
    return "improved" if (value - base) * d > 0 else "regressed"


def _per_problem(res: dict, k: int) -> tuple[list[float] | None, str]:
    per = res.get("per_example", {})
    n = per.get("n_samples")
    if per.get("gsm8k_num_correct") is not None and n and k <= n:
        return pass_at_k_per_problem(n, per["gsm8k_num_correct"], k), f"sampled (n={n})"
    if k == 1 and per.get("gsm8k_correct") is not None:
        return [float(c) for c in per["gsm8k_correct"]], "greedy"
    return None, "not measured"


def align(cand: dict, base: dict, fmt: str, a: list, b: list, what: str) -> tuple[list, list, bool]:
    """(a, b, verified): the candidate's and baseline's per-example values paired by example id
    (``per_example[fmt + "_ids"]``, written by ``phase=eval``). Different example sets are a ConfigError;
    results without ids (older files) pair by position, ``verified`` False."""
    ia, ib = cand.get("per_example", {}).get(f"{fmt}_ids"), base.get("per_example", {}).get(f"{fmt}_ids")
    if ia is None or ib is None:
        if len(a) != len(b):
            raise ConfigError(f"{what}: the stages were evaluated on different example counts ({len(a)} vs "
                              f"{len(b)}); re-run phase=eval with the same {_size_key(fmt)} and data for both")
        return list(a), list(b), False
    if len(ia) != len(a) or len(ib) != len(b) or len(set(ia)) != len(ia) or len(set(ib)) != len(ib):
        raise ConfigError(f"{what}: malformed results (per-example ids do not match the values one to one)")
    if set(ia) != set(ib):
        only_c, only_b = sorted(set(ia) - set(ib)), sorted(set(ib) - set(ia))
        raise ConfigError(f"{what}: the stages evaluated different examples ({len(only_c)} only in the candidate, "
                          f"{len(only_b)} only in the baseline, e.g. {(only_c or only_b)[0]}); a paired test needs "
                          f"the same examples: re-run phase=eval with the same seed, data and {_size_key(fmt)}")
    pos = {x: i for i, x in enumerate(ib)}
    return list(a), [b[pos[x]] for x in ia], True


def _per_example(res: dict, metric: str) -> tuple[str, list[float] | None]:
    """(the example set's name for ``align``, the metric's per-example values in ``res``, or None)."""
    per = res.get("per_example") or {}
    for fmt, key in ACCURACY_FORMATS:
        if metric == key:
            return fmt, per.get(f"{fmt}_correct")
    if metric.startswith("pass_at_") and metric[8:].isdigit():
        k, n = int(metric[8:]), per.get("n_samples")
        ok = per.get("gsm8k_num_correct") is not None and _num(n) and 1 <= k <= n
        return "gsm8k", pass_at_k_per_problem(int(n), per["gsm8k_num_correct"], k) if ok else None
    if metric in ("loss", "perplexity"):   # packed rows of one length: loss = mean row loss, perplexity = e^loss
        return "row", per.get("row_loss")
    return "", None


def _reproduces(metric: str, values: list[float], reported) -> bool:
    """Whether the per-example values give the reported figure (else a CI would belong to another number)."""
    if not values or not _num(reported) or not math.isfinite(reported):
        return False
    m = float(np.mean(values))
    m = math.exp(m) if metric == "perplexity" else m
    return math.isclose(m, reported, rel_tol=1e-3, abs_tol=1e-9)


def pair_test(metric: str, cand: dict, base: dict, *, n_resamples: int = 10_000, seed: int = 0,
              min_n: int = MIN_N, confidence: float = CONFIDENCE) -> dict:
    """The paired comparison of ``metric`` between two stages' results: {delta, ci95, n, p_value, test, pairing}
    from their per-example values on the same examples, or {test: "unpaired: no test (why)"} when there are none.
    Perplexity is tested on the row losses (log perplexity); its CI is that of the loss difference mapped to
    perplexity at the baseline's value, base (e^CI - 1), so it excludes 0 exactly when the loss CI does."""
    v, b0 = cand["metrics"].get(metric), base["metrics"].get(metric)
    fmt, a = _per_example(cand, metric)
    _, b = _per_example(base, metric)
    if not fmt:
        return {"test": UNPAIRED}
    if a is None or b is None:
        return {"test": f"{UNPAIRED} (no per-example results)"}
    if not (_reproduces(metric, a, v) and _reproduces(metric, b, b0)):
        return {"test": f"{UNPAIRED} (per-example results do not give the reported value)"}
    if fmt == "row" and any(k in cand and k in base and cand[k] != base[k] for k in ("seed", "eval_rows", "datasets")):
        return {"test": f"{UNPAIRED} (different evaluation rows)"}
    try:
        a, b, verified = align(cand, base, fmt, a, b, metric)
    except ConfigError:
        return {"test": f"{UNPAIRED} (the stages' examples differ)"}
    if len(a) < 2:
        return {"test": f"{UNPAIRED} (fewer than 2 examples)"}
    t = paired_test(a, b, n_resamples=n_resamples, seed=seed, confidence=confidence, min_n=min_n)
    out = {"delta": t["delta"], "ci95": [float(x) for x in t["ci95"]], "n": int(t["n"]), "p_value": t["p_value"],
           "test": TEST_NAMES.get(t["test"], t["test"]),
           "pairing": "by example id" if verified else "by position (no example ids in the results)"}
    if metric == "perplexity":
        out.update(delta=v - b0, ci95=[b0 * math.expm1(x) for x in out["ci95"]],
                   test=f"{out['test']} of row loss")
    return out


def significance(metric: str, t: dict, confidence: float = CONFIDENCE) -> str:
    """'improved' / 'regressed' (the CI excludes 0 and p < 1 - confidence, on the better / worse side; 'differs'
    for a metric with no better side) or 'no significant change'."""
    lo, hi = t["ci95"]
    sig = t["p_value"] < 1 - confidence and (lo > 0 or hi < 0)
    if not sig:
        return "no significant change"
    d = direction(metric)
    return "differs" if d == 0 else ("improved" if (lo > 0) == (d > 0) else "regressed")


def table_rows(results: dict[str, dict], *, n_resamples: int = 10_000, seed: int = 0, min_n: int = MIN_N,
               primary: str | None = None) -> list[dict]:
    """One row per metric and stage: the value, the difference from the first stage and, for paired metrics,
    its CI, n, p and test (``pair_test``); ``change`` is what the marker says (module docstring; ``primary``: the
    stage whose pass@1 row is the verdict's pre-registered test, kept out of Holm's family)."""
    stages = list(results)
    first = results[stages[0]]
    rows = []
    for m in metric_names(results):
        base = first["metrics"].get(m)
        for st in stages:
            v = results[st]["metrics"].get(m)
            row = {"metric": m, "better": {1: "higher", -1: "lower", 0: ""}[direction(m)], "stage": st, "value": v,
                   "delta_vs_first": None, "ci_low": None, "ci_high": None, "n": None, "p": None, "p_holm": None,
                   "test": "", "pairing": "", "change": ""}
            if st != stages[0] and _num(v) and _num(base):
                row["delta_vs_first"] = v - base
                if m in DETERMINISTIC:
                    row.update(test="deterministic: exact difference", change=change(m, base, v))
                else:
                    t = pair_test(m, results[st], first, n_resamples=n_resamples, seed=seed, min_n=min_n)
                    row["test"] = t["test"]
                    if "ci95" in t:
                        row.update(delta_vs_first=t["delta"], ci_low=t["ci95"][0], ci_high=t["ci95"][1], n=t["n"],
                                   p=t["p_value"], pairing=t["pairing"])
            rows.append(row)
    _holm_markers(rows, primary)
    return rows


PRIMARY = "pass_at_1"   # the metric of the verdict's pre-registered test (``compare.compute_stats``)
PRIMARY_NOTE = " (the verdict's primary test: its own p)"


def _holm_markers(rows: list[dict], primary: str | None = None) -> None:
    """Each paired row's Holm-adjusted p over the table's family of tests and the marker it supports
    (``significance`` with that p). Perplexity is tested on the same row losses as the loss: one test, not two. The
    ``primary`` stage's pass@1 row is the verdict's pre-registered test, outside the family: its ``p_holm`` is its p."""
    tested = [r for r in rows if r["n"] is not None and r["p"] is not None and not math.isnan(r["p"])]
    has_loss = {r["stage"] for r in tested if r["metric"] == "loss"}

    def key(r):
        return r["stage"], "loss" if r["metric"] == "perplexity" and r["stage"] in has_loss else r["metric"]

    adjusted = {}
    for r in tested:
        if key(r) == (primary, PRIMARY):
            adjusted[key(r)] = r["p"]
            r["test"] += PRIMARY_NOTE
    family = {key(r): r["p"] for r in tested if (r["metric"] != "perplexity" or r["stage"] not in has_loss)
              and key(r) not in adjusted}
    adjusted.update(zip(family, holm(list(family.values()))))
    for r in tested:
        r["p_holm"] = adjusted[key(r)]
        r["change"] = significance(r["metric"], {"ci95": [r["ci_low"], r["ci_high"]], "p_value": r["p_holm"]})
    for r in rows:   # a paired test whose p is undefined (non-finite scores) claims nothing
        if r["n"] is not None and r not in tested:
            r["change"] = "no significant change"


def _fmt(v) -> str:
    if not _num(v):
        return "–"
    return f"{v:,}" if isinstance(v, int) else f"{v:.4g}"


def _cell(r: dict) -> str:
    cell = _fmt(r["value"])
    if r["delta_vs_first"] is None:
        return cell
    mark = MARK[r["change"]]
    if r["n"] is not None:
        return cell + f" ({r['delta_vs_first']:+.3g} [{r['ci_low']:+.3g}, {r['ci_high']:+.3g}], n={r['n']} {mark})"
    return cell + f" ({r['delta_vs_first']:+.3g}{' ' + mark if mark else ''})"


def markdown_table(results: dict[str, dict], rows: list[dict]) -> str:
    stages = list(results)
    lines = ["| metric | better | " + " | ".join(stages) + " | test |", "|---|---|" + "---|" * (len(stages) + 1)]
    by_metric: dict[str, list[dict]] = {}
    for r in rows:
        by_metric.setdefault(r["metric"], []).append(r)
    for m, rs in by_metric.items():
        tests = list(dict.fromkeys(r["test"] for r in rs if r["test"]))
        lines.append(f"| {m} | {rs[0]['better']} | " + " | ".join(_cell(r) for r in rs) + f" | {'; '.join(tests)} |")
    pct = f"{CONFIDENCE:.0%}"
    lines += ["", f"Changes are against `{stages[0]}`: value (difference [{pct} CI of the paired difference], n paired "
              f"examples, marker). ▲ improvement / ▼ regression: the CI excludes 0 and Holm's adjusted p over the "
              f"table's paired tests is < {1 - CONFIDENCE:.2g} (the CIs are per comparison), on the "
              f"metric's better / worse side; ~ no significant change. A difference with no marker "
              f"is unpaired: no test (timings, throughput and memory of separate runs, generation statistics and "
              f"other once-per-run figures) and shows no direction. {' and '.join(DETERMINISTIC)} are deterministic "
              f"(no sampling or timing noise): = unchanged, ▲ / ▼ from the exact difference. The CSV adds "
              f"each comparison's p, Holm-adjusted p and pairing."]
    if any(r["test"].endswith(PRIMARY_NOTE) for r in rows):
        lines += ["", "pass@1 of the candidate is the verdict's pre-registered primary test: it is not one of the "
                  "Holm family, and its marker uses its own p, the p the verdict decides on."]
    differ = settings_differences(results)
    if differ:
        lines += ["", "**The stages were evaluated with different settings** — " + "; ".join(differ) + ": the figures "
                  "those settings shape (e.g. latency and throughput by `latency_tokens`) measure different things."]
    sources = {st: r.get("checkpoint") for st, r in results.items()}
    if len({str(v) for v in sources.values()}) > 1:
        lines += ["", "**The stages start from different checkpoints** — " + "; ".join(
            f"{st}: `{v}`" for st, v in sources.items()) + ": a change between them includes the difference between "
            "those checkpoints, not only what the stage did (surgery, fine-tuning)."]
    return "\n".join(lines) + "\n"


def _size_key(fmt: str) -> str:
    """The eval setting that sets how many examples a format has: ARC / PIQA's choice questions have their own."""
    return "phase.choice_examples" if fmt in ("arc", "piqa") else "phase.eval_examples"


# how a stage's timings were taken, recorded with its metrics: the tokens actually generated (capped to what the KV
# cache holds) and whether the KV cache decoded them (the recursive wrapper has none: ~7x slower per token)
TIMING_REGIME = ("latency_tokens", "decode_cached")


def settings_differences(results: dict[str, dict]) -> list[str]:
    """'key: a (stage) vs b (stage)' for every evaluation setting (the results' ``settings``) and timing regime
    (``TIMING_REGIME`` of their metrics) that differs between the stages: a difference of timings taken with 512 and
    128 tokens, or with and without the KV cache, is no speed change."""
    out = []
    settings = sorted({k for r in results.values() for k in (r.get("settings") or {})})
    for part, keys in (("settings", settings), ("metrics", TIMING_REGIME)):
        for k in keys:
            vals = {s: (r.get(part) or {}).get(k) for s, r in results.items()}
            if (part == "settings" or None not in vals.values()) and len({repr(v) for v in vals.values()}) > 1:
                out.append(f"{k}: " + " vs ".join(f"{v} ({s})" for s, v in vals.items()))
    return out


def csv_table(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS)
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()
