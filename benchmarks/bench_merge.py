"""Merge time per technique on the default models, and EvoMerge evaluations per second.

    OMP_NUM_THREADS=1 python benchmarks/bench_merge.py [--artifacts outputs/artifacts] [--repeats 9] [--evals 8]

Uses the Cognate checkpoints under ``{artifacts}/cognate/model{1,2,3}`` when they exist, else three
freshly initialized models of the default (m1/m2/m3, size=tiny) configs. Prints each technique's time
over every parameter tensor of the three models, as a ratio to Linear (the baseline), then the time of
a whole recipe per combo, then evaluations per second of the phase's default fitness measurement,
against measuring an input model alone (so the ratio is the merge + model-building overhead), and
last why the speed term counts FLOPs by default: the timed speed ratio of an exact copy of an input
against that input, repeated (1.0 would be no noise), beside the FLOP ratio (exactly 1.0 every time).
Every case is timed in interleaved rounds (``evals.speed.interleaved_times``); every ratio is the median of the
per-round ratios with its 95 % CI and n (``ratio_ci.py``; for the exact copy a round is one speed-term measurement).
"""
from __future__ import annotations

import argparse
import copy
import itertools
import random
import statistics
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from ratio_ci import DEFAULT_ROUNDS, ci_header, ci_short, ratio_line

from agentforge.artifacts import cognate_config_from, load_model
from agentforge.data.tokenizer import RESERVED_VOCAB, ByteTokenizer
from agentforge.evals.speed import interleaved_medians, interleaved_times
from agentforge.main import CONF_DIR
from agentforge.merge import combos, fitness, layers, techniques
from agentforge.merge.recipe import BUFFERS, Space, materialize, random_recipe
from agentforge.models import CognateModel
from agentforge.phases.evomerge import build, eval_data


def _cfg(model: str | None = None):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        over = ["phase=evomerge"] + ([f"model={model}"] if model else [])
        return compose(config_name="config", overrides=over)


def load_inputs(artifacts: Path):
    dirs = [artifacts / "cognate" / f"model{i}" for i in (1, 2, 3)]
    if all((d / "config.json").is_file() for d in dirs):
        return [load_model(d)[0] for d in dirs], "trained checkpoints in " + str(artifacts)
    from omegaconf import OmegaConf

    models = []
    for i, name in enumerate(("m1", "m2", "m3")):
        torch.manual_seed(i)
        mc = OmegaConf.to_container(_cfg(name).model, resolve=True)
        models.append(CognateModel(cognate_config_from(mc, RESERVED_VOCAB)).eval())
    return models, "freshly initialized default models (no checkpoints found)"


def technique_table(times: dict[str, list[float]]) -> list[str]:
    """Median ms of each technique and its time / Linear's (``ci_short``: per-round ratios, the header says what)."""
    n = len(times["linear"])
    return [f"\nmedians of {n} interleaved runs, one untimed round first; x linear: {ci_header(n)}",
            f"{'technique':17s} {'ms':>9s} {'x linear [CI]':>22s}",
            *(f"{name:17s} {statistics.median(t) * 1000:9.2f} {ci_short(t, times['linear']):>22s}"
              for name, t in times.items())]


def eval_line(times: dict[str, list[float]]) -> str:
    """Fitness evaluation of an input model alone vs a merged recipe (medians), their ratio (``ratio_line``), evals/s."""
    t_input, per_eval = statistics.median(times["input"]), statistics.median(times["merged"])
    return (f"\nfitness evaluation (default phase.eval settings, medians of {len(times['input'])} interleaved runs, "
            f"each run a different recipe): input model alone {t_input * 1000:.0f} ms, merged recipe "
            f"{per_eval * 1000:.0f} ms; {1 / per_eval:.2f} evaluations/s\n"
            + ratio_line("merged recipe / input model alone evaluation time", times["merged"], times["input"]))


def copy_line(ratios: list[float], flops: set, speed_repeats: int) -> str:
    """The speed term of an exact copy vs its original, each measurement's timed ratio one round (``ratio_line``),
    the range of them all (what a single fitness evaluation may see), beside the FLOP ratios."""
    return (f"\nspeed term of an exact copy of input 1 vs input 1 ({len(ratios)} measurements of "
            f"phase.eval.speed_repeats={speed_repeats} interleaved passes; 1.0 would be no noise): timed ratio range "
            f"{min(ratios):.3f}..{max(ratios):.3f}; FLOP ratio {sorted(flops)}\n"
            + ratio_line("timed speed term, exact copy / input 1", ratios, [1.0] * len(ratios)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--artifacts", default="outputs/artifacts")
    ap.add_argument("--repeats", type=int, default=DEFAULT_ROUNDS, help="interleaved rounds")
    ap.add_argument("--evals", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(1)
    models, source = load_inputs(Path(args.artifacts))
    states = [m.state_dict() for m in models]
    keys = [k for k in states[0] if k not in BUFFERS]
    n_params = sum(states[0][k].numel() for k in keys)
    print(f"inputs: {source}; {n_params:,} merged parameters per model, {models[0].config.n_layers} layers")
    w, g = (0.5, 0.3, 0.2), torch.Generator().manual_seed(0)
    base = {k: techniques.linear([s[k] for s in states], w) for k in keys}
    per_tensor = {
        "linear": lambda: [techniques.linear([s[k] for s in states], w) for k in keys],
        "slerp": lambda: [techniques.slerp_many([s[k] for s in states], w) for k in keys],
        "ties": lambda: [techniques.ties(base[k], [s[k] for s in states], w, density=0.5) for k in keys],
        "dare (l1)": lambda: [techniques.dare(base[k], [s[k] for s in states], w, density=0.5, generator=g)
                              for k in keys],
        "dare (1/density)": lambda: [techniques.dare(base[k], [s[k] for s in states], w, density=0.5, generator=g,
                                                     rescale="inverse_density") for k in keys],
        "frankenmerge": lambda: layers.frankenmerge([(states[0], 0, 2), (states[1], 1, 2)], states[2]),
        "dfs": lambda: layers.dfs([(states[0], 0), (states[1], 1), (states[2], 1)], [0.8, 1.2, 1.0], states[2]),
    }
    print("\n".join(technique_table(interleaved_times(per_tensor, args.repeats))))
    n = models[0].config.n_layers
    sp, rng = Space(n, max(1, round(n * 0.5)), max(n, round(n * 1.5))), random.Random(0)
    configs = [m.config for m in models]
    print(f"\n{'combo':6s} {'techniques':28s} {'recipe ms':>9s}")
    recipes = {c: random_recipe(rng, sp, combo=c) for c in range(8)}
    per_combo = interleaved_medians({c: lambda r=r: materialize(r, states, configs) for c, r in recipes.items()},
                                    args.repeats)
    for c, t in per_combo.items():
        print(f"{combos.bits(c):6s} {combos.decode(c).label:28s} {t * 1000:9.2f}")
    cfg = _cfg()
    data = eval_data(cfg, "val", int(cfg.phase.eval.rows))
    tok = ByteTokenizer()
    next_recipe = itertools.cycle([random_recipe(rng, sp, combo=i % 8) for i in range(args.evals)]).__next__
    times = interleaved_times({"input": lambda: fitness.measure(models[0], tok, data, models[0]),
                               "merged": lambda: fitness.measure(build(next_recipe(), states, configs), tok, data,
                                                                 models[0])}, args.evals)
    print(eval_line(times))
    per_eval = statistics.median(times["merged"])
    print(f"default run (8 individuals x <= 8 generations, 2 elites cached): <= {8 + 7 * 6} evaluations "
          f"~ {(8 + 7 * 6) * per_eval / 60:.1f} min of evaluation on this machine")
    twin = copy.deepcopy(models[0])
    ratios = [fitness.timed(twin, models[0], data)[1] for _ in range(args.repeats * 3)]
    flops = {fitness.forward_flops(twin, data) / fitness.forward_flops(models[0], data) for _ in range(3)}
    print(copy_line(ratios, flops, data.speed_repeats))

if __name__ == "__main__":
    main()
