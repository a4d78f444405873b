"""Phase 1 diversity (``evals.diversity``): the figure by hand, its bootstrap CI, the per-row features and the
threshold row decided from the CI."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from agentforge.evals.diversity import (
    FEATURES,
    MEAN_KEYS,
    PER_ROW_KEY,
    ROWS_DIGEST,
    diversity,
    diversity_ci,
    per_row_features,
    phase1_diversity,
)


def test_diversity_by_hand():
    """Every feature 1, 2, 3 (scaled): CV = pop. std / mean = sqrt(2/3) / 2 for each, so the mean is the same."""
    means = np.array([[1.0, 0.1, 10.0], [2.0, 0.2, 20.0], [3.0, 0.3, 30.0]])
    assert diversity(means) == pytest.approx(math.sqrt(2 / 3) / 2)
    assert diversity(np.ones((3, 3))) == 0.0
    # a feature that is 0 in every model (no memory used by any) counts as CV 0, as a mean of 1e-9 in all of them does
    # (it was left out: 1.5x the figure, an audit); a non-finite value gives no figure
    zero = np.array([[1.0, 0.0, 1.0], [3.0, 0.0, 1.0], [2.0, 0.0, 1.0]])
    assert diversity(zero) == pytest.approx(math.sqrt(2 / 3) / 2 / 3)
    assert diversity(zero + np.array([0.0, 1e-9, 0.0])) == pytest.approx(diversity(zero))
    assert math.isnan(diversity(np.where(zero == 3.0, np.nan, zero)))


def _rows(halting, usage, mflops):
    return {"halting_steps": list(halting), "ltm_usage": list(usage), "mflops_per_token": list(mflops)}


def test_ci_collapses_on_constant_rows_and_widens_with_noise():
    const = [_rows([h] * 40, [0.5] * 40, [1.0] * 40) for h in (1.0, 2.0, 3.0)]
    lo, hi = diversity_ci(const)
    point = diversity(np.array([[1.0, 0.5, 1.0], [2.0, 0.5, 1.0], [3.0, 0.5, 1.0]]))
    assert lo == pytest.approx(point) and hi == pytest.approx(point)
    rng = np.random.default_rng(1)
    noisy = [_rows(h + rng.normal(0, 0.5, 40), [0.5] * 40, [1.0] * 40) for h in (1.0, 2.0, 3.0)]
    lo, hi = diversity_ci(noisy)
    est = diversity(np.array([[np.mean(r["halting_steps"]), 0.5, 1.0] for r in noisy]))
    assert lo < est < hi and hi - lo > 0.02
    assert diversity_ci(noisy, seed=3) != (lo, hi)  # a different resampling, not a fixed answer


def test_models_measured_on_the_same_rows_are_resampled_together():
    """Three copies of one model on the same rows: diversity 0, and the paired CI is [0, 0]. Resampled apart (as
    before, and still for rows that differ) the CI lay wholly above the figure it bounds."""
    rng = np.random.default_rng(0)
    one = _rows(1.0 + rng.normal(0, 0.2, 32), 0.5 + rng.normal(0, 0.05, 32), [1.0] * 32)
    same = [{**one, ROWS_DIGEST: "abc"} for _ in range(3)]
    out = phase1_diversity(_metrics(same))
    assert out["phase1/diversity"] == 0.0 and out["phase1/diversity_ci95"] == pytest.approx([0.0, 0.0], abs=1e-12)
    assert "paired" in out["phase1/diversity_test"]
    apart = phase1_diversity(_metrics([{**one, ROWS_DIGEST: d} for d in "abc"]))
    assert apart["phase1/diversity_ci95"][0] > 0.0 and "apart" in apart["phase1/diversity_test"]


def test_per_row_features_record_which_rows_they_measured():
    from agentforge.models.cognate import CognateConfig, CognateModel

    torch.manual_seed(0)
    model = CognateModel(CognateConfig(d_model=32, n_layers=1, n_heads=2, ffn_hidden=64, window=16, max_steps=2,
                                       max_seq_len=64))
    rows = torch.randint(0, 256, (3, 17))
    a, b = per_row_features(model, rows), per_row_features(model, rows.clone())
    assert a[ROWS_DIGEST] == b[ROWS_DIGEST] != per_row_features(model, rows.flip(0))[ROWS_DIGEST]


def _metrics(mid_rows):
    out = []
    for rows in mid_rows:
        m = {k: float(np.mean(rows[f])) for k, f in zip(MEAN_KEYS, FEATURES)}
        out.append({**m, PER_ROW_KEY: rows})
    return out


def test_threshold_row_is_decided_from_the_ci(tmp_path):
    """Halting 1 / 3 / 5 on 40 rows each, tight: diversity ≈ (0.544 + 0 + 0) / 3 = 0.181 < 0.3 with the whole
    CI below → FAIL; far apart (1 / 4 / 16) → PASS; with noisy rows straddling 0.3 → INCONCLUSIVE; below MIN_N
    rows per model → INCONCLUSIVE whatever the CI."""
    from agentforge.pipeline.thresholds import threshold_rows

    rng = np.random.default_rng(0)

    def verdict_for(levels, sd, n=40):
        root = tmp_path / f"{levels}-{sd}-{n}"
        for mid, rows in zip((1, 2, 3), _metrics([_rows(h + rng.normal(0, sd, n), [0.5] * n, [1.0] * n)
                                                  for h in levels])):
            d = root / "cognate" / f"model{mid}"
            d.mkdir(parents=True)
            (d / "metrics.json").write_text(json.dumps(rows))
        (row,) = threshold_rows({}, root)
        assert row[1] == "phase1/diversity" and f"n={n}, 95% CI [" in row[4]
        return row[4].split(" (")[0]

    assert verdict_for((1.0, 3.0, 5.0), 0.05) == "FAIL"
    out = phase1_diversity(_metrics([_rows([h] * 40, [0.5] * 40, [1.0] * 40) for h in (1.0, 2.0, 3.0)]))
    # the population SD decides; the report states the sample-SD figure, sqrt(3/2) times it, beside it
    assert f"with the sample SD: {out['phase1/diversity'] * math.sqrt(1.5):.3f}" in out["phase1/diversity_test"]
    assert verdict_for((1.0, 4.0, 16.0), 0.05) == "PASS"
    assert verdict_for((1.0, 1.9, 3.4), 4.0) == "INCONCLUSIVE"
    assert verdict_for((1.0, 4.0, 16.0), 0.05, n=10) == "INCONCLUSIVE"


def test_phase1_diversity_without_per_row_features_has_no_ci():
    ms = [{k: float(i + 1) for k in MEAN_KEYS} for i in range(3)]
    out = phase1_diversity(ms)
    assert set(out) == {"phase1/diversity"}
    assert phase1_diversity(ms[:2]) == {}


def test_per_row_features_average_to_the_batched_held_out_pass():
    """The model-level figures the Cognate phase reports (one batched pass) are the means of the per-row ones."""
    from agentforge.models.cognate import CognateConfig, CognateModel
    from agentforge.phases.cognate import held_out_pass

    torch.manual_seed(0)
    model = CognateModel(CognateConfig(d_model=32, n_layers=1, n_heads=2, ffn_hidden=64, window=16, max_steps=3,
                                       max_seq_len=64))
    rows = torch.randint(0, 256, (12, 49))
    halting, usage, mflops = held_out_pass(model, rows, batch_size=5)
    per = per_row_features(model, rows)
    assert all(len(per[f]) == 12 for f in FEATURES)
    assert np.mean(per["halting_steps"]) == pytest.approx(float(halting.mean()), rel=1e-6)
    assert np.mean(per["ltm_usage"]) == pytest.approx(usage, rel=1e-6)
    assert np.mean(per["mflops_per_token"]) == pytest.approx(mflops, rel=1e-6)
    assert len(set(per["halting_steps"])) > 1  # rows differ: there is something to resample


def test_memory_usage_counts_rows_that_halted_wholly_at_the_first_step():
    """A batch whose rows halt at different steps: the rows that stopped at step 1 skip the later steps, so the
    memory's last call saw only the others; the figure is each row's fill after its own last step. It read
    0.71875 against the per-row 0.73177 here before (10 of 12 rows halting wholly at step 1, batches of 6)."""
    from agentforge.models.cognate import CognateConfig, CognateModel
    from agentforge.phases.cognate import held_out_pass

    torch.manual_seed(2)
    model = CognateModel(CognateConfig(d_model=32, n_layers=1, n_heads=2, ffn_hidden=64, window=16, max_steps=3,
                                       max_seq_len=64, halt_bias_init=0.3, surprise_threshold=0.95, ltm_max_writes=16,
                                       ltm_slots=64))
    rows = torch.randint(0, 256, (12, 49))
    _, usage, mflops = held_out_pass(model, rows, batch_size=6)
    per = per_row_features(model, rows)
    assert 0 < sum(h == 1.0 for h in per["halting_steps"]) < 12   # some rows halt wholly at step 1, some do not
    assert np.mean(per["ltm_usage"]) == pytest.approx(usage, rel=1e-6)
    # phase1_diversity's stated exception: the batched pass runs the halting head on the halted rows too
    assert (round(mflops, 5), round(float(np.mean(per["mflops_per_token"])), 5)) == (0.06831, 0.06826)


def test_the_model_comparison_table_leaves_out_models_trained_with_other_settings(tmp_path, capsys):
    """A pipeline rerun with changed settings retrains model1 while model2 and model3 are still the old run's: the
    table showed them beside the new model1 unlabelled. Only models with this run's shared settings are shown."""
    import json

    from agentforge.phases.cognate import SHARED_KEY, diversity_table, shared_settings
    from agentforge.tracking.tracker import Tracker
    from tests.conftest import compose_cfg

    cfg = compose_cfg(["phase=cognate", "model=m1"], tmp_path)
    changed = compose_cfg(["phase=cognate", "model=m2", "phase.steps_per_epoch=4"], tmp_path)
    assert shared_settings(cfg) == shared_settings(compose_cfg(["phase=cognate", "model=m3"], tmp_path))
    assert shared_settings(changed) != shared_settings(cfg)
    root = tmp_path / "cognate"
    figures = {"diversity/avg_halting_steps": 2.0, "diversity/ltm_usage": 0.5, "diversity/inference_time_ms": 3.0,
               "final/gsm8k_accuracy": 0.1}
    for mid, shared in ((1, shared_settings(cfg)), (2, shared_settings(changed)), (3, shared_settings(cfg))):
        (root / f"model{mid}").mkdir(parents=True)
        (root / f"model{mid}" / "metrics.json").write_text(json.dumps({**figures, SHARED_KEY: shared}))
    assert diversity_table(Tracker([], tmp_path / "run"), root, shared_settings(cfg)) == [1, 3]
    assert "leaves out model2" in capsys.readouterr().out
    table = (tmp_path / "run" / "tables" / "diversity__model_comparison.csv").read_text()
    assert "Model 1" in table and "Model 3" in table and "Model 2" not in table
