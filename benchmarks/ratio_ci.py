"""The one format in which the benchmarks print a timing ratio: the median of the per-round ratios of interleaved
rounds (``evals.speed.interleaved_times``: round r of every case timed in the same round, so load hits both alike),
its distribution-free 95 % CI and the number of rounds (``evals.compare.round_ratios`` / ``median_ci``):

    ratio <what>: 1.23  95% CI [1.10, 1.31] n = 9 rounds (median of per-round ratios)

With fewer than ``MIN_TIMING_ROUNDS`` rounds no order statistics reach 95 % coverage and the CI printed is the
range, which covers less; the line says so. Not a benchmark itself (no ``bench_`` prefix: ``make bench`` skips it).
"""
from __future__ import annotations

from collections.abc import Sequence

from agentforge.evals.compare import MIN_TIMING_ROUNDS, round_ratios

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
    few = f", under {MIN_TIMING_ROUNDS} rounds: the CI is the range and covers less" if n < MIN_TIMING_ROUNDS else ""
    return f"{med:.2f}  95% CI [{lo:.2f}, {hi:.2f}] n = {n} rounds{few}"


def ci_short(num_s: Sequence[float], den_s: Sequence[float], scale: float = 1.0) -> str:
    """'1.23 [1.10, 1.31]' (``ratio_ci``) for a table whose header gives the rounds and what the brackets are."""
    med, lo, hi, _ = ratio_ci(num_s, den_s, scale)
    return f"{med:.2f} [{lo:.2f}, {hi:.2f}]"


def ratio_line(what: str, num_s: Sequence[float], den_s: Sequence[float], scale: float = 1.0) -> str:
    """The uniform line: 'ratio <what>: <median>  95% CI [lo, hi] n = <rounds> rounds (median of per-round ratios)'."""
    return f"ratio {what}: {ci_text(num_s, den_s, scale)} (median of per-round ratios)"
