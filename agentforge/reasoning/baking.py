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

How baking is judged: ``reasoning.baking_evidence``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from agentforge.data.tokenizer import BOS_ID, PAD_ID
from agentforge.reasoning.thoughts import sample_thoughts


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


def agreement_rows(teacher_logits: torch.Tensor, student_logits: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
    """[agreeing positions, masked positions] of each example (row): the unit the overall agreement's CI resamples."""
    same = (teacher_logits.argmax(-1) == student_logits.argmax(-1)) & mask
    return [[int(a), int(m)] for a, m in zip(same.sum(1).tolist(), mask.sum(1).tolist())]


# Columns of ``paired_rows`` (one row per validation example), the baked and the unbaked student scored on the same
# positions against the same prompted teacher: what the paired gain and the prompt-effect figures are computed from.
PAIRED_COLUMNS = ("agree", "positions", "agree_base", "effect_positions", "effect_agree", "kl", "kl_base")


def paired_rows(teacher_logits: torch.Tensor, student_logits: torch.Tensor, base_logits: torch.Tensor,
                mask: torch.Tensor) -> list[list[float]]:
    """Per example (``PAIRED_COLUMNS``): positions where the baked student's top-1 equals the prompted teacher's;
    scored positions; the same for the unbaked student (``base``: the model before baking, without the prompt);
    *prompt-effect* positions, where the prompted teacher's top-1 differs from the unbaked student's (the only
    positions where baking has something to learn: the prompt changes the model's prediction there, Bhargava et
    al. 2024); of those, the positions where the baked student now agrees with the teacher (0 for the unbaked
    student by construction); and the summed KL(teacher || baked) and KL(teacher || unbaked) over the positions."""
    t, s, b = teacher_logits.argmax(-1), student_logits.argmax(-1), base_logits.argmax(-1)
    effect = (t != b) & mask
    log_t = F.log_softmax(teacher_logits.float(), -1)

    def kl(logits):
        return ((log_t.exp() * (log_t - F.log_softmax(logits.float(), -1))).sum(-1) * mask).sum(1)

    cols = [((t == s) & mask).sum(1), mask.sum(1), ((t == b) & mask).sum(1), effect.sum(1),
            (effect & (t == s)).sum(1), kl(student_logits), kl(base_logits)]
    return [[float(c[i]) for c in cols] for i in range(mask.shape[0])]


@torch.no_grad()
def sample_continuation(model, prefix: list[int], n_tokens: int, temperature: float,
                        generator: torch.Generator | None, banned: list[int] = ()) -> list[int]:
    """n_tokens sampled after ``prefix`` (one row: the model has no attention mask, so no padding), banned
    tokens excluded, temperature 0 = greedy. Drawn as ``thoughts.sample_thoughts`` draws (one multinomial
    per token from ``generator``), with the KV cache where it serves the model: one prefill and a cached
    decode step per token instead of a forward over the growing prefix (the same tokens; a test)."""
    ids = torch.tensor([prefix], dtype=torch.long, device=next(model.parameters()).device)
    return sample_thoughts(model, ids, n_tokens, temperature, banned, generator)[0].tolist()


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


def shuffled_prompts(prompts: dict[str, list[int]], seed: int) -> dict[str, list[int]]:
    """Each prompt's tokens in a seeded random order (not the original one unless all its tokens are equal): the
    control's prompts, of the same length and the same tokens as the real ones — the strategy's special tokens
    (``[thinking]``, ``<step>``, ...) included, each still one token — but not their wording. So "baked − control"
    measures what the instruction's wording adds, not whether its strategy tokens are present (a conservative
    control: its tokens can carry some of the effect, which pushes the verdict towards INCONCLUSIVE)."""
    import random

    out = {}
    for i, (key, p) in enumerate(sorted(prompts.items())):
        rng, q = random.Random(seed * 1000 + i), list(p)
        while len(set(p)) > 1 and q == p:
            rng.shuffle(q)
        out[key] = q
    return out


def token_usage(outputs: list[list[int]], token_ids) -> float:
    """Share of outputs containing at least one of ``token_ids``."""
    ids = {int(t) for t in token_ids}
    return sum(any(t in ids for t in o) for o in outputs) / max(len(outputs), 1)


def bake_step(model, teacher, prompt: list[int], pairs: list[tuple[list[int], list[int]]], b,
              generator: torch.Generator) -> tuple[torch.Tensor, float]:
    """(KL loss, agreement) of one baking batch of (question, response) token pairs, all of one strategy.
    The first ``sampled_fraction`` of the rows continue with tokens sampled from the prompted teacher,
    the rest with the examples' own responses. ``b`` holds prompt_position, sampled_fraction,
    sample_tokens, temperature."""
    n_sampled = round(float(b.sampled_fraction) * len(pairs))
    xs = [x for x, _ in pairs]
    ys = [sample_continuation(teacher, prompted(prompt, x, str(b.prompt_position)), int(b.sample_tokens),
                              float(b.temperature), generator, [PAD_ID, BOS_ID]) if i < n_sampled else y
          for i, (x, y) in enumerate(pairs)]
    dev = next(model.parameters()).device
    t_ids, s_ids, mask = (t.to(dev) for t in make_batch(prompt, xs, ys, str(b.prompt_position)))
    with torch.no_grad():
        t_logits = aligned_teacher_logits(teacher(t_ids).logits, len(prompt), s_ids.shape[1])
    s_logits = model(s_ids).logits
    return baking_kl(t_logits, s_logits, mask), agreement(t_logits, s_logits, mask)


@torch.no_grad()
def bake_eval(model, teacher, val: dict[str, list[tuple[list[int], list[int]]]], prompts: dict[str, list[int]],
              b, usage_ids: dict[str, list[int]] | None = None, teacher_usage: dict[str, float] | None = None,
              base=None) -> dict:
    """Per strategy key (``val``: its held-out token pairs): KL and next-token agreement of the unprompted
    model with the prompted teacher. With ``usage_ids`` ({"thinking": ids, "strategy": ids, key: ids of the
    strategy's own token}), also the share of sampled outputs (``usage_tokens`` each) using them, for the
    model and for the prompted teacher; the teacher is frozen and sampled with a fixed seed, so a later
    call may pass the first call's ``teacher_usage`` (key -> share) instead of sampling it again. With ``base`` (the
    model before baking, unprompted: the phase passes the frozen teacher, a copy of it), each strategy also gets
    ``paired`` rows (``paired_rows``), from which ``baking_evidence`` computes the paired gain and the prompt-effect
    figures."""
    was = model.training
    model.eval()
    per, kls, outs = {}, [], []
    dev = next(model.parameters()).device
    try:
        for key, pairs in val.items():
            t_ids, s_ids, mask = (t.to(dev) for t in make_batch(prompts[key], [x for x, _ in pairs],
                                                                [y for _, y in pairs], str(b.prompt_position)))
            t_logits = aligned_teacher_logits(teacher(t_ids).logits, len(prompts[key]), s_ids.shape[1])
            s_logits = model(s_ids).logits
            kls.append(float(baking_kl(t_logits, s_logits, mask)))
            per[key] = {"agreement": agreement(t_logits, s_logits, mask), "kl": kls[-1],
                        "rows": agreement_rows(t_logits, s_logits, mask)}
            if base is not None:
                per[key]["paired"] = paired_rows(t_logits, s_logits, base(s_ids).logits, mask)
            if usage_ids is not None:
                def sample(m, prefix, g):
                    return sample_continuation(m, prefix, int(b.usage_tokens), float(b.temperature), g, [PAD_ID, BOS_ID])
                g = torch.Generator().manual_seed(0)
                st = [sample(model, [BOS_ID] + x, g) for x, _ in pairs]
                if teacher_usage is None:
                    g = torch.Generator().manual_seed(0)
                    te = [sample(teacher, prompted(prompts[key], x, str(b.prompt_position)), g) for x, _ in pairs]
                    t_use = token_usage(te, usage_ids[key])
                else:
                    t_use = teacher_usage[key]
                per[key].update(usage=token_usage(st, usage_ids[key]), teacher_usage=t_use)
                outs += st
    finally:
        model.train(was)
    res = {"per": per, "val_loss": sum(kls) / len(kls), "overall": sum(v["agreement"] for v in per.values()) / len(per)}
    if usage_ids is not None:
        res["thinking_usage"] = token_usage(outs, usage_ids["thinking"])
        res["strategy_usage"] = token_usage(outs, usage_ids["strategy"])
    return res
