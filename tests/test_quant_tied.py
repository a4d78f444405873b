"""A tied embedding (``model.tie_embeddings``) is stored once in the packed file and in the fp32 reference the
compression ratio is measured against (``quant.checkpoint.unique_state``), and re-tied on loading; the whole-model
zero counts (``quant.convert.zero_counts``: BitNet's sparsity_overall / zero_params / nonzero_params) count it once."""
from __future__ import annotations

import torch
from torch import nn

from agentforge.data.tokenizer import ByteTokenizer
from agentforge.models import CognateConfig, CognateModel
from agentforge.quant.checkpoint import load_packed, packed_tensors, save_packed, unique_state
from agentforge.quant.convert import convert_to_bitlinear, freeze, zero_counts

TIED = CognateConfig(vocab_size=40, d_model=16, n_layers=1, n_heads=2, ffn_hidden=24, window=8, max_seq_len=32,
                     max_steps=2, ltm_slots=4, ltm_key_dim=8, tie_embeddings=True)


def test_a_tied_embedding_is_stored_once_and_re_tied_on_loading(tmp_path):
    torch.manual_seed(0)
    model = CognateModel(TIED).eval()
    full = model.state_dict()
    assert "lm_head.weight" in full and full["lm_head.weight"].data_ptr() == full["embed.weight"].data_ptr()
    state = unique_state(model)
    # counted once: the reference is smaller by exactly the duplicate's bytes (it was in both files)
    assert set(full) - set(state) == {"lm_head.weight"} and "embed.weight" in state
    untied = CognateModel(CognateConfig(**{**TIED.to_dict(), "tie_embeddings": False}))
    assert set(unique_state(untied)) == set(untied.state_dict())   # nothing dropped without tying
    convert_to_bitlinear(model)
    tensors, _ = packed_tensors(model)
    assert "lm_head.weight" not in tensors and "embed.weight" in tensors
    ids = torch.randint(0, 40, (2, 10))
    with torch.no_grad():
        want = model(ids).logits
    loaded, _, _ = load_packed(save_packed(tmp_path / "c", model, ByteTokenizer(), preserved_dtype="float32"),
                               choose_kernel=False)
    assert loaded.lm_head.weight is loaded.embed.weight
    assert torch.equal(loaded.embed.weight, model.embed.weight)
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, want, atol=1e-4)


class _Hand(nn.Module):
    """16 parameters whose zeros are counted by hand: a tied 4x2 embedding / lm_head, a 2x2 linear with bias, a norm."""

    def __init__(self):
        super().__init__()
        self.embed, self.lin, self.lm_head = nn.Embedding(4, 2), nn.Linear(2, 2), nn.Linear(2, 4, bias=False)
        self.lm_head.weight = self.embed.weight
        self.norm = nn.Parameter(torch.tensor([1.0, 0.0]))
        with torch.no_grad():
            self.embed.weight.copy_(torch.tensor([[0.0, 1.0], [2.0, 0.0], [0.0, 0.0], [3.0, 4.0]]))  # 4 zeros
            # gamma = mean|W| = 0.525; |W| / gamma <= 0.5 -> 0: codes [[1, 0], [-1, 0]], 2 zeros (the latent has 1)
            self.lin.weight.copy_(torch.tensor([[1.0, 0.1], [-1.0, 0.0]]))
            self.lin.bias.copy_(torch.tensor([0.0, 0.5]))                                             # 1 zero


def test_whole_model_zero_counts_by_hand_count_each_tensor_once_and_the_ternary_weights_as_codes():
    model = _Hand()
    assert sum(p.numel() for p in model.parameters()) == 16   # 8 (embedding = lm_head) + 4 + 2 + 2
    assert zero_counts(model) == {"params": 16, "zeros": 7, "ternary_params": 0, "ternary_zeros": 0}  # no BitLinear
    assert convert_to_bitlinear(model) == ["lin"]   # lm_head shares the embedding's weight: kept full precision
    want = {"params": 16, "zeros": 4 + 2 + 1 + 1, "ternary_params": 4, "ternary_zeros": 2}
    assert zero_counts(model) == want   # latent weights: counted as their ternary codes
    freeze(model)
    assert zero_counts(model) == want   # frozen: the int8 codes are the parameter
    assert want["zeros"] + (want["params"] - want["zeros"]) == sum(p.numel() for p in model.parameters())


def test_zero_counts_of_a_tied_cognate_model_total_its_parameter_count(tmp_path):
    torch.manual_seed(0)
    model = CognateModel(TIED).eval()
    names = convert_to_bitlinear(model)
    c = zero_counts(model)
    assert c["params"] == model.num_params() < sum(v.numel() for k, v in model.named_parameters(remove_duplicate=False))
    assert c["ternary_params"] == sum(model.get_submodule(n).weight.numel() for n in names) < c["params"]
    loaded, _, _ = load_packed(save_packed(tmp_path / "c", model, ByteTokenizer()), choose_kernel=False)
    got = zero_counts(loaded)   # the packed model (preserved tensors in float16): same count, same ternary zeros
    assert got["params"] == c["params"] and got["ternary_zeros"] == c["ternary_zeros"]
    assert got["zeros"] == sum(int((p == 0).sum()) for p in loaded.parameters())


def test_which_quantized_projections_read_a_normalized_input():
    """The stated SubLN deviation (quant/bitlinear.py, README): with the default preserved layers, q/k/v and the MLP's
    gate/up read an RMS-normalized input (RMS 1 per token at the norms' initial weight 1); o, down and the memory's
    query/value/gate/out read unnormalized activations, where BitNet b1.58 puts a SubLN."""
    from agentforge.models import CognateConfig, CognateModel
    from agentforge.quant.bitlinear import BitLinear
    from agentforge.quant.convert import convert_to_bitlinear

    torch.manual_seed(0)
    model = CognateModel(CognateConfig(d_model=32, n_layers=2, n_heads=2, ffn_hidden=64, window=8, max_seq_len=64,
                                       ltm_slots=8, ltm_key_dim=8, ltm_chunk=4, max_steps=2)).eval()
    convert_to_bitlinear(model)
    rms: dict[str, float] = {}
    for name, m in model.named_modules():
        if isinstance(m, BitLinear):
            m.register_forward_pre_hook(lambda mod, a, name=name: rms.__setitem__(name, max(
                rms.get(name, 0.0), float((a[0].float().pow(2).mean(-1).sqrt() - 1).abs().max()))))
    with torch.no_grad():
        model(torch.randint(0, 256, (2, 24)))
    normalized = {n for n, dev in rms.items() if dev < 1e-2}       # the norms' eps leaves ~5e-4
    assert normalized == {f"blocks.{i}.{p}" for i in range(2) for p in ("attn.q_proj", "attn.k_proj", "attn.v_proj",
                                                                        "mlp.gate", "mlp.up")}
    assert set(rms) - normalized == {*(f"blocks.{i}.{p}" for i in range(2) for p in ("attn.o_proj", "mlp.down")),
                                     "memory.query", "memory.value", "memory.gate", "memory.out"}
