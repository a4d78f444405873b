"""The anti-theater checks of Quiet-STaR (agentforge/reasoning/anti_theater.py): a head that ignores its thoughts fails,
good thoughts pass, the correlation's sample size and CI, and the quality it uses not seeing the future tokens."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from agentforge.evals import stats
from agentforge.reasoning import anti_theater
from agentforge.reasoning.rl import ThoughtConfig, coherence_scores, evaluate, sample_windows
from agentforge.reasoning.thoughts import (
    MixingHead,
    think,
)
from tests.test_reasoning import IDS, tiny

torch.set_num_threads(1)


def test_anti_theater_fails_when_thoughts_are_ignored():
    """An untrained head (w = 0 at the start, as in the reference) gives thoughts no influence: with
    enough windows for a verdict, divergence and drop are exactly 0 and every check FAILs."""
    model = tiny()
    ref = copy.deepcopy(model)
    stream = torch.randint(32, 127, (2000,))
    windows = sample_windows(stream, 30, 30, 1, 12, 3, torch.Generator().manual_seed(0))
    cfg = ThoughtConfig(num_thoughts=3, thought_length=3, n_true=3, context_len=12)
    res = evaluate(model, MixingHead(32), ref, windows, cfg, IDS, torch.Generator().manual_seed(0))
    assert res["n_windows"] == 30 and res["divergence"] < 1e-6 and res["ablation_drop"] == 0.0
    assert res["divergence_ci95"][1] < 1e-6 and res["ablation_drop_ci95"] == [0.0, 0.0]
    assert [res[f"{k}_verdict"] for k in ("divergence", "ablation_drop")] == ["FAIL"] * 2
    # nothing varies across the thoughts: the correlation is undefined, not 0 with a CI [0, 0] and a FAIL
    assert math.isnan(res["correlation"]) and not res["correlation_defined"] and res["correlation_n_informative"] == 0
    assert all(math.isnan(x) for x in res["correlation_ci95"]) and res["correlation_verdict"] == "INCONCLUSIVE"
    assert res["correlation_why"] == "undefined: nothing varies within any window"
    assert not res["all_passed"]


def _good_thoughts(n: int):
    """n windows, 3 thoughts: the best (quality 0.9) right on both true tokens, one half right, the worst wrong;
    without thoughts always wrong."""
    k, t, v = 3, 2, 5
    true = torch.zeros(n, t, dtype=torch.long)
    without = torch.zeros(n, t, v)
    without[..., 1] = 5.0
    mixed = torch.zeros(n, k, t, v)
    quality = torch.tensor([[0.9, 0.5, 0.1]]).expand(n, k)
    mixed[:, 0, :, 0] = 5.0
    mixed[:, 1, 0, 0] = 5.0
    mixed[:, 1, 1, 2] = 5.0
    mixed[:, 2, :, 3] = 5.0
    return mixed, without, true, quality


def test_anti_theater_passes_when_good_thoughts_change_predictions():
    res = anti_theater.theater_metrics(*_good_thoughts(anti_theater.MIN_CORRELATION_WINDOWS))
    assert res["divergence"] > 0.3 and res["ablation_drop"] == pytest.approx(0.5)
    assert res["correlation"] == pytest.approx(1.0) and res["all_passed"]
    assert res["n_windows"] == 30 and res["ablation_drop_ci95"] == pytest.approx([0.5, 0.5])
    assert res["correlation_n_informative"] == 30 and res["correlation_undefined_share"] == 0.0
    assert res["divergence_ci_method"] == res["ablation_drop_ci_method"] == "bootstrap"


def test_below_30_windows_divergence_and_drop_use_the_exact_sign_flip_ci_and_the_correlation_no_verdict():
    """From MIN_WINDOWS (20) to 29 windows the divergence and drop CIs are the exact sign-flip test's (a percentile
    bootstrap over 20 skewed windows is too narrow: it made this FAIL); the drop gets a verdict from it, while the
    divergence (a mean of non-negative values, which the sign-flip CI's symmetry does not fit) and the correlation
    (a bootstrap CI only) are INCONCLUSIVE until 30 windows."""
    res = anti_theater.theater_metrics(*_good_thoughts(anti_theater.MIN_WINDOWS))
    assert res["n_windows"] == 20 and res["divergence_ci_method"] == "sign_flip_monte_carlo"
    assert res["divergence_ci95"][0] > 0.3 and res["divergence_verdict"] == "INCONCLUSIVE"   # whole CI above: n decides
    assert res["ablation_drop_verdict"] == "PASS"
    assert res["correlation"] == pytest.approx(1.0) and res["correlation_verdict"] == "INCONCLUSIVE"
    assert not res["all_passed"]
    w = np.array([0, 0, -.25, 0, -.25, 0, -.25, 0, -.25, 0, .25, 0, 0, 0, -.25, -.25, .25, 0, 0, 0])
    boot = stats.paired_bootstrap(w, np.zeros_like(w), n_resamples=2000)["ci95"]
    assert anti_theater.verdict(boot, 0.02, 20) == "FAIL"                      # what the bootstrap said
    ci, how = anti_theater._paired_ci(w, np.zeros_like(w), 0)
    assert how == "sign_flip_monte_carlo" and ci[0] < -0.1 and ci[1] > 0.02    # the exact test's CI straddles 0.02
    assert anti_theater.verdict(ci, 0.02, 20) == "INCONCLUSIVE"


def _ordered_in(k: int, n: int = 64, seed: int = 0):
    """n windows x 4 thoughts; accuracy (on 4 tokens) ordered by quality in the first k windows, constant elsewhere."""
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(n, 4))
    acc = np.full((n, 4), 0.25)
    for w in range(k):
        acc[w] = 0.25 + 0.25 * (q[w] > np.median(q[w]))
    return q, acc


def test_one_informative_window_gives_no_correlation_ci():
    """Resampling a single informative window only re-draws it: no CI (the default run has 1 of 64)."""
    q, acc = _ordered_in(1)
    ci, dropped = anti_theater._corr_ci(q, acc, seed=0)
    assert all(math.isnan(x) for x in ci) and anti_theater.verdict(ci, 0.5, 1) == "INCONCLUSIVE"


@pytest.mark.parametrize("k", [3, 6, 20, 64])
def test_correlation_n_is_the_informative_windows_and_undefined_resamples_are_dropped(k):
    """The auditor's case (corr_ci.py): 64 windows, accuracy tied to quality in only k. n = k (not 64), so k < 20
    is INCONCLUSIVE whatever r; resamples that draw none of the k windows are undefined and dropped (their expected
    share (1 - k/64)^64, 0.05 at k = 3), not scored 0: the CI's lower bound is no longer pinned at 0. k = 64 PASSes."""
    q, acc = _ordered_in(k)
    ci, dropped = anti_theater._corr_ci(q, acc, seed=0)
    assert anti_theater.informative_windows(q, acc).sum() == k
    assert dropped == pytest.approx((1 - k / 64) ** 64, abs=0.03)
    assert ci[0] > 0 and ci[0] <= anti_theater.within_correlation(q, acc) <= ci[1]
    want = "PASS" if k == 64 else "INCONCLUSIVE"
    assert anti_theater.verdict(ci, 0.5, k) == want
    assert anti_theater.verdict(ci, 0.5, 64) == ("FAIL" if k < 20 else want)   # what n = 64 used to allow


def test_anti_theater_gives_no_verdict_below_the_minimum_sample():
    res = anti_theater.theater_metrics(*_good_thoughts(4))  # the same perfect thoughts, 4 windows
    assert res["ablation_drop"] == pytest.approx(0.5) and res["n_windows"] == 4
    assert {res[f"{k}_verdict"] for k in ("divergence", "ablation_drop", "correlation")} == {"INCONCLUSIVE"}
    assert not res["all_passed"]


def test_anti_theater_ci_covers_the_estimate_and_decides_by_it():
    gen = torch.Generator().manual_seed(0)
    n, k, t, v = 40, 2, 4, 3
    true = torch.zeros(n, t, dtype=torch.long)
    without = torch.randn(n, t, v, generator=gen)
    mixed = without[:, None].repeat(1, k, 1, 1)
    mixed[:20, :, :, 0] += 10.0  # thoughts fix every token of half the windows
    res = anti_theater.theater_metrics(mixed, without, true, torch.rand(n, k, generator=gen))
    lo, hi = res["ablation_drop_ci95"]
    assert lo < res["ablation_drop"] < hi and lo > 0.02 and res["ablation_drop_verdict"] == "PASS"
    lo, hi = res["divergence_ci95"]
    assert lo < res["divergence"] < hi


def test_within_window_correlation_hand_value():
    """Centred per window: windows 2 and 1 differ by 10 in quality and not at all in accuracy."""
    q = np.array([[1.0, 2.0], [11.0, 12.0]])
    a = np.array([[1.0, 0.0], [1.0, 0.0]])
    assert anti_theater.within_correlation(q, a) == pytest.approx(-1.0)
    assert math.isnan(anti_theater.within_correlation(q, np.ones((2, 2))))




def test_correlation_quality_does_not_see_the_future_tokens():
    """The quality the correlation uses is unchanged when the true tokens are replaced; the accuracy side
    (and the predictive coherence, which is excluded from it) does change."""
    model, head = tiny(), MixingHead(32, init_weight=0.5)
    ref = copy.deepcopy(model)
    windows = torch.randint(32, 127, (3, 14))
    thoughts = torch.randint(32, 127, (3, 2, 3))
    other = windows.clone()
    other[:, 12:] = (windows[:, 12:] + 7) % 127
    a = coherence_scores(model, ref, think(model, head, windows, 2, 2, 3, 259, 260, thoughts=thoughts), 12)
    b = coherence_scores(model, ref, think(model, head, other, 2, 2, 3, 259, 260, thoughts=thoughts), 12)
    for key in ("prior", "semantic", "syntactic"):
        assert torch.equal(a[key], b[key]), key
    assert not torch.equal(a["predictive"], b["predictive"])


def test_no_window_gives_no_verdict_and_no_crash():
    """Zero windows (np.ptp of an empty array raised): every figure undefined, every verdict INCONCLUSIVE."""
    import warnings

    import torch

    from agentforge.reasoning.anti_theater import theater_metrics

    g = torch.Generator().manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # numpy: the mean of an empty slice is NaN, as wanted
        r = theater_metrics(torch.randn(0, 2, 3, 5, generator=g), torch.randn(0, 3, 5, generator=g),
                            torch.randint(0, 5, (0, 3), generator=g), torch.rand(0, 2, generator=g))
    assert r["n_windows"] == 0 and not r["all_passed"]
    assert all(r[f"{k}_verdict"] == "INCONCLUSIVE" for k in ("divergence", "ablation_drop", "correlation"))
