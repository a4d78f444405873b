"""Quiet-STaR step 2's held-out measurement: disjoint anti-theater windows, the phase.rl size checks, and the
thought-free held-out accuracies saying so."""
from __future__ import annotations

import pytest
import torch

from agentforge.errors import ConfigError
from agentforge.reasoning import measures
from agentforge.reasoning.rl import check_sizes, sample_windows


def test_disjoint_windows_are_drawn_without_replacement_and_error_when_the_stream_is_too_short():
    stream = torch.arange(1000)
    w = sample_windows(stream, 20, 50, 1, 10, 2, torch.Generator().manual_seed(0), disjoint=True)
    starts = sorted(w[:, 0].tolist())
    assert len(starts) == 20 and all(b - a >= 12 for a, b in zip(starts, starts[1:]))
    with pytest.raises(ValueError, match="21 disjoint sequences of 50 tokens do not fit the stream of 1000"):
        sample_windows(stream, 21, 50, 1, 10, 2, torch.Generator().manual_seed(0), disjoint=True)
    # training windows are drawn as before, with replacement: 40 sequences of 50 tokens from 1000 tokens is fine
    assert sample_windows(stream, 40, 50, 1, 10, 2, torch.Generator().manual_seed(0)).shape == (40, 12)


def test_check_sizes_names_the_phase_rl_key():
    ok = {"context_len": 32, "thought_length": 12, "n_true": 4, "seq_len": 64, "eval_windows": 64}
    check_sizes(ok, 512, 64 * 64)
    for bad, match in [({"thought_length": 500}, r"phase\.rl\.context_len \(32\) \+ phase\.rl\.thought_length \(500\)"),
                       ({"seq_len": 5000}, r"phase\.rl\.seq_len=5000 must be below"),
                       ({"eval_windows": 65}, r"phase\.rl\.eval_windows=65 .* \(at most 64\)")]:
        with pytest.raises(ConfigError, match=match):
            check_sizes({**ok, **bad}, 512, 64 * 64)


def test_held_out_accuracies_say_they_are_answered_without_thoughts():
    check = {"gsm8k_correct": [1, 0, 1, 1], "arc_correct": [0, 1, 0, 0]}
    summary = {"rl/final_gsm8k_accuracy": 0.75, "rl/final_arc_accuracy": 0.25, "rl/improvement_over_baked": 0.25,
               **measures.accuracy_evidence(check), **measures.improvement_evidence([1, 0, 1, 1], [0, 0, 1, 1])}
    for k in ("rl/final_gsm8k_accuracy_test", "rl/final_arc_accuracy_test", "rl/improvement_over_baked_test"):
        assert "answered directly, without thoughts" in summary[k], k
    line = measures.accuracy_line(summary)
    assert line.startswith("held-out accuracy, answered directly, without thoughts") and "not what thinking adds" in line
    assert "GSM8K-format 0.750 [" in line and "n=4" in line and "vs the baked model" in line
