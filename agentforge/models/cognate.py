"""The Cognate model: a TRM-Titans-MAG language model.

Reading order, one forward pass over token ids x [B, T]:

1. e = embed(x). The latent state starts at z_0 = e.
2. Recursion (TRM, Jolicoeur-Martineau 2025, "Less is More: Recursive Reasoning with Tiny Networks"):
   for step n = 1..max_steps the same causal backbone refines the latent, z_n = MAG(blocks(z_{n-1} + e)),
   with the input re-injected each step. Simplified from TRM (not measured against its form): one latent per
   token, where TRM keeps an answer y and a reasoning latent z and updates z n times from (x, y, z) before
   each update of y from (y, z). Deep supervision: every step's latent is decoded and trained on the
   next-token targets, each step's mean loss weighted (1 + ``deep_supervision``) / max_steps. Unlike TRM, whose
   deep supervision takes one optimizer step per supervision step and detaches the carried latents between
   them, all steps here are one backward pass through every step (one optimizer step per batch, as every
   other phase trains). TRM's cheaper recursion is an option:
   ``no_grad_steps`` early steps run without gradients (their latents are detached), the rest with.
3. Halting: PonderNet (Banino et al. 2021, "PonderNet: Learning to Ponder"). A halting head gives
   lambda_n = sigmoid(w.rms_norm(z_n) + b) per token (``HaltHead``); the probability of halting at step n is
   p_n = lambda_n prod_{j<n} (1 - lambda_j), with lambda = 1 at ``max_steps`` so the p_n sum to 1.
   The loss is the expected loss sum_n p_n L_n plus ``ponder_cost`` * KL(p || geometric(``ponder_prior``))
   (the prior truncated at max_steps the same way), so the halting head is trained by how much each
   further step lowers the token's own loss — not only through a remainder, as in Graves 2016 ACT,
   whose ponder cost pushes every token to the same count. The loss is minimised by
   p_n ∝ prior_n exp(-L_n / ponder_cost) (``halting.gibbs_halting``), so ``ponder_cost`` is set on the scale
   of the per-step loss gains (``benchmarks/bench_halting.py`` measures them). A token halts at the first step N whose
   cumulative p reaches ``act_threshold`` (0.5: the median of its halting distribution) and its output
   is z_N. Deviation from PonderNet, as in TRM / HRM where the halting head is trained apart from the
   deep-supervised backbone: the head learns that loss on detached step losses and latents, and the backbone
   learns every step equally (weight 1 + ``deep_supervision``). Trained jointly, a head that favoured early
   steps starved the later ones of training, so they never became worth running (issue 18: the two-step toy
   task halted every token at step 1, its digits at chance). Training runs every step (the expected loss needs them all); at inference the loop stops
   once every token has halted and skips rows whose tokens have all halted.
4. Long-term memory with a MAG gate (Titans): see ``memory.py``; a per-sequence bank read and written causally
   inside each step. Placement deviates from Titans' MAG, whose memory and attention branches both read the
   step's input in parallel: here the memory reads the attention stack's output and adds its gated read
   back (a serial gated residual, Titans' MAL order with MAG's gate), once per step rather than per layer —
   one memory module for the whole backbone. Not measured against the parallel form.
5. logits = lm_head(norm(z_N)); ``lm_loss`` is the next-token cross-entropy of those logits.

Every operation is per-token, causal attention or a chunk-causal memory, so logits at position i
depend only on x[:i+1]. ``ablate(steps=, memory=, halting=)`` runs the same weights with recursion fixed,
memory reads off, or every token run to max_steps, for the ablations of the Cognate phase (knockouts: what the
trained model relies on). ``CognateConfig.memory = False`` (``model.memory=false``) trains and runs a model whose
memory reads are off throughout, for ``scripts/train_ablations.py``'s trained ablations (what a mechanism buys).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from agentforge.models.generation import generate
from agentforge.models.halting import halting_distribution, pondernet_terms
from agentforge.models.layers import Block, RMSNorm, rope_cache
from agentforge.models.memory import SurpriseMemory


@dataclass
class CognateConfig:
    """Architecture of a Cognate model; saved beside every checkpoint as JSON."""

    vocab_size: int = 272
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    ffn_hidden: int = 352
    window: int = 64                 # sliding attention window (tokens)
    max_seq_len: int = 512           # RoPE table length
    rope_base: float = 10000.0
    max_steps: int = 3               # recursion steps (the halting bound)
    act_threshold: float = 0.5       # halt when the cumulative halting probability reaches this
    ponder_prior: float = 0.5        # geometric prior lambda_p; expected steps (1 - (1 - lambda_p)^N) / lambda_p
    halt_bias_init: float | None = None  # initial halting logit; None = logit(ponder_prior), i.e. the prior
    ponder_cost: float = 0.01        # beta, weight of KL(p || geometric prior)
    deep_supervision: float = 0.3    # weight of the per-step losses
    no_grad_steps: int = 0           # TRM: early steps run without gradients (at most max_steps - 1)
    ltm_slots: int = 32
    ltm_key_dim: int = 32
    surprise_threshold: float = 0.5
    ltm_max_writes: int = 8          # writes per memory chunk at most
    ltm_chunk: int = 16              # tokens per memory chunk (reads see the chunks before)
    tie_embeddings: bool = False
    ltm_gate_norm: bool = False      # the MAG gate reads the stream RMS-normalized (Titans normalizes before its gate);
                                     # the models' configs set true; checkpoints saved before the key ran false
    memory: bool = True              # False: the long-term memory's reads off in training and inference (the
                                     # module and its parameters kept, unused: shapes unchanged; ``ablate`` can
                                     # still switch them on). Configs saved before this key load with it on

    @classmethod
    def from_dict(cls, d: dict) -> CognateConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown Cognate config keys: {sorted(unknown)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


class HaltHead(nn.Linear):
    """The halting logit w.rms_norm(z) + b: the latent is RMS-normalized first (no learned scale; w gives it),
    as the LM head reads it. On the raw latent (rms 0.1-0.3 in the default m1 run) the logit barely varied
    between tokens (std 0.09-0.27) and the head hardly left its initialization in 180 steps (issue 18)."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return super().forward(F.rms_norm(z, z.shape[-1:], eps=1e-6))


@dataclass
class CognateOutput:
    logits: torch.Tensor                # [B, T, V]
    loss: torch.Tensor | None           # total training loss (when targets are given)
    lm_loss: torch.Tensor | None        # cross-entropy of the halted output alone
    halting_steps: torch.Tensor         # [B, T] step at which each token halted (integers as float)
    ponder: torch.Tensor                # [B, T] expected steps sum_n n p_n (mass past an early stop at its step)
    surprise: torch.Tensor              # [B, T] memory surprise at the last step run
    hidden: torch.Tensor                # [B, T, D] halted output state (before the final norm)
    # the training loss's terms, detached, summing to ``loss`` (when targets are given): "halt" PonderNet's
    # reconstruction sum_n p_n L_n and "ponder" its ponder_cost KL term, both what the halting head learns (on
    # detached step losses), and "deep_supervision" the backbone's (1 + deep_supervision) x the steps' mean loss
    loss_terms: dict[str, torch.Tensor] | None = None


class CognateModel(nn.Module):
    def __init__(self, config: CognateConfig):
        super().__init__()
        self.config = c = config
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        self.blocks = nn.ModuleList(Block(c.d_model, c.n_heads, c.window, c.ffn_hidden) for _ in range(c.n_layers))
        self.memory = SurpriseMemory(c.d_model, c.ltm_slots, c.ltm_key_dim, c.surprise_threshold, c.ltm_max_writes,
                                     c.ltm_chunk, gate_norm=c.ltm_gate_norm)
        self.halt_head = HaltHead(c.d_model, 1)
        self.norm = RMSNorm(c.d_model)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        cos, sin = rope_cache(c.max_seq_len, c.d_model // c.n_heads, c.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        self.memory.init_gate()  # the global init above zeroes every bias, the gate's documented one too
        bias = c.halt_bias_init if c.halt_bias_init is not None else math.log(c.ponder_prior / (1 - c.ponder_prior)) \
            if c.ponder_prior < 1 else 10.0
        nn.init.constant_(self.halt_head.bias, bias)
        if c.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self._steps_override: int | None = None
        self._halting = True
        self.memory.enabled = bool(c.memory)   # a model configured without memory: its reads off from the start

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def attention_modules(self):
        """The attention layers, for QK-clip (each has q_proj, k_proj, n_heads, head_dim, max_logit)."""
        return [blk.attn for blk in self.blocks]

    @contextlib.contextmanager
    def ablate(self, steps: int | None = None, memory: bool | None = None, halting: bool | None = None):
        """Run the same weights with recursion fixed at ``steps``, the memory's reads off (memory=False), or
        every token run to the last step (halting=False); None keeps the current setting (for the memory, the
        configured ``config.memory`` unless changed); restored on exit."""
        saved = self._steps_override, self._halting, self.memory.enabled
        self._steps_override = steps if steps is not None else self._steps_override
        self._halting = halting if halting is not None else self._halting
        self.memory.enabled = memory if memory is not None else self.memory.enabled
        try:
            yield self
        finally:
            self._steps_override, self._halting, self.memory.enabled = saved

    def _step(self, z: torch.Tensor, e: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        h = z + e
        cos, sin = self.rope_cos[:t], self.rope_sin[:t]
        for blk in self.blocks:
            h = blk(h, cos, sin)
        return self.memory.read(h)

    def _halt(self, z, last: bool, cum, not_halted, halted):
        """The halting rule after one step: (lambda [B, T], cumulative p, prod_{j<=n} (1 - lambda_j), the tokens that
        halt now); the head reads z detached (it learns on its own loss). At the ``last`` step lambda is 1, every
        running token halts and the two sums come back as they were (nothing reads them after the last step)."""
        if last:  # every token still running halts; the running sums are not read after the last step
            return torch.ones_like(cum), cum, not_halted, ~halted
        lam = torch.sigmoid(self.halt_head(z.detach()).squeeze(-1))
        cum = cum + lam * not_halted
        stop = cum >= self.config.act_threshold if self._halting else False
        return lam, cum, not_halted * (1 - lam), ~halted & stop

    def _step_rows(self, z, e, t, rows: torch.Tensor | None, surprise: torch.Tensor):
        """One recursion step; at inference only on ``rows`` (the others halted), the rest kept (their latents and
        their surprise at the last step they ran)."""
        if rows is None:
            return self._step(z, e, t)
        z_sub, s_sub = self._step(z[rows], e[rows], t)
        return z.index_copy(0, rows, z_sub), surprise.to(s_sub.dtype).index_copy(0, rows, s_sub)

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor | None = None,
                ignore_index: int = -100) -> CognateOutput:
        c = self.config
        b, t = input_ids.shape
        if t > c.max_seq_len:
            raise ValueError(f"sequence length {t} exceeds model.max_seq_len={c.max_seq_len}")
        n_steps = self._steps_override or c.max_steps
        train_all = targets is not None or self.training
        no_grad = min(c.no_grad_steps, n_steps - 1) if self.training else 0
        e = self.embed(input_ids)
        z = e
        lambdas, step_ce = [], []
        output = torch.zeros_like(e)
        halted = torch.zeros(b, t, device=e.device, dtype=torch.bool)
        steps = torch.full((b, t), float(n_steps), device=e.device)
        not_halted = torch.ones(b, t, device=e.device, dtype=e.dtype)   # prod_{j<n} (1 - lambda_j)
        cum = torch.zeros(b, t, device=e.device, dtype=e.dtype)
        surprise = torch.ones(b, t, device=e.device)
        rows = None  # at inference, the rows that still have a running token (None: all of them)
        fill = None  # each row's memory fill after its last step run (a halted row's stays)
        bank = self.memory.bank() if self.memory.persist and n_steps > 1 else None
        for n in range(n_steps):
            if bank is not None and n:   # every step reads the bank the call started from, not the one the
                self.memory.set_bank(bank)   # last step wrote (this sequence's future, the batch's last row)
            with torch.no_grad() if n < no_grad else contextlib.nullcontext():
                z, surprise = self._step_rows(z, e, t, rows, surprise)
            if rows is not None and self.memory.enabled:
                fill = fill.index_copy(0, rows, self.memory.last_filled_rows)
            elif self.memory.enabled:
                fill = self.memory.last_filled_rows
            if n < no_grad:
                z = z.detach()
            last = n == n_steps - 1
            lam, cum, not_halted, halts_now = self._halt(z, last, cum, not_halted, halted)
            lambdas.append(lam)
            output = torch.where(halts_now[..., None], z, output)
            steps = steps.masked_fill(halts_now, n + 1)
            halted = halted | halts_now
            if targets is not None:
                step_logits = self.lm_head(self.norm(z))
                step_ce.append(F.cross_entropy(step_logits.flatten(0, 1), targets.flatten(), ignore_index=ignore_index,
                                               reduction="none").view(b, t))
            if not train_all and not last:
                active = (~halted).any(1).nonzero().squeeze(1)  # the step's one host sync
                if active.numel() == 0:
                    break
                rows = active if active.numel() < b else None
        if fill is not None:   # rows that halted skipped the last steps: the memory's last call saw only the others
            self.memory.last_filled = fill.mean()
        logits = self.lm_head(self.norm(output))
        p = halting_distribution(torch.stack(lambdas, 0))  # one step: all mass on it
        ponder = (p * torch.arange(1, p.shape[0] + 1, device=e.device, dtype=p.dtype)[:, None, None]).sum(0)
        loss = lm_loss = terms = None
        if targets is not None:
            lm_loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=ignore_index)
            mask = (targets != ignore_index).to(e.dtype)
            denom = mask.sum().clamp(min=1)
            ce = torch.stack(step_ce, 0)                                       # [N, B, T]
            # the halting head learns PonderNet's loss on the steps' losses as they are (detached); the backbone
            # learns every step equally (weight 1 + deep_supervision), whatever the head says
            halt, ponder_term = pondernet_terms(p, ce.detach(), mask, c.ponder_prior, c.ponder_cost)
            supervision = (1 + c.deep_supervision) * (ce * mask).sum() / (denom * ce.shape[0])
            loss = halt + ponder_term + supervision
            terms = {"halt": halt.detach(), "ponder": ponder_term.detach(), "deep_supervision": supervision.detach()}
        return CognateOutput(logits, loss, lm_loss, steps, ponder.detach(), surprise, output, terms)

    def kv_decoder(self, batch: int):
        """Incremental decoding state for ``batch`` sequences (KV cache per step and layer; ``kv_cache.py``)."""
        from agentforge.models.kv_cache import CognateDecoder

        return CognateDecoder(self, batch)

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, eos_id: int | None = None,
                 temperature: float = 0.0, generator: torch.Generator | None = None,
                 use_cache: bool = True) -> torch.Tensor:
        """Greedy (temperature 0) or sampled continuation of input_ids [B, T]; returns [B, T + new]."""
        return generate(self, input_ids, max_new_tokens, self.config.max_seq_len, eos_id, temperature, generator,
                        use_cache=use_cache)
