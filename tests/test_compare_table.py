"""The comparison table's markers carry evidence: ▲ / ▼ only where the paired CI of the difference on the same
examples excludes 0, ~ where it does not, and no direction at all for once-per-run figures such as timings."""
from __future__ import annotations

import csv
import io
import json
import math

import numpy as np
import pytest

from agentforge.evals.compare import run_comparison, table_rows
from agentforge.evals.compare_table import COLUMNS, markdown_table, pair_test
from agentforge.evals.stats import tango_ci
from tests.conftest import run_cli

IDS = [f"q{i}" for i in range(40)]
BASE_LOSS = list(np.round(np.random.default_rng(0).normal(3.0, 0.3, 40), 6))


def stage(name: str, correct: list[int], row_loss: list[float], *, latency: float = 100.0, ids=IDS,
          param_memory: float = 10.0, counts: list[int] | None = None) -> dict:
    """What phase=eval writes for a stage: metrics computed from the per-example results, plus once-per-run ones."""
    loss = float(np.mean(row_loss))
    m = {"perplexity": math.exp(loss), "loss": loss, "token_accuracy": 0.4,
         "reasoning_accuracy": sum(correct) / len(correct), "latency_ms": latency, "latency_tokens": 512,
         "throughput_tokens_per_sec": 512 / (latency / 1000), "peak_memory_mb": 100.0, "param_count": 1000,
         "param_memory_mb": param_memory, "gen/distinct_1": 0.5}
    per = {"gsm8k_correct": correct, "gsm8k_ids": list(ids), "row_loss": list(row_loss)}
    if counts is not None:
        per.update(gsm8k_num_correct=counts, n_samples=10)
        m["pass_at_1"] = sum(c / 10 for c in counts) / len(counts)
    return {"stage": name, "seed": 0, "eval_rows": [40, 65], "datasets": {"gsm8k": 40}, "metrics": m,
            "per_example": per}


BASE_CORRECT = [1] * 10 + [0] * 30                  # 10 / 40
TWELVE_WINS = [1] * 22 + [0] * 18                   # the baseline's 10 plus 12 more: 12 discordant, all gains
NOISY = [0] + [1] * 9 + [1] * 3 + [0] * 27          # loses q0, gains q10-q12: 3 wins, 1 loss


def _row(rows, metric, st):
    return next(r for r in rows if r["metric"] == metric and r["stage"] == st)


def _line(md: str, metric: str) -> str:
    return next(x for x in md.splitlines() if x.startswith(f"| {metric} |"))


def test_twelve_discordant_gains_are_an_improvement_with_mcnemars_exact_p():
    res = {"baseline": stage("baseline", BASE_CORRECT, BASE_LOSS), "cand": stage("cand", TWELVE_WINS, BASE_LOSS)}
    rows = table_rows(res, n_resamples=500)
    r = _row(rows, "reasoning_accuracy", "cand")
    # McNemar: under H0 each of the 12 discordant pairs is a gain with probability 1/2; two-sided p = 2 * 0.5^12
    assert r["p"] == pytest.approx(2 * 0.5 ** 12) and r["n"] == 40 and r["delta_vs_first"] == pytest.approx(0.3)
    # the hull of Tango's interval and the exact conditional one: its low end, by hand, is (12 / 40)(2 pi_low - 1)
    # with pi_low = 0.025^(1/12), the Clopper-Pearson bound for 12 of 12; its high end Tango's
    assert [r["ci_low"], r["ci_high"]] == pytest.approx([0.3 * (2 * 0.025 ** (1 / 12) - 1), tango_ci(12, 0, 40)[1]])
    assert r["ci_low"] > 0
    assert r["change"] == "improved" and r["pairing"] == "by example id" and r["test"] == "McNemar exact p, Tango ∪ exact CI"
    assert "| 0.25 | 0.55 (+0.3 [+0.141, +0.454], n=40 ▲) |" in _line(markdown_table(res, rows), "reasoning_accuracy")
    # the other way round: the same p, a regression
    back = {"baseline": res["cand"], "cand": res["baseline"]}
    r = _row(table_rows(back, n_resamples=500), "reasoning_accuracy", "cand")
    assert r["change"] == "regressed" and r["p"] == pytest.approx(2 * 0.5 ** 12) and r["ci_high"] < 0


def test_a_small_noisy_difference_is_no_significant_change():
    noisy_loss = list(np.array(BASE_LOSS) + np.array([0.1, -0.1] * 20) + 0.005)   # mean +0.005, spread +-0.1
    res = {"baseline": stage("baseline", BASE_CORRECT, BASE_LOSS), "cand": stage("cand", NOISY, noisy_loss)}
    rows = table_rows(res, n_resamples=2000)
    acc = _row(rows, "reasoning_accuracy", "cand")
    assert acc["p"] == pytest.approx(0.625) and acc["ci_low"] < 0 < acc["ci_high"]  # binom(3 of 4): 2 * 5/16
    assert acc["change"] == "no significant change"
    for m in ("loss", "perplexity"):   # +0.005 in loss: bare-difference marking said ▼ (worse); the CI includes 0
        r = _row(rows, m, "cand")
        assert r["delta_vs_first"] > 0 and r["ci_low"] < 0 < r["ci_high"] and r["change"] == "no significant change"
        assert r["test"].startswith("paired bootstrap") and r["n"] == 40
    md = markdown_table(res, rows)
    assert "0.3 (+0.05 [-0.067, +0.179], n=40 ~)" in _line(md, "reasoning_accuracy")
    assert "▼" not in _line(md, "loss") and "▲" not in _line(md, "loss") and "n=40 ~)" in _line(md, "perplexity")


def test_timings_get_no_direction_even_at_fifty_percent():
    res = {"baseline": stage("baseline", BASE_CORRECT, BASE_LOSS),
           "cand": stage("cand", BASE_CORRECT, BASE_LOSS, latency=150.0)}
    rows = table_rows(res, n_resamples=500)
    md = markdown_table(res, rows)
    for m in ("latency_ms", "throughput_tokens_per_sec", "peak_memory_mb", "token_accuracy", "gen/distinct_1"):
        r = _row(rows, m, "cand")
        assert r["change"] == "" and r["test"] == "unpaired: no test" and r["ci_low"] is None and r["p"] is None
        assert "▲" not in _line(md, m) and "▼" not in _line(md, m) and "~" not in _line(md, m)
    assert _line(md, "latency_ms") == "| latency_ms | lower | 100 | 150 (+50) | unpaired: no test |"
    assert "unpaired: no test" in md.split("\n\n")[-1] and "no significant change" in md   # the legend
    assert _row(rows, "param_count", "cand")["change"] == "same" and "1,000 (+0 =)" in _line(md, "param_count")


def test_deterministic_quantities_keep_their_exact_difference():
    res = {"baseline": stage("baseline", BASE_CORRECT, BASE_LOSS, param_memory=10.0),
           "cand": stage("cand", BASE_CORRECT, BASE_LOSS, param_memory=5.0)}
    rows = table_rows(res, n_resamples=500)
    r = _row(rows, "param_memory_mb", "cand")
    assert r["change"] == "improved" and r["test"] == "deterministic: exact difference" and r["n"] is None
    assert "| 10 | 5 (-5 ▲) |" in _line(markdown_table(res, rows), "param_memory_mb")


def test_few_rows_use_the_exact_sign_flip_test_and_perplexity_follows_the_loss():
    base = [1.2, 1.3, 1.1, 1.4, 1.25, 1.6, 1.3]
    cand = [1.0, 1.0, 1.0, 1.0, 1.0, 1.5, 1.2]                # every row better: p = 2 / 2^7
    res = {"baseline": stage("baseline", BASE_CORRECT, base), "cand": stage("cand", BASE_CORRECT, cand)}
    rows = table_rows(res, n_resamples=500)
    loss, ppl = _row(rows, "loss", "cand"), _row(rows, "perplexity", "cand")
    assert loss["p"] == pytest.approx(2 / 128) and loss["test"] == "sign-flip exact" and loss["change"] == "improved"
    # the family: the loss (perplexity is the same test) and the unchanged accuracy (p = 1): Holm doubles the smaller
    assert loss["p_holm"] == pytest.approx(4 / 128) and ppl["p_holm"] == loss["p_holm"]
    assert loss["n"] == 7 and loss["pairing"].startswith("by position")     # rows carry no ids
    b0 = res["baseline"]["metrics"]["perplexity"]
    assert ppl["delta_vs_first"] == pytest.approx(res["cand"]["metrics"]["perplexity"] - b0)
    assert [ppl["ci_low"], ppl["ci_high"]] == pytest.approx([b0 * math.expm1(loss["ci_low"]),
                                                              b0 * math.expm1(loss["ci_high"])])
    assert ppl["change"] == "improved" and ppl["p"] == loss["p"] and ppl["test"] == "sign-flip exact of row loss"


def test_holm_adjusted_p_values_by_hand():
    """Holm 1979: p = (0.01, 0.04, 0.03), m = 3 -> sorted 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 raised to
    the running max 0.06; back in input order (0.03, 0.06, 0.06). Capped at 1."""
    from agentforge.evals.stats import holm

    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.6]) == [1.0, 1.0] and holm([]) == []


def test_a_table_of_stages_that_differ_in_nothing_rarely_shows_a_marker():
    """Four stages drawn from one distribution (accuracy on 40 questions, 40 row losses, pass@k of 40 problems):
    every marker is false. Without the family-wise correction a third of such tables showed one (~15 tests at 0.05
    each); with Holm's at most alpha = 5 % of tables may (here 40 tables: at most 4, allowing for chance)."""
    rng = np.random.default_rng(0)
    false_tables = 0
    for _ in range(40):
        res = {}
        for name in ("s0", "s1", "s2", "s3"):
            correct = (rng.random(40) < 0.5).astype(int).tolist()
            res[name] = stage(name, correct, (1.5 + 0.3 * rng.standard_normal(40)).tolist(),
                              counts=rng.binomial(10, 0.3, 40).tolist())
        rows = table_rows(res, n_resamples=300)
        assert sum(r["n"] is not None for r in rows) >= 9   # the family really holds many tests
        false_tables += any(r["change"] in ("improved", "regressed") for r in rows)
    assert false_tables <= 4, false_tables


def test_pass_at_k_is_paired_per_problem():
    counts_b, counts_c = [0] * 30 + [5] * 10, [0] * 10 + [8] * 30
    res = {"baseline": stage("baseline", BASE_CORRECT, BASE_LOSS, counts=counts_b),
           "cand": stage("cand", BASE_CORRECT, BASE_LOSS, counts=counts_c)}
    r = _row(table_rows(res, n_resamples=1000), "pass_at_1", "cand")
    assert r["delta_vs_first"] == pytest.approx(0.6 - 0.125) and r["n"] == 40 and r["ci_low"] > 0
    assert r["test"] == "paired bootstrap" and r["change"] == "improved"


def test_no_pairing_without_the_same_examples():
    base = stage("baseline", BASE_CORRECT, BASE_LOSS)
    other = stage("other", TWELVE_WINS, BASE_LOSS, ids=[f"x{i}" for i in range(40)])
    assert pair_test("reasoning_accuracy", other, base)["test"] == "unpaired: no test (the stages' examples differ)"
    missing = stage("old", TWELVE_WINS, BASE_LOSS)
    del missing["per_example"]["gsm8k_correct"]
    assert pair_test("reasoning_accuracy", missing, base)["test"] == "unpaired: no test (no per-example results)"
    wrong = stage("wrong", TWELVE_WINS, BASE_LOSS)
    wrong["metrics"]["reasoning_accuracy"] = 0.9            # not what its per-example results give
    assert "do not give the reported value" in pair_test("reasoning_accuracy", wrong, base)["test"]
    moved = stage("moved", BASE_CORRECT, BASE_LOSS)
    moved["seed"] = 1                                       # other rows: their losses do not pair by position
    assert pair_test("loss", moved, base)["test"] == "unpaired: no test (different evaluation rows)"
    rows = table_rows({"baseline": base, "other": other}, n_resamples=500)
    r = _row(rows, "reasoning_accuracy", "other")
    assert r["change"] == "" and r["delta_vs_first"] == pytest.approx(0.3) and r["n"] is None


def test_csv_columns(tmp_path):
    d = tmp_path / "eval_results"
    d.mkdir()
    for st, correct in (("baseline", BASE_CORRECT), ("finetuned_recursive", TWELVE_WINS)):
        (d / f"{st}_results.json").write_text(json.dumps(stage(st, correct, BASE_LOSS)))
    run_comparison(d, None, tmp_path / "cmp", n_resamples=500)
    text = (tmp_path / "cmp" / "comparison.csv").read_text()
    assert text.splitlines()[0] == ",".join(COLUMNS)
    assert {"ci_low", "ci_high", "n", "p", "test"} <= set(COLUMNS)
    rows = list(csv.DictReader(io.StringIO(text)))
    r = next(x for x in rows if x["metric"] == "reasoning_accuracy" and x["stage"] == "finetuned_recursive")
    assert float(r["p"]) == pytest.approx(2 * 0.5 ** 12) and int(r["n"]) == 40 and float(r["ci_low"]) > 0
    assert r["test"] == "McNemar exact p, Tango ∪ exact CI" and r["change"] == "improved"
    lat = next(x for x in rows if x["metric"] == "latency_ms" and x["stage"] == "finetuned_recursive")
    assert lat["test"] == "unpaired: no test" and lat["ci_low"] == lat["n"] == lat["p"] == lat["change"] == ""


@pytest.mark.slow   # ~14 s; the compare CLI runs in the default tier in test_eval.py::test_cli_eval_stages_then_compare,
#                     and the markdown_table tests above pin the table's rows
def test_compare_cli_table(tmp_path):
    d = tmp_path / "eval_results"
    d.mkdir()
    files = {"baseline": stage("baseline", BASE_CORRECT, BASE_LOSS),
             "after_surgery": stage("after_surgery", BASE_CORRECT, BASE_LOSS, latency=150.0),
             "finetuned_recursive": stage("finetuned_recursive", TWELVE_WINS, BASE_LOSS, latency=50.0)}
    for st, r in files.items():
        (d / f"{st}_results.json").write_text(json.dumps(r))
    proc = run_cli(["phase=compare", "logger=none", f"phase.results_dir={d}", "phase.n_resamples=500",
                    "stages=[baseline,after_surgery,finetuned_recursive]"], tmp_path / "run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "| metric | better | baseline | after_surgery | finetuned_recursive | test |" in out
    assert ("| reasoning_accuracy | higher | 0.25 | 0.25 (+0 [-0.0876, +0.0876], n=40 ~) | "
            "0.55 (+0.3 [+0.141, +0.454], n=40 ▲) | McNemar exact p, Tango ∪ exact CI |") in out
    assert "| latency_ms | lower | 100 | 150 (+50) | 50 (-50) | unpaired: no test |" in out
    assert "| param_count |  | 1,000 | 1,000 (+0 =) | 1,000 (+0 =) | deterministic: exact difference |" in out
    assert "~ no significant change" in out and "unpaired: no test" in out
    md = next((tmp_path / "run" / "outputs").rglob("comparison.md")).read_text()
    assert md in out


def test_the_table_says_when_the_stages_were_evaluated_with_different_settings():
    """Timings of a 512-token and a 128-token generation are no speed change: the table names the setting."""
    from agentforge.evals.compare_table import markdown_table, settings_differences

    results = {"a": {"settings": {"latency_tokens": 512, "gen_tokens": 48}},
               "b": {"settings": {"latency_tokens": 128, "gen_tokens": 48}}}
    assert settings_differences(results) == ["latency_tokens: 512 (a) vs 128 (b)"]
    assert "different settings** — latency_tokens: 512 (a) vs 128 (b)" in markdown_table(results, [])
    same = {"a": results["a"], "b": {"settings": dict(results["a"]["settings"])}}
    assert settings_differences(same) == [] and "different settings" not in markdown_table(same, [])
    # the timing regime recorded with the metrics: the recursive wrapper decodes without the KV cache
    timed = {"baseline": {"metrics": {"latency_tokens": 504, "decode_cached": True}},
             "after_surgery": {"metrics": {"latency_tokens": 504, "decode_cached": False}}}
    assert settings_differences(timed) == ["decode_cached: True (baseline) vs False (after_surgery)"]
    assert settings_differences({"a": {"metrics": {}}, "b": {"metrics": {"decode_cached": False}}}) == []
