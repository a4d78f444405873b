"""Prefill of the Cognate KV cache (``models/kv_cache.py``) from one forward pass, for thought sampling.

``CognateDecoder.next_logits`` feeds a prompt one position at a time, every recursion step and layer
per position. A thought is sampled after a prefix of ``context_len`` tokens, so feeding the prefix that
way would cost more than the uncached forward passes it replaces. ``prefill(model, ids)`` runs the model
once over ids [B, P], with every recursion step on every position (``targets`` given, as in training:
the decoder needs each step's keys/values of every past position, halted or not), and reads through
forward hooks the state the decoder would have built position by position:

* attention, per step and layer: the outputs of ``k_proj`` / ``v_proj``, split into heads and rotated
  with the positions' RoPE angles as ``CausalSelfAttention.forward`` does; the last ``window`` kept;
* memory, per step: the memory's input h (hook on its query projection). The bank after the last
  completed chunk is rebuilt with the memory's own ``_attend`` / ``_write`` in the chunk order of
  ``SurpriseMemory.read``; the open chunk's keys, values, surprises and max read weights are the ones
  ``CognateDecoder._memory`` accumulates.

The test (tests/test_thought_cache.py) checks that prefill + decode steps give the full forward's logits.
"""
from __future__ import annotations

import torch

from agentforge.models.cognate import CognateModel
from agentforge.models.layers import apply_rope


def cacheable(model, total_len: int) -> bool:
    """True when ``prefill`` serves ``model`` for sequences of ``total_len`` tokens (a Cognate model,
    positions inside its RoPE table); other models take the uncached path."""
    return isinstance(model, CognateModel) and total_len <= model.config.max_seq_len


@torch.no_grad()
def prefill(model: CognateModel, ids: torch.Tensor):
    """(decoder at position P, the forward's ``CognateOutput``) for ids [B, P]; the model in eval mode."""
    b, t = ids.shape
    dec = model.kv_decoder(b)
    layers = [blk.attn for blk in model.blocks]
    ks, vs, hs = [[] for _ in layers], [[] for _ in layers], []
    hooks = [model.memory.query.register_forward_hook(lambda m, i, o: hs.append(i[0]))]
    for li, attn in enumerate(layers):
        hooks.append(attn.k_proj.register_forward_hook(lambda m, i, o, li=li: ks[li].append(o)))
        hooks.append(attn.v_proj.register_forward_hook(lambda m, i, o, li=li: vs[li].append(o)))
    try:
        # targets: every step on every row, as the decoder keeps them; .forward: eager even when the model
        # was torch.compile'd in place (hooks added per call would make the compiled graph recompile)
        out = model.forward(ids, targets=ids)
    finally:
        for h in hooks:
            h.remove()
    cos, sin = model.rope_cos[:t], model.rope_sin[:t]
    for n in range(dec.n_steps):
        for li, attn in enumerate(layers):
            k, v = (x[n].view(b, t, attn.n_heads, attn.head_dim).transpose(1, 2) for x in (ks[li], vs[li]))
            dec.attn[n][li].update(k=apply_rope(k, cos, sin)[:, :, -attn.window:], v=v[:, :, -attn.window:])
        if model.memory.enabled:
            _memory_state(model.memory, hs[n], dec.mem[n])
    dec.pos = t
    return dec, out


def _memory_state(mem, h: torch.Tensor, st: dict) -> None:
    """Fill the decoder's memory state ``st`` of one step from the memory inputs h [B, P, D]."""
    t = h.shape[1]
    q, k, v = mem.project(h)
    beta = mem.log_beta.exp()
    keys, vals, filled, last = st["keys"].to(k.dtype), st["vals"].to(v.dtype), st["filled"], st["last"]
    for c, start in enumerate(range(0, t, mem.chunk)):
        kc, vc = k[:, start:start + mem.chunk], v[:, start:start + mem.chunk]
        attn = mem._attend(beta, q[:, start:start + mem.chunk], keys, filled)
        s = mem.surprise(beta, kc, vc, keys, vals, filled)
        if start + mem.chunk > t:  # the open chunk: kept per position until it completes
            st["chunk"] = list(zip(kc.split(1, 1), vc.split(1, 1), s.split(1, 1)))
            st["amax"] = attn.amax(1)
            break
        last = torch.where(attn.amax(1) > 0.5, float(c + 1), last)
        keys, vals, filled, last = mem._write(kc, vc, s, keys, vals, filled, last, float(c + 1))
        st["c"] = c + 1
    st.update(keys=keys, vals=vals, filled=filled, last=last)


def repeat_rows(dec, k: int):
    """The decoder with each row repeated ``k`` times (row i -> rows i*k .. i*k+k-1, as repeat_interleave):
    one prefill per context serves its ``k`` thoughts."""
    def rep(x):
        return x.repeat_interleave(k, 0) if torch.is_tensor(x) else x

    for step in dec.attn:
        for cache in step:
            cache.update({name: rep(x) for name, x in cache.items()})
    for st in dec.mem:
        st.update({name: rep(st[name]) for name in ("keys", "vals", "filled", "last", "amax")})
        st["chunk"] = [tuple(rep(x) for x in entry) for entry in st["chunk"]]
    return dec
