"""pass@k per problem and model, and ``stats.json`` in the success dashboard's shape (section 5):

    {"pass_at_1": {"<candidate>": p, "<baseline>": q, "delta": p - q, "ci95": [lo, hi], "p_value": ..., "n": ...,
                   "<candidate>_ci95": [lo, hi], "<baseline>_ci95": [lo, hi]},
     "pass_at_10": {...}, "verdict": "SUCCESS|PARTIAL|FAILURE", "reasons": [...], ...}

pass@k is Chen et al.'s unbiased estimator per problem (``evals.pass_at_k.pass_at_k``) averaged over problems;
each model's mean gets its CI over problems (``evals.stats.mean_ci``: Clopper-Pearson's when every per-problem
score is 0/1, else the percentile bootstrap; on which the
verdict judges the absolute pass@k targets); the difference is tested over problems by the project's paired test (``evals.stats.paired_test``: McNemar's
exact test when every per-problem score is 0/1, e.g. n = 1 or greedy, else the exact sign-flip test below
``min_n`` problems and the paired bootstrap from there), and the verdict is the dashboard's section-7 rule
(``evals.stats.verdict``, INCONCLUSIVE below ``thresholds.min_n`` problems) with the efficiency targets as ratios
to the baseline, decided from the CI of interleaved timing rounds (``evals.compare.efficiency_checks``).
"""
from __future__ import annotations

from agentforge.evals import stats as st
from agentforge.evals.compare import efficiency_checks, missed_targets
from agentforge.evals.pass_at_k import pass_at_k

UNITS = "token_units_differ"   # True: the models' tokenizers differ (bytes vs BPE), so do their token counts
PER_TOKEN_RATIOS = ("max_latency_ratio", "min_throughput_ratio")


def _units_not_comparable(checks: list[dict]) -> tuple[bool | str | None, list[dict]]:
    """The ratio checks timed per token decide nothing when the models count different tokens (a BPE token is
    several characters of code, a byte one); the overall efficiency outcome recomputed as ``efficiency_checks`` does."""
    checks = [{**c, "ok": None, "note": "not comparable: different token units (the tokenizers differ), no decision"}
              if c["threshold"] in PER_TOKEN_RATIOS else c for c in checks]
    if not checks:
        return None, checks
    if any(c["ok"] is False for c in checks):
        return False, checks
    return (True if all(c["ok"] is True for c in checks) else "inconclusive"), checks


def per_problem_pass(problems: list[dict], k: int) -> list[float] | None:
    """pass@k of each problem ({num_samples, num_correct}), or None when some problem has n < k."""
    if any(p["num_samples"] < k for p in problems):
        return None
    return [pass_at_k(p["num_samples"], p["num_correct"], k) for p in problems]


def _paired(a: list[float], b: list[float], n_resamples: int, seed: int, min_n: int) -> dict:
    if len(a) < 2:
        return {"delta": (sum(a) - sum(b)) / max(len(a), 1), "ci95": None, "p_value": None, "n": len(a),
                "test": "none: fewer than 2 problems"}
    return st.paired_test(a, b, n_resamples=n_resamples, seed=seed, min_n=min_n)


def compute_stats(per_model: dict[str, list[dict]], kpis: dict[str, dict], *, candidate: str, baseline: str,
                  ks: list[int], thresholds: dict, n_resamples: int = 10_000, seed: int = 0,
                  unstable: bool = False, baseline_description: str = "") -> dict:
    """The dashboard's stats.json for ``candidate`` vs ``baseline`` (per-model problem lists)."""
    out: dict = {"candidate": candidate, "baseline": baseline, "baseline_description": baseline_description,
                 "n_problems": len(per_model[candidate])}
    pass_at: dict[int, float | None] = {}
    pass_at_ci: dict[int, list[float] | None] = {}   # each model's CI of its mean per-problem pass@k
    n_paired = None
    for k in sorted(set(ks) | {1}):
        a, b = per_problem_pass(per_model[candidate], k), per_problem_pass(per_model[baseline], k)
        if a is None or b is None:
            pass_at[k] = pass_at_ci[k] = None
            out[f"pass_at_{k}"] = {"note": f"not measured: needs at least {k} samples per problem"}
            continue
        t = _paired(a, b, n_resamples, seed, int(thresholds.get("min_n", st.MIN_N)))
        pass_at[k] = sum(a) / len(a)
        pass_at_ci[k] = st.mean_ci(a, n_resamples, seed)
        n_paired = t["n"]
        out[f"pass_at_{k}"] = {candidate: pass_at[k], baseline: sum(b) / len(b), "delta": t["delta"],
                               "ci95": t["ci95"], "p_value": t["p_value"], "n": t["n"],
                               "test": t["test"], f"{candidate}_ci95": pass_at_ci[k],
                               f"{baseline}_ci95": st.mean_ci(b, n_resamples, seed)}
    eff_ok, checks = efficiency_checks({"metrics": kpis[candidate]}, {"metrics": kpis[baseline]}, thresholds)
    if kpis[candidate].get(UNITS) or kpis[baseline].get(UNITS):
        eff_ok, checks = _units_not_comparable(checks)
    p1 = out["pass_at_1"]
    v, reasons = st.verdict(pass_at=pass_at, delta_pass1=p1.get("delta"), ci95=p1.get("ci95"),
                            p_value=p1.get("p_value"), thresholds=thresholds, efficiency_ok=eff_ok,
                            unstable=unstable, n=n_paired, size_key="phase.num_problems",
                            efficiency_missed=missed_targets(checks), others=st.paired_at_k(out, thresholds),
                            pass_at_ci=pass_at_ci)
    out.update({"verdict": v, "verdict_score": {"SUCCESS": 2, "PARTIAL": 1}.get(v, 0), "reasons": reasons,
                "efficiency": checks, "kpis": kpis,
                "thresholds": {k: (val if k != "pass_at" else {str(kk): vv for kk, vv in val.items()})
                               for k, val in thresholds.items()}})
    return out


def train_run_failures(trainings: dict[str, dict]) -> dict:
    """Section 2's reliability KPI, "train run failures" (target 0), as ``stats.json`` keys: the number of the models'
    training runs that failed, and which. A run that did not finish raises before any stats exist (the phase fails
    with its error), so a failure counted here is a run that finished unstable (non-finite losses, skipped steps:
    the training's ``unstable``), which the verdict also reads as FAILURE."""
    by_model = {n: int(bool(t.get("unstable"))) for n, t in trainings.items()}
    return {"train_run_failures": sum(by_model.values()), "train_run_failures_by_model": by_model}


def pass_at_k_curve(problems: list[dict], max_k: int) -> list[float]:
    """Mean pass@k for k = 1..max_k (the accuracy panel's line)."""
    n = min(p["num_samples"] for p in problems)
    return [sum(pass_at_k(p["num_samples"], p["num_correct"], k) for p in problems) / len(problems)
            for k in range(1, min(max_k, n) + 1)]
