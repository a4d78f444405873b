"""Sibling fusion of frozen BitLinear layers (agentforge.quant.fuse): the fused matmul gives the unfused layers'
numbers (int8 kernel exactly, float kernel to rounding), an input modified in place or a repeated call is
computed again, a packed Cognate model decodes the same tokens fused or not; and the kernel timer's order."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from agentforge.data.tokenizer import ByteTokenizer
from agentforge.models import CognateConfig, CognateModel
from agentforge.quant import BitLinear
from agentforge.quant.bitlinear import _time_kernels
from agentforge.quant.calibrate import activation_stats, apply_clips
from agentforge.quant.checkpoint import load_packed, save_packed
from agentforge.quant.convert import bitlinear_layers, convert_to_bitlinear
from agentforge.quant.fuse import find_sibling_groups, fuse_siblings, unfuse
from tests.test_bitnet_kernels import Ops


def _layer(out_f: int, seed: int, bias: bool = False, per_channel: bool = False, clip: float = 2.5) -> BitLinear:
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(-1, 2, (out_f, 16), generator=g)
    gamma = torch.rand(out_f, 1, generator=g) + 0.1 if per_channel else torch.rand((), generator=g) + 0.1
    return BitLinear.from_ternary(codes, gamma, torch.randn(out_f, generator=g) if bias else None, clip,
                                  per_channel=per_channel)


class Siblings(nn.Module):
    """a, b, c read x (b with a bias, c per-channel); d reads another tensor."""

    def __init__(self, c_clip: float = 2.5):
        super().__init__()
        self.a, self.b = _layer(12, 1), _layer(5, 2, bias=True)
        self.c, self.d = _layer(7, 3, per_channel=True, clip=c_clip), _layer(12, 4)

    def forward(self, x):
        return self.a(x), self.b(x), self.c(x), self.d(x * 2)


def _set_kernel(model, kernel):
    for m in model.modules():
        if isinstance(m, BitLinear):
            m.kernel = m.kernel_decode = kernel


def _run(x, kernel="int8", c_clip=2.5):
    """(matmuls run by the fused model's call on x, its outputs, the unfused model's outputs, the fused model)."""
    plain, fused = Siblings(c_clip), Siblings(c_clip)
    assert fuse_siblings(fused, x) == [["a", "b", "c"]]                 # d reads another tensor
    _set_kernel(plain, kernel), _set_kernel(fused, kernel)
    with torch.no_grad():
        want = plain(x)
        with Ops() as ops:
            got = fused(x)
    return ops.matmuls(), got, want, fused


@pytest.mark.parametrize("kernel", ["int8", "float"])
@pytest.mark.parametrize("rows", [1, BitLinear.decode_rows])  # decoding steps
def test_fused_siblings_give_the_unfused_outputs_in_one_matmul(kernel, rows):
    x = torch.randn(1, rows, 16, generator=torch.Generator().manual_seed(rows)) * 2
    assert find_sibling_groups(Siblings(), x) == [["a", "b", "c"]]
    n, got, want, fused = _run(x, kernel)
    assert n == 2                                                        # a, b, c in one matmul; d alone
    _assert_same(got, want)                                              # the same integer products, either kernel
    # the members' fp32 codes^T are column views of the fused one (no second copy)
    w_t = fused.a.__dict__["_plan"][8][0].w_t
    assert all(m._codes_f_t.untyped_storage().data_ptr() == w_t.untyped_storage().data_ptr()
               for m in (fused.a, fused.b, fused.c))
    unfuse(fused)
    with torch.no_grad(), Ops() as ops:
        again = fused(x)
    assert ops.matmuls() == 4
    _assert_same(again, want)


def _assert_same(got, want):
    """Bit for bit, for the float kernel too (its integer sums are exact in fp32 over any number of columns; until
    2026-11-28 it was checked to 1e-6 only)."""
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g, w)


def test_inputs_above_decode_rows_run_one_matmul_per_layer():
    n, got, want, _ = _run(torch.randn(1, BitLinear.decode_rows + 1, 16))
    assert n == 4 and all(torch.equal(g, w) for g, w in zip(got, want))


def test_a_sibling_with_another_clip_is_left_unfused():
    n, got, want, _ = _run(torch.randn(1, 3, 16) * 4, c_clip=1.0)
    assert n == 3 and all(torch.equal(g, w) for g, w in zip(got, want))  # a+b, c, d


def test_modified_input_and_repeated_calls_are_computed_again():
    fused, plain = Siblings(), Siblings()
    x = torch.randn(2, 16)
    fuse_siblings(fused, x)
    _set_kernel(fused, "int8"), _set_kernel(plain, "int8")
    with torch.no_grad():
        fused.a(x)                                   # computes a, b and c on x
        x.mul_(0.5)                                  # same tensor object, new contents
        assert torch.equal(fused.b(x), plain.b(x))   # recomputed, not the cached b of the old x
        first = fused.c(x)
        first.add_(100.0)                            # a caller changing its output in place...
        assert torch.equal(fused.c(x), plain.c(x))   # ...does not reach a second call: served once


def _packed_tiny(tmp_path):
    torch.manual_seed(0)
    cfg = CognateConfig(d_model=32, n_layers=2, n_heads=2, ffn_hidden=64, window=8, max_steps=2, ltm_slots=4,
                        ltm_key_dim=8, ltm_chunk=4)
    model = CognateModel(cfg).eval()
    names = convert_to_bitlinear(model)
    apply_clips(model, activation_stats(CognateModel(cfg).eval(), torch.randint(0, 256, (4, 17)), names, batch_size=4))
    return save_packed(tmp_path / "packed", model, ByteTokenizer())


def test_fused_packed_model_decodes_the_same_tokens(tmp_path):
    path = _packed_tiny(tmp_path)
    fused, plain = (load_packed(path, choose_kernel=False, fuse=f)[0] for f in (True, False))
    per_block = [[f"blocks.{i}.attn.{p}_proj" for p in "qkv"] + [] for i in range(2)]
    want = [*[g for i in range(2) for g in (per_block[i], [f"blocks.{i}.mlp.gate", f"blocks.{i}.mlp.up"])],
            ["memory.query", "memory.value", "memory.gate"]]
    assert fused.bitnet_groups == want and plain.bitnet_groups == []
    fused.memory.persist = True                                     # a forward now writes the memory bank...
    fused.train()
    assert fuse_siblings(fused) == want                             # ...but the traced one leaves no trace
    assert fused.training and not fused.memory.filled.any()
    fused.memory.persist = False
    fused.eval()
    assert fused.state_dict().keys() == plain.state_dict().keys()   # parameters and checkpoint untouched
    ids = torch.randint(0, 256, (2, 20), generator=torch.Generator().manual_seed(1))
    twin = copy.deepcopy(fused)                                      # a copy fuses its own layers
    q = twin.blocks[0].attn.q_proj
    assert q.__dict__["_siblings"].layers[0] is q
    with torch.no_grad():
        for kernel in ("int8", "float"):
            for m in (fused, plain, twin):
                _set_kernel(m, kernel)
            logits = [m(ids).logits for m in (fused, plain, twin)]
            tokens = [m.generate(ids[:1, :6], 10) for m in (fused, plain, twin)]
            decoded = [m.kv_decoder(1).next_logits(ids[:1]) for m in (fused, plain)]
            if kernel == "int8":
                assert torch.equal(logits[0], logits[1]) and torch.equal(decoded[0], decoded[1])
            torch.testing.assert_close(logits[0], logits[1], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(decoded[0], decoded[1], rtol=1e-5, atol=1e-5)
            assert torch.equal(logits[2], logits[0])
            assert torch.equal(tokens[0], tokens[1]) and torch.equal(tokens[2], tokens[0])
    assert all(m.frozen for _, m in bitlinear_layers(fused))


def test_kernel_timer_alternates_which_kernel_runs_first():
    layer, seen = _layer(4, 0), []
    med = _time_kernels([layer], "kernel", lambda: seen.append(layer.kernel), repeats=4)
    # one untimed round, then rounds starting with int8, float, int8, float
    assert seen == ["int8", "float", "int8", "float", "float", "int8", "int8", "float", "float", "int8"]
    assert set(med) == {"int8", "float"} and all(v >= 0 for v in med.values())


def _built_from(state: dict) -> Siblings:
    """A Siblings model whose layers are made from ``state``'s tensors (no cache from before)."""
    model = Siblings()
    for name in "abcd":
        layer = getattr(model, name)
        setattr(model, name, BitLinear.from_ternary(state[f"{name}.codes"], state[f"{name}.gamma"], state.get(f"{name}.bias"),
                                                    state[f"{name}.act_clip"], per_channel=layer.per_channel))
    return model


@pytest.mark.parametrize("kernel", ["int8", "float"])
@pytest.mark.parametrize("fused", [False, True])
def test_loading_other_weights_into_frozen_layers_is_not_served_from_their_caches(kernel, fused):
    """load_state_dict into frozen layers that have run (codes^T, the dense weight, the plan and the fused
    concatenation cached): their outputs are the new weights', as from layers built from them."""
    model, x = Siblings(), torch.randn(1, 16)
    if fused:
        fuse_siblings(model, x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for name in "abcd":
        state[f"{name}.codes"].neg_()
        state[f"{name}.gamma"].mul_(1.5)
    want = _built_from(state)
    _set_kernel(model, kernel), _set_kernel(want, kernel)
    with torch.no_grad():
        model(x)                                   # caches made with the old weights
        model.load_state_dict(state)
        got, expected = model(x), want(x)
    for g, w in zip(got, expected):
        torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("kernel", ["int8", "float"])
@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("edited", ["codes", "gamma", "bias"])
def test_in_place_edits_of_frozen_weights_are_not_served_from_their_caches(kernel, fused, edited):
    """An in-place edit of one frozen layer's codes, gamma or bias after it has run (a weight-flip ablation, say):
    its version counter invalidates the plan and the caches derived from the weights (codes^T, the dense weight,
    the fused concatenation), so every layer's output is that of layers built from the edited weights."""
    model, x = Siblings(), torch.randn(1, 16)
    if fused:
        fuse_siblings(model, x)
    _set_kernel(model, kernel)
    with torch.no_grad():
        before = model(x)                          # caches made with the old weights
        tensor = getattr(model.b, edited)          # edited through the tensor (``.data`` has no version counter)
        tensor.copy_({"codes": lambda t: -t, "gamma": lambda t: t * 1.5, "bias": lambda t: t + 1.0}[edited](tensor))
        want = _built_from({k: v.clone() for k, v in model.state_dict().items()})
        _set_kernel(want, kernel)
        got, expected = model(x), want(x)
    for g, w in zip(got, expected):
        torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(got[1], before[1])   # the edit changed b's output


def test_with_autograd_on_the_fused_layers_give_the_unfused_gradients():
    """Grad mode with an input that needs no gradient (the fused concatenation holds detached biases): the
    outputs carry the bias's gradient as the unfused layers' do."""
    x, grads = torch.randn(1, 16), []
    for fused in (False, True):
        model = Siblings()
        if fused:
            fuse_siblings(model, x)
        _set_kernel(model, "int8")
        sum(y.sum() for y in model(x)).backward()
        grads.append(model.b.bias.grad)
    assert grads[0] is not None and torch.equal(grads[1], grads[0])
