"""Incremental decoding of a Cognate model: a key/value cache per recursion step and layer, and the
slot memory's per-sequence state per recursion step.

Why it computes the full forward's function (the same ops, equal up to float rounding — the tests compare
logits to 1e-5 and greedy tokens exactly): every operation of the model is causal, so the state a past position contributes at
recursion step n — its keys/values in each layer, the memory bank after the chunks before the current
one — never changes once computed. ``CognateDecoder.step`` runs one new position through all
``max_steps`` recursion steps (the same ops as ``CognateModel.forward`` on that position: input
re-injection, the blocks, the memory read, the halting rule) and keeps what later positions need:

* attention: the last ``window`` keys/values of each layer at each step (``CausalSelfAttention.decode``);
* memory: the bank (keys, values, filled, last use) as of the last completed chunk, plus the current
  chunk's keys, values, surprises and per-slot max read weight, and the previous position's query
  (``prev``: the next position's key, ``SurpriseMemory.project``); when the chunk completes it is written
  with the model's own ``SurpriseMemory.end_chunk``, exactly as ``SurpriseMemory.read`` does between chunks.

A position always runs every step (a later token may halt later and attend to it at that step); its
output is the latent at its halting step, as in the full forward. Positions are absolute from the start
of the prompt, so the cache serves sequences up to ``max_seq_len``; ``generate`` falls back to the
uncached loop for longer ones (the uncached path then slides its window and shifts every position).
"""
from __future__ import annotations

import torch

from agentforge.models.layers import apply_rope


class CognateDecoder:
    """Decoding state of one batch of sequences; ``next_logits(ids)`` feeds the ids it has not seen yet."""

    def __init__(self, model, batch: int):
        self.model, c, mem = model, model.config, model.memory
        self.n_steps = model._steps_override or c.max_steps
        self.attn = [[{} for _ in model.blocks] for _ in range(self.n_steps)]
        self.mem = [{"keys": mem.keys.expand(batch, -1, -1), "vals": mem.values.expand(batch, -1, -1),
                     "filled": mem.filled.expand(batch, -1), "chunk": [], "amax": None, "c": 0, "prev": None,
                     "last": torch.zeros(batch, mem.slots, device=mem.keys.device)} for _ in range(self.n_steps)]
        self.pos = 0

    @torch.no_grad()
    def next_logits(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits [B, V] after the last id of ``ids`` [B, T], feeding ids[:, pos:] one position at a time
        (``fill`` takes a whole prompt in one forward pass instead)."""
        logits = None
        for i in range(self.pos, ids.shape[1]):
            logits = self.step(ids[:, i])
        return logits

    @torch.no_grad()
    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        """``next_logits`` for a fresh decoder's prompt ids [B, P] from one forward pass (``fill``) instead of P
        decoder steps (a 64-token prompt, default tiny model, 1 CPU thread: 20 vs 209 ms, medians of 5 at load
        1.8); per position with ``memory.persist`` (the forward would write the bank this decoder started from)."""
        if self.pos != 0 or self.model.memory.persist:
            return self.next_logits(ids)
        return fill(self, ids).logits[:, -1]

    @torch.no_grad()
    def step(self, token: torch.Tensor) -> torch.Tensor:
        m = self.model
        e = m.embed(token[:, None])
        z = e
        cos, sin = m.rope_cos[self.pos:self.pos + 1], m.rope_sin[self.pos:self.pos + 1]
        b = e.shape[0]
        cum = torch.zeros(b, 1, device=e.device, dtype=e.dtype)
        not_halted = torch.ones_like(cum)
        halted = torch.zeros(b, 1, device=e.device, dtype=torch.bool)
        output = torch.zeros_like(e)
        for n in range(self.n_steps):
            h = z + e
            for blk, cache in zip(m.blocks, self.attn[n]):
                h = blk.decode(h, cos, sin, cache)
            z = self._memory(h, self.mem[n])
            _, cum, not_halted, halts_now = m._halt(z, n == self.n_steps - 1, cum, not_halted, halted)
            output = torch.where(halts_now[..., None], z, output)
            halted = halted | halts_now
        self.pos += 1
        self.hidden = output[:, -1]  # halted output state [B, D] (CognateOutput.hidden), for Quiet-STaR's head
        return m.lm_head(m.norm(output))[:, -1]

    def _memory(self, h: torch.Tensor, st: dict) -> torch.Tensor:
        """``SurpriseMemory.read`` for one new position h [B, 1, D] (reads the bank of completed chunks)."""
        mem = self.model.memory
        if not mem.enabled:
            return h
        first = st["prev"] is None                      # the sequence's first position: no previous state
        q, k, v = mem.project(h, st["prev"])
        st["prev"] = q
        beta, keys, vals = mem.log_beta.exp(), st["keys"].to(k.dtype), st["vals"].to(v.dtype)
        attn = mem._attend(beta, q, keys, st["filled"])
        r = attn @ vals
        s = mem.surprise(beta, k, v, keys, vals, st["filled"])
        st["chunk"].append((k, v, mem.write_scores(s, first)))
        st["amax"] = attn.amax(1) if st["amax"] is None else torch.maximum(st["amax"], attn.amax(1))
        if len(st["chunk"]) == mem.chunk:  # the chunk is complete: write it, as read() does between chunks
            now = float(st["c"] + 1)
            kc, vc, sc = (torch.cat(x, 1) for x in zip(*st["chunk"]))
            st["keys"], st["vals"], st["filled"], st["last"] = mem.end_chunk(kc, vc, sc, st["amax"], st["keys"],
                                                                             st["vals"], st["filled"], st["last"], now)
            st["chunk"], st["amax"], st["c"] = [], None, st["c"] + 1
        return mem.merge(h, r)


@torch.no_grad()
def fill(dec: CognateDecoder, ids: torch.Tensor):
    """Fill a fresh decoder ``dec`` from one forward pass over ids [B, P] (every recursion step on every
    position, state read through forward hooks); returns the forward's ``CognateOutput``."""
    model = dec.model
    b, t = ids.shape
    layers = [blk.attn for blk in model.blocks]
    ks, vs, hs = [[] for _ in layers], [[] for _ in layers], []
    hooks = [model.memory.query.register_forward_hook(lambda m, i, o: hs.append(i[0]))]
    for li, attn in enumerate(layers):
        hooks.append(attn.k_proj.register_forward_hook(lambda m, i, o, li=li: ks[li].append(o)))
        hooks.append(attn.v_proj.register_forward_hook(lambda m, i, o, li=li: vs[li].append(o)))
    try:
        # targets: every step on every row, as the decoder keeps them; .forward: eager even when the model
        # was torch.compile'd in place (hooks added per call would make the compiled graph recompile)
        was_training = model.training
        model.eval()  # no training-time statistics from a decoding pass
        out = model.forward(ids, targets=ids)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    cos, sin = model.rope_cos[:t], model.rope_sin[:t]
    for n in range(dec.n_steps):
        for li, attn in enumerate(layers):
            k, v = (x[n].view(b, t, attn.n_heads, attn.head_dim).transpose(1, 2) for x in (ks[li], vs[li]))
            dec.attn[n][li].update(k=apply_rope(k, cos, sin)[:, :, -attn.window:], v=v[:, :, -attn.window:])
        if model.memory.enabled:
            _memory_state(model.memory, hs[n], dec.mem[n])
    dec.pos, dec.hidden = t, out.hidden[:, -1]
    return out


def _memory_state(mem, h: torch.Tensor, st: dict) -> None:
    """Fill the decoder's memory state ``st`` of one step from the memory inputs h [B, P, D]."""
    t = h.shape[1]
    q, k, v = mem.project(h)
    beta = mem.log_beta.exp()
    keys, vals, filled, last = st["keys"].to(k.dtype), st["vals"].to(v.dtype), st["filled"], st["last"]
    for c, start in enumerate(range(0, t, mem.chunk)):
        kc, vc = k[:, start:start + mem.chunk], v[:, start:start + mem.chunk]
        attn = mem._attend(beta, q[:, start:start + mem.chunk], keys, filled)
        s = mem.write_scores(mem.surprise(beta, kc, vc, keys, vals, filled), start == 0)
        if start + mem.chunk > t:  # the open chunk: kept per position until it completes
            st["chunk"] = list(zip(kc.split(1, 1), vc.split(1, 1), s.split(1, 1)))
            st["amax"] = attn.amax(1)
            break
        keys, vals, filled, last = mem.end_chunk(kc, vc, s, attn.amax(1), keys, vals, filled, last, float(c + 1))
        st["c"] = c + 1
    st.update(keys=keys, vals=vals, filled=filled, last=last, prev=q[:, -1:])
