"""The attention layers' max-logit bookkeeping (``layers.max_logits``) runs only when the optimizer reads it:
``build_optimizer`` switches it on for an optimizer that runs QK-clip and off for every other one — in the Cognate
model and in both grokking models (the paper's reference decoder and the project's blocks)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from agentforge.models import CognateConfig, CognateModel
from agentforge.optim import build_optimizer

CONF = Path(__file__).resolve().parents[1] / "conf" / "optimizer"
TINY = dict(d_model=32, n_layers=2, n_heads=2, ffn_hidden=64, window=16, max_steps=2)


def _preset(name: str, **over) -> dict:
    return {**OmegaConf.to_container(OmegaConf.load(CONF / f"{name}.yaml")), **over}


@pytest.mark.parametrize("name, over, records", [
    ("muon_grokfast", {}, True),                    # the default preset clips (qk_clip 30)
    ("muon", {}, True),                             # Muon + QK-clip, no Grokfast
    ("muon_grokfast", {"qk_clip": None}, False),    # clipping switched off
    ("grokfast_adamw", {}, False),                  # never clips
    ("adamw", {}, False),                           # plain torch AdamW
])
def test_max_logits_are_recorded_only_for_an_optimizer_that_clips(name, over, records):
    torch.manual_seed(0)
    model = CognateModel(CognateConfig(**TINY)).train()
    cfg = _preset(name, **over)
    build_optimizer(model, cfg, total_steps=10)
    attn = model.attention_modules()
    assert [a.record_max_logit for a in attn] == [records] * len(attn)
    ids = torch.randint(0, 200, (2, 12))
    model(ids, ids).loss.backward()
    recorded = torch.stack([a.max_logit for a in attn])
    assert bool((recorded > 0).any()) == records    # a training pass fills the buffers only when clipping reads them


@pytest.mark.parametrize("kind", ["reference", "project"])
@pytest.mark.parametrize("name, records", [("adamw", False), ("muon_grokfast", True)])
def test_the_grokking_models_follow_the_switch_too(kind, name, records):
    from agentforge.models import grokking
    torch.manual_seed(0)
    model = grokking.MODELS[kind](11, d_model=32, n_layers=1, n_heads=2, ffn_hidden=64).train()
    build_optimizer(model, _preset(name), total_steps=10)
    attn = [m for m in model.modules() if hasattr(m, "record_max_logit")]
    assert attn and all(a.record_max_logit == records for a in attn)
    model(torch.randint(0, 11, (4, 2))).sum().backward()
    assert all(bool((a.max_logit > 0).any()) == records for a in attn)


def test_a_second_optimizer_without_clipping_turns_it_back_off():
    model = CognateModel(CognateConfig(**TINY)).train()
    build_optimizer(model, _preset("muon_grokfast"), total_steps=10)
    assert all(a.record_max_logit for a in model.attention_modules())
    build_optimizer(model, _preset("adamw"), total_steps=10)
    assert not any(a.record_max_logit for a in model.attention_modules())


def test_the_kv_cache_decode_records_what_the_whole_sequence_forward_records():
    """Quiet-STaR's RL step trains through KV-cache extensions (eval mode, autograd on): ``decode`` records the max
    logit of its new positions against the cached keys, inside the window; over a prompt and two extensions that is
    the whole sequence's max, which the explicit masked scores give by hand. Without autograd (sampling) nothing."""
    from agentforge.models.layers import CausalSelfAttention, causal_window_mask, rope_cache

    torch.manual_seed(0)
    attn = CausalSelfAttention(16, 2, window=4).eval()
    cos, sin = rope_cache(10, 8, 10000.0)
    x = torch.randn(2, 10, 16) * 3
    q, k, _ = attn.qkv(x, cos, sin)
    scores = (q @ k.transpose(-2, -1)).masked_fill(~causal_window_mask(10, 4), float("-inf")) / 8 ** 0.5
    explicit = scores.amax(dim=(0, 2, 3))
    attn(x, cos, sin)                                   # eval mode, autograd on: a training pass
    whole = attn.max_logit.clone()
    attn.reset_max_logit()
    cache: dict = {}
    for a, b in ((0, 3), (3, 4), (4, 10)):              # a prompt, one token, six tokens
        attn.decode(x[:, a:b], cos[a:b], sin[a:b], cache)
    torch.testing.assert_close(whole, explicit)
    torch.testing.assert_close(attn.max_logit, explicit)
    attn.reset_max_logit()
    with torch.no_grad():
        attn.decode(x[:, :3], cos[:3], sin[:3], {})
        attn(x, cos, sin)
    assert attn.max_logit.abs().sum() == 0              # inference records nothing
