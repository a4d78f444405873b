"""What the trained Cognate model relies on: each mechanism knocked out at inference, on held-out rows, same weights.

These are KNOCKOUTS, not what a mechanism buys: the weights were trained with the mechanism on, so a loss rise when
it is switched off says the trained model depends on it, not that training without it would have done worse (an
audit's tiny 30-step runs: a 4-step model cut to 1 step at inference lost +0.0073 [+0.0035, +0.0112] nats/token, but
a model TRAINED with ``model.max_steps=1`` on the same seed, data and steps was 0.048 nats/token better). Their CIs cover the choice of rows only, with the
training seed fixed (between two seeds of one config the memory-off deltas' CIs did not overlap). What a mechanism
buys, over training seeds, is ``scripts/train_ablations.py``: each variant trained from scratch.

Every variant runs the trained model under ``CognateModel.ablate``:

* ``steps1``     recursion fixed at 1 step (no refinement)
* ``no_memory``  the long-term memory's reads off (out = h)
* ``max_steps``  halting off: every token runs to ``max_steps`` (PonderNet vs always-max-steps)

For each, the per-row mean next-token loss and token accuracy are compared with the trained model's on
the same rows by ``evals.stats.paired_test`` (the exact sign-flip test below 30 rows, the paired bootstrap
above); delta = variant - trained, so a
positive loss delta means the trained model relies on the mechanism for a lower loss. ``recall_memory`` does the same for memory
off vs on over the repeated digits of the long-range recall task (``data/recall.py``), whose first statement
lies beyond ONE attention window. That does not make them tokens only memory can predict: stacked
sliding-window layers reach n_layers * (window - 1) tokens back per recursion step, and the steps add up
(``backbone_reach``; the default m1: 2 x 63 = 126 per step, 504 over 4 steps, against ~92 tokens from the first
code to its repeat), so the attention could carry the code in principle. The memory-off delta measures what the
trained model actually gets from its memory (``recall_scope`` says so in the run's output). ``halting_by_difficulty`` measures whether harder tokens (higher loss at one step)
halt later; ``halting_by_task`` whether the digits of a computed answer ("42 + 7 = 49" in held-out GSM8K-format
items, ``computation_rows``) halt later than the letters of the same rows, paired by row.

Halting is judged against always-max-steps by NON-INFERIORITY with the margin ``NONINFERIORITY_MARGIN``
(0.01 nats/token, declared before the runs): PASS when the upper bound of the 95% CI of
loss(trained) - loss(max_steps) lies below the margin, i.e. ``max_steps_loss_delta_ci_low`` > -margin.
"""
from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

from agentforge.data import formats, synthetic
from agentforge.data.datamodule import pack_documents
from agentforge.data.recall import FACT_CHARS
from agentforge.data.tokenizer import ByteTokenizer
from agentforge.evals.stats import MIN_N, paired_test, threshold_verdict

NONINFERIORITY_MARGIN = 0.01  # nats/token that halting may cost against always-max-steps
VARIANTS = {"steps1": {"steps": 1}, "no_memory": {"memory": False}, "max_steps": {"halting": False}}


@torch.no_grad()
def token_scores(model, rows: torch.Tensor, batch_size: int = 16, **ablate) -> dict[str, torch.Tensor]:
    """Per-token loss, correctness and halting step [N, T] over rows [N, T+1] under ``model.ablate(**ablate)``."""
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    out = {"loss": [], "correct": [], "steps": []}
    try:
        with model.ablate(**ablate):
            for i in range(0, len(rows), batch_size):
                r = rows[i: i + batch_size].to(device)
                o = model(r[:, :-1])
                logits = o.logits.float()
                out["loss"].append(F.cross_entropy(logits.transpose(1, 2), r[:, 1:], reduction="none").cpu())
                out["correct"].append((logits.argmax(-1) == r[:, 1:]).float().cpu())
                out["steps"].append(o.halting_steps.float().cpu())
    finally:
        model.train(was)
    return {k: torch.cat(v) for k, v in out.items()}


def _compare(prefix: str, variant: torch.Tensor, trained: torch.Tensor, seed: int) -> dict[str, float]:
    """The variant's paired difference to the trained model over rows: ``stats.paired_test`` (the exact sign-flip
    test and its inverted CI below 30 rows, where the bootstrap's p contradicted its own CI; the bootstrap above).
    Every figure compared here is a per-row measurement (a mean loss, accuracy or halting step count), never a 0/1
    outcome, so McNemar's branch is never taken (``outcomes=False``): mean halting steps of exactly 1.0 on every row
    looked like outcomes and got a spurious ±0.107 CI around a zero difference (an audit)."""
    bs = paired_test(variant.tolist(), trained.tolist(), seed=seed, outcomes=False)
    return {f"{prefix}_delta": bs["delta"], f"{prefix}_delta_ci_low": bs["ci95"][0],
            f"{prefix}_delta_ci_high": bs["ci95"][1], f"{prefix}_p_value": bs["p_value"]}


def ablations(model, rows: torch.Tensor, seed: int = 0) -> dict[str, float]:
    """``ablation/*`` figures over validation rows [N, T+1] (N >= 2): each variant's loss and accuracy and
    its paired-bootstrap delta to the trained model."""
    base = token_scores(model, rows)
    out = {"ablation/n_rows": float(len(rows)), "ablation/trained_val_loss": float(base["loss"].mean()),
           "ablation/trained_accuracy": float(base["correct"].mean())}
    scores = {}
    for name, kw in VARIANTS.items():
        v = scores[name] = token_scores(model, rows, **kw)
        out[f"ablation/{name}_val_loss"] = float(v["loss"].mean())
        out[f"ablation/{name}_accuracy"] = float(v["correct"].mean())
        out.update(_compare(f"ablation/{name}_loss", v["loss"].mean(1), base["loss"].mean(1), seed))
        out.update(_compare(f"ablation/{name}_accuracy", v["correct"].mean(1), base["correct"].mean(1), seed))
    out.update(halting_by_difficulty(base["steps"], scores["steps1"]["loss"]))
    out["ablation/halting_noninferiority_margin"] = NONINFERIORITY_MARGIN
    out["ablation/halting_noninferior"] = float(halting_verdict(out).startswith("PASS"))   # the verdict's n rule too
    return out


def halting_verdict(m: dict, min_n: int = MIN_N) -> str:
    """PASS / FAIL / INCONCLUSIVE of the non-inferiority test "halting costs less than the margin against
    always-max-steps", with the figures behind it. The cost is trained loss - max-steps loss, its CI the negated
    paired-bootstrap CI of ``max_steps_loss_delta``: PASS when the whole CI is below the margin (non-inferior:
    ``ablation/halting_noninferior``), FAIL when the whole CI is at or above it (inferior), INCONCLUSIVE when it
    straddles the margin or fewer than ``min_n`` rows were measured — the project's rule for every verdict (it
    said FAIL whenever non-inferiority was not shown, e.g. for a cost CI of [+0.0043, +0.0105] at margin 0.01)."""
    margin = m["ablation/halting_noninferiority_margin"]
    cost = [-m["ablation/max_steps_loss_delta_ci_high"], -m["ablation/max_steps_loss_delta_ci_low"]]
    v, _ = threshold_verdict(cost, "<", margin, n=int(m.get("ablation/n_rows", min_n)), min_n=min_n)
    return f"{v} (cost CI [{cost[0]:+.4f}, {cost[1]:+.4f}] vs margin {margin:g}, n={int(m.get('ablation/n_rows', 0))})"


def recall_memory(model, rows: torch.Tensor, mask: torch.Tensor, seed: int = 0) -> dict[str, float]:
    """Memory off vs on over the masked target positions (the repeated code's digits), per row: what the trained
    model gets from its memory there (the backbone may reach the first statement too: ``recall_scope``)."""
    on, off = token_scores(model, rows), token_scores(model, rows, memory=False)
    per_row = {"on": masked_row_means(on, mask), "off": masked_row_means(off, mask)}
    out = {"ablation/recall_n_rows": float(len(rows)),
           "ablation/recall_memory_on_loss": float(per_row["on"][0].mean()),
           "ablation/recall_no_memory_loss": float(per_row["off"][0].mean()),
           "ablation/recall_memory_on_accuracy": float(per_row["on"][1].mean()),
           "ablation/recall_no_memory_accuracy": float(per_row["off"][1].mean())}
    out.update(_compare("ablation/recall_no_memory_loss", per_row["off"][0], per_row["on"][0], seed))
    if model.memory.enabled:
        out.update(gate_by_target(model, rows, mask, seed=seed))
    return out


def gate_by_target(model, rows: torch.Tensor, mask: torch.Tensor, seed: int = 0,
                   pad_id: int = ByteTokenizer.pad_id) -> dict[str, float]:
    """Whether the memory's MAG gate selects (``gate_rows``, averaged over rows): its opening on the recall digits
    and elsewhere, the read's share of the stream there, and digits - elsewhere of the opening paired by row.

    A gate that has learned to select opens more where the memory holds what comes next. Measured on the models with
    the gate reading the stream (180 steps, 8 training seeds each, ``docs/cognate.md``): 0.49 on the digits and
    elsewhere alike, from 0.5 at the start, in all three models, while the read added more to the stream on the
    digits than elsewhere in m1 and m2: the memory's selectivity was its read's, not the gate's; with the stream
    RMS-normalized (the default since) the gate opens 0.485 on the digits and 0.480 elsewhere in m1."""
    per = gate_rows(model, rows, mask, pad_id=pad_id)
    out = {f"ablation/recall_{name}": float(v.mean()) for name, v in per.items()}
    out.update(_compare("ablation/recall_gate_digits_minus_other", per["gate_digits"], per["gate_other"], seed))
    return out


@torch.no_grad()
def gate_rows(model, rows: torch.Tensor, mask: torch.Tensor, batch_size: int = 16,
              pad_id: int = ByteTokenizer.pad_id) -> dict[str, torch.Tensor]:
    """Per row [N]: the memory's gate opening g = sigmoid(W_g h + b) (mean over channels) and the share its read adds
    to the stream, |g * W_o r| / |h|, each averaged over all ``max_steps`` recursion steps (halting off for this
    measurement: with it, a later step runs only the rows still running, so steps would not align) and then over the input
    positions that predict the masked targets (``*_digits``: the recall task's repeated digits, where a read helps)
    or over every other non-pad position of the row (``*_other``)."""
    mem, device = model.memory, next(model.parameters()).device
    seen: dict[str, list] = {"stream": [], "gate": [], "out": []}

    def keep(name, what):   # a forward hook that records the module's input or output, and returns None (a value
        def hook(module, inputs, output):   # would replace the output)
            seen[name].append(inputs[0] if what == "input" else output)
        return hook

    hooks = [mem.gate_in.register_forward_hook(keep("stream", "input")),   # the gate's input before any norm: h
             mem.gate.register_forward_hook(keep("gate", "output")), mem.out.register_forward_hook(keep("out", "output"))]
    was = model.training
    model.eval()
    g_rows, share_rows = [], []
    try:
        for i in range(0, len(rows), batch_size):
            for v in seen.values():
                v.clear()
            with model.ablate(halting=False):   # every row runs every step (halting drops halted rows from a step)
                model(rows[i: i + batch_size, :-1].to(device))
            g = torch.stack([torch.sigmoid(x.float()) for x in seen["gate"]]).mean(0)          # [B, T, D]
            share = torch.stack([(torch.sigmoid(a.float()) * o.float()).norm(dim=-1) / h.float().norm(dim=-1)
                                 for a, o, h in zip(seen["gate"], seen["out"], seen["stream"])]).mean(0)  # [B, T]
            g_rows.append(g.mean(-1).cpu())
            share_rows.append(share.cpu())
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was)
    g, share = torch.cat(g_rows), torch.cat(share_rows)
    digits = mask.float()
    other = (~mask & (rows[:, 1:] != pad_id)).float()
    return {f"{name}_{where}": (x * m).sum(1) / m.sum(1)
            for name, x in (("gate", g), ("read_share", share)) for where, m in (("digits", digits), ("other", other))}


def gate_line(final: dict) -> str:
    """The run's line for ``gate_by_target``'s figures: how far the gate opens on the recall digits and elsewhere,
    their paired difference with its CI, and the read's share of the stream there."""
    pre = "ablation/recall_gate_digits_minus_other"
    return (f"recall: the memory's gate (0.5 everywhere at the start) opens {final['ablation/recall_gate_digits']:.3f} "
            f"on the digits and {final['ablation/recall_gate_other']:.3f} elsewhere (digits - elsewhere "
            f"{final[pre + '_delta']:+.4f} [{final[pre + '_delta_ci_low']:+.4f}, {final[pre + '_delta_ci_high']:+.4f}], "
            f"p {final[pre + '_p_value']:.3g}, paired by row); its read adds "
            f"{100 * final['ablation/recall_read_share_digits']:.1f} % and "
            f"{100 * final['ablation/recall_read_share_other']:.1f} % of the stream's norm there")


def masked_row_means(scores: dict[str, torch.Tensor], mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row mean loss and accuracy [N] of ``token_scores`` over the masked targets [N, T] (the recall task's
    repeated digits): the per-row figures ``recall_memory`` compares, and ``scripts/train_ablations.py`` too."""
    m = mask.float()
    return (scores["loss"] * m).sum(1) / m.sum(1), (scores["correct"] * m).sum(1) / m.sum(1)


def backbone_reach(config) -> tuple[int, int]:
    """How many tokens back the backbone alone (memory off) can carry information: per recursion step, through
    ``n_layers`` stacked sliding windows, n_layers * (window - 1); over all ``max_steps`` steps, since each step
    re-reads the previous step's latent at every position, max_steps times that."""
    per_step = config.n_layers * (config.window - 1)
    return per_step, per_step * config.max_steps


def recall_scope(config, gap: int) -> tuple[str, dict[str, float]]:
    """What the recall ablation of a model with this config, on items ``gap`` filler characters apart, can claim:
    a line for the run's output and its figures. The repeat lies beyond one attention window; whether the backbone
    could reach it is read off ``backbone_reach`` against the distance from the first code to its repeat (at most
    gap + ``FACT_CHARS`` + 2 tokens: the byte tokenizer gives a token per character)."""
    per_step, total = backbone_reach(config)
    distance = gap + FACT_CHARS + 2
    figures = (f"{config.n_layers} layers x {config.window - 1} = {per_step} tokens per recursion step, {total} over "
               f"{config.max_steps} step(s), against {gap} to {distance} tokens from the first code to its repeat")
    reach = (f"stacked layers and recursion steps could reach it in principle ({figures})" if total >= distance else
             f"beyond the backbone's reach too ({figures})" if total < gap else
             f"stacked layers and recursion steps may reach part of it ({figures})")
    line = (f"recall: the repeat lies beyond one {config.window}-token attention window; {reach}: the memory-off "
            f"delta measures what the trained model actually gets from its memory")
    return line, {"ablation/recall_gap_chars": float(gap), "ablation/backbone_reach_tokens_per_step": float(per_step),
                  "ablation/backbone_reach_tokens": float(total)}


def halting_by_difficulty(steps: torch.Tensor, loss_one_step: torch.Tensor) -> dict[str, float]:
    """Mean halting step of the hardest and easiest quarter of tokens, ranked by their loss when the model
    runs one step, and the Spearman correlation between that loss and the step count."""
    s, loss = steps.flatten(), loss_one_step.flatten()
    order = loss.argsort()
    q = max(1, len(order) // 4)
    rho = float(spearmanr(s.numpy(), loss.numpy()).statistic) if s.std() > 0 else 0.0  # ties: average ranks
    return {"ablation/halting_steps_hard_quarter": float(s[order[-q:]].mean()),
            "ablation/halting_steps_easy_quarter": float(s[order[:q]].mean()),
            "ablation/halting_loss_spearman": rho}


def computation_rows(n: int, seq_len: int, seed: int, tokenizer: ByteTokenizer | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Up to n rows [n, seq_len + 1] of held-out GSM8K-format arithmetic items (distinct problems; no item spans two
    rows: ``pack_documents``, so the rows the halting comparison pairs are independent; fewer rows where the val
    split's ~317 problems cannot fill n of them, e.g. 64 rows at seq_len 512), and two target masks
    [n, seq_len]: the digits of each computed result (the "49" of "42 + 7 = 49", after a computation) and
    the lowercase letters (easy: the templated words)."""
    tok = tokenizer or ByteTokenizer()
    want = n * ((seq_len + 1) // 115 + 1) + 8   # an item is 115-136 tokens; a row drops the tail of its last one
    items = synthetic.generate("arithmetic", want, seed, "val", partial=True)   # the split holds ~317 problems
    rows = pack_documents([formats.render(r, "gsm8k") for r in items], tok, seq_len)[:n]
    nxt = rows[:, 1:]
    raw = [bytes(0 if t > 255 else t for t in r) for r in rows.tolist()]  # control ids as NUL
    hard = torch.zeros_like(nxt, dtype=torch.bool)
    for i, b in enumerate(raw):
        for m in re.finditer(rb"= (\d+)", b):
            hard[i, m.start(1) - 1: m.end(1) - 1] = True   # target j predicts token j + 1
    easy = (nxt >= ord("a")) & (nxt <= ord("z"))
    return rows, hard, easy


def halting_by_task(steps: torch.Tensor, hard: torch.Tensor, easy: torch.Tensor, seed: int = 0) -> dict[str, float]:
    """Mean halting step [N, T] on the ``hard`` and ``easy`` targets, and their difference paired by row (rows
    that have both) with a bootstrap CI: positive means the computed digits run more steps. With fewer than 2 such
    rows (rows too short to hold a GSM8K-format answer) the paired figures are left out, not made up."""
    both = (hard.sum(1) > 0) & (easy.sum(1) > 0)
    h, e = (((steps * m).sum(1) / m.sum(1).clamp(min=1))[both] for m in (hard.float(), easy.float()))
    out = {"ablation/halting_task_n_rows": float(both.sum()),
           "ablation/halting_steps_answer_digits": float(steps[hard].mean()),
           "ablation/halting_steps_letters": float(steps[easy].mean())}
    if len(h) >= 2:
        out.update(_compare("ablation/halting_digits_minus_letters", h, e, seed))
    return out
