"""A tied embedding (``model.tie_embeddings``) is stored once in the packed file and in the fp32 reference the
compression ratio is measured against (``quant.checkpoint.unique_state``), and re-tied on loading."""
from __future__ import annotations

import torch

from agentforge.data.tokenizer import ByteTokenizer
from agentforge.models import CognateConfig, CognateModel
from agentforge.quant.checkpoint import load_packed, packed_tensors, save_packed, unique_state
from agentforge.quant.convert import convert_to_bitlinear

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
