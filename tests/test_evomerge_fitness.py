"""EvoMerge's test data and fitness terms: the FLOPs speed term on the data's own rows, test rows that are the
paired tests' independent units (no row repeated), ``measure``'s loss and perplexity cap, and the test improvement's
point and percentile CI (``heldout.fitness_improvement_ci``) on hand-derived cases."""
from __future__ import annotations

import math

import pytest
import torch

from agentforge.data.tokenizer import ByteTokenizer
from agentforge.merge import fitness, heldout
from tests.test_evomerge import _data, _tiny_models


def test_the_flops_term_is_counted_on_the_datas_own_rows():
    """``measure``'s FLOPs per token are the forward pass over the data's rows (the selection rows, or the test rows),
    counted during its perplexity pass: equal to ``forward_flops`` and to a direct count; two data sets whose rows
    differ (16 tokens here against 8 there: attention per token grows with length) give different figures. They were
    counted on one fixed batch of random ids of [speed_batch, speed_seq_len], the same for selection and test."""
    from agentforge.evals.flops import count_flops

    model = _tiny_models(1)[0]
    short, long = _data(0), _data(1)
    long.rows = torch.randint(0, 256, (6, 9), generator=torch.Generator().manual_seed(3))
    got = []
    for d in (short, long):
        m = fitness.measure(model, ByteTokenizer(), d)
        with torch.no_grad():   # as measured (with autograd the memory's read takes another path)
            direct = count_flops(lambda: model(d.rows[:, :-1]), model)
        assert m["flops_per_token"] * d.rows[:, :-1].numel() == pytest.approx(direct, rel=1e-12)
        assert fitness.forward_flops(model, d) == direct
        got.append(m["flops_per_token"])
    assert got[0] != got[1]


def test_repeated_test_rows_are_dropped_with_the_selection_overlap():
    """Short rows of distinct templated problems can be equal (an audit: 48 test rows holding 45 distinct at
    seq_len 16); a later copy of a test row is removed like a row also in the selection set, and counted."""
    sel, test = _data(0), _data(1)
    rows = test.rows.clone()
    rows[3], rows[5] = rows[1], sel.rows[0]          # a repeat within the test rows, and one of the selection set
    test.rows = rows
    kept, overlap, repeats = heldout.disjoint_from(test, sel)
    assert (overlap, repeats) == (1, 1) and len(kept.rows) == 4   # counted apart: a repeat is no selection overlap
    assert len({r.numpy().tobytes() for r in kept.rows}) == 4
    assert torch.equal(kept.rows, rows[[0, 1, 2, 4]])
    # a selection row copied twice into the test rows is overlap both times (a leak each), not overlap then a repeat
    twice = _data(1)
    twice.rows = rows.clone()
    twice.rows[2] = twice.rows[4] = sel.rows[1]
    assert heldout.disjoint_from(twice, sel)[1:] == (3, 1)   # rows 2, 4 and 5 are the selection's; row 3 repeats row 1
    # the phase's test figures carry both counts (final/test_excluded_overlap, final/test_excluded_repeats)
    m = heldout.compare_on_test(_tiny_models(), _tiny_models(1)[0], ByteTokenizer(), test, sel,
                                {"perplexity": 0.4, "accuracy": 0.3, "speed": 0.2, "memory": 0.1}, "flops",
                                n_resamples=200, comparator=0)["metrics"]
    assert (m["final/test_excluded_overlap"], m["final/test_excluded_repeats"], m["final/test_rows"]) == (1, 1, 4)


# -- measure: the loss is the mean row loss, the perplexity capped at exp(50) ------------------------------------

def _measure_with_row_losses(monkeypatch, row_losses):
    """``fitness.measure`` of a tiny linear layer whose row losses are ``row_losses`` (lm_metrics and the timer
    stubbed: only the arithmetic on the row losses runs)."""
    monkeypatch.setattr(fitness.tasks, "lm_metrics", lambda model, rows: {"row_losses": list(row_losses)})
    monkeypatch.setattr(fitness, "timed", lambda model, yardstick, data: (1.0, 1.0))
    data = fitness.EvalData(rows=torch.zeros(len(row_losses), 5, dtype=torch.long))
    return fitness.measure(torch.nn.Linear(2, 2), ByteTokenizer(), data)


def test_measured_loss_is_the_mean_of_the_row_losses(monkeypatch):
    """Row losses [1, 1, 4]: loss = (1 + 1 + 4) / 3 = 2.0 (the median would give 1.0), perplexity e^2."""
    m = _measure_with_row_losses(monkeypatch, [1.0, 1.0, 4.0])
    assert m["loss"] == 2.0 and m["perplexity"] == pytest.approx(math.exp(2.0))


def test_measured_perplexity_is_capped_at_exp_50(monkeypatch):
    """A diverged model (row losses 800 nats): perplexity exp(min(800, 50)) = exp(50), not an OverflowError from
    math.exp(800); the loss itself is kept."""
    m = _measure_with_row_losses(monkeypatch, [800.0, 800.0])
    assert m["loss"] == 800.0 and m["perplexity"] == math.exp(50.0)


def test_weights_must_have_a_positive_sum():
    """``check_weights``: {"perplexity": 0} sums to 0, no term weighs anything: a ValueError, not a 0/0 later."""
    with pytest.raises(ValueError, match="positive sum"):
        fitness.check_weights({"perplexity": 0})
    assert fitness.check_weights({"perplexity": 2, "speed": 2}) == 4


# -- the test improvement's point and CI by hand ------------------------------------------------------------------

REF = fitness.Reference(perplexity=1.0, accuracy=0.5, tokens_per_s=1.0, speed_ratio=1.0, memory_mb=1.0,
                        flops_per_token=1.0, acc_floor=0.25)


def _scores(row_losses, correct=(), flops_per_token=1.0):
    """One model's test measurement as ``compare_on_test`` passes it (speed and memory terms at the reference)."""
    return {"row_losses": list(row_losses), "correct": list(correct), "flops_per_token": flops_per_token,
            "speed_ratio": 1.0, "memory_mb": 1.0, "perplexity": math.exp(sum(row_losses) / len(row_losses)),
            "accuracy": sum(correct) / len(correct) if correct else 0.0}


def test_equal_answers_but_different_row_losses_still_get_a_bootstrap_ci():
    """Same 0/1 answers, different row losses: not a point distribution (the guard needs rows AND answers equal).
    Mean losses 1.0 (champion) and 1.05, default weights: point = 100 (e^(0.4 * 0.05) - 1) = 2.020 %; the row
    resampling gives a CI around it (about [-12.2, 16.2]), where the zero-width [2.02, 2.02] would claim certainty."""
    champ = _scores([0.5, 1.0, 1.5, 1.0], [1, 0, 0, 1])
    best = _scores([1.0, 1.0, 1.0, 1.2], [1, 0, 0, 1])
    point, ci = heldout.fitness_improvement_ci(champ, best, REF, fitness.DEFAULT_WEIGHTS, "flops", n_resamples=2000)
    assert point == pytest.approx(100 * math.expm1(0.4 * 0.05))
    assert ci[0] < point < ci[1] and ci[1] - ci[0] > 10


def test_improvement_normalises_weights_that_do_not_sum_to_one():
    """Weights {perplexity: 2, speed: 2} act as 0.5 each: mean losses 0.95 against 1.0, FLOPs per token 0.5 against 1,
    no questions: point = 100 (e^(0.5 * 0.05 + 0.5 ln 2) - 1) = 45.00 % (unnormalised: 100 (4 e^0.1 - 1) = 342 %)."""
    champ, best = _scores([0.9, 1.0], flops_per_token=0.5), _scores([1.0, 1.0])
    point, _ = heldout.fitness_improvement_ci(champ, best, REF, {"perplexity": 2, "speed": 2}, "flops",
                                              n_resamples=200)
    assert point == pytest.approx(100 * math.expm1(0.5 * 0.05 + 0.5 * math.log(2)))
    assert point == pytest.approx(45.00145, abs=1e-4)


def test_improvement_ci_is_the_percentile_bootstrap_by_hand():
    """Champion row losses [1]*9 + [0], comparator [1]*10, perplexity only: a resample with k zero-loss rows gives
    100 (e^(k/10) - 1), k ~ Bin(10, 0.1): P(k = 0) = 0.349 > 0.025 and P(k <= 2) = 0.930 < 0.975 <= P(k <= 3) = 0.987,
    so the percentile CI is exactly [0, 100 (e^0.3 - 1)] = [0, 34.99]; the basic bootstrap (2 point - percentiles,
    point 10.52) would give [-13.96, 21.03]."""
    point, ci = heldout.fitness_improvement_ci(_scores([1.0] * 9 + [0.0]), _scores([1.0] * 10), REF,
                                               {"perplexity": 1}, "flops")
    assert point == pytest.approx(100 * math.expm1(0.1))
    assert ci[0] == 0.0 and ci[1] == pytest.approx(100 * math.expm1(0.3))
