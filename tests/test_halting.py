"""The Cognate model's halting: PonderNet's distribution, prior and loss by hand, the backbone's training
whatever the halting head says, the halting head's input, the ablation switches, the non-inferiority test
on the declared margin, halting by difficulty and by task (moved from test_mechanisms.py)."""
from __future__ import annotations

import math

import pytest
import torch

from agentforge.models.ablation import ablations, computation_rows, halting_by_difficulty, halting_by_task
from agentforge.models.halting import geometric_prior, gibbs_halting, halting_distribution, pondernet_loss
from tests.test_mechanisms import tiny

# -- halting -----------------------------------------------------------------------------------------------

def test_pondernet_distribution_and_prior_by_hand():
    """lambda = (0.5, 0.5, 1): p = (0.5, 0.25, 0.25); the truncated geometric prior with 0.5 is the same."""
    p = halting_distribution(torch.tensor([0.5, 0.5, 1.0]))
    assert torch.allclose(p, torch.tensor([0.5, 0.25, 0.25]))
    assert torch.allclose(geometric_prior(0.5, 3), p)
    assert math.isclose(float(geometric_prior(0.3, 6).sum()), 1.0, rel_tol=1e-6)


def test_pondernet_loss_is_minimised_by_the_gibbs_distribution():
    """Prior (0.5, 0.5), step losses (1, 1 - beta ln 3): p ∝ (0.5, 0.5 * 3) = (0.25, 0.75) by hand; and gradient
    descent on the real loss over free logits lands on gibbs_halting for random losses."""
    beta = 0.05
    hand = gibbs_halting(torch.tensor([1.0, 1.0 - beta * math.log(3)]), 0.5, beta)
    assert torch.allclose(hand, torch.tensor([0.25, 0.75]), atol=1e-6)
    losses = torch.rand(4, 6, generator=torch.Generator().manual_seed(0))
    logits = torch.zeros(4, 6, requires_grad=True)
    opt = torch.optim.LBFGS([logits], max_iter=500, tolerance_grad=1e-10, tolerance_change=1e-12)

    def closure():
        opt.zero_grad()
        loss = pondernet_loss(torch.softmax(logits, 0), losses, torch.ones(6), 0.3, 0.2)
        loss.backward()
        return loss
    opt.step(closure)
    assert torch.allclose(torch.softmax(logits, 0), gibbs_halting(losses, 0.3, 0.2), atol=1e-4)


def test_small_beta_sends_every_token_to_the_last_step():
    """The saturation of issue 18: per-step gains 0.05 nats with beta 0.01 (m1's old setting) put > 90 % of p on
    the last step whatever the prior; beta 0.1, twice the gain, leaves it under half (median before the last)."""
    losses = torch.tensor([2.0, 1.95, 1.90, 1.85])
    assert gibbs_halting(losses, 0.25, 0.01)[-1] > 0.9 and gibbs_halting(losses, 0.5, 0.01)[-1] > 0.9
    assert gibbs_halting(losses, 0.5, 0.1)[-1] < 0.5


def test_kl_term_vanishes_at_the_prior():
    """A halting head constant at the prior's lambda: KL = 0, so ponder_cost changes nothing."""
    x = torch.randint(0, 256, (2, 12))
    losses = []
    for beta in (0.0, 5.0):
        model = tiny(max_steps=3, ponder_prior=0.3, ponder_cost=beta)
        with torch.no_grad():
            model.halt_head.weight.zero_()
        losses.append(model(x, x).loss)
    assert torch.allclose(losses[0], losses[1])
    model = tiny(max_steps=3, ponder_prior=0.3, ponder_cost=5.0)  # away from the prior it costs
    with torch.no_grad():
        model.halt_head.weight.zero_()
        model.halt_head.bias.fill_(3.0)
    assert model(x, x).loss > losses[0] + 0.1


def test_the_backbone_learns_every_step_whatever_the_halting_head_says():
    """Two halting heads (one halting everything at step 1, one never): the backbone's gradients are the same,
    and the head gets a gradient from PonderNet's loss."""
    x = torch.randint(0, 256, (2, 12))
    grads = []
    for bias in (8.0, -8.0):
        model = tiny(max_steps=3, ponder_cost=0.05)
        with torch.no_grad():
            model.halt_head.bias.fill_(bias)
        model(x, x).loss.backward()
        grads.append(model.blocks[0].mlp.up.weight.grad.clone())
        assert model.halt_head.weight.grad.abs().sum() > 0
    assert torch.allclose(grads[0], grads[1], atol=1e-7)


def test_halting_head_reads_the_normalized_latent():
    """lambda depends on the direction of z only: a latent 5x larger (or smaller) halts the same."""
    model = tiny(max_steps=3)
    z = torch.randn(2, 6, 32)
    assert torch.allclose(model.halt_head(z), model.halt_head(5 * z), atol=1e-5)
    assert torch.allclose(model.halt_head(z), model.halt_head(0.2 * z), atol=1e-5)
    assert not torch.allclose(model.halt_head(z), model.halt_head(z.flip(-1)))


def test_ablations_switch_mechanisms_and_restore():
    model = tiny(max_steps=3, ponder_prior=0.9).eval()
    x = torch.randint(0, 256, (4, 21))
    assert model(x[:, :-1]).halting_steps.max() == 1
    with model.ablate(halting=False):
        assert torch.all(model(x[:, :-1]).halting_steps == 3)
    with model.ablate(steps=1):
        assert torch.all(model(x[:, :-1]).halting_steps == 1)
    with model.ablate(memory=False):
        assert not model.memory.enabled
    assert model.memory.enabled and model._halting and model._steps_override is None
    out = ablations(model, x, seed=0)
    assert out["ablation/n_rows"] == 4 and out["ablation/steps1_val_loss"] > 0
    assert out["ablation/max_steps_loss_delta_ci_low"] <= out["ablation/max_steps_loss_delta"]
    assert out["ablation/max_steps_loss_delta"] <= out["ablation/max_steps_loss_delta_ci_high"]


@pytest.mark.parametrize("halting_cost,n,noninferior", [(0.005, 30, 1.0), (0.02, 30, 0.0), (-0.02, 30, 1.0),
                                                         (0.005, 6, 0.0), (-0.02, 6, 0.0)])
def test_halting_noninferiority_uses_the_declared_margin(monkeypatch, halting_cost, n, noninferior):
    """Loss(trained) - loss(max_steps) constant per row: PASS iff that cost (the CI's upper end) is below 0.01 and
    at least 30 rows were measured (the verdict's rule; the flag said 1.0 beside an INCONCLUSIVE verdict at 20)."""
    from agentforge.models import ablation

    rows = torch.zeros(n, 5, dtype=torch.long)
    loss = 1.0 + 0.1 * torch.arange(float(n))[:, None].expand(n, 4)

    def scores(model, rows, halting=True, **kw):
        return {"loss": loss if halting else loss - halting_cost, "correct": torch.ones(n, 4),
                "steps": torch.ones(n, 4)}

    monkeypatch.setattr(ablation, "token_scores", scores)
    out = ablation.ablations(None, rows)
    assert out["ablation/max_steps_loss_delta"] == pytest.approx(-halting_cost, abs=1e-6)   # float32 row means
    assert out["ablation/halting_noninferior"] == noninferior
    assert ablation.halting_verdict(out).startswith("PASS") == bool(noninferior)


def test_halting_by_difficulty_by_hand():
    steps = torch.tensor([1.0, 1.0, 2.0, 3.0])
    loss = torch.tensor([0.1, 0.2, 1.0, 2.0])
    out = halting_by_difficulty(steps, loss)
    assert out["ablation/halting_steps_hard_quarter"] == 3.0 and out["ablation/halting_steps_easy_quarter"] == 1.0
    assert out["ablation/halting_loss_spearman"] == pytest.approx(0.9486833, abs=1e-6)  # ties: average ranks


def test_computation_rows_mark_the_computed_digits_and_the_letters():
    rows, hard, easy = computation_rows(3, 127, seed=0)
    assert rows.shape == (3, 128) and hard.shape == easy.shape == (3, 127)
    # row 0: "Question: Lena has 60 coins. Lena gets 30 more. ...\nAnswer: Lena has 60 + 30 = 90 coins.\n#### 90"
    marked = hard[0].nonzero().flatten()
    assert bytes(rows[0, marked + 1].tolist()) == b"90"            # target j is token j + 1: the result only,
    assert bytes(rows[0, marked[0] - 1: marked[0] + 1].tolist()) == b"= "   # right after "= ", not the "#### 90" copy
    targets = rows[:, 1:]
    assert torch.all((targets[hard] >= 48) & (targets[hard] <= 57)) and torch.all(targets[easy] >= 97)


def test_halting_by_task_by_hand():
    """Row 0: digits at step 3, letters at 1 and 2 (mean 1.5); row 1: digits 2, letter 2; row 2 has no digit.
    Paired by row: (3 - 1.5 + 2 - 2) / 2 = 0.75."""
    steps = torch.tensor([[3.0, 1.0, 2.0], [2.0, 2.0, 4.0], [1.0, 1.0, 1.0]])
    hard = torch.tensor([[True, False, False], [True, False, False], [False, False, False]])
    easy = torch.tensor([[False, True, True], [False, True, False], [True, True, False]])
    out = halting_by_task(steps, hard, easy)
    assert out["ablation/halting_task_n_rows"] == 2 and out["ablation/halting_steps_answer_digits"] == 2.5
    assert out["ablation/halting_steps_letters"] == pytest.approx(7 / 5)
    assert out["ablation/halting_digits_minus_letters_delta"] == pytest.approx(0.75)


def test_halting_by_task_with_one_paired_row_leaves_the_paired_figures_out():
    """Rows too short to hold an answer: 1 row has both kinds of target, so there is no paired CI (no crash after
    training, as before), and the phase's summary says so instead of printing a made-up figure."""
    from agentforge.phases.cognate import halting_summary

    steps = torch.tensor([[3.0, 1.0, 2.0], [1.0, 1.0, 1.0]])
    hard = torch.tensor([[True, False, False], [False, False, False]])
    easy = torch.tensor([[False, True, True], [True, True, False]])
    out = halting_by_task(steps, hard, easy)
    assert out["ablation/halting_task_n_rows"] == 1 and out["ablation/halting_steps_answer_digits"] == 3.0
    assert not any(k.startswith("ablation/halting_digits_minus_letters") for k in out)
    final = {**out, "diversity/halting_share_step1": 1.0, "diversity/avg_halting_steps": 1.0, "diversity/halting_steps_std": 0.0,
             "ablation/halting_noninferiority_margin": 0.01, "ablation/max_steps_loss_delta": 0.0,
             "ablation/max_steps_loss_delta_ci_low": -0.001, "ablation/max_steps_loss_delta_ci_high": 0.001,
             "ablation/halting_noninferior": 1.0, "ablation/seconds": 1.0}
    assert "paired by row not measured (1 rows hold both" in halting_summary(final, 1)


def test_no_grad_steps_train_only_the_last_steps_backbone():
    model = tiny(max_steps=3, no_grad_steps=2).train()
    x = torch.randint(0, 256, (2, 12))
    model(x, x).loss.backward()
    assert model.blocks[0].mlp.up.weight.grad is not None  # the last step has gradients
    full = tiny(max_steps=3).train()
    full(x, x).loss.backward()
    assert not torch.allclose(model.blocks[0].mlp.up.weight.grad, full.blocks[0].mlp.up.weight.grad)


def test_ablation_comparisons_treat_per_row_figures_as_measurements():
    """``ablation._compare`` on mean halting steps of exactly 1.0 on every row (a model that always halts at step 1):
    a zero difference with a [0, 0] CI, not McNemar's ±0.107 (0/1-looking measurements took the outcomes branch)."""
    import torch

    from agentforge.models.ablation import _compare

    ones = torch.ones(40)
    got = _compare("x", ones, ones.clone(), seed=0)
    assert got["x_delta"] == 0.0 and (got["x_delta_ci_low"], got["x_delta_ci_high"]) == (0.0, 0.0)


@pytest.mark.parametrize("phase", ["cognate", "eval"])
def test_a_prior_of_one_is_refused_at_start_up_where_it_would_make_the_loss_nan(tmp_path, phase):
    """ponder_prior = 1 puts no prior mass past step 1, so KL(p || prior) is infinite: the loss was NaN. The start-up
    checks (the shared one and Cognate's own) refuse it; just below 1 is accepted and its loss is finite."""
    from agentforge.config import validate
    from agentforge.errors import ConfigError
    from agentforge.main import check_start
    from tests.conftest import compose_cfg

    cfg = compose_cfg([f"phase={phase}", "model.ponder_prior=1.0"], tmp_path)
    with pytest.raises(ConfigError, match=r"model.ponder_prior.*< 1"):
        (check_start if phase == "cognate" else validate)(cfg)
    model = tiny(max_steps=3, ponder_prior=0.999, ponder_cost=0.01)
    x = torch.randint(0, 256, (2, 16))
    assert torch.isfinite(model(x, x).loss)


def test_pondernet_terms_by_hand_and_the_model_loss_is_their_sum_with_deep_supervision():
    """Two steps, prior lam_p = 0.5 (so (0.5, 0.5)): p = (1, 0) on a token with step losses (2, 4) gives the
    reconstruction 2 and KL = ln(1 / 0.5) = ln 2, times beta 0.1; the masked-out token counts in neither. A tiny
    model's training loss is halt + ponder + deep_supervision, the terms it reports (logged as train/loss/*)."""
    from agentforge.models.halting import pondernet_terms

    p = torch.tensor([[1.0, 0.3], [0.0, 0.7]])
    step_loss = torch.tensor([[2.0, 9.0], [4.0, 9.0]])
    rec, reg = pondernet_terms(p, step_loss, torch.tensor([1.0, 0.0]), 0.5, 0.1)
    assert float(rec) == pytest.approx(2.0) and float(reg) == pytest.approx(0.1 * math.log(2), rel=1e-6)
    assert float(pondernet_terms(p[:1], step_loss[:1], torch.ones(2), 0.5, 0.1)[1]) == 0.0   # one step: no KL

    model = tiny(max_steps=3, deep_supervision=0.5).train()
    ids = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(1))
    out = model(ids[:, :-1], ids[:, 1:])
    assert set(out.loss_terms) == {"halt", "ponder", "deep_supervision"}
    assert float(sum(out.loss_terms.values())) == pytest.approx(float(out.loss), rel=1e-6)
    assert float(out.loss_terms["ponder"]) > 0 and float(out.loss_terms["halt"]) > 0
