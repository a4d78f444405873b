"""Weight decay, coupled (L2 in the gradient, as torch.optim.Adam's weight_decay) and decoupled (AdamW's
shrink), by hand and against torch's optimizers (moved from test_optim.py)."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from agentforge.errors import ConfigError
from agentforge.optim import build_optimizer
from agentforge.optim.muon_grokfast import MuonGrokfast
from tests.test_optim import MG, tiny_model


def test_coupled_and_decoupled_weight_decay_one_step_by_hand():
    """Adam's first step moves each entry by lr * sign(g') (m_hat = g', v_hat = g'^2). Coupled: g' = g + wd*p;
    decoupled: g' = g and p is first shrunk by (1 - lr*wd)."""
    got = {}
    for mode in ("coupled", "decoupled"):
        for name in ("adamw", "grokfast_adamw"):
            w = nn.Linear(2, 1, bias=False)
            with torch.no_grad():
                w.weight.copy_(torch.tensor([[1.0, -2.0]]))
            cfg = {"name": name, "lr": 0.1, "weight_decay": 0.1, "weight_decay_mode": mode, "betas": [0.9, 0.98],
                   "warmup_steps": 0, "min_lr_ratio": 1.0, "grokfast_lambda": 0.0}
            opt, _ = build_optimizer(w, cfg, total_steps=5)
            w.weight.grad = torch.tensor([[0.5, -0.1]])     # coupled: g' = [0.6, -0.3]
            opt.step()
            got[mode, name] = w.weight.detach().flatten().tolist()
    for name in ("adamw", "grokfast_adamw"):
        assert got["coupled", name] == pytest.approx([1.0 - 0.1, -2.0 + 0.1], abs=1e-6)
        assert got["decoupled", name] == pytest.approx([1.0 * 0.99 - 0.1, -2.0 * 0.99 + 0.1], abs=1e-6)


@pytest.mark.parametrize("name", ["adamw", "grokfast_adamw"])
def test_coupled_decay_equals_torch_adam_weight_decay(name):
    torch.manual_seed(0)
    w1 = nn.Linear(5, 3, bias=False)
    w2 = copy.deepcopy(w1)
    cfg = {"name": name, "lr": 0.05, "weight_decay": 0.3, "weight_decay_mode": "coupled", "betas": [0.9, 0.98],
           "warmup_steps": 0, "min_lr_ratio": 1.0, "grokfast": "none"}
    ours, _ = build_optimizer(w1, cfg, total_steps=5)
    ref = torch.optim.Adam(w2.parameters(), lr=0.05, betas=(0.9, 0.98), weight_decay=0.3)
    for k in range(4):
        g = torch.randn(3, 5, generator=torch.Generator().manual_seed(k))
        w1.weight.grad, w2.weight.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    assert torch.allclose(w1.weight, w2.weight, rtol=0, atol=1e-6)


def test_coupled_muon_is_muon_on_the_l2_gradient():
    torch.manual_seed(0)
    w1 = nn.Parameter(torch.randn(6, 4))
    w2 = nn.Parameter(w1.detach().clone())
    ours = MuonGrokfast([{"params": [w1]}], [], lr=0.1, weight_decay=0.2, adjust_lr_fn="original",
                        weight_decay_mode="coupled", grokfast="none")
    ref = torch.optim.Muon([w2], lr=0.1, weight_decay=0.0, adjust_lr_fn="original")
    for k in range(3):
        g = torch.randn(6, 4, generator=torch.Generator().manual_seed(k))
        w1.grad, w2.grad = g.clone(), g + 0.2 * w2.detach()
        ours.step()
        ref.step()
    assert torch.allclose(w1, w2, rtol=0, atol=1e-6)


def test_bad_weight_decay_mode_names_the_key():
    with pytest.raises(ConfigError, match="optimizer.weight_decay_mode"):
        build_optimizer(tiny_model(), {**MG, "weight_decay_mode": "l2"}, 10)
