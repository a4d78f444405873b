"""EvoMerge's test data and fitness terms: the FLOPs speed term on the data's own rows, and test rows that are the
paired tests' independent units (no row repeated)."""
from __future__ import annotations

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
