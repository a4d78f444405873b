"""Quiet-STaR step 2's figures of what the loss does not show (an audit against Zelikman et al. 2024): the sign of
the mixing weight (unbounded, as in the reference code), the thought policy's unleashed drift from the reference,
and that a thought never sees the true tokens it is rewarded for."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from agentforge.models import CognateConfig, CognateModel
from agentforge.phases.quietstar_report import mixing_sign_line
from agentforge.reasoning import rewards
from agentforge.reasoning.rl import ThoughtConfig, reference_logits, rl_step, thought_figures
from agentforge.reasoning.thoughts import MixingHead, ThoughtBatch, kl_to_reference, think

torch.set_num_threads(1)
IDS = {"start": 259, "end": 260, "banned": [256, 257, 259, 260]}


def tiny(seed: int = 0) -> CognateModel:
    torch.manual_seed(seed)
    return CognateModel(CognateConfig(vocab_size=272, d_model=32, n_layers=1, n_heads=2, ffn_hidden=64, window=64,
                                      max_steps=2, ltm_slots=8, ltm_key_dim=8)).eval()


def hand_batch(w: float) -> ThoughtBatch:
    """One window (context [5], true token 0), V = 2, two thoughts of one token: thought 0's own prediction puts
    logits [2, 0] on the true token (fits well), thought 1's [-2, 0] (fits badly); without a thought [0, 0]."""
    with_ = torch.tensor([[[[2.0, 0.0]], [[-2.0, 0.0]]]])          # [N=1, K=2, n=1, V=2]
    without = torch.zeros(1, 1, 2)
    mixed = w * with_ + (1 - w) * without[:, None]
    thought_logits = torch.zeros(2, 1, 2)                          # [N*K, L=1, V]: uniform on both thoughts
    return ThoughtBatch(torch.tensor([[5, 0]]), torch.zeros(1, 2, 1, dtype=torch.long), torch.zeros(1, 2, 1), mixed,
                        without, torch.full((1, 2, 1), w), torch.zeros(1, 1, 2), torch.zeros(2, 4, dtype=torch.long),
                        with_, thought_logits)


def test_a_negative_mixing_weight_rewards_the_thought_that_predicts_worst_hand_case():
    for w in (0.5, -0.5):
        b = hand_batch(w)
        adv = rewards.advantages(rewards.thought_rewards(b.true_logp_mixed()))[0]
        own = b.true_logp_with().sum(-1)[0]                        # thought 0's own prediction fits best
        assert own[0] > own[1]
        assert bool(adv[0] > adv[1]) is (w > 0)                       # w < 0: the worse thought gets the higher advantage
        ref = torch.tensor([[[math.log(3.0), 0.0]], [[0.0, 0.0]]])  # KL(U || (3/4, 1/4)) = ln(4/3) / 2 on thought 0
        fig = thought_figures(b, ref)
        assert fig["mix_weight"] == pytest.approx(w) and fig["mix_weight_negative_share"] == (1.0 if w < 0 else 0.0)
        # the post-thought prediction alone (w = 1) over no thought: (log s(2) + log s(-2)) / 2 - log(1/2), whatever w is
        post = (math.log(1 / (1 + math.exp(-2))) + math.log(1 / (1 + math.exp(2)))) / 2 + math.log(2)
        assert fig["post_thought_gain"] == pytest.approx(post, abs=1e-6) and post == pytest.approx(-0.43378, abs=1e-5)
        assert fig["kl_thoughts"] == pytest.approx(math.log(4 / 3) / 4, abs=1e-6)   # mean over the 2 positions


def test_on_a_tiny_model_the_advantage_follows_the_thoughts_own_prediction_with_the_sign_of_w():
    """The audit's case: corr(advantage, the thought's own post-thought log-lik) is +1 at w = +0.3 and -1 at -0.3;
    ``true_logp_with`` is the w = 1 batch's mixed prediction."""
    m = tiny()
    n, k, length, nt = 8, 4, 3, 3
    win = torch.randint(0, 256, (n, 10 + nt), generator=torch.Generator().manual_seed(0))
    th = torch.randint(0, 256, (n, k, length), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        pure = think(m, MixingHead(32, init_weight=1.0), win, nt, k, length, 259, 260, thoughts=th)
        own = pure.true_logp_mixed().sum(-1)
        for w in (0.3, -0.3):
            b = think(m, MixingHead(32, init_weight=w), win, nt, k, length, 259, 260, thoughts=th)
            torch.testing.assert_close(b.true_logp_with(), pure.true_logp_mixed())
            adv = rewards.advantages(rewards.thought_rewards(b.true_logp_mixed())).flatten().numpy()
            r = np.corrcoef(adv, (own - own.mean(-1, keepdim=True)).flatten().numpy())[0, 1]
            assert r == pytest.approx(math.copysign(1.0, w), abs=0.01), (w, r)


def test_the_leash_misses_a_drift_of_the_thought_policy_that_the_thought_kl_shows():
    """The audit's case: only the [thinking] embedding moves, so the window without thoughts (the leash's) is
    unchanged (KL 0) while the thought tokens' distribution drifts; rl/kl_divergence_thoughts is the KL of the policy's
    own forward on context + [thinking] + thought against the reference's, per thought position."""
    ref = tiny()
    pol = copy.deepcopy(ref)
    with torch.no_grad():
        pol.embed.weight[259] += 50 * torch.randn(32, generator=torch.Generator().manual_seed(3))
    cfg = ThoughtConfig(num_thoughts=3, thought_length=4, n_true=2, context_len=8, kl_coef=0.1)
    win = torch.randint(0, 256, (4, 10), generator=torch.Generator().manual_seed(0))
    _, fig = rl_step(pol, MixingHead(32), ref, win, cfg, IDS, torch.Generator().manual_seed(1))
    assert fig["kl"] == pytest.approx(0.0, abs=1e-7) and fig["kl_thoughts"] > 1e-3
    with torch.no_grad():
        b = think(pol, MixingHead(32), win, 2, 3, 4, 259, 260, 1.0, IDS["banned"], torch.Generator().manual_seed(1))
        expect = kl_to_reference(pol(b.with_inputs[:, :8 + 4]).logits[:, 8:], reference_logits(ref, b, 8)[1])
    assert fig["kl_thoughts"] == pytest.approx(float(expect), rel=1e-4)


@pytest.mark.parametrize("use_cache", [True, False])
def test_a_thought_cannot_see_the_true_tokens_it_is_rewarded_for(use_cache):
    """Other true tokens after the same context: the same thoughts, thought log-probs and logits, the same prediction
    of the first true token (with and without a thought) and mixing weight there; only later predictions differ."""
    m, head = tiny(), MixingHead(32, init_weight=0.5)
    torch.nn.init.normal_(head.net[-1].weight, std=1.0, generator=torch.Generator().manual_seed(2))
    c, n = 10, 3
    w1 = torch.randint(0, 256, (2, c + n), generator=torch.Generator().manual_seed(0))
    w2 = w1.clone()
    w2[:, c:] = (w1[:, c:] + 1 + torch.randint(0, 254, (2, n), generator=torch.Generator().manual_seed(9))) % 256
    with torch.no_grad():
        b1, b2 = (think(m, head, w, n, 3, 4, 259, 260, banned=IDS["banned"], generator=torch.Generator().manual_seed(1),
                        use_cache=use_cache) for w in (w1, w2))
    assert torch.equal(b1.thoughts, b2.thoughts)
    for a, b in ((b1.thought_logp, b2.thought_logp), (b1.thought_logits, b2.thought_logits),
                 (b1.base_logits[:, :c], b2.base_logits[:, :c]), (b1.without_logits[:, 0], b2.without_logits[:, 0]),
                 (b1.with_logits[:, :, 0], b2.with_logits[:, :, 0]), (b1.mixed_logits[:, :, 0], b2.mixed_logits[:, :, 0]),
                 (b1.mix_weight[:, :, 0], b2.mix_weight[:, :, 0])):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert not torch.allclose(b1.mixed_logits[:, :, 1], b2.mixed_logits[:, :, 1])   # the test can see a change


def test_the_report_says_so_when_the_final_mixing_weight_is_negative():
    line = mixing_sign_line(-0.006, 0.75, -0.002)
    assert "-0.0060 < 0" in line and "75% of positions" in line and "negative weight" in line
    assert "REINFORCE rewards the thoughts whose own prediction of the true tokens is worst" in line
    assert "rl/reward does not mean thoughts help" in line and "-0.0020" in line
    for w in (0.0, 0.2, float("nan")):
        assert mixing_sign_line(w, 0.0, 0.0) is None
