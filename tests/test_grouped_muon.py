"""GroupedMuon (agentforge/optim/grouped_muon.py): torch.optim.Muon's update with one batched Newton-Schulz per shape."""
from __future__ import annotations

import copy

import pytest
import torch
from torch.optim._muon import _zeropower_via_newtonschulz
from torch.utils._python_dispatch import TorchDispatchMode

from agentforge.errors import ConfigError
from agentforge.models import CognateModel
from agentforge.models.cognate import CognateConfig
from agentforge.optim import build_optimizer
from agentforge.optim.grouped_muon import GroupedMuon, newton_schulz_batched

SHAPES = [(8, 8)] * 3 + [(12, 6)] * 2 + [(6, 12)] * 2 + [(5, 3)]   # square, tall, wide, a lone shape


class _Ops(TorchDispatchMode):
    def __enter__(self):
        self.n = 0
        return super().__enter__()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.__name__ not in ("detach.default", "view.default", "t.default", "unbind.int", "transpose.int"):
            self.n += 1
        return func(*args, **(kwargs or {}))


def _params(device="cpu"):
    g = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(s, generator=g).to(device)) for s in SHAPES]


def _run(cls, params, steps=4, **kw):
    groups = [{"params": params[:5], "lr": 0.02, "weight_decay": 0.1},
              {"params": params[5:], "lr": 0.05, "weight_decay": 0.0, "nesterov": False}]
    opt = cls(groups, **kw)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g).to(p.device)
        opt.step()
    return opt


def test_newton_schulz_of_a_scaled_identity_follows_the_scalar_polynomial():
    """By hand: s * I_4 has every singular value s, so after the Frobenius normalisation each is 1/2, and one
    Newton-Schulz step maps a singular value x to a x + b x^3 + c x^5 = 3.4445/2 - 4.7750/8 + 2.0315/32 = 1.18886."""
    coef = (3.4445, -4.7750, 2.0315)
    out = newton_schulz_batched(torch.stack([3.0 * torch.eye(4), 0.5 * torch.eye(4)]), coef, 1, 1e-7).float()
    for m in out:
        torch.testing.assert_close(m, 1.18886 * torch.eye(4), atol=0.01, rtol=0.01)   # bf16 arithmetic


def test_newton_schulz_equals_torchs_single_matrix_iteration():
    g = torch.Generator().manual_seed(3)
    for shape in ((4, 16, 16), (3, 24, 8), (2, 8, 24)):
        x = torch.randn(shape, generator=g)
        ours = newton_schulz_batched(x, (3.4445, -4.7750, 2.0315), 5, 1e-7)
        for o, m in zip(ours, x):
            ref = _zeropower_via_newtonschulz(m, (3.4445, -4.7750, 2.0315), 5, 1e-7)
            torch.testing.assert_close(o.float(), ref.float(), atol=0.02, rtol=0.02)   # bf16 rounding


def _close_to_torch_muon(device: str, fn="match_rms_adamw") -> None:
    """Parameters after 4 steps within 2 % of how far the steps moved them (bf16 rounding of batched vs single
    matmuls); the momentum buffers, which do not pass through bf16, bit for bit."""
    ours, ref = _params(device), _params(device)
    o = _run(GroupedMuon, ours, adjust_lr_fn=fn)
    r = _run(torch.optim.Muon, ref, adjust_lr_fn=fn)
    moved = max((b - s).abs().max().item() for b, s in zip(ref, _params(device)))
    diff = max((a - b).abs().max().item() for a, b in zip(ours, ref))
    assert moved > 0.05 and diff <= 0.02 * moved, (diff, moved)
    assert all(torch.equal(o.state[a]["momentum_buffer"], r.state[b]["momentum_buffer"]) for a, b in zip(ours, ref))


@pytest.mark.parametrize("fn", ["match_rms_adamw", "original", None])
def test_steps_equal_torch_muon_to_bf16_rounding(fn):
    """Mixed shapes in two groups (one with weight decay, one without Nesterov), several steps."""
    _close_to_torch_muon("cpu", fn)


def test_a_torch_muon_checkpoint_resumes_in_grouped_muon_exactly():
    ref, ours = _params(), _params()
    r = _run(torch.optim.Muon, ref, steps=2)
    for a, b in zip(ours, ref):
        a.data.copy_(b.data)
    o = GroupedMuon([{"params": ours[:5], "lr": 0.02, "weight_decay": 0.1},
                     {"params": ours[5:], "lr": 0.05, "weight_decay": 0.0, "nesterov": False}])
    o.load_state_dict(copy.deepcopy(r.state_dict()))   # load_state_dict keeps the very tensors it is given
    for opt, ps in ((r, ref), (o, ours)):
        g = torch.Generator().manual_seed(7)
        for p in ps:
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()
    assert all(torch.equal(o.state[a]["momentum_buffer"], r.state[b]["momentum_buffer"]) for a, b in zip(ours, ref))
    assert all(torch.allclose(a, b, atol=1e-3) for a, b in zip(ours, ref))   # bf16 rounding of one step at most


def test_one_shape_costs_a_fixed_number_of_ops_not_one_set_per_matrix():
    """torch.optim.Muon runs ~24 ops per matrix; the grouped step's count does not grow with the matrices of a shape."""
    def count(cls, n):
        ps = [torch.nn.Parameter(torch.randn(8, 8)) for _ in range(n)]
        opt = cls([{"params": ps}], lr=0.02, weight_decay=0.1)
        for p in ps:
            p.grad = torch.randn(8, 8)
        opt.step()   # creates the momentum buffers
        with _Ops() as ops:
            opt.step()
        return ops.n
    assert count(torch.optim.Muon, 8) >= 8 * 20 and count(torch.optim.Muon, 8) > 7 * count(torch.optim.Muon, 1)
    assert count(GroupedMuon, 8) == count(GroupedMuon, 2) < count(torch.optim.Muon, 2)


def test_config_chooses_the_implementation_and_refuses_a_bad_one():
    cfg = CognateConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, ffn_hidden=64, window=16, max_seq_len=32)
    preset = {"name": "muon_grokfast", "lr": 1e-3, "weight_decay": 0.01, "warmup_steps": 2, "min_lr_ratio": 0.1,
              "qk_clip": 30.0}
    assert type(build_optimizer(CognateModel(cfg), preset, 10)[0]._muon) is GroupedMuon   # the default
    assert type(build_optimizer(CognateModel(cfg), {**preset, "muon_impl": "torch"}, 10)[0]._muon) is torch.optim.Muon
    with pytest.raises(ConfigError, match="optimizer.muon_impl"):
        build_optimizer(CognateModel(cfg), {**preset, "muon_impl": "fast"}, 10)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_steps_equal_torch_muon_to_bf16_rounding():
    _close_to_torch_muon("cuda")


@pytest.mark.parametrize("key, bad", [("muon_impl", "fast"), ("adjust_lr_fn", "rms")])
def test_start_up_checks_refuse_a_bad_muon_key_before_anything_runs(key, bad):
    """agentforge.config's shared rules (checked at start-up, before a run dir or a Trainer exists) name the key."""
    from omegaconf import OmegaConf

    from agentforge.config import SHARED_RULES, check

    cfg = OmegaConf.create({"optimizer": {**OmegaConf.to_container(OmegaConf.load("conf/optimizer/muon_grokfast.yaml")),
                                          key: bad}})
    with pytest.raises(ConfigError, match=rf"^optimizer\.{key} must be .*got '{bad}'$"):
        check(cfg, SHARED_RULES)
    check(OmegaConf.create({"optimizer": OmegaConf.load("conf/optimizer/muon_grokfast.yaml")}), SHARED_RULES)
