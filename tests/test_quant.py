"""Unit tests of agentforge.quant: the quantizers against hand-computed cases, packing round trips,
BitLinear's straight-through gradients, the module swap, and the packed checkpoint's error handling."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from agentforge.artifacts import load_any
from agentforge.data.tokenizer import ByteTokenizer
from agentforge.io import CheckpointError
from agentforge.models import CognateConfig, CognateModel
from agentforge.quant import BitLinear, dequantize, quantize_activations, ternarize
from agentforge.quant.calibrate import activation_stats, apply_clips
from agentforge.quant.checkpoint import load_packed, save_packed
from agentforge.quant.convert import bitlinear_layers, convert_to_bitlinear, freeze, layer_stats
from agentforge.quant.packing import bits_per_weight, pack, packed_size, unpack
from agentforge.quant.ternary import EPS

SMALL = CognateConfig(vocab_size=40, d_model=16, n_layers=1, n_heads=2, ffn_hidden=24, window=8, max_seq_len=32,
                      max_steps=2, ltm_slots=4, ltm_key_dim=8)


# -- quantizers -------------------------------------------------------------------------------------------
def test_ternarize_hand_case():
    w = torch.tensor([[0.2, -0.9], [0.05, 1.6]])
    codes, gamma = ternarize(w)
    assert gamma.item() == pytest.approx(0.6875)              # (0.2 + 0.9 + 0.05 + 1.6) / 4
    assert codes.tolist() == [[0, -1], [0, 1]]                 # 0.29 -> 0, -1.31 -> -1, 0.07 -> 0, 2.33 -> 1
    assert codes.dtype == torch.int8


def test_ternarize_per_channel_hand_case():
    w = torch.tensor([[1.0, -1.0, 0.1, 0.1], [0.0, 0.0, 0.0, 4.0]])
    codes, gamma = ternarize(w, per_channel=True)
    assert gamma.flatten().tolist() == pytest.approx([0.55, 1.0])
    # row 0: 1/0.55 = 1.8 -> 1, 0.1/0.55 = 0.18 -> 0; row 1: 4/1 -> clipped to 1
    assert codes.tolist() == [[1, -1, 0, 0], [0, 0, 0, 1]]


def test_threshold_half_is_exactly_roundclip():
    # magnitudes 0, 1, 2, 3, 4 in equal numbers (576 each of 2880) with seeded signs and order: mean|W| = 2 exactly
    # (integer sums are exact in float32), so |W| = 1 and 3 land exactly on the ties |W| / gamma = 0.5 and 1.5,
    # where a dead zone of ">= 0.5" instead of "> 0.5" would differ from RoundClip (round half to even: 0.5 -> 0)
    g = torch.Generator().manual_seed(0)
    mags = torch.arange(5.0).repeat(576)[torch.randperm(2880, generator=g)]
    w = (mags * (torch.randint(0, 2, (2880,), generator=g) * 2 - 1)).view(60, 48)
    codes, gamma = ternarize(w, threshold=0.5)
    assert gamma.item() == 2.0 and int(((w / gamma).abs() == 0.5).sum()) == 576   # the ties are really there
    roundclip = (w / gamma).round().clamp(-1, 1)
    assert torch.equal(codes.float(), roundclip)


def test_a_weight_exactly_on_the_dead_zone_edge_is_zero():
    # gamma = (3 + 0.5 + 0.5 + 0) / 4 = 1 exactly: |W| / gamma = 0.5 <= threshold 0.5 -> 0 (module docstring);
    # 3 -> 1 (RoundClip of 3), 0 -> 0
    codes, gamma = ternarize(torch.tensor([[3.0, 0.5, -0.5, 0.0]]))
    assert gamma.item() == 1.0 and codes.tolist() == [[1, 0, 0, 0]]


def _authors_weight_quant(w: torch.Tensor) -> torch.Tensor:
    """BitNet b1.58 authors' code ("Training Tips, Code and FAQ"), verbatim but for the name."""
    scale = 1.0 / w.abs().mean().clamp_(min=1e-5)
    return (w * scale).round().clamp_(-1, 1) / scale


def test_gamma_is_clamped_to_eps_as_in_the_authors_code():
    w = torch.tensor([[1e-5, 0.0]])                 # mean|W| = eps / 2: gamma clamps to eps
    codes, gamma = ternarize(w)
    assert gamma.item() == pytest.approx(EPS, rel=1e-6) and codes.tolist() == [[1, 0]]
    assert torch.allclose(dequantize(codes, gamma), w, rtol=1e-6, atol=0)   # gamma + eps would give 0.5e-5
    zero_codes, zero_gamma = ternarize(torch.zeros(3, 4))
    assert zero_gamma.item() == pytest.approx(EPS) and not zero_codes.any()
    for scale in (1e-8, 1e-6, 1e-5, 1.0):
        w = torch.randn(16, 8, generator=torch.Generator().manual_seed(2)) * scale
        codes, gamma = ternarize(w)
        assert torch.allclose(dequantize(codes, gamma), _authors_weight_quant(w.clone()), rtol=1e-5, atol=0)


def test_larger_threshold_is_sparser_and_exact():
    w = torch.randn(32, 32, generator=torch.Generator().manual_seed(1))
    c5, g = ternarize(w, 0.5)
    c7, _ = ternarize(w, 0.7)
    x = (w / g).abs()
    assert torch.equal(c7 == 0, x <= 0.7)
    assert (c7 == 0).sum() > (c5 == 0).sum()


def test_activation_absmax_hand_case():
    q, s = quantize_activations(torch.tensor([[1.0, -0.5, 0.25]]))
    assert s.item() == pytest.approx(1 / 127)
    assert q.tolist() == [[127.0, -64.0, 32.0]]                # -63.5 rounds half to even
    q, s = quantize_activations(torch.tensor([[10.0, 1.0]]), clip=2.0)  # ceiling from calibration
    assert s.item() == pytest.approx(2 / 127)
    assert q.tolist() == [[127.0, 64.0]]                       # 635 saturates; 63.5 -> 64
    q, _ = quantize_activations(torch.tensor([[-10.0, 1.0]]), clip=2.0)
    assert q.tolist() == [[-128.0, 64.0]]                      # -635 saturates at -2^7 = -128, not at -127
    q, s = quantize_activations(torch.tensor([[0.5, 4.0], [1.0, 0.0]]), clip=1.0, static=True)
    assert s.flatten().tolist() == pytest.approx([1 / 127, 1 / 127])
    assert q.tolist() == [[64.0, 127.0], [127.0, 0.0]]



def test_static_scale_of_a_zero_clip_is_floored_at_eps():
    """A static clip of 0 (a calibration that only saw zeros): the scale is max(0, eps) / 127 = 1e-5 / 127, so zero
    inputs quantize to 0, not to 0 / 0 = NaN."""
    q, s = quantize_activations(torch.zeros(2, 3), clip=0.0, static=True)
    assert torch.isfinite(q).all() and q.tolist() == [[0.0] * 3] * 2
    assert s.flatten().tolist() == pytest.approx([EPS / 127] * 2, rel=1e-6)


# -- packing ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scheme", ["base3", "2bit"])
@pytest.mark.parametrize("shape", [(1,), (4,), (5,), (6,), (7, 3), (13, 17), (1, 999), (2, 3, 5)])
def test_pack_roundtrip_awkward_sizes(scheme, shape):
    codes = torch.randint(-1, 2, shape, dtype=torch.int8, generator=torch.Generator().manual_seed(sum(shape)))
    packed = pack(codes, scheme)
    assert packed.dtype == torch.uint8 and packed.numel() == packed_size(codes.numel(), scheme)
    assert torch.equal(unpack(packed, codes.numel(), scheme).view(shape), codes)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(-1, 1), min_size=1, max_size=300), st.sampled_from(["base3", "2bit"]))
def test_pack_roundtrip_property(values, scheme):
    codes = torch.tensor(values, dtype=torch.int8)
    assert torch.equal(unpack(pack(codes, scheme), len(values), scheme), codes)


def test_bits_per_weight():
    assert bits_per_weight(10_000, "base3") == pytest.approx(1.6)
    assert bits_per_weight(10_000, "2bit") == pytest.approx(2.0)
    assert bits_per_weight(10_000, "base3") > math.log2(3)


def test_unpack_rejects_corrupt_bytes():
    codes = torch.tensor([1, -1, 0, 0, 1, 1, 0], dtype=torch.int8)
    good = pack(codes)
    with pytest.raises(ValueError, match="242"):
        unpack(torch.tensor([243, 0], dtype=torch.uint8), 7)
    with pytest.raises(ValueError, match="expected 2"):
        unpack(good[:1], 7)
    bad_pad = good.clone()
    bad_pad[-1] = bad_pad[-1] + 2 * 27  # the 4th digit of the last byte is padding: must stay "0"
    with pytest.raises(ValueError, match="padding"):
        unpack(bad_pad, 7)
    first_pad = pack(torch.tensor([1, -1, 0], dtype=torch.int8))   # digits 2, 0, 1 + padding 1, 1: byte 119
    first_pad[0] += 27                                          # digit 3 (the first padding trit) 1 -> 2: code +1
    with pytest.raises(ValueError, match="padding"):
        unpack(first_pad, 3)
    with pytest.raises(ValueError, match="code 3"):
        unpack(torch.tensor([0xFF, 0x55], dtype=torch.uint8), 7, "2bit")
    # one byte too many, a tensor that is not uint8, and a code outside {-1, 0, 1} on the way in (mutants dropping
    # each check survived the mutation audit)
    with pytest.raises(ValueError, match="3 packed bytes for 7 weights, expected 2"):
        unpack(torch.cat([good, torch.tensor([121], dtype=torch.uint8)]), 7)
    with pytest.raises(ValueError, match="1-D uint8"):
        unpack(good.to(torch.int16), 7)
    for wrong in (-2, 2):
        with pytest.raises(ValueError, match="ternary codes must be in"):
            pack(torch.tensor([0, wrong], dtype=torch.int8))
    with pytest.raises(ValueError, match=r"\{-1, 0, 1\}"):
        pack(torch.tensor([2], dtype=torch.int8))


# -- BitLinear ----------------------------------------------------------------------------------------------
def test_ste_passes_gradients_through_both_quantizers():
    torch.manual_seed(0)
    lin = nn.Linear(6, 4)
    layer = BitLinear.from_linear(lin)
    x = torch.randn(3, 6, requires_grad=True)
    layer(x).sum().backward()
    codes, gamma = ternarize(lin.weight)
    wq = codes.float() * gamma
    q, s = quantize_activations(x.detach())
    xq = q * s
    # straight through: the gradients are those of F.linear at the quantized values
    assert torch.allclose(layer.weight.grad, torch.ones(3, 4).t() @ xq, atol=1e-6)
    assert torch.allclose(x.grad, torch.ones(3, 4) @ wq, atol=1e-6)
    assert torch.allclose(layer.bias.grad, torch.full((4,), 3.0))
    assert layer.weight.grad.abs().sum() > 0


def test_bitlinear_forward_is_the_quantized_product_and_frozen_matches():
    torch.manual_seed(1)
    lin = nn.Linear(16, 8)
    layer = BitLinear.from_linear(lin)
    x = torch.randn(2, 5, 16)
    codes, gamma = ternarize(lin.weight)
    q, s = quantize_activations(x)
    want = torch.nn.functional.linear(q * s, codes.float() * gamma, lin.bias)
    with torch.no_grad():
        assert torch.allclose(layer(x), want, atol=1e-5)
        frozen = BitLinear.from_ternary(codes, gamma, lin.bias.detach())
        assert frozen.weight is None and torch.allclose(frozen(x), want, atol=1e-5)
        BitLinear.int8_kernel = False  # the float fallback kernel gives the same numbers
        try:
            assert torch.allclose(frozen(x), want, atol=1e-5)
        finally:
            BitLinear.int8_kernel = True


def test_bitlinear_per_channel_frozen_matches_trainable():
    torch.manual_seed(2)
    layer = BitLinear.from_linear(nn.Linear(12, 5, bias=False), per_channel=True)
    x = torch.randn(7, 12)
    with torch.no_grad():
        y = layer(x)
        layer.freeze()
        assert layer.gamma.shape == (5, 1)
        assert torch.allclose(layer(x), y, atol=1e-5)


def test_bitlinear_without_activation_quantization_keeps_its_bias_when_frozen():
    """act_bits=None (ternary weights, float activations): frozen, the output is F.linear(x, gamma * codes, bias)
    with the bias (ones here) added, and equals the trainable layer's output."""
    torch.manual_seed(3)
    layer = BitLinear(4, 3, bias=True, act_bits=None)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(3, 4))
        layer.bias.fill_(1.0)
        x = torch.randn(5, 4)
        trainable = layer(x)
        layer.freeze()
        want = torch.nn.functional.linear(x, layer.gamma * layer.codes.float(), torch.ones(3))
        assert torch.allclose(layer(x), want, atol=1e-6) and torch.allclose(trainable, want, atol=1e-6)


def test_ste_ternarization_is_cached_until_the_weight_changes(monkeypatch):
    """One ternarization per weight version (the recursion calls a layer several times per forward), the
    same numbers as ternarizing at every call, and a fresh one after an in-place (optimizer) update."""
    from agentforge.quant import bitlinear

    torch.manual_seed(3)
    layer = BitLinear.from_linear(nn.Linear(8, 4))
    x = torch.randn(5, 8)
    calls = []
    real = bitlinear.ternarize
    monkeypatch.setattr(bitlinear, "ternarize", lambda *a, **k: calls.append(1) or real(*a, **k))

    def uncached():
        codes, gamma = real(layer.weight, layer.threshold, layer.per_channel)
        w = layer.weight + (dequantize(codes, gamma) - layer.weight).detach()
        q, s = quantize_activations(x)
        return torch.nn.functional.linear(x + (q * s - x).detach(), w, layer.bias)

    ys = [layer(x) for _ in range(3)]
    assert len(calls) == 1 and all(torch.equal(y, uncached()) for y in ys)
    ys[0].sum().backward()                            # gradients still reach the latent weight
    assert layer.weight.grad.abs().sum() > 0
    with torch.no_grad():
        layer.weight.add_(torch.randn(4, 8))          # what an optimizer step does
    y = layer(x)
    assert len(calls) == 2 and torch.equal(y, uncached()) and not torch.equal(y, ys[0])
    layer.threshold = 0.9                             # a changed threshold ternarizes again
    assert torch.equal(layer(x), uncached()) and len(calls) == 3


# -- conversion and checkpoint -----------------------------------------------------------------------------
def _small_model(seed=0):
    torch.manual_seed(seed)
    return CognateModel(SMALL).eval()


def test_convert_swaps_linears_and_leaves_preserved_layers_untouched():
    model = _small_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    names = convert_to_bitlinear(model)
    assert "lm_head" not in names and "blocks.0.attn.q_proj" in names
    # only plain nn.Linear layers are swapped: a subclass with its own forward (e.g. a halting head that
    # normalizes its input first) would lose that computation inside a BitLinear, so it stays full precision
    assert ("halt_head" in names) == (type(_small_model().halt_head) is nn.Linear)
    assert type(model.lm_head) is nn.Linear and type(model.embed) is nn.Embedding
    for key in ("embed.weight", "lm_head.weight", "norm.weight", "blocks.0.attn_norm.weight", "memory.values"):
        assert torch.equal(model.state_dict()[key], before[key])
    assert isinstance(model.blocks[0].mlp.down, BitLinear)
    rows = layer_stats(model)
    assert sum(r["original_params"] for r in rows) == sum(v.numel() for v in model.parameters())
    emb = next(r for r in rows if r["name"] == "embed")
    assert emb["quantized_params"] == 0 and emb["compression_ratio"] == pytest.approx(2.0)  # fp16 storage
    names2 = convert_to_bitlinear(_small_model(), preserved=["embed", "lm_head", "*norm", "memory.*", "halt_head"])
    assert not any(n.startswith("memory") or n == "halt_head" for n in names2)


def test_default_preserved_patterns_leave_exactly_lm_head_and_the_halting_head_full_precision_linears():
    """README, Phase 4: 'Every linear layer except embeddings, lm_head, norms and the halting head ... becomes a
    BitLinear' -- with the phase's default patterns, the Linear modules left in full precision are exactly those two."""
    from omegaconf import OmegaConf

    preserved = list(OmegaConf.load("conf/phase/bitnet.yaml").preserved_layers)
    model = _small_model()
    convert_to_bitlinear(model, preserved=preserved)
    full = {n for n, m in model.named_modules() if isinstance(m, nn.Linear) and not isinstance(m, BitLinear)}
    assert full == {"lm_head", "halt_head"}


def test_calibration_sets_clips_from_real_statistics():
    model = _small_model()
    rows = torch.randint(0, 40, (6, 9))
    names = [n for n, m in model.named_modules() if type(m) is nn.Linear and n != "lm_head"]
    progress = []
    stats = activation_stats(model, rows, names, batch_size=4, percentile=1.0,
                             on_batch=lambda done, running: progress.append((done, running)))
    st_q = stats["blocks.0.attn.q_proj"]
    assert st_q["tokens"] >= 6 * 8 and st_q["clip"] == pytest.approx(st_q["absmax_max"])
    # the running means reported per batch end at the final statistics
    assert [d for d, _ in progress] == [4, 6]
    assert progress[-1][1] == pytest.approx({n: st["absmax_mean"] for n, st in stats.items()})
    q = _small_model()
    convert_to_bitlinear(q)
    apply_clips(q, stats)
    assert q.blocks[0].attn.q_proj.act_clip.item() == pytest.approx(st_q["clip"])


@pytest.mark.parametrize("scheme", ["base3", "2bit"])
def test_packed_checkpoint_roundtrip_and_generation(tmp_path, scheme):
    model = _small_model()
    convert_to_bitlinear(model)
    ids = torch.randint(0, 40, (2, 10))
    with torch.no_grad():
        want = model(ids).logits
    save_packed(tmp_path / "c", model, ByteTokenizer(), scheme=scheme, preserved_dtype="float32")
    loaded, tok, cfg = load_any(tmp_path / "c")
    assert cfg["meta"]["quant"]["packing"] == scheme
    for name, layer in bitlinear_layers(model):
        c, g = layer.ternary()
        lc, lg = loaded.get_submodule(name).ternary()
        assert torch.equal(c, lc) and torch.equal(g, lg)
    assert torch.equal(loaded.embed.weight, model.embed.weight)
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, want, atol=1e-4)
    out = loaded.generate(ids[:1, :4], 5)
    assert out.shape == (1, 9)
    freeze(model)  # freezing keeps exactly the values that were packed
    assert all(torch.equal(layer.codes, loaded.get_submodule(n).codes) for n, layer in bitlinear_layers(model))


def test_corrupt_or_truncated_packed_file_fails_clearly(tmp_path):
    model = _small_model()
    convert_to_bitlinear(model)
    d = save_packed(tmp_path / "c", model, ByteTokenizer())
    f = d / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-10] ^= 0x01  # one flipped bit in the tensor data
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_packed(d)
    f.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_packed(d)
    (d / "config.json").unlink()
    with pytest.raises(CheckpointError, match="incomplete"):
        load_packed(d)


def test_static_activation_scale_and_tied_weights():
    torch.manual_seed(3)
    layer = BitLinear.from_linear(nn.Linear(8, 4), act_scale="static")
    x = torch.randn(5, 8)
    with pytest.raises(ValueError, match="calibrated"):
        layer(x)  # static scales need calibration first
    layer.act_clip.fill_(1.5)
    with torch.no_grad():
        y = layer(x)
        q, s = quantize_activations(x, clip=1.5, static=True)
        assert torch.equal(s, torch.full((5, 1), 1.5 / 127))
        layer.freeze()
        assert torch.allclose(layer(x), y, atol=1e-5)
    tied = CognateModel(CognateConfig(**{**SMALL.to_dict(), "tie_embeddings": True}))
    names = convert_to_bitlinear(tied, preserved=["*norm"])
    assert "lm_head" not in names and tied.lm_head.weight is tied.embed.weight


