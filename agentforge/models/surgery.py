"""Recursive-refinement surgery: wrap a trained Cognate model with a refinement loop that changes
nothing until it is trained.

After the base model's forward pass, its output state h_0 (before the final norm) is refined for up
to K inner steps,  h_k = h_{k-1} + W_out · GELU(W_in · norm(h_{k-1})),  and decoded through the base
model's own norm and lm_head. W_out (weights and bias) starts at zero — as LoRA's B matrix (Hu et al.
2021) and ReZero's residual gate (Bachlechner et al. 2020) — so h_k = h_0 exactly and the wrapped
model's logits equal the base model's at surgery time, while W_out still receives a gradient.

Halting (as the TRM/ACT recursion, but decided by a measurable criterion instead of a learned head):
a token stops refining at the first step k whose greedy prediction equals step k-1's (its prediction
is *stable*); otherwise at K. Refinement is position-wise, so a token's trajectory is the same whether
or not its neighbours halted; ``refinement_stats`` groups positions into chunks of ``chunk_width``:

* refinement steps of a chunk — the largest step count of its tokens (the chunk is done when all are);
* committed chunk — every token became stable by step K; commit rate = committed chunks / refinement
  steps spent on all chunks (1.0 = every chunk commits after a single step);
* effective chunk length — the leading run of committed tokens of a chunk (what could be emitted);
* stability@K — share of chunks whose predictions are identical at every step 1..K.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from agentforge.models.generation import generate
from agentforge.models.layers import RMSNorm

ARCHITECTURE = "Cognate-Recursive"


@dataclass
class RecursiveOutput:
    logits: torch.Tensor            # [B, T, V] after refinement
    loss: torch.Tensor | None
    lm_loss: torch.Tensor | None
    halting_steps: torch.Tensor     # the base model's ACT steps [B, T]
    ponder: torch.Tensor
    surprise: torch.Tensor
    hidden: torch.Tensor            # refined state [B, T, D]
    refine_steps: torch.Tensor      # [B, T] refinement steps each token used
    step_preds: torch.Tensor        # [K + 1, B, T] greedy prediction after each step (0 = base)


class RecursiveRefiner(nn.Module):
    """A Cognate model plus a zero-initialized refinement loop (see the module docstring)."""

    def __init__(self, base: nn.Module, max_inner_steps: int = 4, hidden: int | None = None):
        super().__init__()
        if max_inner_steps < 1:
            raise ValueError(f"max_inner_steps must be >= 1, got {max_inner_steps}")
        self.base, self.max_inner_steps = base, int(max_inner_steps)
        d = base.config.d_model
        self.hidden_size = int(hidden or 2 * d)
        self.refine_norm = RMSNorm(d)
        self.refine_in = nn.Linear(d, self.hidden_size)
        self.refine_out = nn.Linear(self.hidden_size, d)
        nn.init.normal_(self.refine_in.weight, std=0.02)
        nn.init.zeros_(self.refine_in.bias)
        nn.init.zeros_(self.refine_out.weight)
        nn.init.zeros_(self.refine_out.bias)

    # the base model's surface, so training, saving and evaluation treat the wrapper like a Cognate model
    @property
    def config(self):
        return self.base.config

    @property
    def memory(self):
        return self.base.memory

    def attention_modules(self):
        return self.base.attention_modules()

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def added_params(self) -> int:
        return self.num_params() - sum(p.numel() for p in self.base.parameters())

    def refiner_config(self) -> dict:
        return {"max_inner_steps": self.max_inner_steps, "hidden": self.hidden_size}

    def refine(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.refine_out(F.gelu(self.refine_in(self.refine_norm(h))))

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor | None = None, ignore_index: int = -100,
                halt: bool | None = None) -> RecursiveOutput:
        """Refine for up to K steps; ``halt`` (default: in eval mode) freezes stable tokens."""
        halt = (not self.training) if halt is None else halt
        out = self.base(input_ids, targets, ignore_index)
        h, logits = out.hidden, out.logits
        pred = logits.argmax(-1)
        preds = [pred]
        running = torch.ones_like(pred, dtype=torch.bool)
        steps = torch.zeros(pred.shape, device=pred.device)
        for _ in range(self.max_inner_steps):
            h_new = self.refine(h)
            logits_new = self.base.lm_head(self.base.norm(h_new))
            pred_new = logits_new.argmax(-1)
            upd = running if halt else torch.ones_like(running)
            h = torch.where(upd[..., None], h_new, h)
            logits = torch.where(upd[..., None], logits_new, logits)
            steps = steps + upd.float()
            stable = pred_new == pred
            pred = torch.where(upd, pred_new, pred)
            preds.append(pred)
            running = running & ~stable
            if halt and not bool(running.any()):
                preds.extend([pred] * (self.max_inner_steps + 1 - len(preds)))
                break
        loss = lm_loss = None
        if targets is not None:
            lm_loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=ignore_index)
            loss = out.loss - out.lm_loss + lm_loss  # the base's ponder/deep-supervision terms stay
        return RecursiveOutput(logits, loss, lm_loss, out.halting_steps, out.ponder, out.surprise, h, steps,
                               torch.stack(preds))

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, eos_id: int | None = None,
                 temperature: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
        return generate(self, input_ids, max_new_tokens, self.config.max_seq_len, eos_id, temperature, generator)


def wrap(base: nn.Module, max_inner_steps: int = 4, hidden: int | None = None) -> RecursiveRefiner:
    """The surgery: a new wrapper around ``base`` (shared, not copied) in the base's mode and device."""
    if not hasattr(base, "lm_head") or not hasattr(base, "norm"):
        raise TypeError(f"{type(base).__name__} has no lm_head/norm to decode refined states; surgery needs a "
                        f"Cognate-family model")
    device = next(base.parameters()).device
    return RecursiveRefiner(base, max_inner_steps, hidden).to(device).train(base.training)


@torch.no_grad()
def identity_gap(base: nn.Module, wrapped: nn.Module, rows: torch.Tensor, batch_size: int = 16) -> float:
    """Largest |logit difference| between the base and the wrapped model over [N, T(+1)] rows."""
    gap = 0.0
    for i in range(0, len(rows), batch_size):
        x = rows[i: i + batch_size]
        gap = max(gap, float((base(x).logits.float() - wrapped(x).logits.float()).abs().max()))
    return gap


def chunk_tensors(preds: torch.Tensor, width: int) -> dict[str, torch.Tensor]:
    """Per-chunk figures [B, C] from [K+1, B, T] greedy predictions after each step (see the module docstring), on
    the device, without a host sync: ``steps`` (the chunk's largest first-stable step, K where a token never is),
    ``committed`` (every token became stable), ``length`` (the leading run of committed tokens), ``stable`` (the
    predictions identical at every step 1..K). The last chunk may be shorter than ``width``."""
    k_max, b, t = preds.shape
    k_max -= 1
    c = -(-t // width)
    pad = c * width - t
    same = preds[1:] == preds[:-1]                                    # [K, B, T]: step k stable
    committed = same.any(0)                                           # [B, T]
    first = torch.where(committed, same.float().argmax(0) + 1, torch.full_like(preds[0], k_max))
    stable = (preds[1:] == preds[1:2]).all(0)                         # [B, T]

    def chunks(x: torch.Tensor, fill: int) -> torch.Tensor:         # [B, T] -> [B, C, width] int64, padded with fill
        return F.pad(x.to(torch.int64), (0, pad), value=fill).view(b, c, width)
    lead = chunks(committed, 0).cumprod(-1).sum(-1)                   # the padding ends a fully committed run
    return {"steps": chunks(first, 0).amax(-1), "committed": chunks(committed, 1).amin(-1).bool(), "length": lead,
            "stable": chunks(stable, 1).amin(-1).bool()}


def batch_refinement_metrics(preds: torch.Tensor, width: int) -> dict[str, torch.Tensor]:
    """avg_refine_steps, commit_rate and avg_chunk_length of one batch's [K+1, B, T] step predictions, as 0-d
    tensors on the device (what a training step logs: the evaluation plan's ``train/generation/*``); the same
    definitions as ``refinement_stats``, which aggregates them over many rows."""
    ch = chunk_tensors(preds, width)
    return {"avg_refine_steps": ch["steps"].float().mean(),
            "commit_rate": ch["committed"].sum() / ch["steps"].sum().clamp(min=1),
            "avg_chunk_length": ch["length"].float().mean()}


@torch.no_grad()
def refinement_stats(model: RecursiveRefiner, rows: torch.Tensor, chunk_width: int = 16,
                     batch_size: int = 16) -> dict:
    """avg_refine_steps, commit_rate, avg_chunk_length, the chunk lengths, and stability@K over rows."""
    was = model.training
    model.eval()
    agg = {"steps": [], "committed": [], "length": [], "stable": []}
    try:
        for i in range(0, len(rows), batch_size):
            x = rows[i: i + batch_size]
            x = x[:, :-1] if x.shape[1] > model.config.max_seq_len else x
            for key, vals in chunk_tensors(model(x, halt=False).step_preds, chunk_width).items():
                agg[key].extend(vals.flatten().tolist())   # row by row, each row's chunks in order
    finally:
        model.train(was)
    n = max(len(agg["steps"]), 1)
    return {"avg_refine_steps": sum(agg["steps"]) / n,
            "commit_rate": sum(agg["committed"]) / max(sum(agg["steps"]), 1),
            "avg_chunk_length": sum(agg["length"]) / n,
            "stability_at_k": sum(agg["stable"]) / n,
            "k": model.max_inner_steps, "chunk_width": chunk_width, "chunk_lengths": agg["length"]}
