"""Baking's evidence: is the baked model's agreement with the prompted teacher high, and did baking make it so?

What baking is judged on (``baking_evidence``, ``baking_verdict``): The agreement figure (teacher-forced top-1
agreement of the unprompted student with the prompted teacher on held-out examples) is high before any baking:
a short in-context prompt changes few next-token predictions on templated responses, so the unbaked model
scores about as well as the baked one. The verdict therefore also needs the paired gain over the unbaked model
(each validation example scored before and after), and the figure that measures baking itself is the
*prompt-effect accuracy*: on the positions where the prompt changes the model's top-1 (teacher != unbaked
student), the share where the baked, unprompted student now predicts what the prompted model predicts (0 before
baking by construction) — the paper's criterion, the baked model reproducing the prompted model's behaviour
where the prompt changes it. CIs: a stratified cluster bootstrap over examples within strategies, rescaled for
4 examples per stratum (``stratified_bootstrap``).

``baking_summary`` turns the final evaluation (``baking.bake_eval(..., base=teacher)``) into the phase's headline
keys and ``strategy_row`` into the per-strategy table's rows.
"""
from __future__ import annotations

import numpy as np

from agentforge.evals.stats import MIN_N, threshold_verdict
from agentforge.reasoning.baking import PAIRED_COLUMNS

NO_CI_ONE_EACH = "one validation example per strategy; raise phase.baking.val_per_strategy for one"


def _keep_ci(out: dict, k: str, boot: dict) -> None:
    """``out[k_ci95]``: the CI, or [nan, nan] (what ``baking_verdict`` and the pipeline's rows read as no CI) with
    the reason in ``out[k_no_ci]`` for the printed text (``fmt_ci``)."""
    out[f"{k}_ci95"] = boot["ci95"] or [float("nan"), float("nan")]
    if boot["ci95"] is None:
        out[f"{k}_no_ci"] = boot["why"]


def stratified_bootstrap(groups: list, stat, n_resamples: int = 2000, seed: int = 0, confidence: float = 0.95,
                         rescaled: bool = True) -> dict:
    """Percentile CI of a statistic of stratum totals, by the rescaled bootstrap for stratified samples with few
    units per stratum (McCarthy & Snowden 1985, "The bootstrap and finite population sampling"; Rao & Wu 1988,
    "Resampling inference with complex survey data", JASA 83, sec. 2-3, with m_h = n_h - 1): each replicate draws
    n_h - 1 of the n_h units of stratum h with replacement, units keeping their rows (positions stay with their
    example), and estimates the stratum's totals as n_h x the mean of the drawn rows. For a linear statistic such
    as a stratified mean sum_h W_h ybar_h the bootstrap variance is then sum_h W_h^2 s_h^2 / n_h, the textbook
    unbiased variance; the plain bootstrap (n_h of n_h, ``rescaled=False``) gives (n_h - 1) / n_h of it, 0.75 at
    n_h = 4 (a test). A stratum of one unit is held fixed (it has no variance estimate); with every stratum of
    one unit (``val_per_strategy=1``) there is no CI (``ci95`` None), not a zero-width one.

    ``groups``: one [n_h, c] array per stratum; ``stat``: [H, R, c] stratum totals -> [R] values, NaN where the
    statistic is undefined. Undefined replicates are dropped and their share reported. Returns {"ci95": [low,
    high] or None when no replicate is defined, "undefined_share", and "why" when there is no CI}."""
    if rescaled and all(len(g) < 2 for g in groups):   # no stratum has a variance estimate: no CI at all
        return {"ci95": None, "undefined_share": 0.0, "why": NO_CI_ONE_EACH}
    rng = np.random.default_rng(seed)
    tots = []
    for g in groups:
        g = np.asarray(g, dtype=float)
        m = max(len(g) - 1, 1) if rescaled else len(g)
        tots.append(g[rng.integers(0, len(g), size=(n_resamples, m))].mean(1) * len(g))
    vals = np.asarray(stat(np.stack(tots)), dtype=float)
    ok = np.isfinite(vals)
    if not ok.any():
        return {"ci95": None, "undefined_share": 1.0, "why": "undefined in every resample"}
    lo, hi = np.quantile(vals[ok], [(1 - confidence) / 2, (1 + confidence) / 2])
    return {"ci95": [float(lo), float(hi)], "undefined_share": float(1 - ok.mean())}


def _baking_stats(t):
    """The baking figures from stratum totals t [H, R, 7] (``PAIRED_COLUMNS``) -> {name: [R]}."""
    pos = np.maximum(t[..., 1], 1)
    final, initial = (t[..., 0] / pos).mean(0), (t[..., 2] / pos).mean(0)
    eff = t[..., 3].sum(0)
    kl_b = (t[..., 6] / pos).mean(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        effect_acc = np.where(eff > 0, t[..., 4].sum(0) / np.where(eff > 0, eff, 1), np.nan)
        kl_red = np.where(kl_b > 0, 1 - (t[..., 5] / pos).mean(0) / np.where(kl_b > 0, kl_b, 1), np.nan)
    return {"final_accuracy": final, "initial_accuracy": initial, "accuracy_gain": final - initial,
            "prompt_effect_share": eff / np.maximum(t[..., 1].sum(0), 1), "prompt_effect_accuracy": effect_acc,
            "kl_reduction": kl_red}


def baking_evidence(per: dict, n_resamples: int = 2000, seed: int = 0) -> dict:
    """Baking's figures with n and 95 % CIs, from the ``paired`` rows of ``bake_eval(..., base=...)`` (per strategy):

    * final_accuracy / initial_accuracy: the mean over strategies of each strategy's top-1 agreement with the prompted
      teacher, of the baked / the unbaked student (the latter = ``bake_eval``'s figure before baking);
    * accuracy_gain = final - initial, paired by validation example (each example scored before and after);
    * prompt_effect_share: the share of scored positions where the prompted teacher's top-1 differs from the unbaked
      student's (pooled over strategies), with ``_positions`` and ``_examples``;
    * prompt_effect_accuracy: the share of those positions where the baked student now agrees with the teacher
      (0 before baking by construction; undefined with no such position) — what baking is meant to change;
    * kl_reduction: 1 - mean KL(teacher || baked) / mean KL(teacher || unbaked), means over strategies of the
      per-position KL.

    Every CI is the same stratified cluster bootstrap (``stratified_bootstrap``: strata = strategies, unit = example,
    the before and after columns of an example drawn together, so the gain's CI is paired); NaN CI when undefined, with its reason in
    ``{name}_no_ci``."""
    groups = [np.asarray(v["paired"], dtype=float).reshape(-1, len(PAIRED_COLUMNS)) for v in per.values()
              if v.get("paired")]
    n = int(sum(len(g) for g in groups))
    out: dict = {"n": n}
    if not n:
        return out
    point = _baking_stats(np.stack([g.sum(0) for g in groups])[:, None])
    names = list(point)
    boots = {k: stratified_bootstrap(groups, lambda t, k=k: _baking_stats(t)[k], n_resamples, seed) for k in names}
    for k in names:
        v = float(point[k][0])
        out[k] = v
        _keep_ci(out, k, boots[k])
        if boots[k]["undefined_share"]:
            out[f"{k}_undefined_share"] = boots[k]["undefined_share"]
    tot = np.concatenate(groups)
    out["positions"] = int(tot[:, 1].sum())
    out["prompt_effect_positions"] = int(tot[:, 3].sum())
    out["prompt_effect_examples"] = int((tot[:, 3] > 0).sum())
    return out


def _control_stats(t):
    """From stratum totals t [H, R, 6] (``CONTROL_COLUMNS``) -> {name: [R]}."""
    pos, eff = np.maximum(t[..., 5], 1), t[..., 0].sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_eff = np.where(eff > 0, 1 / np.where(eff > 0, eff, 1), np.nan)
    return {"control_prompt_effect_accuracy": t[..., 2].sum(0) * per_eff,
            "prompt_effect_vs_control": (t[..., 1] - t[..., 2]).sum(0) * per_eff,
            "control_accuracy": (t[..., 4] / pos).mean(0),
            "accuracy_vs_control": ((t[..., 3] - t[..., 4]) / pos).mean(0)}


# per example: prompt-effect positions; of them, agreeing with the prompted teacher: baked, control; all scored
# positions agreeing: baked, control; scored positions
CONTROL_COLUMNS = ("effect_positions", "baked_effect_hits", "control_effect_hits", "baked_hits", "control_hits",
                   "positions")


def control_evidence(per: dict, per_control: dict, n_resamples: int = 2000, seed: int = 0) -> dict:
    """The baked model against a *control* baked the same way from the same input on the same data with the
    prompt's tokens shuffled (``phase.baking.control=shuffled``), both scored against the real prompted teacher on the same
    validation examples: what the control reaches is what baking gets without the prompt's content (the prompt's
    length and bytes, fine-tuning on the continuations), so the baked model's margin over it, paired by example, is
    the part of baking that comes from what the prompt says. Figures (each with the stratified bootstrap's CI of
    ``baking_evidence``): control_prompt_effect_accuracy, prompt_effect_vs_control (baked - control on the prompt-
    effect positions, which are the same for both: the teacher and the unbaked model are), control_accuracy and
    accuracy_vs_control (the top-1 agreement on all positions, means over strategies)."""
    groups = []
    for key, v in per.items():
        b = np.asarray(v.get("paired") or [], dtype=float).reshape(-1, len(PAIRED_COLUMNS))
        c = np.asarray(per_control.get(key, {}).get("paired") or [], dtype=float).reshape(-1, len(PAIRED_COLUMNS))
        if not len(b):
            continue
        if b.shape != c.shape or not np.array_equal(b[:, [1, 3]], c[:, [1, 3]]):
            raise ValueError(f"strategy {key}: the control was not scored on the same examples and positions")
        groups.append(np.column_stack([b[:, 3], b[:, 4], c[:, 4], b[:, 0], c[:, 0], b[:, 1]]))
    n = int(sum(len(g) for g in groups))
    out: dict = {"n": n}
    if not n:
        return out
    point = _control_stats(np.stack([g.sum(0) for g in groups])[:, None])
    for k in point:
        boot = stratified_bootstrap(groups, lambda t, k=k: _control_stats(t)[k], n_resamples, seed)
        out[k] = float(point[k][0])
        _keep_ci(out, k, boot)
    return out


def control_text(ce: dict) -> str:
    if not ce.get("n"):
        return ""
    acc = ce["control_prompt_effect_accuracy"]
    if acc != acc:
        return "shuffled-prompt control: no prompt-effect positions"
    return (f"a shuffled-prompt control reaches {fig(ce, 'control_prompt_effect_accuracy', 3)} there, "
            f"baked - control {fig(ce, 'prompt_effect_vs_control', 3, True)}")


def fmt_ci(v: float, ci, digits: int = 4, sign: bool = False, why: str = "") -> str:
    """'v [lo, hi]', or 'v (no CI: why)' where the CI is missing or NaN (never NaN brackets)."""
    f = f"{{:{'+' if sign else ''}.{digits}f}}"
    if ci is None or any(x is None or x != x for x in ci):
        return f"{f.format(v)} (no CI: {why or 'undefined'})"
    return f"{f.format(v)} [{f.format(ci[0])}, {f.format(ci[1])}]"


def fig(ev: dict, k: str, digits: int = 4, sign: bool = False) -> str:
    """Figure ``k`` of ``baking_evidence`` / ``control_evidence`` with its CI or the reason it has none."""
    return fmt_ci(ev[k], ev[f"{k}_ci95"], digits, sign, ev.get(f"{k}_no_ci", ""))


def evidence_text(ev: dict) -> str:
    """One line with the figures a baking verdict rests on: unbaked score, paired gain, prompt-effect positions."""
    if not ev.get("n"):
        return "no paired before / after rows"
    acc = ev["prompt_effect_accuracy"]
    eff = f"baked agreement there {fig(ev, 'prompt_effect_accuracy', 3)}" if acc == acc else "none to learn"
    return (f"the unbaked model already scores {fig(ev, 'initial_accuracy')}; "
            f"gain {fig(ev, 'accuracy_gain', sign=True)} (paired, n={ev['n']} examples); "
            f"the prompt changes the top-1 at {ev['prompt_effect_share']:.1%} of {ev['positions']} positions "
            f"({ev['prompt_effect_positions']} in {ev['prompt_effect_examples']} examples), {eff}")


def baking_verdict(final_ci, gain_ci, threshold: float, n: int | None, detail: str = "",
                   min_n: int | None = None, control_ci=None) -> tuple[str, str]:
    """(PASS / FAIL / INCONCLUSIVE, why) for "baked agreement >= threshold, and baking did it": FAIL when the whole
    CI of the final agreement is below the threshold; PASS only when the whole CI meets it *and* the paired gain's
    CI over the unbaked model lies above 0; INCONCLUSIVE otherwise (the CI straddles, n < min_n, no CI, or a final
    CI that clears the threshold with no established gain: then the unbaked model passes the same test). With
    ``control_ci`` (the CI of baked - shuffled-prompt control on the prompt-effect positions, ``control_evidence``),
    PASS also needs it above 0: a gain that a prompt without its content gives as well is not the prompt baked in."""
    v, why = threshold_verdict(final_ci, ">=", threshold, n, MIN_N if min_n is None else min_n)
    tail = f"; {detail}" if detail else ""
    if v != "PASS":
        return v, why + tail
    gain_ok = gain_ci is not None and all(x is not None and x == x for x in gain_ci) and float(gain_ci[0]) > 0
    if not gain_ok:
        return "INCONCLUSIVE", (f"{why}, but baking's gain over the unbaked model is not established (its CI does "
                                f"not lie above 0){tail}")
    if control_ci is not None and not (all(x == x for x in control_ci) and float(control_ci[0]) > 0):
        return "INCONCLUSIVE", (f"{why} and the paired gain's CI lies above 0, but the shuffled-prompt control does "
                                f"about as well where the prompt changes the prediction{tail}")
    return "PASS", (f"{why} and the paired gain's CI lies above 0" + (" and above the shuffled-prompt control's"
                                                                       if control_ci is not None else "") + tail)


BAKING_TEST = ("stratified cluster bootstrap over validation examples within strategies, n_h - 1 of n_h drawn "
               "(Rao & Wu 1988)")


def strategy_row(s, per, per0, seed: int) -> list:
    """One strategy's row: its agreement with n and CI, and a verdict that says INCONCLUSIVE below the shared minimum
    sample (a strategy has ``val_per_strategy`` examples, 4 by default) instead of a bare point comparison."""
    ev = baking_evidence({s.key: per[s.key]}, seed=seed)
    verdict, _ = baking_verdict(ev["final_accuracy_ci95"], ev["accuracy_gain_ci95"], s.threshold, ev["n"])
    ci = lambda k, d=3, sign=False: fig(ev, k, d, sign)  # noqa: E731
    return [s.name, ci("final_accuracy"), s.threshold, f"{verdict} (n={ev['n']})", per0[s.key]["agreement"],
            ci("accuracy_gain", 4, True), f"{ev['prompt_effect_positions']} of {ev['positions']}",
            ci("prompt_effect_accuracy") if ev["prompt_effect_positions"] else "– (none)",
            per0[s.key]["kl"], per[s.key]["kl"], per[s.key]["usage"], per[s.key]["teacher_usage"]]


def baking_summary(final: dict, thr: float, seed: int, control: dict | None = None) -> dict:
    """The step's headline keys from the final evaluation (``bake_eval(..., base=teacher)``): the final and initial
    agreement, the paired gain, the prompt-effect figures and the KL reduction, each with n and a 95 % CI
    (``baking_evidence``), and the ``>= thr`` verdict of ``baking_verdict`` (PASS only when the final
    CI clears ``thr`` and the gain's CI lies above 0) with its reason; ``baking/converged`` is that verdict's PASS.
    ``control``: the shuffled-prompt control's evaluation (same call, same examples): its figures
    (``control_evidence``) join the keys and the reason, and PASS also needs the margin over it."""
    ev = baking_evidence(final["per"], seed=seed)
    ce = control_evidence(final["per"], control["per"], seed=seed) if control is not None else {}
    ctl_ci = ce.get("prompt_effect_vs_control_ci95") if ce.get("n") else None
    detail = "; ".join(t for t in (evidence_text(ev), control_text(ce)) if t)
    verdict, why = baking_verdict(ev["final_accuracy_ci95"], ev["accuracy_gain_ci95"], thr, ev["n"], detail,
                                  control_ci=ctl_ci)
    out = {"baking/final_accuracy": final["overall"], "baking/final_accuracy_n": ev["n"],
           "baking/final_accuracy_ci95": ev["final_accuracy_ci95"], "baking/final_accuracy_test": BAKING_TEST,
           "baking/final_accuracy_verdict": verdict, "baking/final_accuracy_why": why,
           "baking/final_accuracy_threshold": thr,   # the verdict's (phase.baking.convergence_threshold)
           "baking/converged": verdict == "PASS"}
    for k in ("initial_accuracy", "accuracy_gain", "prompt_effect_share", "prompt_effect_accuracy", "kl_reduction"):
        out[f"baking/{k}"], out[f"baking/{k}_ci95"] = ev[k], ev[f"{k}_ci95"]
    out.update({"baking/initial_accuracy_n": ev["n"], "baking/accuracy_gain_n": ev["n"],
                "baking/accuracy_gain_test": "final - initial, paired by validation example; " + BAKING_TEST,
                "baking/scored_positions": ev["positions"],
                "baking/prompt_effect_n_positions": ev["prompt_effect_positions"],
                "baking/prompt_effect_n_examples": ev["prompt_effect_examples"],
                "baking/prompt_effect_accuracy_n": ev["prompt_effect_examples"],
                "baking/prompt_effect_accuracy_test": "positions where the prompted teacher's top-1 differs from the "
                                                      "unbaked student's; cluster = example; " + BAKING_TEST})
    if "prompt_effect_accuracy_undefined_share" in ev:
        out["baking/prompt_effect_accuracy_undefined_share"] = ev["prompt_effect_accuracy_undefined_share"]
    if ce.get("n"):
        for k in ("control_prompt_effect_accuracy", "prompt_effect_vs_control", "control_accuracy",
                  "accuracy_vs_control"):
            out[f"baking/{k}"], out[f"baking/{k}_ci95"] = ce[k], ce[f"{k}_ci95"]
        out.update({"baking/prompt_effect_vs_control_n": ce["n"], "baking/control": "shuffled prompt",
                    "baking/prompt_effect_vs_control_test": "baked - shuffled-prompt control on the prompt-effect "
                                                            "positions, paired by example; " + BAKING_TEST})
    return out
