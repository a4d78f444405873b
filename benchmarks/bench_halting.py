"""What halting does on a trained Cognate checkpoint: the per-step loss gains that drive PonderNet's halting
head, by token kind, and the inference FLOPs that halting saves.

    python benchmarks/bench_halting.py outputs/artifacts/cognate/model1

Without a checkpoint (as ``make bench`` runs it) it prints ``skipped: ...`` and exits 0: halting is only worth
measuring on trained weights.

1. Per-step losses L_n (the same weights run exactly n steps, ``model.ablate(steps=n, halting=False)``) on
   the Cognate phase's validation rows and on held-out GSM8K-format rows (``ablation.computation_rows``):
   the mean gain L_n - L_{n+1} for all tokens, for the digits of computed results and for letters. PonderNet's
   loss is minimised by p_n ∝ prior_n exp(-L_n / beta) (``halting.gibbs_halting``), so these gains against the
   checkpoint's ``ponder_cost`` (beta) say whether halting can separate the tokens at all.
2. Forward FLOPs per token (``evals.flops``: matmuls and attention, deterministic) with halting as run at inference
   (the loop stops when every token halted and skips rows whose tokens all halted), with every token run
   to ``max_steps``, and the bound a per-token gather of the running tokens could reach (cost linear in each
   token's step count, interpolated from the 1-step and max-step costs).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from omegaconf import OmegaConf

from agentforge.artifacts import load_model
from agentforge.data.build import build_datamodule
from agentforge.data.tokenizer import ByteTokenizer
from agentforge.evals.flops import counting_flops
from agentforge.models.ablation import computation_rows, token_scores

ROOT = Path(__file__).resolve().parents[1]
SKIP = ("skipped: no checkpoint given (python benchmarks/bench_halting.py <Cognate checkpoint dir>, e.g. "
        "outputs/artifacts/cognate/model1 after python -m agentforge phase=cognate)")


def val_rows(seq_len: int, n: int, seed: int) -> torch.Tensor:
    """The Cognate phase's validation rows (its default curriculum's last-stage tasks)."""
    stages = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "phase" / "cognate.yaml").curriculum)
    dm = build_datamodule({"seq_len": seq_len, "batch_size": 16}, ByteTokenizer(), stages=stages, seed=seed,
                          steps_per_epoch=1, val_rows=n)
    return dm.val_rows_tensor()


@torch.no_grad()
def flops_per_token(model, rows: torch.Tensor, **ablate) -> float:
    with model.ablate(**ablate), counting_flops(model) as fc:
        for i in range(0, len(rows), 16):
            model(rows[i: i + 16, :-1])
    return fc.get_total_flops() / rows[:, :-1].numel()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint", type=Path, nargs="?", default=None,
                    help="a trained Cognate checkpoint dir (without one: skipped)")
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--rows", type=int, default=32, help="validation rows (the phase's val_rows)")
    ap.add_argument("--computation-rows", type=int, default=64, help="held-out GSM8K-format rows")
    ap.add_argument("--seed", type=int, default=42)
    a = ap.parse_args()
    if a.checkpoint is None:
        print(SKIP)
        return
    torch.set_num_threads(1)
    model = load_model(a.checkpoint)[0].eval()
    c = model.config
    n_max = c.max_steps
    val = val_rows(a.seq, a.rows, a.seed)
    comp, hard, easy = computation_rows(a.computation_rows, a.seq, a.seed)
    print(f"{a.checkpoint}: max_steps {n_max}, ponder_prior {c.ponder_prior}, ponder_cost (beta) {c.ponder_cost}")
    loss = {k: torch.stack([token_scores(model, r, steps=n, halting=False)["loss"] for n in range(1, n_max + 1)])
            for k, r in (("val", val), ("computation", comp))}
    gains = {"all val tokens": loss["val"][:-1] - loss["val"][1:]}
    dc = loss["computation"][:-1] - loss["computation"][1:]
    gains["computed digits"], gains["letters"] = dc[:, hard], dc[:, easy]
    print("mean loss L_n (val):", " ".join(f"{float(v):.4f}" for v in loss["val"].mean((1, 2))))
    for k, g in gains.items():
        g = g.flatten(1)
        if not g.shape[1]:
            print(f"gain L_n - L_(n+1), {k:15} (0 tokens): none in these rows (more or longer --computation-rows)")
            continue
        print(f"gain L_n - L_(n+1), {k:15} ({g.shape[1]} tokens): "
              + "  ".join(f"{n + 1}->{n + 2}: {float(g[n].mean()):+.4f} ({float((g[n] > 0).float().mean()):.0%} > 0)"
                          for n in range(n_max - 1)))
    steps = token_scores(model, val)["steps"]
    print("halting on val: mean", f"{float(steps.mean()):.2f}", "histogram",
          " ".join(f"{n}:{float((steps == n).float().mean()):.0%}" for n in range(1, n_max + 1)))
    f_halt, f_max, f_one = (flops_per_token(model, val, **kw) for kw in ({}, {"halting": False}, {"steps": 1}))
    gather = f_one + (float(steps.mean()) - 1) * (f_max - f_one) / max(1, n_max - 1)
    print(f"inference MFLOPs/token: halting (row skip, early stop) {f_halt / 1e6:.3f}; every token to {n_max} steps "
          f"{f_max / 1e6:.3f} ({f_halt / f_max:.1%}); per-token gather bound {gather / 1e6:.3f} ({gather / f_max:.1%})")


if __name__ == "__main__":
    main()
