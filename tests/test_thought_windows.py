"""Quiet-STaR step 2's held-out measurement: anti-theater windows one per held-out document, the phase.rl size checks, and the
thought-free held-out accuracies saying so."""
from __future__ import annotations

import pytest
import torch

from agentforge.errors import ConfigError
from agentforge.reasoning import measures
from agentforge.reasoning.rl import check_sizes, document_windows, sample_windows, seen_windows, window_capacity


def test_evaluation_windows_take_one_window_per_document_without_replacement():
    """Windows of one stream that shared no token still came from the same documents (64 windows, 39 clusters linked
    by a shared document): one window per document, each inside it, and too few documents is an error."""
    docs = [torch.arange(100 * i, 100 * i + length) for i, length in enumerate([30, 12, 11, 40, 12, 25])]
    w = document_windows(docs, 5, 10, 2, torch.Generator().manual_seed(0))
    assert w.shape == (5, 12)
    assert sorted(int(r[0]) // 100 for r in w) == [0, 1, 3, 4, 5]           # five documents, each once; not the short one
    assert all(torch.equal(r, torch.arange(int(r[0]), int(r[0]) + 12)) for r in w)   # inside its document
    assert window_capacity(docs, 10, 2) == 5
    with pytest.raises(ValueError, match="6 windows of 12 tokens need 6 held-out documents that long with a window "
                                         "not in the training stream; there are 5"):
        document_windows(docs, 6, 10, 2, torch.Generator().manual_seed(0))
    # training windows are drawn as before, with replacement: 40 sequences of 50 tokens from 1000 tokens is fine
    assert sample_windows(torch.arange(1000), 40, 50, 1, 10, 2, torch.Generator().manual_seed(0)).shape == (40, 12)


def test_a_window_that_occurs_in_the_training_stream_is_never_a_held_out_one():
    """By hand: document 0's only window (tokens 0..11) is in the training stream, so the document is passed over;
    document 3 (40 tokens, 29 windows) keeps the 28 that are not, whatever the draw."""
    docs = [torch.arange(0, 12), torch.arange(100, 112), torch.arange(200, 211), torch.arange(300, 340)]
    seen = seen_windows(torch.cat([torch.arange(0, 12), torch.arange(300, 312)]), 12)
    assert window_capacity(docs, 10, 2, seen) == 2 and window_capacity(docs, 10, 2) == 3
    for g in range(30):
        w = document_windows(docs, 2, 10, 2, torch.Generator().manual_seed(g), seen)
        assert sorted(int(r[0]) // 100 for r in w) == [1, 3]
        assert not any(torch.equal(r, torch.arange(300, 312)) for r in w)
    with pytest.raises(ValueError, match="there are 2"):
        document_windows(docs, 3, 10, 2, torch.Generator().manual_seed(0), seen)


def test_no_default_held_out_window_occurs_word_for_word_in_the_rl_training_stream():
    """The phase's default sizes and seed (42; windows drawn with seed 43): distinct problems share template text, so
    without the check 12 of the 64 windows occurred, true tokens included, in the training stream (an audit)."""
    from agentforge.data.tokenizer import ByteTokenizer
    from agentforge.phases import quietstar as qs

    tok = ByteTokenizer()
    train, held = qs._stream(tok, 42, "train", qs.TRAIN_DOCS), qs._documents(tok, 42, "test", qs.HELDOUT_DOCS)
    runs = train.unfold(0, 36, 1)   # every 36-token run of the stream, compared directly

    def in_training(w):
        return bool((runs == w).all(1).any())

    old = document_windows(held, 64, 32, 4, torch.Generator().manual_seed(43))
    new = document_windows(held, 64, 32, 4, torch.Generator().manual_seed(43), seen_windows(train, 36))
    assert sum(map(in_training, old)) >= 10
    assert not any(map(in_training, new))


def test_check_sizes_names_the_phase_rl_key():
    ok = {"context_len": 32, "thought_length": 12, "n_true": 4, "seq_len": 64, "eval_windows": 64}
    docs = [torch.zeros(64, dtype=torch.long)] * 64
    check_sizes(ok, 512, docs)
    for bad, match in [({"thought_length": 500}, r"phase\.rl\.context_len \(32\) \+ phase\.rl\.thought_length \(500\)"),
                       ({"seq_len": 5000}, r"phase\.rl\.seq_len=5000 must be below"),
                       ({"eval_windows": 65}, r"phase\.rl\.eval_windows=65 windows .* need 65 documents that "
                                              r"hold one; 64 of")]:
        with pytest.raises(ConfigError, match=match):
            check_sizes({**ok, **bad}, 512, docs)


def test_held_out_accuracies_say_they_are_answered_without_thoughts():
    check = {"gsm8k_correct": [1, 0, 1, 1], "arc_correct": [0, 1, 0, 0]}
    summary = {"rl/final_gsm8k_accuracy": 0.75, "rl/final_arc_accuracy": 0.25, "rl/improvement_over_baked": 0.25,
               **measures.accuracy_evidence(check), **measures.improvement_evidence([1, 0, 1, 1], [0, 0, 1, 1])}
    for k in ("rl/final_gsm8k_accuracy_test", "rl/final_arc_accuracy_test", "rl/improvement_over_baked_test"):
        assert "answered directly, without thoughts" in summary[k], k
    line = measures.accuracy_line(summary)
    assert line.startswith("held-out accuracy, answered directly, without thoughts") and "not what thinking adds" in line
    assert "GSM8K-format 0.750 [" in line and "n=4" in line and "vs the baked model" in line


def test_the_thinking_cost_line_says_its_ratio_is_the_median_of_per_round_ratios():
    """The audit's line read 93.7 vs 17.4 ms/token (5.4x) beside a 9.6x ratio: the ratio is the median of the per-round
    ratios (``round_ratios``), the ms figures the medians of each side; here 95.0 / 12.5 = 7.6 vs 9.6x. The line
    names each figure for what it is."""
    import statistics

    from agentforge.evals.compare import round_ratios

    with_, without = [93.7, 90.0, 100.0, 95.0, 120.0], [17.4, 9.0, 10.0, 30.0, 12.5]   # ms per token, per round
    ratio, ci, n = round_ratios(with_, without)
    assert ratio == pytest.approx(9.6) and statistics.median(with_) / statistics.median(without) == pytest.approx(7.6)
    line = measures.thinking_cost_line({"rl/inference_time_ms": statistics.median(with_),
                                        "rl/inference_time_ms_without_thoughts": statistics.median(without),
                                        "rl/thinking_cost_ratio": ratio, "rl/thinking_cost_ratio_ci95": ci,
                                        "rl/thinking_cost_ratio_n": n})
    assert line.startswith("thinking cost: median 95.0 ms/token with a thought vs median 12.5 without; "
                           "median of per-round ratios 9.6x, 95% CI [") and line.endswith(", 5 interleaved rounds")


def test_the_true_tokens_are_the_windows_last_n_and_score_as_such():
    """``ThoughtBatch.true``: the n tokens after the context, which every reward, likelihood gain and theater figure
    scores (a slice one token early survived the mutation audit: the last context token and n - 1 true ones)."""
    from agentforge.reasoning.thoughts import ThoughtBatch

    v, z = 10, torch.zeros(1)
    without = torch.full((1, 2, v), -30.0)
    without[0, 0, 7] = without[0, 1, 8] = 30.0   # certain of 7 then 8
    batch = ThoughtBatch(windows=torch.tensor([[5, 6, 7, 8]]), thoughts=z, thought_logp=z, mixed_logits=z,
                         without_logits=without, mix_weight=z, base_logits=z, with_inputs=z)
    assert batch.true.tolist() == [[7, 8]]
    assert batch.true_logp_without().abs().max() < 1e-6   # log p = 0: the right tokens were scored


def test_sampling_thoughts_runs_the_model_in_eval_mode_and_restores_its_mode():
    """Sampling must not write the long-term memory nor record QK-clip's training statistics: every forward of
    ``sample_thoughts`` sees ``training`` False, and a model in training mode is left in it."""
    from agentforge.models import CognateConfig, CognateModel
    from agentforge.reasoning.thoughts import sample_thoughts

    model = CognateModel(CognateConfig(vocab_size=32, d_model=16, n_layers=1, n_heads=2, ffn_hidden=32,
                                       max_seq_len=32)).train()
    modes = []
    model.register_forward_pre_hook(lambda m, args: modes.append(m.training))
    sample_thoughts(model, torch.tensor([[1, 2, 3]]), 3, use_cache=False, generator=torch.Generator().manual_seed(0))
    assert modes and not any(modes) and model.training
