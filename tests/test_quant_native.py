"""The native decode kernel (agentforge.quant.native): bitwise the int8 kernel's numbers (layer by layer and
through a packed Cognate model's decoding), NaN propagated, the fallback when it is not built, and its place
among select_kernel's decode candidates. Tests that compile it (~30 s the first time) are marked slow."""
from __future__ import annotations

import math

import pytest
import torch

from agentforge.models import CognateConfig, CognateModel
from agentforge.quant import BitLinear, native
from agentforge.quant.bitlinear import select_kernel
from agentforge.quant.calibrate import activation_stats, apply_clips
from agentforge.quant.convert import bitlinear_layers, convert_to_bitlinear, freeze
from agentforge.quant.fuse import fuse_siblings


def _layer(per_channel: bool, bias: bool, clip: float, bits: int = 8) -> BitLinear:
    g = torch.Generator().manual_seed(11)
    codes = torch.randint(-1, 2, (24, 16), generator=g)
    gamma = torch.rand(24, 1, generator=g) + 0.1 if per_channel else torch.tensor(0.3)
    return BitLinear.from_ternary(codes, gamma, torch.randn(24, generator=g) if bias else None, clip,
                                  per_channel=per_channel, act_bits=bits)


def _outputs(layer, x, kernel):
    layer.kernel = layer.kernel_decode = kernel
    with torch.no_grad():
        return layer(x)


@pytest.fixture(scope="module")
def built():
    if not native.build():
        pytest.skip("no C++ toolchain to build the native kernel")


@pytest.mark.slow
@pytest.mark.parametrize("per_channel,bias", [(False, False), (False, True), (True, True)])
@pytest.mark.parametrize("clip", [0.5, math.inf])  # a clip that saturates tokens, and none
@pytest.mark.parametrize("bits", [8, 4])
def test_native_kernel_is_bitwise_the_int8_kernel(built, per_channel, bias, clip, bits):
    layer = _layer(per_channel, bias, clip, bits)
    for shape in ((1, 1, 16), (1, BitLinear.decode_rows, 16), (3, 16)):
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(len(shape))) * 3
        want = _outputs(layer, x, "int8")
        got = _outputs(layer, x, "native")
        assert got.shape == want.shape and torch.equal(got, want)
    x = torch.randn(2, 16)
    x[1, 3] = float("nan")
    got = _outputs(layer, x, "native")
    assert torch.equal(got[0], _outputs(layer, x[:1], "int8")[0]) and got[1].isnan().all()


@pytest.mark.slow
def test_packed_model_decodes_with_the_native_kernel_exactly_as_int8(built):
    torch.manual_seed(0)
    cfg = CognateConfig(d_model=32, n_layers=2, n_heads=2, ffn_hidden=64, window=8, max_steps=2, ltm_slots=4,
                        ltm_key_dim=8, ltm_chunk=4)
    fp = CognateModel(cfg).eval()
    model = CognateModel(cfg).eval()
    model.load_state_dict(fp.state_dict())
    names = convert_to_bitlinear(model)
    apply_clips(model, activation_stats(fp, torch.randint(0, 256, (4, 17)), names, batch_size=4))
    freeze(model)
    ids = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(2))
    for fused in (False, True):
        if fused:
            fuse_siblings(model)
        logits, tokens = {}, {}
        with torch.no_grad():
            for kernel in ("int8", "native"):
                for _, m in bitlinear_layers(model):
                    m.kernel, m.kernel_decode = "int8", kernel   # prefill int8, decoding steps this kernel
                dec = model.kv_decoder(1)
                logits[kernel] = torch.stack([dec.step(ids[:, i]) for i in range(ids.shape[1])])
                tokens[kernel] = model.generate(ids[:, :4], 10)
        assert torch.equal(logits["native"], logits["int8"]) and torch.equal(tokens["native"], tokens["int8"])



@pytest.mark.slow
def test_native_kernel_reads_weights_loaded_after_its_plan_was_made(built):
    """The plan caches the kernel's arguments (codes^T, gamma, bias, clip): load_state_dict remakes it."""
    layer, other = _layer(True, True, 1.0), _layer(True, True, 1.0)
    state = {k: v.clone() for k, v in other.state_dict().items()}
    state["codes"].neg_(), state["gamma"].mul_(1.5), state["bias"].add_(1.0), state["act_clip"].fill_(0.5)
    fresh = BitLinear.from_ternary(state["codes"], state["gamma"], state["bias"], 0.5, per_channel=True)
    x = torch.randn(1, 1, 16) * 3
    before = _outputs(layer, x, "native")
    layer.load_state_dict(state)
    got = _outputs(layer, x, "native")
    assert not torch.equal(got, before) and torch.equal(got, _outputs(fresh, x, "int8"))

def test_native_kernel_falls_back_to_int8_when_not_built(monkeypatch):
    monkeypatch.setattr(native, "_EXT", None)
    layer = _layer(True, True, 1.0)
    x = torch.randn(1, 1, 16) * 2
    assert not native.ready() and torch.equal(_outputs(layer, x, "native"), _outputs(layer, x, "int8"))


def test_select_kernel_offers_native_for_decoding_only_once_built(monkeypatch):
    torch.manual_seed(1)
    model = CognateModel(CognateConfig(vocab_size=40, d_model=16, n_layers=1, n_heads=2, ffn_hidden=24, window=8,
                                       max_seq_len=32, max_steps=2, ltm_slots=4, ltm_key_dim=8)).eval()
    convert_to_bitlinear(model)
    freeze(model)
    ids = torch.randint(0, 40, (1, 8), generator=torch.Generator().manual_seed(3))
    monkeypatch.setattr(native, "_EXT", None)
    info = select_kernel(model, ids, repeats=1, decode_tokens=3)
    assert "decode_native_ms" not in info and info["decode_kernel"] in ("int8", "float")

    class Slow:  # stands in for the built extension: correct numbers (the int8 kernel's), made slowest
        calls = 0

        def quantized_linear(self, x, clip, eps, qmax, codes_t, gamma, bias):
            Slow.calls += 1
            q = torch.div(x, s := torch.linalg.vector_norm(x, math.inf, -1, keepdim=True).clamp(eps, max(clip, eps))
                          / qmax).round().clamp(-qmax - 1, qmax)
            y = (q @ codes_t.float()) * (s * gamma.reshape(-1))
            for _ in range(200):
                torch.randn(64, 64) @ torch.randn(64, 64)
            return y + bias if bias is not None else y

    monkeypatch.setattr(native, "_EXT", Slow())
    info = select_kernel(model, ids, repeats=1, decode_tokens=3)
    times = {k: info[f"decode_{k}_ms"] for k in ("int8", "float", "native")}
    assert Slow.calls > 0 and info["decode_kernel"] == min(times, key=times.get) != "native"
    assert info["kernel"] in ("int8", "float")               # the prefill regime never gets it


def test_installed_reads_the_stamp_a_build_leaves(built, monkeypatch, capsys):
    """After a build, ``installed()`` (phase.native_kernel=auto's test) is true for this source, flags and torch,
    and false for any other; make install's ``main`` loads the build and says so in one line."""
    assert native.installed() and native._stamp_path().is_file()
    assert native.main() == 0 and capsys.readouterr().out.startswith("native BitNet decode kernel: ready (")
    monkeypatch.setattr(native, "FLAGS", [*native.FLAGS, "-O0"])
    assert not native.installed()


def test_a_failed_build_leaves_the_torch_kernels_in_use(monkeypatch, capsys):
    import torch.utils.cpp_extension as cpp

    def no_compiler(*args, **kwargs):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(native, "_EXT", None)
    monkeypatch.setattr(cpp, "load_inline", no_compiler)
    assert native.build() is False and not native.ready()
    assert "native BitNet kernel could not be built (RuntimeError: no C++ compiler found)" in capsys.readouterr().out
