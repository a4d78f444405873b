"""What each Cognate mechanism buys, measured on held-out rows with the same weights.

Every variant runs the trained model under ``CognateModel.ablate``:

* ``steps1``     recursion fixed at 1 step (no refinement)
* ``no_memory``  the long-term memory's reads off (out = h)
* ``max_steps``  halting off: every token runs to ``max_steps`` (PonderNet vs always-max-steps)

For each, the per-row mean next-token loss and token accuracy are compared with the trained model's on
the same rows by a paired bootstrap (``evals.stats.paired_bootstrap``); delta = variant - trained, so a
positive loss delta means the mechanism lowers the loss. ``recall_memory`` does the same for memory
off vs on over the repeated digits of the long-range recall task (``data/recall.py``), the tokens only
memory can predict. ``halting_by_difficulty`` measures whether harder tokens (higher loss at one step)
halt later.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

from agentforge.evals.stats import paired_bootstrap

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
    bs = paired_bootstrap(variant.tolist(), trained.tolist(), seed=seed)
    return {f"{prefix}_delta": bs["delta"], f"{prefix}_delta_ci_low": bs["ci95"][0],
            f"{prefix}_delta_ci_high": bs["ci95"][1], f"{prefix}_p_value": bs["p_value"]}


def ablations(model, rows: torch.Tensor, seed: int = 0) -> dict[str, float]:
    """``ablation/*`` figures over validation rows [N, T+1] (N >= 2): each variant's loss and accuracy and
    its paired-bootstrap delta to the trained model."""
    base = token_scores(model, rows)
    out = {"ablation/n_rows": float(len(rows)), "ablation/trained_val_loss": float(base["loss"].mean()),
           "ablation/trained_accuracy": float(base["correct"].mean())}
    for name, kw in VARIANTS.items():
        v = token_scores(model, rows, **kw)
        out[f"ablation/{name}_val_loss"] = float(v["loss"].mean())
        out[f"ablation/{name}_accuracy"] = float(v["correct"].mean())
        out.update(_compare(f"ablation/{name}_loss", v["loss"].mean(1), base["loss"].mean(1), seed))
        out.update(_compare(f"ablation/{name}_accuracy", v["correct"].mean(1), base["correct"].mean(1), seed))
    out.update(halting_by_difficulty(base["steps"], token_scores(model, rows, steps=1)["loss"]))
    return out


def recall_memory(model, rows: torch.Tensor, mask: torch.Tensor, seed: int = 0) -> dict[str, float]:
    """Memory off vs on over the masked target positions (the repeated code's digits), per row."""
    on, off = token_scores(model, rows), token_scores(model, rows, memory=False)
    m = mask.float()
    per_row = {k: ((s["loss"] * m).sum(1) / m.sum(1), (s["correct"] * m).sum(1) / m.sum(1))
               for k, s in (("on", on), ("off", off))}
    out = {"ablation/recall_n_rows": float(len(rows)),
           "ablation/recall_memory_on_loss": float(per_row["on"][0].mean()),
           "ablation/recall_no_memory_loss": float(per_row["off"][0].mean()),
           "ablation/recall_memory_on_accuracy": float(per_row["on"][1].mean()),
           "ablation/recall_no_memory_accuracy": float(per_row["off"][1].mean())}
    out.update(_compare("ablation/recall_no_memory_loss", per_row["off"][0], per_row["on"][0], seed))
    return out


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
