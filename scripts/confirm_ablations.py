"""Re-measure the Cognate ablations on TEST-split rows: data that played no part in training, early stopping or
choosing the halting settings (the phase's own ``ablation/*`` figures use the validation rows, which did).

    python scripts/confirm_ablations.py outputs/pipeline/default/artifacts/cognate/model1 [...model2 model3]

For each checkpoint: recursion fixed at 1 step, memory reads off and always-max-steps against the trained model
on ``--rows`` test rows of the final curriculum stage's mix (distinct documents, none spanning two rows) (paired bootstrap 95 % CI over rows), the
halting non-inferiority verdict (``ablation.NONINFERIORITY_MARGIN``), and memory off vs on over the repeated
digits of ``--rows`` test-split recall items.
"""
from __future__ import annotations

import argparse
import random
from pathlib import Path

import torch
from omegaconf import OmegaConf

from agentforge.artifacts import load_model
from agentforge.data.datamodule import TaskPool, heldout_rows, normalize_mix
from agentforge.data.recall import recall_rows
from agentforge.models.ablation import NONINFERIORITY_MARGIN, ablations, halting_verdict, recall_memory

CURRICULUM = Path(__file__).resolve().parents[1] / "conf" / "phase" / "cognate.yaml"


def final_mix_rows(tok, n_rows: int = 64, seq_len: int = 128, seed: int = 42, split: str = "test") -> torch.Tensor:
    """``n_rows`` rows [n_rows, seq_len + 1] of ``split`` documents of the final curriculum stage's tasks, equally
    weighted (distinct documents, none spanning two rows: ``heldout_rows``); the same rows for every model given the
    same arguments (``scripts/train_ablations.py`` scores its variants on them too)."""
    mix = normalize_mix({t: 1.0 for t in OmegaConf.load(CURRICULUM).curriculum[-1].mix})
    return heldout_rows(TaskPool(seed), mix, n_rows, seq_len, tok, random.Random(seed * 7919), split)


def confirm(directory, n_rows: int = 64, seq_len: int = 128, seed: int = 42) -> dict[str, float]:
    """The test-split ablation figures of one checkpoint (``ablation/*`` keys, ``ablation/halting_noninferior``
    as 1.0 / 0.0 included)."""
    model, tok, _ = load_model(directory)
    rows = final_mix_rows(tok, n_rows, seq_len, seed)
    out = ablations(model, rows, seed=seed)  # distinct documents, none spanning two rows; sets halting_noninferior
    rows, mask = recall_rows(n_rows, seq_len, seed, "test", gap=model.config.window + 8, tokenizer=tok)
    out.update(recall_memory(model, rows, mask, seed=seed))
    return out


def _ci(out: dict, key: str) -> str:
    return f"{out[key + '_delta']:+.4f} [{out[key + '_delta_ci_low']:+.4f}, {out[key + '_delta_ci_high']:+.4f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+", type=Path)
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()
    torch.manual_seed(0)
    for ckpt in args.checkpoints:
        o = confirm(ckpt, args.rows, args.seq_len, args.seed)
        verdict = halting_verdict(o)
        print(f"{ckpt}: n={int(o['ablation/n_rows'])} test rows; 1 step {_ci(o, 'ablation/steps1_loss')}; memory off "
              f"{_ci(o, 'ablation/no_memory_loss')}; max steps - trained {_ci(o, 'ablation/max_steps_loss')} -> halting "
              f"{verdict} at {NONINFERIORITY_MARGIN}; recall items (n={int(o['ablation/recall_n_rows'])}) memory off - on "
              f"{_ci(o, 'ablation/recall_no_memory_loss')}")


if __name__ == "__main__":
    main()
