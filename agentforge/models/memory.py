"""Per-sequence slot memory with surprise-gated causal writes and a MAG gate (after Titans, Behrouz et al. 2024).

Titans' "Memory as a Gate" (MAG) runs a sliding-window attention branch beside a long-term memory and
merges the two with a learned gate. Here the gate merges the memory's read into the attention stack's output
(the memory reads that output: serial, not beside it; ``cognate.py``, item 4). The long-term memory is a bank of
``slots`` key/value pairs that every sequence fills for itself while it is read, chunk by chunk (Titans computes
its memory update over chunks the same way, so a token only ever reads what earlier chunks stored).

This is NOT Titans' neural long-term memory, only its MAG gate. Titans' memory is a network (an MLP) whose
weights are trained at test time: each token takes a gradient step on the associative loss ||M(k_t) - v_t||^2,
its "surprise" is that gradient carried with momentum (S_t = eta_t S_{t-1} - theta_t grad), and a forgetting
gate decays the weights (M_t = (1 - alpha_t) M_{t-1} + S_t, a learned weight decay). Here the memory is a bank
of key/value slots: a write copies (k, v) of the tokens whose normalized prediction error clears
``surprise_threshold`` (a top-k per chunk), evicting the least recently used slot when full; there is no
test-time gradient step, no momentum of past surprise and no forgetting gate (a slot stays until LRU evicts
it). This is a simplification, not measured against Titans' neural memory: nothing in this project compared
the two. What it gives is a memory without an inner optimisation loop — a read is one softmax over the bank,
a write a copy — whose per-sequence state is a fixed-size tensor bank that the KV decoder can copy and that
``read`` can replay in one batched pass. The pieces in detail:

* induction layout: q_t = normalize(W_q h_t), and the key of position t is the PREVIOUS position's query,
  k_t = q_{t-1}; the value is its own, v_t = W_v h_t. An entry is then a (context -> what followed) pair,
  and a query made from the current context reads what followed the same context earlier — the layout of an
  induction head (Olsson et al. 2022, "In-context Learning and Induction Heads"), built in with a
  one-position token shift as in RWKV / H3. Two deviations from Titans, which stores (k_t, v_t) of the same
  token with separate W_K and W_Q: with same-token pairs a query finds the stored copy of its own token, not
  the token that followed it (recall beyond the window failed on the default run, issue 18: memory off −
  on −0.022 nats on the repeated digits); with separate W_K, W_Q the match of a context with itself is lost
  as soon as training moves the two apart (a tiny recall model read 0.5 of its weight from the right entry
  at init and 0.01 after 100 steps; with the shared projection it stays matched). The sequence's first
  position has no previous query (zero key) and is never written.
* values and output start as a projection: W_v with orthonormal rows, W_o = W_v^T, so a read returns the
  stored states' component in W_v's subspace (the product of two small random inits starts at a saddle,
  where a tiny recall model's memory did not learn in 400 steps; from the projection it recalled).
* read (chunk c): a = softmax(beta * q K_c^T) over the slots filled by chunks < c;  r = a V_c
  (beta = exp(log_beta), learned, starting at 32: the default run's optimizer moves log_beta by ~0.2 in
  its 180 steps, and at the old start of 8 a trained m1's reads put 0.13 of their weight on the entry
  holding the recall task's code, 0.51 at 32; an empty bank reads r = 0)
* surprise: the memory's prediction error for the token's value from its context's key,
  s = ||v - M(k)||^2 / (||v||^2 + eps) with M(k) = softmax(beta * k K_c^T) V_c
  (Titans' associative loss ||M(k) - v||^2, normalized, on (context -> next) pairs; 1 on an empty bank
  (M(k) = 0); when nothing relevant is stored M(k) is a blend of unrelated values and s is about 1 or above
  (4/3 in tests/test_memory.py's hand case); near 0 when the same context was followed by the same content
  before — so it falls on repeats)
* write (end of chunk c): the ``max_writes`` most surprising tokens with s > ``surprise_threshold`` are
  stored as (k, v) — into empty slots first, else the least recently used ones (LRU, after Santoro et al.
  2016's least-recently-used access, simplified: no decaying usage weights and no interpolation with the
  last-read slot; a slot is "used" when some token gives it more than half of its read).
  With ``max_writes`` = ``chunk`` every surprising token is written; the bank holds ``slots`` of them
  before LRU eviction starts (m1: 128 slots, one default 128-token row).
* gate: out = h + g * W_o r,  g = sigmoid(W_g h + b), W_g = 0 and b = ``gate_bias`` = 0 at the start (g = 0.5).
  Titans' MAG gate has no prescribed start; with the earlier −2 (g = 0.12) the gate did not move in the
  default 180-step m1 run (0.117 at its end) and the memory lowered the recall digits' loss by 0.022 nats
  (CI [0.013, 0.030]); starting at 0, by 0.123 [0.101, 0.145], 15 % vs 2 % of the digits right (two runs
  with the halting code changed in between, so the gap is not the gate's alone).
  With ``gate_norm`` (``model.ltm_gate_norm``, the default since 2026-11-28) the gate reads the stream
  RMS-normalized, g = sigmoid(W_g rms(h) + b): Titans normalizes both branches "using learnable vector-valued
  weights, followed by a non-linearity" before its gate (§4.2); here without the weights (W_g can absorb a
  per-channel scale, and no weights means checkpoints keep their keys). Why: at the tiny default size the stream's
  RMS is ~0.3 and Muon grows W_g's spectral norm to only ~0.2 in 180 steps, so W_g h barely moved the gate — a
  seed's mean opening was 0.487-0.492, on the recall digits and elsewhere alike, in all three models and 8 seeds
  each (``ablation.gate_rows``). Normalized, the test-row loss fell in every seed of every model (0.002-0.003
  nats/token); the gate still hardly selects (0.485 on the digits, 0.480 elsewhere in m1): ``docs/cognate.md``.

The bank is per sequence: every sequence starts from the persistent bank (the buffers ``keys``,
``values``, ``filled``), which is empty unless ``persist`` is set, in which case the last row's final bank
is kept for the next call (a memory carried across calls, e.g. one long conversation; every recursion step of
a call reads the bank the call started from, ``CognateModel.forward``). Statistics are
tensors on the model's device, accumulated in training mode only and read when logged.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from agentforge.models import memory_graph


class SurpriseMemory(nn.Module):
    def __init__(self, d_model: int, slots: int, key_dim: int, surprise_threshold: float,
                 max_writes: int = 8, chunk: int = 16, gate_bias: float = 0.0, beta: float = 32.0,
                 gate_norm: bool = False):
        super().__init__()
        self.slots, self.key_dim, self.chunk = slots, key_dim, chunk
        self.surprise_threshold, self.max_writes = surprise_threshold, max_writes
        self.gate_bias_init = gate_bias
        self.query = nn.Linear(d_model, key_dim, bias=False)
        self.value = nn.Linear(d_model, key_dim, bias=False)
        self.out = nn.Linear(key_dim, d_model, bias=False)
        self.gate = nn.Linear(d_model, d_model)
        # what the gate reads: the stream, or it RMS-normalized without weights (no parameters, no new checkpoint keys)
        self.gate_in = nn.RMSNorm(d_model, elementwise_affine=False) if gate_norm else nn.Identity()
        self.log_beta = nn.Parameter(torch.tensor(math.log(beta)))
        self.register_buffer("keys", torch.zeros(slots, key_dim))
        self.register_buffer("values", torch.zeros(slots, key_dim))
        self.register_buffer("usage", torch.zeros(slots))      # read mass per slot (training), for the heatmap
        self.register_buffer("filled", torch.zeros(slots, dtype=torch.bool))
        self.enabled, self.persist = True, False
        self.init_gate()
        self.reset_stats()

    def init_gate(self) -> None:
        """The documented start that a global re-init would undo (call after it): the gate's zero weights and
        bias ``gate_bias``; W_v with orthonormal rows and W_o = W_v^T (a read starts as a projection of the
        stored states)."""
        nn.init.zeros_(self.gate.weight)
        nn.init.constant_(self.gate.bias, self.gate_bias_init)
        with torch.no_grad():
            nn.init.orthogonal_(self.value.weight)
            self.out.weight.copy_(self.value.weight.T)

    def reset_stats(self) -> None:
        """Counters since the last reset, read by the training callbacks (ltm/* keys); tensors once used."""
        self.stats = {"reads": 0, "writes": 0, "surprise_sum": 0.0, "surprise_count": 0}
        self.last_filled = torch.zeros(())
        self.last_filled_rows = torch.zeros(0)

    def usage_fraction(self) -> float:
        """Share of the slots filled at the end of the sequences of the last forward pass (``CognateModel.forward``
        sets it from each row's fill at its own last step when halting ran some rows fewer steps)."""
        return float(self.last_filled)

    def bank(self) -> tuple[torch.Tensor, ...]:
        return tuple(x.clone() for x in (self.keys, self.values, self.filled))

    @torch.no_grad()
    def set_bank(self, bank: tuple[torch.Tensor, ...]) -> None:
        for buf, saved in zip((self.keys, self.values, self.filled), bank):
            buf.copy_(saved)

    def read(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(merged stream [B, T, D], per-token surprise [B, T]) for hidden states h [B, T, D]: the chunk scan from
        the persistent bank (``scan_fresh``); the last, partial chunk is then written too (for the statistics
        and ``persist``).

        When gradients are needed the chunk loop runs without them, recording which token each slot holds when
        each chunk reads (the trace), and the reads are then recomputed with gradients for all chunks in one
        batched attention (``_reread``): the same function and gradients, but a few autograd nodes instead of
        ~20 per chunk (on a GPU each is a kernel launch; 96 chunks per step at 25M size, seq 512). On a GPU the
        no-grad scan, ~85 tiny kernels per chunk, is replayed as one CUDA graph (``memory_graph.py``)."""
        b, t, _ = h.shape
        if not self.enabled:
            return h, torch.ones(b, t, device=h.device, dtype=h.dtype)
        q, k, v = self.project(h)
        traced = torch.is_grad_enabled()
        with torch.no_grad():
            args = (q.detach(), k.detach(), v.detach(), self.keys, self.values, self.filled, self.log_beta.detach())
            out = memory_graph.run(self, args, traced)
            self._count("writes", out["writes"])
            self._record(b, t, out["surprise"], out["filled"], out["usage"])
        r = self._reread(q, k, v, (self.keys, self.values), out["src"], out["filled_trace"]) if traced else out["r"]
        if self.persist:
            with torch.no_grad():
                self.keys.copy_(out["keys"][-1]), self.values.copy_(out["vals"][-1])
                self.filled.copy_(out["filled"][-1])
        return self.merge(h, r), out["surprise"]

    def scan_fresh(self, q, k, v, keys, vals, filled, log_beta, traced: bool) -> dict[str, torch.Tensor]:
        """The no-grad chunk scan of whole sequences (queries, keys, values [B, T, key_dim]) from the bank (keys,
        vals [S, key_dim], filled [S]) with beta = exp(log_beta), its last partial chunk written: a function of
        tensors only (no Python state read or written), so ``memory_graph`` can replay it as a CUDA graph.
        Returns surprise [B, T], the final bank (keys, vals, filled [B, S, ...]), usage [S] (read mass per slot),
        writes (a count), and either the reads r [B, T, key_dim] or, when ``traced``, each chunk's slot sources
        src [B, C, S] (an index into [bank slots, then positions]) and filled_trace [B, C, S] for ``_reread``."""
        st = self._state(q.shape[0], keys, vals, filled)
        st["written"], trace = [], [] if traced else None
        if traced:
            st["src"] = torch.arange(self.slots, device=q.device).expand(q.shape[0], -1)
        usage = torch.zeros(self.slots, device=q.device)
        r, surprise = self.scan_qkv(q, k, v, st, usage, trace, log_beta.exp())
        keys, vals, filled = st["keys"], st["vals"], st["filled"]
        if st["open"] is not None:
            kc, vc, sc, amax = st["open"]
            keys, vals, filled, _, _ = self.end_chunk(kc, vc, sc, amax, keys, vals, filled, st["last"],
                                                      st["c"] + 1.0, counts=st["written"])
        writes = torch.cat(st["written"], 1).sum() if st["written"] else torch.zeros((), device=q.device)
        out = {"surprise": surprise, "keys": keys, "vals": vals, "filled": filled, "usage": usage, "writes": writes}
        if traced:
            out["src"], out["filled_trace"] = (torch.stack(x, 1) for x in zip(*trace))
        else:
            out["r"] = r
        return out

    def _reread(self, q, k, v, bank: tuple[torch.Tensor, torch.Tensor], src: torch.Tensor,
                filled: torch.Tensor) -> torch.Tensor:
        """The reads r [B, T, key_dim] of ``scan_fresh`` with gradients, for queries, keys, values [B, T, key_dim]
        from its trace: per chunk, the token (an index into [bank slots, then positions]) each slot held, src
        [B, C, S], and which slots were filled [B, C, S].

        Each chunk's bank is a row lookup in the [B * (S + T), key_dim] table (``index_select``, whose backward
        ``index_add_`` adds each row's gradients in index order, the order ``gather``'s ``scatter_add_`` used: the
        same sums on the CPU, tested; on CUDA both add with atomics, in no fixed order); on the CPU ~1/3 of the
        time of ``gather`` with a per-element index (one table at the tiny size, forward and backward: 0.39 -> 0.14
        ms). The chunks are the batch of ``bmm`` itself (what ``@``
        on [B, C, ...] reached through views), and NaN weights (a chunk whose bank is empty) become 0 by a masked
        fill, ``nan_to_num``'s forward (a softmax is never +-inf) with a one-op backward instead of five; such a
        row's gradient is zeroed by the -inf mask after the softmax either way, so the gradients are the same."""
        b, t, _ = q.shape
        n_chunks, rows = src.shape[1], self.slots + t
        table_k = torch.cat([bank[0].to(k.dtype).expand(b, -1, -1), k], 1).flatten(0, 1)   # [B * (S + T), key_dim]
        table_v = torch.cat([bank[1].to(v.dtype).expand(b, -1, -1), v], 1).flatten(0, 1)
        at = (src + torch.arange(0, b * rows, rows, device=src.device)[:, None, None]).flatten()
        keys = table_k.index_select(0, at).view(b * n_chunks, self.slots, -1)   # [B * C, S, key_dim]
        vals = table_v.index_select(0, at).view(b * n_chunks, self.slots, -1)
        if n_chunks * self.chunk != t:   # the last chunk padded (F.pad copies even when it adds nothing)
            q = F.pad(q, (0, 0, 0, n_chunks * self.chunk - t))
        q = q.view(b * n_chunks, self.chunk, -1)
        scores = torch.bmm(self.log_beta.exp() * q, keys.transpose(1, 2))
        attn = F.softmax(scores.masked_fill(~filled.flatten(0, 1).unsqueeze(-2), float("-inf")), dim=-1)
        attn = attn.masked_fill(attn != attn, 0.0)   # _attend's nan_to_num (NaN: an empty bank)
        return torch.bmm(attn, vals).view(b, n_chunks * self.chunk, -1)[:, :t]

    def init_state(self, batch: int) -> dict:
        """The memory state of ``batch`` sequences before their first position (``scan`` continues it): the
        bank (keys, vals, filled, each slot's last use), the open chunk (None, or the keys, values, write
        scores and max read weight per slot of its positions so far), completed chunks ``c``, the last
        position's query ``prev`` (None: the sequence has not started) and its read ``read`` (detached).
        With ``persist`` the bank is a copy: the forward writes the buffers in place at its end, which would
        otherwise change what its own reads saved for the backward and what a running KV decoder holds."""
        bank = (self.keys, self.values, self.filled)
        return self._state(batch, *((x.clone() for x in bank) if self.persist else bank))

    def _state(self, batch: int, keys, vals, filled) -> dict:
        """A fresh state (``init_state``'s layout) for ``batch`` sequences starting from the bank keys, vals, filled."""
        last = torch.where(filled, 0.0, -1.0).expand(batch, -1)    # -1 on empty slots (``_write``)
        return {"keys": keys.expand(batch, -1, -1), "vals": vals.expand(batch, -1, -1),
                "filled": filled.expand(batch, -1), "last": last, "open": None, "c": 0, "prev": None, "read": None}

    def scan(self, h: torch.Tensor, st: dict, usage: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(merged stream, surprise) of the next positions h [B, T, D] of sequences whose memory state is ``st``
        (``init_state``; updated in place): ``scan_reads``, then the MAG gate."""
        b, t, _ = h.shape
        if not self.enabled:
            return h, torch.ones(b, t, device=h.device, dtype=h.dtype)
        r, s = self.scan_reads(h, st, usage)
        return self.merge(h, r), s

    def scan_reads(self, h: torch.Tensor, st: dict, usage: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(reads r [B, T, key_dim], surprise [B, T]) of the next positions h of sequences whose memory state is
        ``st``: their projections, then ``scan_qkv``; the chunks' writes are counted (in training)."""
        q, k, v = self.project(h, st["prev"])
        st["written"] = []
        out = self.scan_qkv(q, k, v, st, usage, None, self.log_beta.exp())
        if written := st.pop("written"):
            self._count("writes", torch.cat(written, 1).sum())
        return out

    def scan_qkv(self, q, k, v, st: dict, usage: torch.Tensor | None, trace: list | None,
                 beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(reads r [B, T, key_dim], surprise [B, T]) of the next positions (queries, keys, values) of sequences
        whose memory state is ``st``: each position reads the bank of the chunks completed before its own; when a
        chunk completes it is written (``end_chunk``; each write's count appended to ``st["written"]`` when that
        list exists). The one chunk loop of ``read`` and of the KV cache (``kv_cache.py``), so a sequence fed in
        pieces gets the state and outputs of one read. ``usage`` [slots], if given, accumulates the read mass per
        slot; ``trace``, if given (with ``st["src"]``, a fresh state), gets each chunk's (slot sources, filled)
        for ``_reread``.

        The surprise's prediction M(k_t) = M(q_{t-1}) is the previous position's read when that read saw the
        same bank (same chunk), so only a chunk's first position attends for it: its key rides along as one more
        query, and the predictions of a fresh chunk are then its first rows of reads. What does not depend on the
        bank is computed for all positions before the loop (``_fresh_queries``, the surprise's denominators):
        elementwise ops and per-position reductions, so the same numbers, not ~5 ops per chunk (a chunk now runs
        ~40 ops, ~55 before; a training step at the tiny size scans 24 chunks, ~3 % of its time on one CPU core)."""
        b, t, _ = q.shape
        first = st["prev"] is None                          # the sequence's first position: no previous query
        keys, vals, filled, last = st["keys"].to(k.dtype), st["vals"].to(v.dtype), st["filled"], st["last"]
        opened, reads, surprises, start = st["open"], [], [], 0
        skip = 0 if opened is None else min(self.chunk - opened[0].shape[1], t)   # positions that close the open chunk
        grads = torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, beta))
        fresh = () if grads else self._fresh_queries(q, k, beta, skip)   # with autograd: per chunk, as its graph was
        with torch.no_grad():
            v_norm = v.pow(2).sum(-1) + 1e-6                # prediction_error's denominator, every position
        while start < t:
            room = self.chunk - (0 if opened is None else opened[0].shape[1])
            end = min(start + room, t)
            kc, vc = k[:, start:end], v[:, start:end]
            if trace is not None:
                trace.append((st["src"], filled))
            if opened is None:  # a chunk's first position: its key's read M(k) rides along as one more query
                i = (start - skip) // self.chunk
                x = fresh[i] if i < len(fresh) else beta * torch.cat([kc[:, :1], q[:, start:end]], 1)
                both = self._attend_scaled(x, keys, filled)
                read_both = torch.bmm(both, vals)
                attn, r = both[:, 1:], read_both[:, 1:]
                pred = read_both[:, :-1].detach()           # M(k) of the first position, then the reads shifted by one
            else:
                attn = self._attend_scaled(beta * q[:, start:end], keys, filled)
                r = torch.bmm(attn, vals)
                pred = torch.cat([st["read"], r[:, :-1].detach()], 1) if end - start > 1 else st["read"]
            reads.append(r)
            with torch.no_grad():  # prediction_error, its denominator hoisted; pow out of place (autocast: fp32)
                s = (vc - pred).pow(2).sum(-1).div_(v_norm[:, start:end])
            surprises.append(s)
            sc, amax = self.write_scores(s, first and start == 0), attn.detach().amax(1)
            if usage is not None:
                usage += attn.detach().sum(dim=(0, 1))
            if opened is not None:  # the chunk's earlier positions, fed before
                kc, vc, sc = (torch.cat([a, x], 1) for a, x in zip(opened[:3], (kc, vc, sc)))
                amax = torch.maximum(opened[3], amax)
            if end - start == room:  # the chunk is complete: write it
                st["c"] = st["c"] + 1   # a Python int, or a 0-d tensor (a graphed decoder step: kv_cache.py)
                keys, vals, filled, last, src = self.end_chunk(kc, vc, sc, amax, keys, vals, filled, last,
                                                               st["c"], st.get("src"), self.slots + end - kc.shape[1],
                                                               st.get("written"))
                if src is not None:
                    st["src"] = src
                opened = None
            else:
                opened = (kc, vc, sc, amax)
            st["read"] = r[:, -1:].detach()
            start = end
        st.update(keys=keys, vals=vals, filled=filled, last=last, open=opened, prev=q[:, -1:])
        r, s = (x[0] if len(x) == 1 else torch.cat(x, 1) for x in (reads, surprises))
        return r, s

    def _fresh_queries(self, q, k, beta, skip: int) -> torch.Tensor | tuple:
        """beta * [k_s, q_s, ..., q_{s+chunk-1}], the queries of every complete chunk that starts at s = skip +
        i * chunk (its first key, then its positions' queries), as one [C, B, chunk + 1, key_dim] tensor whose
        [i] is contiguous: two copies and one mul instead of a cat and a mul per chunk, the same products
        (elementwise). Written into an empty tensor: ``torch.cat`` of the transposed pieces took ~1.8 ms."""
        b, t, d = q.shape
        n = (t - skip) // self.chunk
        if n == 0:
            return ()
        end = skip + n * self.chunk
        x = torch.empty(n, b, self.chunk + 1, d, dtype=q.dtype, device=q.device)
        x[:, :, 0] = k[:, skip:end:self.chunk].transpose(0, 1)
        x[:, :, 1:] = q[:, skip:end].reshape(b, n, self.chunk, d).transpose(0, 1)
        return x.mul_(beta)

    def merge(self, h: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """The MAG gate: h + sigmoid(W_g h + b) * W_o r for hidden states h and reads r (with ``gate_norm``,
        sigmoid(W_g rms(h) + b)); the sum in place on the product, which nothing saves for the backward (a + b = b + a
        exactly): one [B, T, D] tensor fewer."""
        gated = torch.sigmoid(self.gate(self.gate_in(h))) * self.out(r)
        return gated.add_(h) if gated.dtype == h.dtype else h + gated

    def project(self, h: torch.Tensor, prev: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(query, key, value) of hidden states h [B, T, D]: q_t = normalize(W_q h_t), k_t = q_{t-1} (the
        induction layout), v_t = W_v h_t; ``prev`` [B, 1, key_dim] is the query before h[:, 0] (None: zeros)."""
        q = F.normalize(self.query(h), dim=-1)
        k = torch.cat([torch.zeros_like(q[:, :1]) if prev is None else prev, q[:, :-1]], 1)
        return q, k, self.value(h)

    @staticmethod
    def write_scores(s: torch.Tensor, first: bool) -> torch.Tensor:
        """Surprise [B, T] as the write selection sees it: when the chunk starts the sequence (``first``), its
        first position has no previous state (zero key) and is never written."""
        return torch.cat([torch.full_like(s[:, :1], float("-inf")), s[:, 1:]], 1) if first else s

    @staticmethod
    @torch.no_grad()
    def prediction_error(v: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """Per-token surprise ||v - M(k)||² / ||v||² from the bank's prediction ``pred`` = M(k) of each value."""
        return (v - pred).pow(2).sum(-1) / (v.pow(2).sum(-1) + 1e-6)

    @classmethod
    def _attend(cls, beta, x, keys, filled):
        """Read weights of queries x [..., Q, key_dim] over a bank keys [..., S, key_dim] (filled [..., S])."""
        return cls._attend_scaled(beta * x, keys, filled)

    @staticmethod
    def _attend_scaled(x, keys, filled):
        """``_attend`` of queries already multiplied by beta (3-D: ``bmm`` itself, the kernel ``@`` reaches
        through a few views)."""
        scores = torch.bmm(x, keys.transpose(1, 2)) if x.dim() == 3 else x @ keys.transpose(-1, -2)
        scores = scores.masked_fill(~filled.unsqueeze(-2), float("-inf"))
        return torch.nan_to_num(F.softmax(scores, dim=-1))  # an empty bank: all -inf -> 0 weights

    def end_chunk(self, kc, vc, s, amax, keys, vals, filled, last, now, src=None, offset: int = 0, counts=None):
        """The bank after chunk ``now``: slots given more than half of some token's read (``amax`` [B, slots], the
        chunk's max read weight per slot) marked used at ``now``, then the chunk written (``_write``)."""
        return self._write(kc, vc, s, keys, vals, filled, _stamp(last, amax > 0.5, now), now, src, offset, counts)

    def _write(self, kc, vc, s, keys, vals, filled, last, now, src=None, offset: int = 0, counts=None):
        """Store the chunk's most surprising tokens (s > threshold) into empty, else least recently used slots:
        ``last`` [B, slots] holds each filled slot's last use and -1 on empty slots (``_state`` starts it so and
        only filled slots are ever marked), so it is the eviction order as it is. ``src`` [B, slots] (or None),
        the token index each slot holds, is updated with ``offset`` + the written tokens' positions in the chunk;
        ``counts`` (a list, or None) gets which of the chosen tokens were written ([B, n] bool; the scan sums
        them once at its end)."""
        n = min(self.max_writes, kc.shape[1], self.slots)
        if n == 0:
            return keys, vals, filled, last, src
        with torch.no_grad():
            top_s, top_i = s.masked_fill(s <= self.surprise_threshold, float("-inf")).topk(n, dim=1)  # valid first
            valid = top_s.abs() < float("inf")                            # isfinite, in two ops [B, n]
            slot = last.argsort(dim=1, stable=True)[:, :n]                # empty first, then LRU
            if counts is not None:
                counts.append(valid)
            if src is not None:
                src = src.scatter(1, slot, torch.where(valid, top_i + offset, src.gather(1, slot)))
            written = torch.zeros(last.shape, dtype=torch.bool, device=last.device).scatter(1, slot, valid)
        new_k = kc.gather(1, top_i[..., None].expand(-1, -1, kc.shape[-1]))
        new_v = vc.gather(1, top_i[..., None].expand(-1, -1, vc.shape[-1]))
        idx_k = slot[..., None].expand(-1, -1, keys.shape[-1])
        keys = keys.scatter(1, idx_k, torch.where(valid[..., None], new_k, keys.gather(1, idx_k)))
        vals = vals.scatter(1, idx_k, torch.where(valid[..., None], new_v, vals.gather(1, idx_k)))
        return keys, vals, filled | written, _stamp(last, written, now), src

    def _count(self, key: str, value) -> None:
        if self.training:
            self.stats[key] = self.stats[key] + value

    @torch.no_grad()
    def _record(self, b: int, t: int, surprise, filled, usage) -> None:
        self.last_filled_rows = filled.float().mean(-1)   # [rows of this call]: each row's share of filled slots
        self.last_filled = self.last_filled_rows.mean()
        if self.training:
            self._count("reads", b * t)
            self._count("surprise_sum", surprise.sum())
            self._count("surprise_count", surprise.numel())
            self.usage += usage


def _stamp(last: torch.Tensor, mask: torch.Tensor, now) -> torch.Tensor:
    """``torch.where(mask, now, last)``; a Python ``now`` by ``masked_fill`` (one op; ``where`` makes a tensor of it
    first), a 0-d tensor (a graphed decoder step's chunk count) by ``where``."""
    return torch.where(mask, now, last) if torch.is_tensor(now) else last.masked_fill(mask, now)
