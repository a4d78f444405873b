"""The differentiable KV-cache extension (agentforge/models/kv_cache.py, ``CognateDecoder.extend``): a
prefix filled in one pass and extended with the rest gives the full forward's logits and hidden states,
and a loss on the extended logits gives the full forward's parameter gradients; repeated rows equal."""
from __future__ import annotations

import pytest
import torch

from agentforge.models.kv_cache import fill
from tests.test_thought_cache import model_with_mixed_halting

torch.set_num_threads(1)

# window 6, memory chunk 4: 8 ends on a chunk boundary, 11 and 5 mid-chunk; 19 tokens cross the window
SPLITS = [(8,), (11,), (5, 7), (3, 1, 9)]
ABLATIONS = [{}, {"memory": False}, {"halting": False}, {"memory": False, "halting": False}, {"steps": 2}]


def assert_rel(actual, expected, tol=1e-5, name=""):
    """||actual - expected|| <= tol * ||expected||: gradients equal to float rounding, relative to their size
    (elementwise tolerances trip on the near-zero entries of large accumulated gradients)."""
    err, size = (actual - expected).norm().item(), expected.norm().item()
    assert err <= tol * size + 1e-12, f"{name}: relative error {err / max(size, 1e-30):.2e}"


def pieces(dec, ids, splits):
    """fill(prefix) then one extension per further piece; the logits and hidden states concatenated."""
    cuts = [0, *torch.tensor(splits).cumsum(0).tolist(), ids.shape[1]]
    outs = [fill(dec, ids[:, :cuts[1]])] + [dec.extend(ids[:, a:b]) for a, b in zip(cuts[1:-1], cuts[2:])]
    return torch.cat([o.logits for o in outs], 1), torch.cat([o.hidden for o in outs], 1)


@pytest.mark.parametrize("ablation", ABLATIONS)
@pytest.mark.parametrize("splits", SPLITS)
def test_fill_then_extend_gives_the_full_forward_logits(ablation, splits):
    model = model_with_mixed_halting()
    ids = torch.randint(0, 256, (3, 19))
    with model.ablate(**ablation), torch.no_grad():
        full = model(ids)
        if not ablation:
            assert len(full.halting_steps.unique()) > 1  # tokens really halt at different steps
        logits, hidden = pieces(model.kv_decoder(3), ids, splits)
    torch.testing.assert_close(logits, full.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(hidden, full.hidden, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("ablation", [{}, {"memory": False}, {"halting": False}])
@pytest.mark.parametrize("splits", [(8,), (11,), (5, 7)])
def test_gradients_through_the_cached_prefix_equal_the_full_forwards(ablation, splits):
    """A loss on every position's logits (the prefix's and the extensions'): its gradient w.r.t. every
    parameter reaches the prefix's computation through the cached keys, values and memory bank. In float64, so
    the comparison is not blurred by float32 rounding of sums that cancel (the scalar log_beta's)."""
    model = model_with_mixed_halting(1).double()
    ids = torch.randint(0, 256, (2, 19))
    weights = torch.randn(2, 19, 272, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    grads = []
    with model.ablate(**ablation):
        for run in ("full", "cached"):
            model.zero_grad()
            logits = model(ids).logits if run == "full" else pieces(model.kv_decoder(2), ids, splits)[0]
            (logits * weights).sum().backward()
            grads.append({name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    assert {"embed.weight", "blocks.0.attn.k_proj.weight", "lm_head.weight"} <= grads[0].keys()
    if ablation.get("memory") is not False:
        assert "memory.query.weight" in grads[0] and grads[0]["memory.query.weight"].abs().sum() > 0
    for name, g in grads[0].items():
        assert_rel(grads[1][name], g, 1e-9, name=name)


def test_only_the_extension_loss_still_reaches_the_prefix_parameters():
    """A loss on the extension alone: the gradient equals that of the same loss through the full forward,
    so the extension differentiates through the filled prefix's state (not just its own positions)."""
    model = model_with_mixed_halting(2).double()
    ids = torch.randint(0, 256, (2, 15))
    grads = []
    for run in ("full", "cached"):
        model.zero_grad()
        if run == "full":
            logits = model(ids).logits[:, 9:]
        else:
            dec = model.kv_decoder(2)
            fill(dec, ids[:, :9])
            logits = dec.extend(ids[:, 9:]).logits
        logits.logsumexp(-1).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert grads[0].abs().sum() > 0
    assert_rel(grads[1], grads[0], 1e-9)


def test_copies_with_repeated_rows_extend_as_the_repeated_batch_and_leave_the_original():
    model = model_with_mixed_halting(3)
    ids = torch.randint(0, 256, (2, 16))
    dec = model.kv_decoder(2)
    fill(dec, ids[:, :10])
    rep = dec.copy(repeat=3)
    detached = dec.copy(detach=True)
    with torch.no_grad():
        full = model(ids.repeat_interleave(3, 0))
    out = rep.extend(ids[:, 10:].repeat_interleave(3, 0))
    torch.testing.assert_close(out.logits, full.logits[:, 10:], atol=1e-5, rtol=1e-5)
    assert dec.pos == 10 and detached.pos == 10 and rep.pos == 16  # the original did not move
    plain = dec.extend(ids[:, 10:])
    torch.testing.assert_close(plain.logits.repeat_interleave(3, 0), out.logits, atol=1e-5, rtol=1e-5)
    for d, graph in ((dec, True), (detached, False)):  # the detached copy's state has no graph
        assert d.attn[0][0]["k"].requires_grad is graph and d.mem[-1]["keys"].requires_grad is graph


def test_extend_refuses_a_persistent_memory_and_positions_past_the_rope_table():
    model = model_with_mixed_halting(4)
    dec = model.kv_decoder(1)
    model.memory.persist = True
    with pytest.raises(ValueError, match="memory.persist"):
        dec.extend(torch.zeros(1, 3, dtype=torch.long))
    model.memory.persist = False
    with pytest.raises(ValueError, match="max_seq_len"):
        dec.extend(torch.zeros(1, 65, dtype=torch.long))


@pytest.mark.parametrize("b", [1, 2])
def test_branches_in_one_extension_equal_separate_extensions(b):
    """extend_branches: a 2-token branch (each row once) and a 5-token branch (each row 3 times) in one padded
    call give the logits of separate extensions of the repeated state, which equal the full forward's."""
    model = model_with_mixed_halting(5)
    ids, more = torch.randint(0, 256, (b, 10)), torch.randint(0, 256, (3 * b, 5))
    dec = model.kv_decoder(b)
    with torch.no_grad():
        fill(dec, ids)
        short, long = dec.extend_branches((ids[:, :2], 1), (more, 3))
        full_short = model(torch.cat([ids, ids[:, :2]], 1)).logits[:, 10:]
        full_long = model(torch.cat([ids.repeat_interleave(3, 0), more], 1))
    assert short.logits.shape == (b, 2, 272) and long.hidden.shape == (3 * b, 5, 32) and dec.pos == 10
    torch.testing.assert_close(short.logits, full_short, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(long.logits, full_long.logits[:, 10:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(long.hidden, full_long.hidden[:, 10:], atol=1e-5, rtol=1e-5)


def test_an_empty_extension_returns_empty_outputs_and_leaves_the_state():
    """extend() with T = 0 (e.g. extend_branches of zero-length branches: thought_length 0 and n_true 1) gives
    [B, 0, V] / [B, 0, D] and the decoder continues as if it had not been called."""
    model = model_with_mixed_halting(6)
    ids = torch.randint(0, 256, (2, 9))
    dec = model.kv_decoder(2)
    with torch.no_grad():
        fill(dec, ids[:, :5])
        empty = dec.extend(ids[:, 5:5])
        (branch,) = dec.extend_branches((ids[:, 5:5], 2))
        rest = dec.extend(ids[:, 5:])
        full = model(ids).logits[:, 5:]
    assert empty.logits.shape == (2, 0, 272) and empty.hidden.shape == (2, 0, 32) and branch.logits.shape == (4, 0, 272)
    assert dec.pos == 9
    torch.testing.assert_close(rest.logits, full, atol=1e-5, rtol=1e-5)


def test_prefill_serves_a_persistent_memory_position_by_position():
    """CognateDecoder.prefill with memory.persist (which extend refuses): the prompt fed one decoder step at a
    time from the persistent bank as it stands, giving the forward's last logits (the forward then writes the bank)."""
    model = model_with_mixed_halting(8)
    model.memory.persist = True
    ids = torch.randint(0, 256, (1, 11))
    with torch.no_grad():
        model(torch.randint(0, 256, (1, 12)))          # a bank written by an earlier call
        assert model.memory.filled.any()
        dec = model.kv_decoder(1)
        logits = dec.prefill(ids)
        full = model(ids).logits[:, -1]
    assert dec.pos == 11
    torch.testing.assert_close(logits, full, atol=1e-5, rtol=1e-5)


def test_a_copy_with_per_row_counts_extends_as_the_unevenly_repeated_batch():
    """copy(repeat=counts): row i repeated counts[i] times (multiple-choice scoring: one row per choice)."""
    model = model_with_mixed_halting(9)
    ids, counts = torch.randint(0, 256, (2, 14)), torch.tensor([1, 3])
    with torch.no_grad():
        dec = model.kv_decoder(2)
        fill(dec, ids[:, :9])
        out = dec.copy(repeat=counts).extend(ids[:, 9:].repeat_interleave(counts, 0))
        full = model(ids.repeat_interleave(counts, 0)).logits[:, 9:]
    assert out.logits.shape[0] == 4 and dec.pos == 9
    torch.testing.assert_close(out.logits, full, atol=1e-5, rtol=1e-5)
