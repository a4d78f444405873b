"""The success-metrics dashboard's section-7 decision (SUCCESS / PARTIAL / FAILURE, or INCONCLUSIVE where the
accuracies cannot decide) from the paired pass@k comparisons ``evals.stats`` computes; moved out of stats.py, which
re-exports it."""
from __future__ import annotations

import math
from collections.abc import Sequence


def _ge(x, t) -> bool:
    """x >= t up to float rounding: a figure exactly on its target meets it (the mean of 30 problems' pass@1 with
    90 of 300 samples right can compute as 0.29999999999999993, a Δ of 12 of 300 samples as 0.039999999999999994:
    both read "below target" with a plain >=)."""
    return (x is not None and t is not None and not (isinstance(x, float) and math.isnan(x))
            and x >= t - 1e-9 * max(1.0, abs(t)))


def paired_at_k(stats: dict, thresholds: dict) -> dict[int, dict]:
    """``verdict``'s ``others``: the paired pass@k comparison ({"delta", "ci95", "p_value"}; {} where not measured) of
    every k > 1 that ``stats`` (a stats.json under construction, keys ``pass_at_{k}``) holds or a ``min_delta_pass{k}``
    target names."""
    ks = {int(key[len("pass_at_"):]) for key in stats if key.startswith("pass_at_") and key[len("pass_at_"):].isdigit()}
    ks |= {int(key[len("min_delta_pass"):]) for key, v in thresholds.items()
           if key.startswith("min_delta_pass") and key[len("min_delta_pass"):].isdigit() and v is not None}
    return {k: {f: stats.get(f"pass_at_{k}", {}).get(f) for f in ("delta", "ci95", "p_value")} for k in sorted(ks) if k > 1}


def verdict(*, pass_at: dict[int, float | None], delta_pass1: float | None, ci95: Sequence[float] | None,
            p_value: float | None, thresholds: dict, efficiency_ok: bool | str | None,
            unstable: bool = False, n: int | None = None, size_key: str = "phase.eval_examples",
            efficiency_missed: str | None = None, undecidable: Sequence[str] = (),
            others: dict[int, dict] | None = None) -> tuple[str, list[str]]:
    """The dashboard's section-7 decision, with the reason for each failed condition.

    ``others``: the paired comparison at each k > 1 ({k: {"delta", "ci95", "p_value"}}). Section 2's Δ targets are
    one per k (pass@1 ≥ 4 pp, pass@10 ≥ 3 pp: ``min_delta_pass1``, ``min_delta_pass10``, any ``min_delta_pass{k}``),
    and section 7's FAILURE row is "any primary KPI below target": a Δ target at k > 1 counts like pass@1's (a miss
    blocks SUCCESS, and FAILS with decisive evidence; not measured: not established), and a candidate significantly
    worse at any k (p < alpha, the whole CI below 0) is FAILURE, whatever pass@1 says (an audit: SUCCESS with pass@10
    0.667 vs 1.0, CI [-0.51, -0.13], p 0.002).

    Order where the dashboard's rows overlap: SUCCESS needs every condition; otherwise FAILURE when
    p >= ``failure_p`` (0.1), training was unstable, neither the accuracy nor the efficiency targets are met, the
    candidate is significantly worse (p < alpha, the whole CI below 0), or the evidence is decisive (p < alpha and
    the CI above 0, so section 7's PARTIAL row, "but p >= 0.05 OR CI includes 0", cannot hold) while a target is
    missed (a pass@k, the Δ, or efficiency); otherwise PARTIAL (a target group is met but the evidence or the
    margin falls short). With no pass@1 comparison at all (no p-value and no Δ: e.g. ``phase=compare`` of stages
    with only multiple-choice results) nothing was tested: INCONCLUSIVE, not FAILURE.
    ``efficiency_ok`` None means no efficiency target is configured (counts as met for SUCCESS, not as
    a met group for PARTIAL); "inconclusive" (a target neither met nor missed by its CI, or not measured) is not
    met for SUCCESS and not missed either; so is a pass@k target whose pass@k was not measured (fewer samples per
    problem than k): INCONCLUSIVE unless the efficiency group is met (PARTIAL) or a FAILURE condition holds. With
    ``n`` paired examples below ``thresholds["min_n"]`` (default ``MIN_N``), or any ``undecidable`` reason (the
    accuracies measure something else, e.g. a generation budget the reference answers do not fit), the pass@k
    figures decide nothing: the answer is FAILURE when training was unstable or the efficiency targets were missed
    (``efficiency_ok`` False; ``efficiency_missed`` says which and by what: a whole CI, or a memory target's single
    values; neither rests on the accuracies), else INCONCLUSIVE.
    """
    from agentforge.evals.stats import MIN_N  # here: stats re-exports this module, so it cannot be imported at the top

    min_n = int(thresholds.get("min_n", MIN_N))
    missed = "efficiency targets not met" + (f": {efficiency_missed}" if efficiency_missed else "")
    blocked = [*undecidable, *([f"only {n} paired examples; a pass@k verdict needs at least {min_n} (raise {size_key} "
                                f"or lower thresholds.min_n knowingly)"] if n is not None and n < min_n else [])]
    if blocked:
        # what does not rest on the accuracies still decides: training that was unstable, or an efficiency target
        # missed, is section 7's FAILURE whatever pass@k would have said
        failed = [*(["training was unstable (non-finite losses or skipped steps)"] if unstable else []),
                  *([missed] if efficiency_ok is False else [])]
        return ("FAILURE", failed + blocked) if failed else ("INCONCLUSIVE", blocked)
    reasons: list[str] = []
    acc_missed = acc_unmeasured = False
    for k, target in sorted((thresholds.get("pass_at") or {}).items()):
        val = pass_at.get(int(k))
        if val is None:   # fewer samples per problem than k: not below its target, just not known
            acc_unmeasured = True
            why = "no per-problem results" if int(k) == 1 else f"fewer than {k} samples per problem"
            reasons.append(f"pass@{k} not measured ({why}); its target {target} is not established")
        elif not _ge(val, target):
            acc_missed = True
            reasons.append(f"pass@{k} {val:.3f} < target {target}")
    min_delta = thresholds.get("min_delta_pass1")
    delta_ok = min_delta is None or _ge(delta_pass1, min_delta)
    if not delta_ok:
        reasons.append(f"delta pass@1 {delta_pass1 if delta_pass1 is None else round(delta_pass1, 4)} < {min_delta}")
    alpha, fail_p = thresholds.get("alpha", 0.05), thresholds.get("failure_p", 0.1)
    worse_at = []
    for k, t in sorted((others or {}).items()):
        target, d = thresholds.get(f"min_delta_pass{k}"), t.get("delta")
        if target is not None and d is None:
            acc_unmeasured = True
            reasons.append(f"delta pass@{k} not measured; its target {target} is not established")
        elif target is not None and not _ge(d, target):
            delta_ok = False
            reasons.append(f"delta pass@{k} {round(d, 4)} < {target}")
        pk, ck = t.get("p_value"), t.get("ci95")
        if pk is not None and not math.isnan(pk) and pk < alpha and ck is not None and ck[1] < 0:
            worse_at.append(k)
            reasons.append(f"the candidate is significantly worse than the baseline at pass@{k} (CI95 upper bound "
                           f"{ck[1]:.4g} < 0, p {pk:.3g})")
    acc_ok = not (acc_missed or acc_unmeasured)
    if p_value is not None and math.isnan(p_value):   # non-finite scores: no test (``_undefined``)
        p_value = None
    ci_ok = ci95 is not None and ci95[0] > 0
    if not ci_ok:
        reasons.append(f"CI95 lower bound {None if ci95 is None else round(ci95[0], 4)} is not > 0")
    p_ok = p_value is not None and p_value < alpha
    if not p_ok:
        reasons.append(f"p-value {p_value} is not < {alpha}")
    if efficiency_ok is False:
        reasons.append(missed)
    elif efficiency_ok == "inconclusive":
        reasons.append("efficiency targets not established (a CI straddles its target, or it was not measured)")
    if unstable:
        reasons.append("training was unstable (non-finite losses or skipped steps)")
    worse = p_ok and ci95 is not None and ci95[1] < 0
    if worse:
        reasons.append(f"the candidate is significantly worse than the baseline (CI95 upper bound "
                       f"{ci95[1]:.4g} < 0, p {p_value:.3g})")
    worse = worse or bool(worse_at)
    if acc_ok and delta_ok and ci_ok and p_ok and efficiency_ok in (True, None) and not unstable and not worse:
        return "SUCCESS", []
    if p_value is None and delta_pass1 is None and not unstable:   # no pass@1 comparison: nothing was tested
        return "INCONCLUSIVE", reasons
    decisive = p_ok and ci_ok
    if (unstable or worse or p_value is None or p_value >= fail_p or acc_missed and efficiency_ok is not True
            or decisive and (acc_missed or efficiency_ok is False or not delta_ok)):
        return "FAILURE", reasons
    if not acc_ok and efficiency_ok is not True:   # accuracy not measured, efficiency not met: nothing is known
        return "INCONCLUSIVE", reasons
    return "PARTIAL", reasons
