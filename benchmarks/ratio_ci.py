"""The one format in which the benchmarks print a timing ratio: the median of the per-round ratios of interleaved
rounds (``evals.speed.interleaved_times``: round r of every case timed in the same round, so load hits both alike),
its distribution-free 95 % CI and the number of rounds (``evals.compare.round_ratios`` / ``median_ci``):

    ratio <what>: 1.23  95% CI [1.10, 1.31] n = 9 rounds (median of per-round ratios)

With fewer than ``MIN_TIMING_ROUNDS`` rounds no order statistics reach 95 % coverage and the CI printed is the
range, which covers less; the line says so. With one round there is no CI at all, and the line says that instead of
printing one. A stated aim ("<= 1.3") is decided from the CI alone (``aim_verdict``): met when the whole CI meets it,
missed when none of it does, inconclusive when it straddles the aim, no verdict under ``MIN_TIMING_ROUNDS`` rounds.
Not a benchmark itself (no ``bench_`` prefix: ``make bench`` skips it).
"""
from __future__ import annotations

from collections.abc import Sequence

from agentforge.evals.compare import MIN_TIMING_ROUNDS, round_ratios
from agentforge.evals.stats import threshold_verdict

DEFAULT_ROUNDS = 9   # every script's default: >= MIN_TIMING_ROUNDS, so the CI is a 95 % one


def ratio_ci(num_s: Sequence[float], den_s: Sequence[float], scale: float = 1.0) -> tuple[float, float, float, int]:
    """(median, CI low, CI high, n) of ``scale`` x num_s[r] / den_s[r] over the rounds r. For a speed ratio
    "A's tokens/s ÷ B's" pass B's times as ``num_s`` and A's as ``den_s``; ``scale`` carries a constant factor
    (e.g. the FLOPs-per-step ratio that turns a time ratio into an achieved-FLOP/s ratio)."""
    med, (lo, hi), n = round_ratios(num_s, den_s)
    return scale * med, scale * lo, scale * hi, n


def ci_text(num_s: Sequence[float], den_s: Sequence[float], scale: float = 1.0) -> str:
    """'1.23  95% CI [1.10, 1.31] n = 9 rounds' (``ratio_ci``), flagged when n is too small for a 95 % CI."""
    med, lo, hi, n = ratio_ci(num_s, den_s, scale)
    if n == 1:
        return f"{med:.2f}, n = 1 round: no CI exists at n = 1 (one ratio, no spread to estimate one from)"
    few = f", under {MIN_TIMING_ROUNDS} rounds: the CI is the range and covers less" if n < MIN_TIMING_ROUNDS else ""
    return f"{med:.2f}  95% CI [{lo:.2f}, {hi:.2f}] n = {n} rounds{few}"


def ci_short(num_s: Sequence[float], den_s: Sequence[float], scale: float = 1.0) -> str:
    """'1.23 [1.10, 1.31]' (``ratio_ci``) for a table whose header gives the rounds and what the brackets are."""
    med, lo, hi, n = ratio_ci(num_s, den_s, scale)
    return f"{med:.2f} [no CI at n = 1]" if n == 1 else f"{med:.2f} [{lo:.2f}, {hi:.2f}]"


def ci_header(n: int) -> str:
    """What a table's ``ci_short`` column holds, for its header: 'median of the per-round ratios [95% CI], n = 9 rounds'."""
    if n == 1:
        return "the one round's ratio [no CI exists at n = 1]"
    few = f"; under {MIN_TIMING_ROUNDS} rounds the range, covering less" if n < MIN_TIMING_ROUNDS else ""
    return f"median of the per-round ratios [95% CI{few}], n = {n} rounds"


def ratio_line(what: str, num_s: Sequence[float], den_s: Sequence[float], scale: float = 1.0) -> str:
    """The uniform line: 'ratio <what>: <median>  95% CI [lo, hi] n = <rounds> rounds (median of per-round ratios)'."""
    how = " (median of per-round ratios)" if len(num_s) > 1 else ""
    return f"ratio {what}: {ci_text(num_s, den_s, scale)}{how}"


def aim_verdict(lo: float, hi: float, n: int, target: float, op: str = "<=") -> str:
    """'met' when the whole CI [lo, hi] is ``op`` target, 'missed' when none of it is, else 'inconclusive (CI straddles
    the aim)'; under ``MIN_TIMING_ROUNDS`` rounds no 95 % CI exists, so no verdict (timing noise decides nothing)."""
    if n < MIN_TIMING_ROUNDS:
        return f"no verdict (n = {n} < {MIN_TIMING_ROUNDS} rounds: no 95% CI)"
    verdict = threshold_verdict([lo, hi], op, target)[0]
    return {"PASS": "met", "FAIL": "missed"}.get(verdict, "inconclusive (CI straddles the aim)")


def aim_line(what: str, num_s: Sequence[float], den_s: Sequence[float], target: float, op: str = "<=",
             scale: float = 1.0) -> str:
    """``ratio_line`` and its aim's verdict from the CI: '...; aim <= 1.3: met' (``aim_verdict``)."""
    _, lo, hi, n = ratio_ci(num_s, den_s, scale)
    return f"{ratio_line(what, num_s, den_s, scale)}; aim {op} {target:.2f}: {aim_verdict(lo, hi, n, target, op)}"
