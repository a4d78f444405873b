"""The scaling evaluator's training seeds and its other red-team fixes:

* the test improvement's interval covers training randomness: the baseline reference is trained at K seeds
  (``phase.seeds``), its seed-to-seed spread enters a t-interval (``scaling/uncertainty.py``), and with K = 1
  the interval says it covers the rows only (a candidate differing from the baseline only in the order of two
  ``nn.Linear`` constructions had scored −0.163 [−0.192, −0.132]: init luck called significant);
* the results cache's key holds the project's own code (an edited init std had still hit the cache);
* sizes with equal parameter counts are refused before anything trains (they had been trained, then scored
  as a crash: −1000 for OpenEvolve);
* the fit's x-axis convention (``phase.fit_params``) is printed and recorded."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from agentforge.errors import ConfigError
from agentforge.phases import scaling as phase
from agentforge.scaling import cache, evaluator
from agentforge.scaling.uncertainty import seed_interval, training_seeds
from agentforge.scaling.variants import variant_path
from tests.conftest import compose_cfg, run_cli
from tests.test_scaling import TINY_CLI

T_975_2DF = 4.302652729911275  # scipy.stats.t.ppf(0.975, 2): the 97.5 % quantile of Student's t, 2 df
EQUAL = "[{name:a,d_model:32,n_layers:2,n_heads:2},{name:b,d_model:32,n_layers:2,n_heads:1}]"


# -- the interval: by hand ----------------------------------------------------------------------------------
def test_seed_interval_matches_the_hand_computed_t_interval():
    # K = 3 baseline seeds whose statistic is −0.1, 0.0, +0.1: mean 0, s² = (0.01 + 0 + 0.01) / 2 = 0.01.
    # m = 1 candidate seed: seed part s²(1/m + 1/K) = 0.01 · 4/3 = 0.013333; rows: se_rows = 0.05, 0.0025.
    # se = √(0.0025 + 0.013333) = √0.0158333 = 0.125831; t(0.975, K−1 = 2) = 4.302653; half-width 0.541406;
    # point 0.2 → [−0.341406, 0.741406]
    got = seed_interval(0.2, 0.05, [-0.1, 0.0, 0.1], m=1)
    half = T_975_2DF * math.sqrt(0.0025 + 0.01 * (1 + 1 / 3))
    assert half == pytest.approx(0.541406, abs=1e-6)
    assert got["ci"] == pytest.approx([0.2 - half, 0.2 + half]) and got["df"] == 2.0
    assert got["se"] == pytest.approx(0.125831, abs=1e-6) and got["seed_sd"] == pytest.approx(0.1)
    # m = 3 candidate seeds: the seed part is 0.01 · (1/3 + 1/3); no row noise: se = √0.0066667 = 0.081650
    assert seed_interval(0.0, 0.0, [-0.1, 0.0, 0.1], m=3)["se"] == pytest.approx(0.081650, abs=1e-6)
    with pytest.raises(ValueError):
        seed_interval(0.0, 0.05, [0.3])  # one seed: no seed variance to estimate


def fake_baseline(monkeypatch, seed_losses: list[dict], rows: int = 40):
    """``evaluator.evaluate`` of the baseline replaced by figures: seed i gets the per-size test losses
    ``seed_losses[i]`` (constant over ``rows`` rows) at params e, e² (ln = 1, 2: fitness = loss_a − loss_b)."""
    calls = []

    def evaluate(path, settings, **kw):
        calls.append(settings)
        losses = seed_losses[settings.get("train_seed", settings["seed"]) - settings["seed"]]
        sizes = [{"name": k, "params": p, "loss": v, "test_loss": v, "test_row_losses": [v] * rows}
                 for (k, v), p in zip(losses.items(), (math.e, math.e ** 2))]
        fit = losses["a"] - losses["b"]
        return {"valid": 1.0, "fitness": fit, "test_fitness": fit, "sizes": sizes}

    monkeypatch.setattr(evaluator, "evaluate", evaluate)
    return calls


def candidate_sizes(loss_a: float, loss_b: float, rows: int = 40) -> list[dict]:
    return [{"name": k, "params": p, "loss": v, "test_loss": v, "test_row_losses": [v] * rows}
            for k, v, p in (("a", loss_a, math.e), ("b", loss_b, math.e ** 2))]


SETTINGS = {"seed": 0, "seeds": 3, "candidate_seeds": 1, "fit_params": "total",
            "fitness": {"reference": "baseline", "tolerance": 5.0}, "trust": {"bootstrap": 200}}


def test_reference_is_the_mean_of_k_seeds_and_the_interval_covers_them(monkeypatch):
    # baseline seeds (test losses a, b): (3.0, 2.0), (3.1, 2.0), (2.9, 2.0): fitness 1.0, 1.1, 0.9, mean 1.0.
    # Each seed scored against the mean as a candidate is: −slope + (2.0 − its loss at b) − 1.0 = 0, +0.1, −0.1,
    # so s = 0.1. The candidate (3.2, 2.6): −slope 0.6, gain at b 2.0 − 2.6 = −0.6, improvement 0 − 1.0 = −1.0.
    # Rows are constant: se_rows = 0. Interval −1.0 ± t(0.975, 2) · 0.1 · √(1 + 1/3) = −1.0 ± 0.496827.
    calls = fake_baseline(monkeypatch, [{"a": 3.0, "b": 2.0}, {"a": 3.1, "b": 2.0}, {"a": 2.9, "b": 2.0}])
    ref = evaluator.baseline_reference("candidate code", SETTINGS, 60, None, None, "bwrap")
    assert [c.get("train_seed") for c in calls] == [None, 1, 2]  # seed 0 shares a plain baseline run's key
    assert all(c["fitness"]["reference"] is None and c["candidate_seeds"] == 1 for c in calls)
    assert ref["fitness"] == pytest.approx(1.0) and ref["test_losses"] == pytest.approx({"a": 3.0, "b": 2.0})
    got = evaluator.scored(candidate_sizes(3.2, 2.6), SETTINGS, ref)
    assert got["test_improvement"] == pytest.approx(-1.0)
    half = T_975_2DF * 0.1 * math.sqrt(1 + 1 / 3)
    assert half == pytest.approx(0.496827, abs=1e-6)
    assert got["test_improvement_ci95"] == pytest.approx([-1.0 - half, -1.0 + half])
    assert got["test_improvement_ci_covers"] == "rows+seeds" and got["test_improvement_ci_df"] == 2.0
    assert got["test_baseline_seed_sd"] == pytest.approx(0.1) and got["test_improvement_row_se"] < 1e-12
    assert got["test_baseline_fitness_by_seed"] == pytest.approx([1.0, 1.1, 0.9])
    # what a do-nothing candidate would score: each baseline seed against the K-seed mean (the guard's bias shows here)
    assert got["test_baseline_improvement_by_seed"] == pytest.approx([0.0, 0.1, -0.1])
    assert got["baseline_fitness_by_seed"] == pytest.approx([1.0, 1.1, 0.9]) and got["baseline_seeds"] == [0, 1, 2]
    assert (got["test_baseline_seed_count"], got["test_candidate_seed_count"]) == (3.0, 1.0)
    text = phase.interval_text(got)
    assert "covers rows+seeds" in text and "2 df" in text and "K=3" in text and "m=1" in text
    assert "excludes 0" in text
    assert not [k for k in evaluator.selection_only(got) if k.startswith("test_")]


def test_one_seed_says_the_interval_covers_rows_only(monkeypatch):
    fake_baseline(monkeypatch, [{"a": 3.0, "b": 2.0}])
    settings = {**SETTINGS, "seeds": 1}
    ref = evaluator.baseline_reference("candidate code", settings, 60, None, None, "bwrap")
    got = evaluator.scored(candidate_sizes(3.2, 2.6), settings, ref)
    assert got["test_improvement_ci_covers"] == "rows" and "test_improvement_ci_df" not in got
    assert got["test_improvement_ci95"] == pytest.approx([-1.0, -1.0])  # constant rows: the percentile interval
    text = phase.interval_text(got)
    assert "covers rows only" in text and "NOT training randomness" in text and "phase.seeds>=2" in text
    assert training_seeds({"seed": 5, "seeds": 3}) == [5, 6, 7] and training_seeds({"seed": 5}) == [5]


def test_phase_checks_the_seed_settings(tmp_path):
    settings = phase.settings_from_cfg(compose_cfg(["phase=scaling"], tmp_path))
    assert (settings["seeds"], settings["candidate_seeds"]) == (3, 1)
    for bad in ("phase.seeds=0", "phase.candidate_seeds=4", "phase.candidate_seeds=0"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            phase.settings_from_cfg(compose_cfg(["phase=scaling", bad], tmp_path))


# -- the cache key holds the project's code -----------------------------------------------------------------
def test_cache_key_changes_with_one_byte_of_the_project_code(tmp_path):
    files = cache.source_files()
    rel = {p.relative_to(cache.PROJECT_ROOT).as_posix() for p in files}
    # the scaling package, the attention's layers and what the child trains with (its imports, followed)
    assert {"agentforge/scaling/model.py", "agentforge/scaling/child.py", "agentforge/models/layers.py",
            "agentforge/data/datamodule.py", "agentforge/training/trainer.py", "agentforge/training/lm_module.py",
            "agentforge/optim/__init__.py", "agentforge/scaling/variants/baseline.py"} <= rel
    for path in files:  # a copy of exactly those files
        dest = tmp_path / path.relative_to(cache.PROJECT_ROOT)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)
    digest = cache.source_digest()
    assert cache.source_digest(tmp_path) == digest == cache.source_digest()  # unchanged code: the same digest
    model = tmp_path / "agentforge" / "scaling" / "model.py"
    text = model.read_bytes()
    assert text.count(b"std=0.02") == 1
    model.write_bytes(text.replace(b"std=0.02", b"std=0.03"))  # one byte: the embedding's init std
    edited = cache.source_digest(tmp_path)
    assert edited != digest
    settings = {"seed": 0}
    assert cache.cache_key("code", settings) == cache.cache_key("code", settings, digest)
    assert cache.cache_key("code", settings, edited) != cache.cache_key("code", settings, digest)


# -- equal parameter counts: refused up front ---------------------------------------------------------------
def test_sizes_with_equal_parameter_counts_are_refused_before_training(tmp_path):
    cfg = compose_cfg(["phase=scaling", "experiment=smoke", f"phase.presets.cpu={EQUAL}"], tmp_path)
    with pytest.raises(ConfigError, match=r"phase\.presets\.cpu: sizes 'a' and 'b' have the same total"):
        phase.sizes_of(cfg)
    proc = run_cli(["phase=scaling", "experiment=smoke", f"phase.presets.cpu={EQUAL}"], tmp_path)
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert proc.returncode != 0 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "phase.presets.cpu" in errors[0] and "d_model or n_layers" in errors[0]
    assert not (tmp_path / "outputs" / "artifacts" / "scaling_cache").exists()  # nothing was evaluated


# -- end to end, at the tiny settings with K = 2 ------------------------------------------------------------
@pytest.mark.slow  # trains the tiny sizes three times (~90 s on 2 cores); the unit tests above cover the keys
def test_cli_records_seeds_interval_and_axis(tmp_path):
    cli = [o for o in TINY_CLI if not o.startswith("phase.fitness.reference")]
    proc = run_cli(["phase=scaling", *cli, "phase.variant=matrix_mixer", "phase.fitness.reference=baseline",
                    "phase.seeds=2", "phase.trust.test_rows=16", "phase.trust.bootstrap=100"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    fitness = json.loads(next((tmp_path / "outputs" / "runs").glob("*/*/fitness.json")).read_text())
    seed = fitness["candidate_seeds"][0]  # the config's seed: the candidate trains at the first of the K
    assert fitness["fit_params"] == "total" and fitness["baseline_seeds"] == [seed, seed + 1]
    assert fitness["candidate_seed_count"] == 1 and fitness["test_improvement_ci_covers"] == "rows+seeds"
    assert len(fitness["test_baseline_fitness_by_seed"]) == 2 and fitness["test_baseline_seed_sd"] >= 0
    assert len(fitness["test_baseline_improvement_by_seed"]) == 2   # the README points readers to it
    assert fitness["test_baseline_seed_count"] == 2 and fitness["test_candidate_seed_count"] == 1
    low, high = fitness["test_improvement_ci95"]
    assert low <= fitness["test_improvement"] <= high and fitness["test_improvement_ci_df"] == 1
    assert "x-axis: total parameters (the tied embedding counted once): phase.fit_params=total" in proc.stdout
    assert f"baseline reference: mean of K=2 training seeds [{seed}, {seed + 1}]" in proc.stdout
    assert "covers rows+seeds" in proc.stdout


# -- the red team's no-op candidate: init luck is no longer significant -------------------------------------
SWAPPED = ("        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)\n"
           "        self.out = nn.Linear(d_model, d_model, bias=False)\n")


@pytest.mark.slow
def test_noop_candidate_interval_contains_zero_at_three_seeds(tmp_path):
    """baseline.py with its two nn.Linear constructions swapped: only the random init differs."""
    base = variant_path("baseline").read_text()
    assert SWAPPED in base
    a, b = SWAPPED.splitlines(keepends=True)
    path = tmp_path / "noop.py"
    path.write_text(base.replace(SWAPPED, b + a))
    settings = phase.settings_from_cfg(compose_cfg(
        ["phase=scaling", *[o for o in TINY_CLI if not o.startswith("phase.fitness.reference")],
         "phase.fitness.reference=baseline", "phase.seeds=3", "phase.trust.test_rows=64",
         "phase.train.steps=20", "phase.train.eval_every=10"], tmp_path))
    got = evaluator.evaluate(path, settings, cache_dir=tmp_path / "cache", timeout_s=300)
    assert got["valid"] == 1.0, got["error"]
    low, high = got["test_improvement_ci95"]
    assert got["test_improvement_ci_covers"] == "rows+seeds" and low < 0 < high, got
    assert np.isfinite(got["test_baseline_seed_sd"]) and got["test_baseline_seed_sd"] > 0
