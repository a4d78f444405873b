"""Optimizer step time of Muon-Grokfast against AdamW on the default (size=tiny) Cognate model m1, same
process, same gradients. Also the whole training step (forward + backward + optimizer step), which is
what a run pays. Each optimizer steps its own copy of the model (same weights, same gradients); the two
are timed in interleaved rounds whose order rotates (every optimizer once per round). Grokfast amplifies
``p.grad`` in place, so before every timed optimizer step the gradients are restored, untimed: the step is
timed alone. Each ratio is the median of the per-round ratios with its 95 % CI and n (``ratio_ci.py``).

    OMP_NUM_THREADS=1 python benchmarks/bench_optimizer.py [--repeats 50]

Aim: Muon-Grokfast step <= 1.3x AdamW's, decided from the CI (met: the whole CI <= 1.3; missed: none of it;
else inconclusive). Also the same preset with ``optimizer.muon_impl=torch`` (torch.optim.Muon, matrix by matrix) against
the default grouped Newton-Schulz (``optim/grouped_muon.py``). Muon's Newton-Schulz iterations (5 x 3 matmuls per hidden matrix) cost
far more than AdamW's elementwise update on a CPU; the full-step ratio shows how much of a training step that is.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ratio_ci import aim_line, ratio_line  # noqa: E402

from agentforge.artifacts import cognate_config_from  # noqa: E402
from agentforge.data.tokenizer import RESERVED_VOCAB  # noqa: E402
from agentforge.evals.compare import MIN_TIMING_ROUNDS  # noqa: E402
from agentforge.evals.speed import interleaved_times  # noqa: E402
from agentforge.models import CognateModel  # noqa: E402
from agentforge.optim import build_optimizer  # noqa: E402


def load(path: str) -> dict:
    return yaml.safe_load((ROOT / path).read_text())


AIM = 1.3   # Muon-Grokfast's optimizer.step <= 1.3x AdamW's
TORCH_MUON = "torch_muon"   # the same preset with optimizer.muon_impl=torch (torch.optim.Muon, matrix by matrix)


def report(step: dict[str, list[float]], full: dict[str, list[float]]) -> list[str]:
    """The table (medians, ms) and the two ratios muon_grokfast / adamw (``ratio_ci.py``), the aim decided from the
    optimizer step's CI; ``step`` / ``full``: name -> seconds per interleaved round."""
    ms = {n: (1e3 * statistics.median(step[n]), 1e3 * statistics.median(full[n])) for n in step}
    return [f"{'':<16}{'optimizer.step ms':>19}{'train step ms':>15}",
            *(f"{n:<16}{o:>19.2f}{f:>15.1f}" for n, (o, f) in ms.items()),
            f"optimizer.step timed alone (the gradients restored untimed before each step), medians of "
            f"{len(step['adamw'])} interleaved rounds; train steps medians of {len(full['adamw'])}",
            aim_line("optimizer.step muon_grokfast / adamw", step["muon_grokfast"], step["adamw"], AIM),
            ratio_line("whole train step muon_grokfast / adamw", full["muon_grokfast"], full["adamw"]),
            *([ratio_line(f"optimizer.step muon_grokfast, grouped Muon / {TORCH_MUON}", step["muon_grokfast"],
                          step[TORCH_MUON])] if TORCH_MUON in step else [])]


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
    names = ("adamw", "muon_grokfast", TORCH_MUON)
    twins = {name: copy.deepcopy(model) for name in names}   # the same weights and gradients for each
    presets = {"adamw": load("conf/optimizer/adamw.yaml"), "muon_grokfast": load("conf/optimizer/muon_grokfast.yaml"),
               TORCH_MUON: {**load("conf/optimizer/muon_grokfast.yaml"), "muon_impl": "torch"}}
    opts = {name: build_optimizer(twins[name], presets[name], 1000)[0] for name in names}

    def set_grads(name):  # Grokfast amplifies p.grad in place: every timed step starts from the same gradients
        for p, g in zip(twins[name].parameters(), grads):
            p.grad = None if g is None else g.clone()

    def train_step(name):
        opts[name].zero_grad()
        twins[name](ids[:, :-1], ids[:, 1:]).loss.backward()
        opts[name].step()
    step = interleaved_times({n: opts[n].step for n in names}, a.repeats, warmup=5, prepare=set_grads)
    full = interleaved_times({n: lambda n=n: train_step(n) for n in names}, max(a.repeats // 5, MIN_TIMING_ROUNDS), warmup=2)   # enough rounds for a 95 % CI
    print("\n".join(report(step, full)))


if __name__ == "__main__":
    main()
