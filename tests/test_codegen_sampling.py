"""Codegen sampling through the Cognate decoder: the prompt in one prefill, and the nucleus applied to the token the
prefill samples as to every later one."""
from __future__ import annotations

import torch

from agentforge.codegen.sampling import sample


def _lm():
    from agentforge.artifacts import cognate_config_from
    from agentforge.codegen import models
    from agentforge.data.tokenizer import RESERVED_VOCAB
    from agentforge.models import CognateModel

    size = {"d_model": 32, "n_layers": 1, "n_heads": 2, "ffn_hidden": 64, "window": 16, "max_seq_len": 64,
            "ltm_key_dim": 8, "ltm_slots": 4, "max_steps": 2}
    torch.manual_seed(0)
    return models.byte_lm("m", "", CognateModel(cognate_config_from(size, RESERVED_VOCAB)).eval(), 64)


def test_cognate_sampling_reads_the_prompt_in_one_prefill(monkeypatch):
    """The nucleus wrapper keeps the Cognate decoder's prefill: a 40-token prompt and 8 new tokens take one
    ``extend`` and 7 decoder steps (it took 47 steps when the wrapper dropped the prefill), same tokens as
    feeding the prompt one step at a time."""
    from agentforge.models.kv_cache import CognateDecoder

    lm = _lm()
    prompt = "def f(x):\n    " + "y = x\n    " * 2 + "retur"   # BOS + 39 bytes
    assert len(lm.encode(prompt)) == 40
    calls = {"step": 0, "extend": 0}
    for name in calls:
        real = getattr(CognateDecoder, name)

        def counted(self, *a, _real=real, _name=name, **k):
            calls[_name] += 1
            return _real(self, *a, **k)
        monkeypatch.setattr(CognateDecoder, name, counted)
    got = sample(lm, prompt, 2, max_new_tokens=8, stop=(), temperature=0.0)
    assert calls == {"step": 7, "extend": 1}
    monkeypatch.setattr(CognateDecoder, "prefill", lambda self, ids: self.next_logits(ids))   # the old path
    assert sample(lm, prompt, 2, max_new_tokens=8, stop=(), temperature=0.0).completions == got.completions
    assert calls == {"step": 7 + 47, "extend": 1}


def test_the_prefilled_first_token_is_sampled_from_the_nucleus():
    """top_p 1e-6 keeps the single most likely token: 20 samples at temperature 1 of one new token are all the greedy
    token (the prefill's logits went unmasked in a mutant: the first token then drew from the whole softmax)."""
    lm = _lm()
    greedy = sample(lm, "def f(x):\n", 1, max_new_tokens=1, stop=(), temperature=0.0).completions[0]
    got = sample(lm, "def f(x):\n", 20, max_new_tokens=1, stop=(), temperature=1.0, top_p=1e-6, seed=1).completions
    assert set(got) == {greedy}
    assert len(set(sample(lm, "def f(x):\n", 20, max_new_tokens=1, stop=(), temperature=1.0, top_p=1.0,
                          seed=1).completions)) > 1   # without the nucleus the draws differ
