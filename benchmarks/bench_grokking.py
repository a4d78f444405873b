"""Grokking benchmark: steps to 95% validation accuracy on a ∘ b mod 97 (the phase=grokking defaults)
for AdamW, Grokfast-AdamW, Muon and Muon-Grokfast, and each one's ratio to the AdamW baseline.

    OMP_NUM_THREADS=1 python benchmarks/bench_grokking.py              # 2 worker processes, CPU
    python benchmarks/bench_grokking.py --jobs 1 --seeds 0 1 --device cuda

Reads conf/phase/grokking.yaml and conf/optimizer/*.yaml (plain YAML: no Hydra needed) and runs
``agentforge.models.grokking.train_grokking``, the loop the phase runs. Target: Muon-Grokfast in at most
1/5 of AdamW's steps; the script prints whether it was met.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
OPTIMIZERS = ("adamw", "grokfast_adamw", "muon", "muon_grokfast")


def _one(args):
    task, opt_cfg, seed, device = args
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(ROOT))
    from agentforge.models.grokking import train_grokking

    r = train_grokking(task, opt_cfg, seed, device=device)
    r.pop("curve")
    return r


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=2, help="worker processes (one thread each)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--set", nargs="*", default=[], help="phase overrides, e.g. operation=add max_steps=2000")
    a = ap.parse_args()
    task = yaml.safe_load((ROOT / "conf/phase/grokking.yaml").read_text())
    for kv in a.set:
        k, v = kv.split("=", 1)
        task[k] = yaml.safe_load(v)
    sys.path.insert(0, str(ROOT))
    from agentforge.models.grokking import grokking_optimizer_cfg

    jobs = []
    for name in OPTIMIZERS:
        preset = yaml.safe_load((ROOT / f"conf/optimizer/{name}.yaml").read_text())
        cfg = grokking_optimizer_cfg(preset, task["optimizer_overrides"])
        jobs += [(task, cfg, s, a.device) for s in a.seeds]
    print(f"task: a {task['operation']} b mod {task['modulus']}, train fraction {task['train_fraction']}, "
          f"d_model {task['d_model']}, {task['n_layers']} layers, batch {task['batch_size']}, "
          f"max {task['max_steps']} steps, overrides {task['optimizer_overrides']}; {a.jobs} jobs on {a.device}")
    t0 = time.perf_counter()
    with ProcessPoolExecutor(a.jobs, mp_context=mp.get_context("spawn")) as ex:
        results = list(ex.map(_one, jobs))
    wall = time.perf_counter() - t0
    by = {n: [r for r in results if r["optimizer"] == n] for n in OPTIMIZERS}

    def mean_steps(rs):
        steps = [r["steps_to_target_val"] for r in rs]
        return None if any(s is None for s in steps) else sum(steps) / len(steps)

    base = mean_steps(by["adamw"])
    print(f"\n{'optimizer':<16}{'steps to 95% val':>18}{'vs AdamW':>10}{'final val':>11}{'steps run':>11}{'seconds':>9}")
    for n in OPTIMIZERS:
        s = mean_steps(by[n])
        ratio = f"{s / base:.2f}" if s is not None and base else "n/a"
        fv = sum(r["final_val_accuracy"] for r in by[n]) / len(by[n])
        print(f"{n:<16}{('not reached' if s is None else f'{s:.0f}'):>18}{ratio:>10}{fv:>11.3f}"
              f"{sum(r['steps_run'] for r in by[n]) / len(by[n]):>11.0f}{sum(r['seconds'] for r in by[n]):>9.1f}")
    mg = mean_steps(by["muon_grokfast"])
    met = mg is not None and base is not None and mg <= base / 5
    print(f"\nwhole benchmark: {wall:.0f} s wall ({'under' if wall < 900 else 'OVER'} the 15-minute budget)")
    print(f"target (Muon-Grokfast <= 1/5 of AdamW's steps): {'MET' if met else 'NOT MET'}"
          + (f" (ratio {mg / base:.2f})" if mg is not None and base else ""))


if __name__ == "__main__":
    main()
