"""Incremental decoding of a Cognate model: a key/value cache per recursion step and layer, and the
slot memory's per-sequence state per recursion step; differentiable, so a cached context can be extended
with gradients flowing back into it.

Why it computes the full forward's function (the same ops, equal up to float rounding — tests/test_kv_extend.py
compares logits to 1e-5 and, in float64, parameter gradients to 1e-9 relative; tests/test_speed.py greedy tokens
exactly): every operation of the model is causal,
so the state a past position contributes at recursion step n — its keys/values in each layer, the memory
bank after the chunks before the current one — never changes once computed. ``CognateDecoder.extend``
runs T new positions through all ``max_steps`` recursion steps at once (the ops of ``CognateModel.forward``
on those positions: input re-injection, the blocks, the memory, the halting rule) and keeps what later
positions need:

* attention: the last ``window`` keys/values of each layer at each step; the new positions attend to them
  and, causally within the window, to each other (``CausalSelfAttention.decode``);
* memory: ``SurpriseMemory.scan``'s state — the bank as of the last completed chunk, the open chunk's keys,
  values, write scores and max read weights, the previous position's query and read; ``read`` runs the same loop.

A position always runs every step (a later token may halt later and attend to it at that step); its
output is the latent at its halting step, as in the full forward. Run with autograd on, the state keeps its
graph: a loss on a later extension reaches the parameters through the cached keys, values and bank
(``copy`` branches a state: repeated rows, or detached for sampling; ``extend_branches`` runs several
branches of one state as one padded batch). ``extend`` computes the eval-mode
forward: TRM's no-grad early steps and QK-clip's max-logit statistics are training-mode features it does
not have, and it refuses ``model.memory.persist`` (the forward would write the bank this decoder started from).
Positions are absolute from the start of the prompt, so the cache serves sequences up to
``max_seq_len``; ``generate`` falls back to the uncached loop for longer ones.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.utils._pytree import tree_flatten, tree_unflatten

from agentforge.models import graphs

MAX_STEP_GRAPHS = 64              # decoder-step graphs per model (a prompt's first window of positions, then `chunk`)
MAX_STEP_GRAPH_BYTES = 1 << 30    # their static inputs and outputs (the KV cache of every step and layer), per model


class Extension(NamedTuple):
    logits: torch.Tensor  # [B, T, V]
    hidden: torch.Tensor  # [B, T, D] halted output state (CognateOutput.hidden)


class CognateDecoder:
    """Decoding state of one batch of sequences; ``extend(ids)`` appends positions, ``step(token)`` one."""

    def __init__(self, model, batch: int):
        self.model = model
        self.n_steps = model._steps_override or model.config.max_steps
        self.attn = [[{} for _ in model.blocks] for _ in range(self.n_steps)]
        self.mem = [model.memory.init_state(batch) for _ in range(self.n_steps)]
        self.pos = 0

    @torch.no_grad()
    def next_logits(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits [B, V] after the last id of ``ids`` [B, T], feeding ids[:, pos:] one position at a time
        (``prefill`` takes a whole prompt at once instead)."""
        logits = None
        for i in range(self.pos, ids.shape[1]):
            logits = self.step(ids[:, i])
        return logits

    @torch.no_grad()
    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        """``next_logits`` for a fresh decoder's prompt ids [B, P] in one pass (``extend``) instead of P
        decoder steps; per position with ``model.memory.persist`` (which ``extend`` refuses)."""
        if self.pos != 0 or self.model.memory.persist:
            return self.next_logits(ids)
        return self.extend(ids).logits[:, -1]

    @torch.no_grad()
    def step(self, token: torch.Tensor) -> torch.Tensor:
        """Logits [B, V] after one new token [B]; ``self.hidden`` is its halted output state [B, D]. On a GPU (an
        eval-mode model) the step is replayed from a CUDA graph (``graphed_step``)."""
        if graphs.usable(token) and not self.model.training:
            return self.graphed_step(token)
        return self._run(token[:, None]).logits[:, -1]

    def graphed_step(self, token: torch.Tensor) -> torch.Tensor:
        """``step`` as a pure function of tensors, (token, rotary angles, the state's tensors) -> (logits, hidden,
        new state), replayed through ``graphs.cached_call``: ~400 kernel launches become one (plus a copy in and
        out per dtype). Its key holds everything the step's Python control flow reads: the state's structure
        (``tree_flatten``: an empty cache, an open chunk) and shapes (the window not yet full, the open chunk's
        length), the recursion steps, halting and memory switches, autocast/inference mode and the weights'
        addresses (a model moved or reloaded gets new graphs). The position enters as tensors (its rotary rows),
        and the memory's completed-chunk count becomes a 0-d tensor here, so once the window is full a long
        generation cycles through ``chunk`` graphs. The same function runs eagerly until a key recurs."""
        m = self.model
        for st in self.mem:   # a Python int would be frozen into the graph
            if not torch.is_tensor(st["c"]):
                st["c"] = torch.full((), float(st["c"]), device=token.device)   # a fill: no host-to-device copy
        leaves, spec = tree_flatten((self.attn, self.mem))
        where = [i for i, x in enumerate(leaves) if torch.is_tensor(x)]
        args = (token, m.rope_cos[self.pos:self.pos + 1], m.rope_sin[self.pos:self.pos + 1], *(leaves[i] for i in where))

        def fn(token, cos, sin, *state):
            full = list(leaves)
            for i, x in zip(where, state):
                full[i] = x
            dec = object.__new__(CognateDecoder)
            dec.model, dec.n_steps, dec.pos = m, self.n_steps, self.pos
            dec.attn, dec.mem = tree_unflatten(full, spec)
            logits = dec._run(token[:, None], (cos, sin)).logits[:, -1]
            return logits, dec.hidden, (dec.attn, dec.mem)

        weights = tuple(t.data_ptr() for t in (*m.parameters(), *m.buffers()))
        key = (spec, graphs.metas(args), tuple(x for x in leaves if not torch.is_tensor(x)), self.n_steps,
               m._halting, m.memory.enabled, graphs.modes(token.device.type), weights)
        logits, self.hidden, (self.attn, self.mem) = graphs.cached_call(m, key, fn, args, MAX_STEP_GRAPHS,
                                                                        MAX_STEP_GRAPH_BYTES, kind="decode_step")
        self.pos += 1
        return logits

    def extend(self, ids: torch.Tensor) -> Extension:
        """(logits, halted hidden states) of T new positions ids [B, T] after the ones fed before, all in one
        pass per recursion step; with autograd when it is enabled. T = 0 returns empty [B, 0, ...] outputs."""
        if self.model.memory.persist:
            raise ValueError("memory.persist: the KV cache cannot extend a sequence whose forward writes the "
                             "persistent bank (run the model's forward instead)")
        if self.pos + ids.shape[1] > self.model.config.max_seq_len:
            raise ValueError(f"positions up to {self.pos + ids.shape[1]} exceed model.max_seq_len="
                             f"{self.model.config.max_seq_len}")
        if ids.shape[1] == 0:  # no new position: empty outputs, the state unchanged (the memory's scan needs one)
            e = self.model.embed(ids)
            return Extension(self.model.lm_head(self.model.norm(e)), e)
        return self._run(ids)

    def _run(self, ids: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> Extension:
        m = self.model
        b, t = ids.shape
        e = m.embed(ids)
        z = e
        cos, sin = rope if rope is not None else (m.rope_cos[self.pos:self.pos + t], m.rope_sin[self.pos:self.pos + t])
        cum = torch.zeros(b, t, device=e.device, dtype=e.dtype)
        not_halted = torch.ones_like(cum)
        halted = torch.zeros(b, t, device=e.device, dtype=torch.bool)
        output = torch.zeros_like(e)
        for n in range(self.n_steps):
            h = z + e
            for blk, cache in zip(m.blocks, self.attn[n]):
                h = blk.decode(h, cos, sin, cache)
            z, _ = m.memory.scan(h, self.mem[n])
            _, cum, not_halted, halts_now = m._halt(z, n == self.n_steps - 1, cum, not_halted, halted)
            output = torch.where(halts_now[..., None], z, output)
            halted = halted | halts_now
        self.pos += t
        self.hidden = output[:, -1]  # the last position's halted state [B, D], for Quiet-STaR's head
        return Extension(m.lm_head(m.norm(output)), output)

    def extend_branches(self, *branches: tuple[torch.Tensor, int]) -> list[Extension]:
        """Several extensions of this state in one ``extend`` call: each branch (ids [B * r, T_i], r) continues
        every row r times (rows i*r .. i*r+r-1 continue row i, as repeat_interleave). The rows of all branches
        run as one batch from a copy of the state with each row repeated sum(r) times, every branch padded at
        the end to the longest T_i (every op is causal, so padding changes no earlier position); returns one
        (logits, hidden) per branch, [B * r, T_i, ...]. This decoder is left as it is."""
        b, reps = self.mem[0]["last"].shape[0], [r for _, r in branches]
        width = max(ids.shape[1] for ids, _ in branches)
        ids = torch.cat([F.pad(ids, (0, width - ids.shape[1])).view(b, r, width) for ids, r in branches], 1)
        out = self.copy(repeat=sum(reps)).extend(ids.flatten(0, 1))
        parts = [x.view(b, sum(reps), width, x.shape[-1]).split(reps, 1) for x in out]
        return [Extension(*(p[j].flatten(0, 1)[:, :ids_j.shape[1]] for p in parts))
                for j, (ids_j, _) in enumerate(branches)]

    def copy(self, repeat: int | torch.Tensor = 1, detach: bool = False) -> CognateDecoder:
        """A decoder at the same position with this one's state, each row repeated ``repeat`` times (row i ->
        rows i*repeat .. i*repeat+repeat-1, as repeat_interleave, differentiably; a tensor of counts [B]
        repeats row i counts[i] times), detached from the autograd graph with ``detach``; this decoder is
        left as it is, so two extensions can branch from one state."""
        same = isinstance(repeat, int) and repeat == 1

        def rep(x):
            if isinstance(x, tuple):
                return tuple(rep(y) for y in x)
            if not torch.is_tensor(x):
                return x
            x = x.detach() if detach else x
            return x if same or x.dim() == 0 else x.repeat_interleave(repeat.to(x.device) if torch.is_tensor(repeat) else repeat, 0)

        new = object.__new__(CognateDecoder)
        new.model, new.n_steps, new.pos = self.model, self.n_steps, self.pos
        new.attn = [[{name: rep(x) for name, x in cache.items()} for cache in step] for step in self.attn]
        new.mem = [{name: rep(x) for name, x in st.items()} for st in self.mem]
        if hasattr(self, "hidden"):
            new.hidden = rep(self.hidden)
        return new


def fill(dec: CognateDecoder, ids: torch.Tensor) -> Extension:
    """Fill a fresh decoder ``dec`` with ids [B, P] in one pass (``extend``); returns its (logits, hidden).
    With autograd on, the state keeps its graph (later extensions differentiate through it)."""
    if dec.pos != 0:
        raise ValueError(f"fill needs a fresh decoder (this one is at position {dec.pos})")
    return dec.extend(ids)
