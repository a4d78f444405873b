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


def _finite(x) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def _target(what: str, value: float | None, ci: Sequence[float] | None, target: float) -> tuple[str, str | None]:
    """("met" | "missed" | "not established", the reason where not met) of "``what`` >= ``target``" from the
    figure's CI: met when the whole CI is at or above the target (``_ge``), missed when the whole CI is below it,
    not established when it straddles it. With no CI (or a NaN bound), the point estimate decides, and the reason
    says so."""
    if not _finite(value):
        return "not established", f"{what} not measured; its target {target} is not established"
    if ci is not None and len(ci) == 2 and all(_finite(x) for x in ci):
        lo, hi = float(ci[0]), float(ci[1])
        if _ge(lo, target):
            return "met", None
        if not _ge(hi, target):
            return "missed", f"{what} {value:.4g} < target {target} (its whole CI [{lo:.4g}, {hi:.4g}] is below it)"
        return "not established", (f"{what} {value:.4g} not established: its CI [{lo:.4g}, {hi:.4g}] straddles the "
                                   f"target {target}")
    if _ge(value, target):
        return "met", None
    return "missed", f"{what} {value:.4g} < target {target} (no CI: point estimate)"


NO_EFFICIENCY_TARGET = ("no latency/RAM target configured: section 7's SUCCESS needs them met (set "
                        "phase.thresholds.max_latency_ratio, max_memory_ratio or an absolute one)")


def verdict(*, pass_at: dict[int, float | None], delta_pass1: float | None, ci95: Sequence[float] | None,
            p_value: float | None, thresholds: dict, efficiency_ok: bool | str | None,
            unstable: bool = False, n: int | None = None, size_key: str = "phase.eval_examples",
            efficiency_missed: str | None = None, undecidable: Sequence[str] = (),
            others: dict[int, dict] | None = None,
            pass_at_ci: dict[int, Sequence[float] | None] | None = None) -> tuple[str, list[str]]:
    """The dashboard's section-7 decision, with the reason for each failed condition.

    Every target is judged on its CI: met when the whole CI is at or above it (``_ge``: up to float rounding),
    missed when the whole CI is below it, not established when the CI straddles it; where a figure has no CI, its
    point estimate decides and the reason says so ("(no CI: point estimate)"). The targets: the absolute pass@k ones
    (``thresholds["pass_at"]``, {k: target}) on ``pass_at_ci``, the candidate's own CI of its mean per-problem
    pass@k ({k: [lo, hi]}, ``stats.mean_ci``); section 2's Δ targets, one per k (``min_delta_pass1`` on the paired CI
    ``ci95``, ``min_delta_pass{k}`` on ``others[k]["ci95"]``; ``others``: the paired comparison at each k > 1,
    {k: {"delta", "ci95", "p_value"}}); and the efficiency targets (``efficiency_ok``: True met, False missed,
    "inconclusive" not established, None none configured — decided on their CIs by ``compare.efficiency_checks``).

    This is stricter than section 7's letter, on purpose: the spec reads the targets on point estimates and only asks
    that the Δ's CI exclude 0, so noise decided either way (an audit: Δpass@1 0.039, CI [0.005, 0.073], p 0.02 read
    FAILURE while Δ 0.040, CI [0.0005, 0.0795] read SUCCESS; pass@1 0.30 from 9 of 30 problems, CI about
    [0.15, 0.49], "met" 0.30). Here such figures are not established: neither SUCCESS nor, on their account, FAILURE.

    * SUCCESS: every pass@k and Δ target met, the CI of Δpass@1 above 0, p < ``alpha`` (0.05), the efficiency
      targets met, training stable, and the candidate not significantly worse at any k. With no efficiency target
      configured (``efficiency_ok`` None: ``phase=compare``'s default) section 7's "latency/RAM targets met" cannot
      hold, so SUCCESS is out of reach and the reasons say so (``NO_EFFICIENCY_TARGET``); until 2026-11-28 "none
      configured" counted as met, and ``phase=compare`` could print SUCCESS having checked no latency or RAM.
    * FAILURE wherever it applies — where section 7's PARTIAL and FAILURE rows overlap, FAILURE wins: training
      unstable; the candidate significantly worse at any k (p < alpha, the whole CI below 0; an audit: SUCCESS with
      pass@10 0.667 vs 1.0, CI [-0.51, -0.13], p 0.002); p >= ``failure_p`` (0.1), or no p-value, for pass@1; any
      pass@k or Δ target missed (its whole CI below it); an efficiency target missed. (Before, the overlap was
      resolved by the evidence: pass@1 0.25 against 0.30 with Δ 0.05, p 0.07, CI [-0.01, 0.11] read PARTIAL, and
      the same with p 0.01, CI [0.01, 0.09] read FAILURE — stronger evidence, a worse verdict.)
    * PARTIAL: otherwise, when every accuracy target (pass@k and Δ) is met, or the efficiency targets are met.
    * INCONCLUSIVE: otherwise (targets not established, nothing missed).

    A pass@k or Δ not measured (fewer samples per problem than k) is not established. With no pass@1 comparison at
    all (no p-value and no Δ: e.g. ``phase=compare`` of stages with only multiple-choice results) nothing was tested:
    INCONCLUSIVE, unless training was unstable. With ``n`` paired examples below ``thresholds["min_n"]`` (default
    ``MIN_N``), ``n`` unknown (None) while a pass@1 comparison exists, or any ``undecidable`` reason (the accuracies
    measure something else, e.g. a generation budget the reference answers do not fit), the pass@k figures decide
    nothing: the answer is FAILURE when training was unstable or the efficiency targets were missed (``efficiency_ok``
    False; ``efficiency_missed`` says which and by what: a whole CI, or a memory target's single values; neither
    rests on the accuracies), else INCONCLUSIVE.
    """
    from agentforge.evals.stats import MIN_N  # here: stats re-exports this module, so it cannot be imported at the top

    min_n = int(thresholds.get("min_n", MIN_N))
    missed = "efficiency targets not met" + (f": {efficiency_missed}" if efficiency_missed else "")
    compared = delta_pass1 is not None or _finite(p_value)   # a pass@1 comparison exists
    blocked = [*undecidable, *([f"only {n} paired examples; a pass@k verdict needs at least {min_n} (raise {size_key} "
                                f"or lower thresholds.min_n knowingly)"] if n is not None and n < min_n else []),
               *([f"the number of paired examples is not known; a pass@k verdict needs at least {min_n}"]
                 if n is None and compared else [])]
    if blocked:
        # what does not rest on the accuracies still decides: training that was unstable, or an efficiency target
        # missed, is section 7's FAILURE whatever pass@k would have said
        failed = [*(["training was unstable (non-finite losses or skipped steps)"] if unstable else []),
                  *([missed] if efficiency_ok is False else [])]
        return ("FAILURE", failed + blocked) if failed else ("INCONCLUSIVE", blocked)
    reasons: list[str] = []
    states: list[str] = []   # of every accuracy target: pass@k and Δ
    for k, target in sorted((thresholds.get("pass_at") or {}).items()):
        val = pass_at.get(int(k))
        if val is None:   # fewer samples per problem than k: not below its target, just not known
            why = "no per-problem results" if int(k) == 1 else f"fewer than {k} samples per problem"
            state, reason = "not established", f"pass@{k} not measured ({why}); its target {target} is not established"
        else:
            state, reason = _target(f"pass@{k}", val, (pass_at_ci or {}).get(int(k)), target)
        states.append(state)
        reasons += [reason] if reason else []
    min_delta = thresholds.get("min_delta_pass1")
    if min_delta is not None:
        state, reason = _target("delta pass@1", delta_pass1, ci95, min_delta)
        states.append(state)
        reasons += [reason] if reason else []
    alpha, fail_p = thresholds.get("alpha", 0.05), thresholds.get("failure_p", 0.1)
    worse_at = []
    for k, t in sorted((others or {}).items()):
        target = thresholds.get(f"min_delta_pass{k}")
        if target is not None:
            state, reason = _target(f"delta pass@{k}", t.get("delta"), t.get("ci95"), target)
            states.append(state)
            reasons += [reason] if reason else []
        pk, ck = t.get("p_value"), t.get("ci95")
        if pk is not None and not math.isnan(pk) and pk < alpha and ck is not None and ck[1] < 0:
            worse_at.append(k)
            reasons.append(f"the candidate is significantly worse than the baseline at pass@{k} (CI95 upper bound "
                           f"{ck[1]:.4g} < 0, p {pk:.3g})")
    acc_ok = all(s == "met" for s in states)
    acc_missed = "missed" in states
    if p_value is not None and math.isnan(p_value):   # non-finite scores: no test (``_undefined``)
        p_value = None
    ci_ok = ci95 is not None and _finite(ci95[0]) and ci95[0] > 0
    if not ci_ok:
        reasons.append(f"CI95 lower bound {None if ci95 is None else round(ci95[0], 4)} is not > 0")
    p_ok = p_value is not None and p_value < alpha
    if not p_ok:
        reasons.append(f"p-value {p_value} is not < {alpha}")
    if efficiency_ok is False:
        reasons.append(missed)
    elif efficiency_ok == "inconclusive":
        reasons.append("efficiency targets not established (a CI straddles its target, or it was not measured)")
    elif efficiency_ok is None:
        reasons.append(NO_EFFICIENCY_TARGET)
    if unstable:
        reasons.append("training was unstable (non-finite losses or skipped steps)")
    worse = p_ok and ci95 is not None and ci95[1] < 0
    if worse:
        reasons.append(f"the candidate is significantly worse than the baseline (CI95 upper bound "
                       f"{ci95[1]:.4g} < 0, p {p_value:.3g})")
    worse = worse or bool(worse_at)
    if acc_ok and ci_ok and p_ok and efficiency_ok is True and not unstable and not worse:
        return "SUCCESS", []
    if not compared and not unstable:   # no pass@1 comparison: nothing was tested
        return "INCONCLUSIVE", reasons
    if unstable or worse or p_value is None or p_value >= fail_p or acc_missed or efficiency_ok is False:
        return "FAILURE", reasons
    if acc_ok or efficiency_ok is True:
        return "PARTIAL", reasons
    return "INCONCLUSIVE", reasons


def run_labels(stats: dict, alpha: float = 0.05) -> list[str]:
    """The W&B run labels of the dashboard's section 6 that need no service: the verdict itself (section 7: a run
    can be filtered by it), and ``INCONCLUSIVE`` where the pass@1 comparison's p-value is not below ``alpha`` or was
    not computed (section 6, "p-value >= 0.05: label run INCONCLUSIVE"). The notification, PR comment and release
    tag of that section are not built (docs/codegen.md says so)."""
    labels = [str(stats["verdict"])]
    p = (stats.get("pass_at_1") or {}).get("p_value")
    if p is None or not p < alpha:   # a NaN p is no evidence either
        labels.append("INCONCLUSIVE")
    return list(dict.fromkeys(labels))
