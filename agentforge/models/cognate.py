"""The Cognate model: a TRM-Titans-MAG language model.

Reading order, one forward pass over token ids x [B, T]:

1. e = embed(x). The latent state starts at z_0 = e.
2. Recursion (TRM, Jolicoeur-Martineau 2025, "Less is More: Recursive Reasoning with Tiny Networks"):
   for step n = 1..max_steps the same causal backbone refines the latent, z_n = MAG(blocks(z_{n-1} + e)),
   with the input re-injected each step. Deep supervision: every step's latent is decoded and trained
   on the next-token targets (weight ``deep_supervision``).
3. ACT halting (Graves 2016, "Adaptive Computation Time"): a halting head gives p_n = sigmoid(w.z_n) per
   token; a token halts at the first step N where sum_{n<=N} p_n >= act_threshold, its output is the
   mixture sum_{n<N} p_n z_n + R z_N with remainder R = 1 - sum_{n<N} p_n, and the ponder cost N + R is
   added to the loss (weight ``ponder_cost``). Halted tokens' latents are frozen while the others go on
   (as in Universal Transformers), and the loop stops early once every token has halted.
4. MAG long-term memory (Titans): see ``memory.py``; read each step, written after the pass.
5. logits = lm_head(norm(output)); the loss is next-token cross-entropy on the targets the caller shifts.

Every operation is per-token or causal attention, so logits at position i depend only on x[:i+1].
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from agentforge.models.generation import generate
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
    max_steps: int = 3               # recursion steps (ACT's upper bound)
    act_threshold: float = 0.99      # Graves' 1 - epsilon
    halt_bias_init: float = 0.0      # initial halting logit (negative: think longer)
    ponder_cost: float = 0.01        # tau, weight of the ponder cost N + R
    deep_supervision: float = 0.3    # weight of the per-step losses
    ltm_slots: int = 32
    ltm_key_dim: int = 32
    surprise_threshold: float = 0.5
    ltm_max_writes: int = 8          # writes per forward pass at most
    tie_embeddings: bool = False

    @classmethod
    def from_dict(cls, d: dict) -> CognateConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown Cognate config keys: {sorted(unknown)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class CognateOutput:
    logits: torch.Tensor                # [B, T, V]
    loss: torch.Tensor | None           # total training loss (when targets are given)
    lm_loss: torch.Tensor | None        # cross-entropy of the ACT output alone
    halting_steps: torch.Tensor         # [B, T] steps each token used (integers as float)
    ponder: torch.Tensor                # [B, T] N + R
    surprise: torch.Tensor              # [B, T] memory surprise at the last step
    hidden: torch.Tensor                # [B, T, D] ACT output state (before the final norm)


class CognateModel(nn.Module):
    def __init__(self, config: CognateConfig):
        super().__init__()
        self.config = c = config
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        self.blocks = nn.ModuleList(Block(c.d_model, c.n_heads, c.window, c.ffn_hidden) for _ in range(c.n_layers))
        self.memory = SurpriseMemory(c.d_model, c.ltm_slots, c.ltm_key_dim, c.surprise_threshold, c.ltm_max_writes)
        self.halt_head = nn.Linear(c.d_model, 1)
        self.norm = RMSNorm(c.d_model)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.write_memory_in_eval = False
        cos, sin = rope_cache(c.max_seq_len, c.d_model // c.n_heads, c.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        nn.init.constant_(self.halt_head.bias, c.halt_bias_init)
        if c.tie_embeddings:
            self.lm_head.weight = self.embed.weight

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

    def _step(self, z: torch.Tensor, e: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        h = z + e
        cos, sin = self.rope_cos[:t], self.rope_sin[:t]
        for blk in self.blocks:
            h = blk(h, cos, sin)
        return self.memory.read(h)

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor | None = None,
                ignore_index: int = -100) -> CognateOutput:
        c = self.config
        b, t = input_ids.shape
        if t > c.max_seq_len:
            raise ValueError(f"sequence length {t} exceeds model.max_seq_len={c.max_seq_len}")
        e = self.embed(input_ids)
        z = e
        cum = torch.zeros(b, t, device=e.device, dtype=e.dtype)        # sum of p_n so far
        running = torch.ones(b, t, device=e.device, dtype=torch.bool)
        steps = torch.zeros(b, t, device=e.device, dtype=e.dtype)
        remainder = torch.zeros(b, t, device=e.device, dtype=e.dtype)
        output = torch.zeros_like(e)
        step_losses = []
        surprise = torch.ones(b, t, device=e.device)
        for n in range(c.max_steps):
            z_new, surprise = self._step(z, e, t)
            z = torch.where(running[..., None], z_new, z)
            p = torch.sigmoid(self.halt_head(z).squeeze(-1))
            last = n == c.max_steps - 1
            halts_now = running & ((cum + p >= c.act_threshold) | last)
            continues = running & ~halts_now
            weight = torch.where(halts_now, 1.0 - cum, torch.where(continues, p, torch.zeros_like(p)))
            output = output + weight[..., None] * z
            remainder = torch.where(halts_now, 1.0 - cum, remainder)
            steps = steps + running.to(steps.dtype)
            cum = cum + torch.where(continues, p, torch.zeros_like(p))
            running = continues
            if targets is not None and c.deep_supervision > 0:
                step_logits = self.lm_head(self.norm(z))
                step_losses.append(F.cross_entropy(step_logits.flatten(0, 1), targets.flatten(),
                                                   ignore_index=ignore_index))
            if not bool(running.any()):
                break
        logits = self.lm_head(self.norm(output))
        ponder = steps.detach() + remainder  # N is a count; the gradient flows through R (Graves)
        loss = lm_loss = None
        if targets is not None:
            lm_loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=ignore_index)
            loss = lm_loss + c.ponder_cost * ponder.mean()
            if step_losses:
                loss = loss + c.deep_supervision * torch.stack(step_losses).mean()
        if self.training or self.write_memory_in_eval:
            self.memory.write(output, surprise)
        return CognateOutput(logits, loss, lm_loss, steps.detach(), ponder.detach(), surprise, output)

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, eos_id: int | None = None,
                 temperature: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """Greedy (temperature 0) or sampled continuation of input_ids [B, T]; returns [B, T + new]."""
        return generate(self, input_ids, max_new_tokens, self.config.max_seq_len, eos_id, temperature, generator)
