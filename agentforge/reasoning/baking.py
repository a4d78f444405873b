"""Prompt baking (Bhargava et al. 2024, "Prompt Baking"): turn a prompt into a weight update.

The baked model P_b is trained *without* the prompt u to match the frozen prompted model P_0:

    L = E_{x, y ~ P_0(. | u, x)}  sum_t  KL( P_0(. | u, x, y_<t)  ||  P_b(. | x, y_<t) )

so that after baking P_b(. | x) behaves like P_0(. | u, x). The continuations y are sampled from the
prompted teacher (as in the paper); we also use the strategy's worked example responses as
trajectories (``sampled_fraction`` of the rows are sampled, the rest are the examples), so the KL is
taken on contexts where the strategy's tokens appear too.

Where u goes: ``prompt_position="start"`` gives the teacher ``[BOS] u x y`` (a system prompt);
``"answer"`` gives ``[BOS] x u y`` (an instruction right before the answer). The Cognate model attends
over a sliding window (64 tokens by default), so a prompt placed before a ~100-byte question is out of
sight of the answer; the phase uses "answer". The student always sees ``[BOS] x y``. Either way every
continuation position t of the student aligns with teacher position t + |u|.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from agentforge.data.tokenizer import BOS_ID, PAD_ID


def baking_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over masked positions of KL(teacher || student), both [B, T, V]; mask [B, T] bool."""
    log_t = F.log_softmax(teacher_logits.float(), -1)
    log_s = F.log_softmax(student_logits.float(), -1)
    kl = (log_t.exp() * (log_t - log_s)).sum(-1)
    return (kl * mask).sum() / mask.sum().clamp(min=1)


def agreement(teacher_logits: torch.Tensor, student_logits: torch.Tensor, mask: torch.Tensor) -> float:
    """Share of masked positions where the two models' most likely next tokens are the same."""
    same = (teacher_logits.argmax(-1) == student_logits.argmax(-1)) & mask
    return float(same.sum()) / max(int(mask.sum()), 1)


@torch.no_grad()
def sample_continuation(model, prefix: list[int], n_tokens: int, temperature: float,
                        generator: torch.Generator | None, banned: list[int] = ()) -> list[int]:
    """n_tokens sampled after ``prefix`` (one row: the model has no attention mask, so no padding)."""
    ids = torch.tensor([prefix], dtype=torch.long, device=next(model.parameters()).device)
    out = []
    for _ in range(n_tokens):
        logits = model(ids[:, -model.config.max_seq_len:]).logits[0, -1].float()
        if banned:
            logits[list(banned)] = float("-inf")
        if temperature > 0:
            nxt = int(torch.multinomial(F.softmax(logits / temperature, -1).cpu(), 1, generator=generator))
        else:
            nxt = int(logits.argmax())
        out.append(nxt)
        ids = torch.cat([ids, ids.new_tensor([[nxt]])], 1)
    return out


def prompted(prompt: list[int], x: list[int], prompt_position: str = "start") -> list[int]:
    """The teacher's context for input x: [BOS] u x or [BOS] x u."""
    return [BOS_ID] + (prompt + x if prompt_position == "start" else x + prompt)


def make_batch(prompt: list[int], xs: list[list[int]], ys: list[list[int]], prompt_position: str = "start"):
    """(teacher ids [B, P+T], student ids [B, T], mask [B, T]), T = max |x|+|y| (inputs, without the last token).

    mask marks the student positions whose next token is a continuation token (the KL positions)."""
    rows = [[BOS_ID] + x + y for x, y in zip(xs, ys)]
    width = max(len(r) for r in rows) - 1
    student = torch.full((len(rows), width), PAD_ID, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, (r, x, y) in enumerate(zip(rows, xs, ys)):
        inp = r[:-1]
        student[i, : len(inp)] = torch.tensor(inp)
        mask[i, len(x): len(x) + len(y)] = True  # positions 1+|x|-1 .. predict y_0 .. y_{|y|-1}
    if prompt_position not in ("start", "answer"):
        raise ValueError(f"prompt_position must be 'start' or 'answer', got {prompt_position!r}")
    teacher = torch.full((len(rows), width + len(prompt)), PAD_ID, dtype=torch.long)
    for i, (x, y) in enumerate(zip(xs, ys)):
        row = prompted(prompt, x, prompt_position) + y
        teacher[i, : len(row) - 1] = torch.tensor(row[:-1])
    return teacher, student, mask


def aligned_teacher_logits(teacher_logits: torch.Tensor, prompt_len: int, width: int) -> torch.Tensor:
    """Teacher logits at the positions that match the student's 0..width-1."""
    return teacher_logits[:, prompt_len: prompt_len + width]


def token_usage(outputs: list[list[int]], token_ids) -> float:
    """Share of outputs containing at least one of ``token_ids``."""
    ids = {int(t) for t in token_ids}
    return sum(any(t in ids for t in o) for o in outputs) / max(len(outputs), 1)
