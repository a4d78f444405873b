"""Optimizer step time of Muon-Grokfast against AdamW on the default (size=tiny) Cognate model m1, same
process, same gradients. Also the whole training step (forward + backward + optimizer step), which is
what a run pays. Each optimizer steps its own copy of the model (same weights, same gradients); the two
are timed interleaved (``evals.speed.interleaved_medians``). Grokfast amplifies ``p.grad`` in place, so every
timed optimizer step first restores the gradients: the step's time is median(restore + step) minus the
median of the restore alone, timed in the same rounds.

    OMP_NUM_THREADS=1 python benchmarks/bench_optimizer.py [--repeats 50]

Aim: Muon-Grokfast step <= 1.3x AdamW's. Muon's Newton-Schulz iterations (5 x 3 matmuls per hidden
matrix, torch.optim.Muon) cost far more than AdamW's elementwise update on a CPU; the full-step ratio
shows how much of a training step that is.
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agentforge.artifacts import cognate_config_from  # noqa: E402
from agentforge.data.tokenizer import RESERVED_VOCAB  # noqa: E402
from agentforge.evals.speed import interleaved_medians  # noqa: E402
from agentforge.models import CognateModel  # noqa: E402
from agentforge.optim import build_optimizer  # noqa: E402


def load(path: str) -> dict:
    return yaml.safe_load((ROOT / path).read_text())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=64)
    a = ap.parse_args()
    torch.set_num_threads(1)
    mcfg = {**load("conf/model/m1.yaml"), **load("conf/size/tiny.yaml")}
    torch.manual_seed(0)
    model = CognateModel(cognate_config_from(mcfg, RESERVED_VOCAB))
    ids = torch.randint(0, 256, (a.batch, a.seq + 1))
    model(ids[:, :-1], ids[:, 1:]).loss.backward()
    grads = [p.grad.clone() if p.grad is not None else None for p in model.parameters()]
    print(f"Cognate m1 (size=tiny): {model.num_params():,} params; batch {a.batch} x {a.seq} tokens; 1 thread")
    names = ("adamw", "muon_grokfast")
    twins = {name: copy.deepcopy(model) for name in names}   # the same weights and gradients for each
    opts = {name: build_optimizer(twins[name], load(f"conf/optimizer/{name}.yaml"), 1000)[0] for name in names}

    def set_grads(name):  # Grokfast amplifies p.grad in place: every timed step starts from the same gradients
        for p, g in zip(twins[name].parameters(), grads):
            p.grad = None if g is None else g.clone()

    def opt_step(name):
        set_grads(name)
        opts[name].step()

    def train_step(name):
        opts[name].zero_grad()
        twins[name](ids[:, :-1], ids[:, 1:]).loss.backward()
        opts[name].step()
    step = interleaved_medians({"copy": lambda: set_grads("adamw"), **{n: lambda n=n: opt_step(n) for n in names}},
                               a.repeats, warmup=5)
    full = interleaved_medians({n: lambda n=n: train_step(n) for n in names}, max(a.repeats // 5, 3), warmup=2)
    results = {n: ((step[n] - step["copy"]) * 1e3, full[n] * 1e3) for n in names}
    (ao, af), (mo, mf) = results["adamw"], results["muon_grokfast"]
    print(f"{'':<16}{'optimizer.step ms':>19}{'train step ms':>15}")
    print(f"{'adamw':<16}{ao:>19.2f}{af:>15.1f}")
    print(f"{'muon_grokfast':<16}{mo:>19.2f}{mf:>15.1f}")
    print(f"optimizer.step = median(gradient copy + step) - median(gradient copy) ({step['copy'] * 1e3:.2f} ms), "
          f"medians of {a.repeats} interleaved runs; train steps medians of {max(a.repeats // 5, 3)}")
    print(f"ratio optimizer.step: {mo / ao:.2f}x AdamW (aim <= 1.3x: {'met' if mo / ao <= 1.3 else 'NOT met'});"
          f" ratio whole train step: {mf / af:.2f}x")


if __name__ == "__main__":
    main()
