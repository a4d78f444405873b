"""Behaviours of the Cognate model and its ablations that a mutation audit (2026-11-27) could change without any
test failing: each test here fails under the mutant named in its docstring, with an expected value derived by hand."""
from __future__ import annotations

import math

import pytest
import torch

from agentforge.models.ablation import ablations, halting_by_difficulty, recall_memory, token_scores
from agentforge.models.halting import halting_distribution, pondernet_loss
from tests.test_claims_core import tiny


def _rows(n=6, t=13, seed=0):
    return torch.randint(0, 40, (n, t), generator=torch.Generator().manual_seed(seed))


def test_halting_by_difficulty_ranks_tokens_by_their_one_step_loss():
    """"Harder tokens halt later" ranks tokens by their loss when the model runs ONE step; ranking them by the trained
    model's own (halted) loss is circular (mutant: ``base["loss"]`` in place of ``steps1``'s)."""
    torch.manual_seed(0)
    model = tiny(max_steps=3)
    with torch.no_grad():
        model.halt_head.weight.normal_(std=2.0)          # a halting head that varies by token
    rows = _rows()
    out = ablations(model, rows)
    steps, one = token_scores(model, rows)["steps"], token_scores(model, rows, steps=1)["loss"]
    expect = halting_by_difficulty(steps, one)
    circular = halting_by_difficulty(steps, token_scores(model, rows)["loss"])
    assert expect != circular                             # the two rankings differ on this model
    for k, v in expect.items():
        assert out[k] == pytest.approx(v)


def test_recall_delta_is_memory_off_minus_on_over_the_masked_positions_only():
    """``ablation/recall_no_memory_loss_delta`` = off − on (positive: the memory helps), each the mean over rows of the
    loss at the masked positions (mutants: the arguments swapped; the mask ignored)."""
    torch.manual_seed(0)
    model = tiny()
    rows = _rows(6, 33)                                   # two 16-token chunks: the second reads the first's writes
    mask = torch.zeros(rows.shape[0], rows.shape[1] - 1, dtype=torch.bool)
    mask[:, 25] = True                                    # one target a row, in the second chunk
    m = recall_memory(model, rows, mask)
    on, off = token_scores(model, rows)["loss"], token_scores(model, rows, memory=False)["loss"]
    delta = float((off[:, 25] - on[:, 25]).mean())
    assert abs(delta) > 1e-4                              # the memory changes these losses: the sign is visible
    assert m["ablation/recall_memory_on_loss"] == pytest.approx(float(on[:, 25].mean()), rel=1e-6)
    assert m["ablation/recall_no_memory_loss"] == pytest.approx(float(off[:, 25].mean()), rel=1e-6)
    assert m["ablation/recall_no_memory_loss_delta"] == pytest.approx(delta, abs=1e-6)


def test_token_scores_leaves_a_training_model_in_training_mode():
    model = tiny().train()
    token_scores(model, _rows(2))
    assert model.training


def test_lm_loss_is_the_halted_output_loss_when_tokens_halt_early():
    """lambda = 0.7 at step 1 of 2: the cumulative 0.7 >= 0.5, so every token halts at step 1 and ``lm_loss`` is step 1's
    loss, not the last step's (mutant: the last step's logits)."""
    model = tiny(max_steps=2).eval()
    with torch.no_grad():
        model.halt_head.weight.zero_()
        model.halt_head.bias.fill_(math.log(0.7 / 0.3))
    x, y = _rows(2, 6, 0), _rows(2, 6, 1)
    out = model(x, y)
    with torch.no_grad():
        e = model.embed(x)
        z1, _ = model._step(e, e, 6)
        l1 = torch.nn.functional.cross_entropy(model.lm_head(model.norm(z1)).flatten(0, 1), y.flatten())
    assert torch.all(out.halting_steps == 1) and out.lm_loss.item() == pytest.approx(l1.item(), rel=1e-5)


def test_a_token_halts_when_its_cumulative_probability_reaches_the_threshold_exactly():
    """Zero halting weights and bias: lambda = 0.5 exactly, the cumulative 0.5 reaches act_threshold 0.5 at step 1
    (mutant: ``>`` halts at step 2)."""
    model = tiny(max_steps=3).eval()
    with torch.no_grad():
        model.halt_head.weight.zero_()
        model.halt_head.bias.zero_()
    assert torch.all(model(_rows(2, 6)).halting_steps == 1)


def test_the_halting_gradient_by_hand():
    """lambda = (0.5, 0.5, 1), L = (3, 2, 1), beta = 0: loss = l1 L1 + (1 - l1) l2 L2 + (1 - l1)(1 - l2) L3, so
    d/dl1 = L1 - l2 L2 - (1 - l2) L3 = 1.5 and d/dl2 = (1 - l1)(L2 - L3) = 0.5 (mutant: the survival product detached
    gives 2.5)."""
    lam = torch.tensor([[0.5], [0.5], [1.0]], requires_grad=True)
    loss = pondernet_loss(halting_distribution(lam), torch.tensor([[3.0], [2.0], [1.0]]), torch.ones(1), 0.5, 0.0)
    loss.backward()
    assert loss.item() == pytest.approx(2.25)
    assert lam.grad.flatten().tolist()[:2] == pytest.approx([1.5, 0.5])


def test_no_grad_steps_at_or_above_max_steps_still_trains_the_last_step():
    """``no_grad_steps`` is clamped to max_steps - 1: the last recursion step always carries the backbone's gradient
    (mutant: unclamped, every step runs without gradients and only the halting head trains)."""
    model = tiny(max_steps=2, no_grad_steps=2).train()
    out = model(_rows(2, 6, 0), _rows(2, 6, 1))
    out.loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if n.startswith("blocks.")]
    assert grads and all(g is not None for g in grads) and any(float(g.abs().sum()) > 0 for g in grads)


def test_sampling_divides_the_logits_by_the_temperature(monkeypatch):
    """softmax(logits / T): logits [0, 1] at T = 0.5 sample with probabilities 1/(1+e^2), e^2/(1+e^2) = 0.119, 0.881
    (the tests sampled at T = 1 only, where multiplying agrees; evaluation samples at 0.8)."""
    from agentforge.models.generation import generate

    seen = []
    real = torch.multinomial
    monkeypatch.setattr(torch, "multinomial", lambda p, n, generator=None: seen.append(p.clone()) or real(p, n))
    generate(lambda ids: torch.tensor([[0.0, 1.0]]).expand(ids.shape[0], -1).unsqueeze(1),
             torch.zeros(1, 1, dtype=torch.long), 1, 8, temperature=0.5, use_cache=False)
    e2 = math.exp(2)
    torch.testing.assert_close(seen[0], torch.tensor([[1 / (1 + e2), e2 / (1 + e2)]]))


def test_the_gate_figures_are_the_gates_opening_and_the_reads_share_at_the_digits_and_elsewhere():
    """``gate_by_target``: with W_g = 0 and bias 2 the gate is sigmoid(2) = 0.8808 at every position (digits and
    elsewhere alike: difference 0); the read's share is |merged - h| / |h| (the MAG gate adds g * W_o r to h),
    recorded here from ``merge`` itself, averaged over the recursion steps, at the masked positions and at the other
    non-pad ones (mutants: the pad positions counted as "elsewhere"; one step's figure for the average; the digits'
    and elsewhere's masks swapped). Its hooks leave the model's outputs and hooks as they were."""
    from agentforge.models.ablation import gate_by_target
    from agentforge.models.memory import SurpriseMemory

    torch.manual_seed(0)
    model = tiny(max_steps=2)
    with torch.no_grad():
        model.memory.gate.weight.zero_()
        model.memory.gate.bias.fill_(2.0)
    pad = 39                                               # this tiny vocabulary's stand-in for the pad id
    rows = _rows(6, 29) % pad
    rows[:, 25:] = pad                                     # padding at the rows' ends: neither digits nor elsewhere
    mask = torch.zeros(rows.shape[0], rows.shape[1] - 1, dtype=torch.bool)
    mask[:, 18:22] = True                                  # "digits": in the second chunk, which reads the first's writes
    before = token_scores(model, rows)["loss"]
    shares, merge = [], SurpriseMemory.merge

    def recording(self, h, r):
        out = merge(self, h, r)
        shares.append(((out - h).norm(dim=-1) / h.norm(dim=-1)).detach())
        return out

    SurpriseMemory.merge = recording
    try:
        model.eval()
        with torch.no_grad():
            model(rows[:, :-1])
    finally:
        SurpriseMemory.merge = merge
    assert len(shares) == 2                                # both recursion steps ran (the halting rule: no early exit)
    share = torch.stack(shares).mean(0)
    other = ~mask & (rows[:, 1:] != pad)
    out = gate_by_target(model, rows, mask, pad_id=pad)
    g = 1 / (1 + math.exp(-2.0))
    assert out["ablation/recall_gate_digits"] == pytest.approx(g, abs=1e-6)
    assert out["ablation/recall_gate_other"] == pytest.approx(g, abs=1e-6)
    assert out["ablation/recall_gate_digits_minus_other_delta"] == pytest.approx(0.0, abs=1e-6)
    digits_share = float((share * mask).sum(1).div(mask.sum(1)).mean())
    other_share = float((share * other).sum(1).div(other.sum(1)).mean())
    assert abs(digits_share - other_share) > 1e-3          # the two figures differ here, so a swap is visible
    assert out["ablation/recall_read_share_digits"] == pytest.approx(digits_share, rel=1e-4)
    assert out["ablation/recall_read_share_other"] == pytest.approx(other_share, rel=1e-4)
    assert not any(m._forward_hooks for m in (model.memory.gate_in, model.memory.gate, model.memory.out))
    assert torch.equal(token_scores(model, rows)["loss"], before)
    assert "ablation/recall_gate_digits" in recall_memory(model, rows, mask)   # the recall check reports them
    assert float(out["ablation/recall_read_share_other"]) != pytest.approx(      # pad positions left out
        float((share * (~mask)).sum(1).div((~mask).sum(1)).mean()), rel=1e-4)



def test_the_gate_figures_cover_every_step_of_every_row_whatever_halting_would_stop():
    """With halting on, a recursion step runs only the rows that still have a running token, so the steps' gate
    tensors can differ in batch size (the m2 runs' scoring crashed on it) or stop early; ``gate_rows`` measures with
    halting off: every row through all ``max_steps`` steps (here halting would stop every row after step 1), and a
    batch's figures equal each row's measured alone."""
    from agentforge.models.ablation import gate_rows

    torch.manual_seed(0)
    model = tiny(max_steps=3)
    with torch.no_grad():
        model.halt_head.weight.zero_()
        model.halt_head.bias.fill_(10.0)                  # every token halts at step 1
    rows = _rows(8, 29)
    mask = torch.zeros(rows.shape[0], rows.shape[1] - 1, dtype=torch.bool)
    mask[:, 18:22] = True
    seen = []
    hook = model.memory.gate.register_forward_hook(lambda m, i, o: seen.append(o.shape[0]) and None)
    model.eval()
    with torch.no_grad():
        model(rows[:, :-1])
    assert seen == [8]                                     # halting on: one step
    seen.clear()
    both = gate_rows(model, rows, mask, pad_id=-1)
    assert seen == [8, 8, 8]                               # the measurement: every row, every step
    hook.remove()
    alone = [gate_rows(model, rows[i: i + 1], mask[i: i + 1], pad_id=-1) for i in range(len(rows))]
    for k, v in both.items():
        assert torch.allclose(v, torch.cat([a[k] for a in alone]), atol=1e-5), k
