"""Grokking benchmark: steps to 95 % validation accuracy for AdamW, Grokfast-AdamW, Muon and Muon-Grokfast
on one task of conf/phase/grokking.yaml (default ``paper``: the Grokfast paper's setting), each with that
task's own settings for it, and each one's speed-up over AdamW.

    python benchmarks/bench_grokking.py --device cuda                         # the full run (GPU, ~6 min on an H200)
    OMP_NUM_THREADS=1 python benchmarks/bench_grokking.py                     # no GPU: 120 s per run, lower bounds
    python benchmarks/bench_grokking.py --task strong_wd
    python benchmarks/bench_grokking.py --extra "muon_wd:muon:weight_decay=0.1,weight_decay_mode=decoupled"

A run that does not reach the target within ``--max-steps`` (or ``--time-limit`` seconds) is reported as a
lower bound, ``>= N`` steps; a speed-up over an AdamW lower bound is then itself a lower bound (``>=``).
Reads the YAML files directly (no Hydra) and runs ``agentforge.models.grokking.train_grokking``, the
loop ``phase=grokking`` runs. Aims (issue 13): Grokfast-AdamW >= 10x fewer steps than AdamW (the paper
reports ~44x), Muon-Grokfast >= 5x.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
OPTIMIZERS = ("adamw", "grokfast_adamw", "muon", "muon_grokfast")
AIMS = {"grokfast_adamw": 10.0, "muon_grokfast": 5.0}
SHOWN = ("lr", "weight_decay", "weight_decay_mode", "betas", "grokfast_alpha", "grokfast_lambda", "qk_clip")


MIN_SEEDS = 5   # seeds a MET / NOT MET verdict needs: all 5 on one side of the aim is a 0.97 one-sided sign test


def aim_verdict(speedups: list, aim: float, lower_bounds: list | None = None) -> str:
    """MET when every seed's speed-up reaches ``aim``, NOT MET when every seed's falls short, from at least
    ``MIN_SEEDS`` seeds; seeds on both sides of the aim show neither. All n seeds on one side is the one-sided sign
    test that the median speed-up is on that side, at level 1 - 0.5^n (n = 5: 0.969; the 3 seeds asked before gave
    0.875, below the project's 95 %, and one seed below the aim read NOT MET whatever the others showed: an audit).
    A speed-up of None (a run stopped at its step or time budget before the target, so its speed-up is unknown) gives
    no verdict, and so does a lower bound (AdamW stopped at its budget: ``lower_bounds[i]`` true) below the aim,
    which the true speed-up may still reach."""
    if len(speedups) < MIN_SEEDS:
        return f"no verdict from {len(speedups)} seed(s)"
    if any(x is None for x in speedups):
        return "no verdict (budget reached)"
    if any(low and x < aim for x, low in zip(speedups, lower_bounds or [])):
        return "no verdict (budget reached: a lower bound below the aim)"
    if all(x >= aim for x in speedups):
        return "MET"
    if all(x < aim for x in speedups):
        return "NOT MET"
    return "not shown (seeds on both sides of the aim)"

def _one(args):
    label, task, opt_cfg, seed, device, time_limit, out_dir = args
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(ROOT))
    from agentforge.models.grokking import train_grokking

    r = train_grokking(task, opt_cfg, seed, device=device, time_limit_s=time_limit)
    r.update(label=label, seed=seed, settings={k: opt_cfg[k] for k in SHOWN if k in opt_cfg})
    if out_dir:   # each run's full result (curves included) as soon as it ends
        Path(out_dir, f"grokking_{label}_seed{seed}.json").write_text(json.dumps(r))
    r.pop("curve")
    print(f"  done: {label} seed {seed}: " + (f"{r['steps_to_target_val']} steps" if r["steps_to_target_val"]
          else f">= {r['steps_run']} steps (val {r['final_val_accuracy']:.3f})") + f", {r['steps_per_second']:.1f} steps/s",
          flush=True)
    return r


def speedup(base: dict, run: dict) -> tuple[str, float | None, bool]:
    """(text, AdamW steps / run steps, whether the figure is a lower bound); None when undecidable."""
    b, s = base["steps_to_target_val"], run["steps_to_target_val"]
    if s is None:
        return ("n/a", None, False) if b is None else (f"<= {b / run['steps_run']:.2f}", None, False)
    if b is None:
        return f">= {base['steps_run'] / s:.2f}", base["steps_run"] / s, True
    return f"{b / s:.2f}", b / s, False


def parse_extra(spec: str) -> tuple[str, str, dict]:
    """'label:optimizer:key=value,key=value' -> (label, optimizer preset, settings laid over the task's)."""
    label, name, *rest = spec.split(":")
    kv = dict(x.split("=", 1) for x in ",".join(rest).split(",") if x)
    return label, name, {k: yaml.safe_load(v) for k, v in kv.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default=None, help="a key of tasks in conf/phase/grokking.yaml (default: its task)")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--max-steps", type=int, default=None, help="step budget per run (default: the task's)")
    ap.add_argument("--time-limit", type=float, default=None, help="seconds per run; past it a run stops (lower bound)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--jobs", type=int, default=None, help="worker processes (default: 2 on cpu, one per run on cuda)")
    ap.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS), choices=OPTIMIZERS)
    ap.add_argument("--extra", nargs="*", default=[], help="more runs: label:optimizer:key=value,...")
    ap.add_argument("--set", nargs="*", default=[], help="task overrides, e.g. modulus=23 eval_every=20")
    ap.add_argument("--out", default=None, help="folder for one JSON per run and summary.json")
    a = ap.parse_args()
    if a.device is None:
        import torch

        a.device = "cuda" if torch.cuda.is_available() else "cpu"
    if a.device == "cpu" and a.time_limit is None and a.max_steps is None:
        a.time_limit = 120.0   # ~8-9 steps/s per process at 1 thread on a 2-core CPU: far from the aims; use a GPU
        print("cpu: each run stops after 120 s (--time-limit); expect lower bounds, not the paper's figures")
    sys.path.insert(0, str(ROOT))
    from agentforge.models.grokking import resolve_task, task_optimizer_cfg

    phase = yaml.safe_load((ROOT / "conf/phase/grokking.yaml").read_text())
    phase["task"] = a.task or phase["task"]
    phase["max_steps"] = a.max_steps
    for kv in a.set:
        k, v = kv.split("=", 1)
        phase[k] = yaml.safe_load(v)
    task = resolve_task(phase)
    if "adamw" not in a.optimizers:
        a.optimizers.insert(0, "adamw")   # every ratio is to AdamW

    def preset(name):
        return yaml.safe_load((ROOT / f"conf/optimizer/{name}.yaml").read_text())

    runs = [(n, task_optimizer_cfg(task, preset(n))) for n in a.optimizers]
    for spec in a.extra:
        label, name, settings = parse_extra(spec)
        runs.append((label, {**task_optimizer_cfg(task, preset(name)), **settings}))
    if a.out:
        Path(a.out).mkdir(parents=True, exist_ok=True)
    jobs = [(label, task, cfg, s, a.device, a.time_limit, a.out) for label, cfg in runs for s in a.seeds]
    n_jobs = a.jobs or (len(jobs) if a.device.startswith("cuda") else 2)
    print(f"task {task['task']}: a {task['operation']} b mod {task['modulus']}, train fraction {task['train_fraction']}, "
          f"{task['model']} model d_model {task['d_model']} x {task['n_layers']} layers, batch {task['batch_size']}, "
          f"budget {task['max_steps']} steps" + (f" / {a.time_limit:.0f} s" if a.time_limit else "")
          + f", eval every {task['eval_every']}; {len(jobs)} runs, {n_jobs} processes on {a.device}", flush=True)
    t0 = time.perf_counter()
    with ProcessPoolExecutor(n_jobs, mp_context=mp.get_context("spawn")) as ex:
        results = list(ex.map(_one, jobs))
    wall = time.perf_counter() - t0

    print(f"\n{'run':<22}{'seed':>5}{'steps to 95% val':>18}{'speed-up vs AdamW':>19}{'final val':>10}"
          f"{'steps/s':>9}  settings")
    summary = []
    for r in results:
        base = next(b for b in results if b["label"] == "adamw" and b["seed"] == r["seed"])
        text, ratio, lower = speedup(base, r)
        steps = str(r["steps_to_target_val"]) if r["steps_to_target_val"] else f">= {r['steps_run']}"
        print(f"{r['label']:<22}{r['seed']:>5}{steps:>18}{text:>19}{r['final_val_accuracy']:>10.3f}"
              f"{r['steps_per_second']:>9.1f}  {r['settings']}")
        summary.append({**r, "speedup": ratio, "speedup_is_lower_bound": lower})
    for name, aim in AIMS.items():
        got = [s for s in summary if s["label"] == name]
        if got:
            seeds = len(got)
            word = aim_verdict([s["speedup"] for s in got], aim, [s["speedup_is_lower_bound"] for s in got])
            print(f"aim {name} >= {aim:.0f}x fewer steps than AdamW: {word} (n = {seeds} seeds; "
                  f"{', '.join(str(s['speedup'] and round(s['speedup'], 2)) for s in got)}; MET or NOT MET needs every "
                  f"seed on one side, at least {MIN_SEEDS}: a one-sided sign test at {1 - 0.5 ** seeds:.3f})")
    print(f"whole benchmark: {wall:.0f} s wall on {a.device}")
    if a.out:
        Path(a.out, "summary.json").write_text(json.dumps({"task": task, "runs": summary, "wall_s": wall}, indent=1))


if __name__ == "__main__":
    main()
