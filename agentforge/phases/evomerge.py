"""Phase 2, EvoMerge: evolve merges of the three Cognate models.

    python -m agentforge phase=evomerge
    python -m agentforge phase=evomerge phase.generations=50 phase.inputs=[a,b,c]

Reads ``{artifacts}/cognate/model{1,2,3}`` (or ``phase.inputs``), measures them, then runs the genetic
algorithm of ``merge/evolution.py`` over merge recipes (``merge/recipe.py``; 8 technique combos, see
``merge/combos.py``) with the fitness of ``merge/fitness.py``. Outputs: the champion checkpoint
(``{artifacts}/evomerge/champion``), ``evolution_log.json`` (every individual of every generation), the
history and combo tables, fitness/diversity curves and the combo-usage heatmap, under the seed's keys.

Generation 0 holds the three input models themselves as recipes (``recipe.identity_recipe``), and
every evaluation is cached by a hash of the merged weights (``merge/evaluator.py``), so with
``elite_count >= 1`` the champion's *selection-set* fitness is at least the best input's (with
``population_size < 3`` only the first inputs are seeded). That selection figure is a maximum over
many evaluations and is biased upwards; the decision figure is ``final/test_fitness_improvement``: the
champion against the best input on test data disjoint from the selection set, with a bootstrap CI
(``merge/heldout.py``).
"""
from __future__ import annotations

import math
import random
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from scipy.spatial.distance import euclidean

from agentforge.artifacts import ARCHITECTURE, load_model, publish, save_model
from agentforge.data.build import eval_sets
from agentforge.data.datamodule import TaskPool, heldout_rows, normalize_mix
from agentforge.data.tokenizer import ByteTokenizer
from agentforge.errors import ConfigError
from agentforge.io import CheckpointError, pipeline_copy_hint, recover_published, write_json_atomic
from agentforge.merge import combos, fitness, heldout
from agentforge.merge.evaluator import RecipeEvaluator
from agentforge.merge.evaluator import build as build_model
from agentforge.merge.evolution import EvoConfig, evolve
from agentforge.merge.recipe import (
    Recipe,
    Space,
    crossover,
    features,
    incompatibility,
    initial_population,
    materialize,
    mutate,
)
from agentforge.models import CognateModel
from agentforge.phases.context import run_context
from agentforge.phases.evomerge_log import (
    GenerationLogger,
    combo_counts,
    combo_stats,
    elites_distinct,
    history_combo,
    unchanged_input,
    unique_models,
)
from agentforge.phases.rules import PHASE_RULES
from agentforge.tracking import plots
from agentforge.tracking.spec_config import flat_config
from agentforge.training.trainer import loop_device, set_threads

RULES = PHASE_RULES["evomerge"]
TAGS = ["phase2", "evomerge", "genetic-algorithm", "model-merging"]


def input_dirs(cfg) -> list[Path]:
    """``phase.inputs`` (three different checkpoint dirs: the same one twice merges a model with itself and replaces
    the champion with it), or Cognate's three models, which must exist (the error names ``phase=cognate``)."""
    given = cfg.phase.get("inputs")
    if given is None:
        dirs = [Path(cfg.paths.artifacts).absolute() / "cognate" / f"model{i}" for i in (1, 2, 3)]
        for d in dirs:
            if not recover_published(d) and not d.exists():
                raise CheckpointError(f"{d}: no Cognate checkpoint — run phase=cognate first (it writes model1, "
                                      f"model2 and model3), or pass phase.inputs=[a,b,c]{pipeline_copy_hint(d)}")
        return dirs
    if isinstance(given, str) or len(given) != 3:
        raise ConfigError(f"phase.inputs must list 3 checkpoint dirs, e.g. phase.inputs=[a,b,c], got {given!r}")
    dirs = [Path(str(p)).expanduser().absolute() for p in given]
    real = [d.resolve() for d in dirs]
    twice = sorted({str(dirs[real.index(r)]) for r in real if real.count(r) > 1})   # as given, first spelling
    if twice:
        raise ConfigError(f"phase.inputs names {', '.join(twice)} more than once; give three different checkpoint "
                          f"dirs (a merge of a model with itself would replace the champion with that model)")
    return dirs


def load_inputs(dirs: list[Path]):
    """The three models (eval mode); CheckpointError naming the dir when one is missing or cannot be
    merged with the first (every parameter shape, the ``memory`` switch and ``ltm_gate_norm`` must match; memory slots
    may differ)."""
    models, tok = [], None
    for d in dirs:
        model, tokenizer, _ = load_model(d)
        if models and (why := incompatibility(models[0].config, model.config)):
            raise CheckpointError(f"{d}: cannot be merged with {dirs[0]} ({why}); all three inputs must share "
                                  f"one architecture size, the memory switch and the memory gate's input")
        models.append(model)
        tok = tok or tokenizer
    return models, tok


def eval_data(cfg, split: str, rows: int, choice_examples: int | None = None) -> fitness.EvalData:
    """``rows`` rows of the four synthetic tasks (distinct documents, none spanning two rows: ``heldout_rows``, so
    the perplexity comparison's rows are independent units) and ``choice_examples`` (default
    ``phase.eval.choice_examples``) ARC- and PIQA-format questions each, from ``split``."""
    e, seed = cfg.phase.eval, int(cfg.seed)
    n_choice = int(e.choice_examples if choice_examples is None else choice_examples)
    mix = normalize_mix({t: 1.0 for t in ("plain_text", "arithmetic", "choice", "piqa")})
    token_rows = heldout_rows(TaskPool(seed), mix, rows, int(e.seq_len), ByteTokenizer(), random.Random(seed * 104729),
                              split)
    n = max(n_choice, int(e.gsm8k_examples))
    key = ("phase.eval.gsm8k_examples" if int(e.gsm8k_examples) > n_choice else
           "phase.eval.choice_examples" if choice_examples is None else "phase.eval.test_choice_examples")
    sets = eval_sets(OmegaConf.to_container(cfg.data, resolve=True), seed, n, split, key) if n else {}
    return fitness.EvalData(
        rows=token_rows,
        choice={k: sets[k][:n_choice] for k in ("arc", "piqa")} if n else {},
        gsm8k=sets["gsm8k"][: int(e.gsm8k_examples)] if n else [], gen_tokens=int(e.gen_tokens),
        speed_seq_len=int(e.speed_seq_len), speed_batch=int(e.speed_batch), speed_repeats=int(e.speed_repeats))


def build(recipe: Recipe, states, configs, dev: torch.device | str = "cpu", dare_rescale: str = "l1") -> CognateModel:
    return build_model(*materialize(recipe, states, configs, dare_rescale), dev)


def depth_space(n: int, lo: float, hi: float) -> Space:
    """The merged depths d allowed by ``phase.depth_range = [lo, hi]``: lo <= d / n <= hi, the bounds rounded inward
    (ceil of n lo, floor of n hi; 1e-9 absorbs float error such as 0.7 * 10 = 7.000000000000001), never Python's
    round (banker's rounding: round(0.5 * 5) = 2 is 0.4 n). lo <= 1 <= hi, so the inputs' own depth n is always
    allowed, and at least 1 layer."""
    return Space(n, max(1, math.ceil(n * lo - 1e-9)), max(n, math.floor(n * hi + 1e-9)))


def check_seq_lens(eval_cfg, models) -> None:
    """ConfigError when ``phase.eval.seq_len`` or ``speed_seq_len`` exceeds the inputs' ``max_seq_len`` (checked
    before any run dir is made; the model would refuse the sequence only after the run had started)."""
    limit = min(m.config.max_seq_len for m in models)
    for key in ("seq_len", "speed_seq_len"):
        if int(eval_cfg[key]) > limit:
            raise ConfigError(f"phase.eval.{key} ({eval_cfg[key]}) exceeds the input models' max_seq_len ({limit})")


def run(cfg) -> dict:
    p = cfg.phase
    if int(p.elite_count) >= int(p.population_size):
        raise ConfigError(f"phase.elite_count ({p.elite_count}) must be smaller than phase.population_size "
                          f"({p.population_size})")
    depth = list(p.depth_range) if OmegaConf.is_list(p.depth_range) else []
    if len(depth) != 2 or not all(isinstance(x, (int, float)) for x in depth) or not 0 < depth[0] <= 1 <= depth[1]:
        raise ConfigError(f"phase.depth_range must be [lo, hi] with 0 < lo <= 1 <= hi, got {p.depth_range}")
    evo = EvoConfig(int(p.population_size), int(p.generations), int(p.elite_count), int(p.tournament_size),
                    float(p.crossover_rate), int(p.early_stopping_patience), float(p.early_stopping_threshold))
    weights = {k: float(v) for k, v in p.fitness_weights.items()}
    if sum(weights.values()) <= 0:
        raise ConfigError("phase.fitness_weights must have a positive sum")
    speed_mode, rescale = str(p.speed_term), str(p.dare_rescale)
    lo, hi = (float(x) for x in depth)
    dirs = input_dirs(cfg)
    models, tokenizer = load_inputs(dirs)  # fails before any run dir or logger is made
    check_seq_lens(p.eval, models)
    states = [{k: v.clone() for k, v in m.state_dict().items()} for m in models]  # merged on the CPU
    dev = loop_device(cfg.hardware)   # where models are measured
    set_threads(cfg.hardware)
    models = [m.to(dev) for m in models]
    configs = [m.config for m in models]
    n = configs[0].n_layers
    space = depth_space(n, lo, hi)
    with run_context(cfg, run_name="phase2-evomerge", group="phase2-evomerge", tags=TAGS, job_type="evomerge",
                     spec=flat_config(cfg, "evomerge", input_models=len(dirs))) as ctx:
        data = eval_data(cfg, "val", int(p.eval.rows))
        test = eval_data(cfg, "test", int(p.eval.test_rows), int(p.eval.test_choice_examples))
        if len(heldout.disjoint_from(test, data)[0].rows) < 2:  # fail now, not after the evolution
            raise ConfigError("phase.eval.test_rows: fewer than 2 test rows are not also in the selection set; "
                              "raise phase.eval.test_rows")
        yardstick = models[0]  # the timed speed is taken against input 1 (see merge/fitness.py)
        evaluate = RecipeEvaluator(states, configs, tokenizer, data, weights, speed_mode, rescale, dev, yardstick)
        input_metrics = [fitness.measure(m, tokenizer, data, yardstick) for m in models]
        evaluate.reference = fitness.Reference.of(input_metrics, data.n_accuracy_examples())
        for m, state, config in zip(input_metrics, states, configs):
            # a recipe that rebuilds an input bit for bit reuses this very measurement (cache by weights hash)
            m["weights_sha256"] = evaluate.register(state, config, m)[:16]
            m["fitness"] = evaluate.score(m)
        print(f"EvoMerge: 3 inputs of {n} layers; selection-set fitness (speed term: {speed_mode}) "
              + ", ".join(f"model{i + 1} {m['fitness']:.4f}" for i, m in enumerate(input_metrics)))

        rng = random.Random(int(cfg.seed))
        # gen 0: the three inputs themselves (identity recipes, combos 000/001/010) + random recipes, one
        # combo each; with elitism the champion is then never below the best input on the selection set
        initial = initial_population(rng, space, evo.population_size)
        logger = GenerationLogger(ctx.tracker, evo.generations, {m["weights_sha256"] for m in input_metrics})
        t0 = time.perf_counter()
        result = evolve(initial, evaluate,
                        lambda r, g: mutate(r, g, space, float(p.mutation_rate), float(p.mutation_sigma)),
                        crossover, lambda a, b: euclidean(features(a, space), features(b, space)), evo, rng,
                        logger, identity=lambda m: m.metrics["weights_sha256"])
        minutes = (time.perf_counter() - t0) / 60
        return finalize(ctx, cfg, result, minutes, models, tokenizer, states, configs, input_metrics, weights, dirs,
                        dev, data, test, evaluate.measured)


def finalize(ctx, cfg, result, minutes, models, tokenizer, states, configs, input_metrics, weights, dirs,
             dev, selection, test_data, measured) -> dict:
    tr, run_dir = ctx.tracker, ctx.run_dir
    gens, champ = result.generations, result.champion
    recipe: Recipe = champ.genome
    # -- the champion checkpoint --------------------------------------------------------------------------
    p = cfg.phase
    model = build(recipe, states, configs, dev, str(p.dare_rescale))
    best_input = max(m["fitness"] for m in input_metrics)
    improvement = 100 * (champ.fitness - best_input) / abs(best_input)  # selection set: biased upwards
    combo = combos.decode(recipe.combo)
    same = unchanged_input(input_metrics, champ.metrics)
    ckpt = run_dir / "checkpoints" / "champion"
    meta = {"phase": "evomerge", "recipe": recipe.to_dict(), "combo": combo.bits, "techniques": combo.label,
            "fitness": champ.fitness, "generation": result.champion_generation,
            "inputs": [str(d) for d in dirs], "unchanged_input": same}
    save_model(ckpt, model.cpu(), tokenizer, meta)
    model.to(dev)
    # -- champion vs inputs on test data disjoint from the selection set: the decision figure --------------
    test = heldout.compare_on_test(models, model, tokenizer, test_data, selection,
                                   weights, str(p.speed_term), float(p.improvement_threshold),
                                   int(p.eval.bootstrap_resamples), int(cfg.seed),
                                   comparator=max(range(len(input_metrics)), key=lambda i: input_metrics[i]["fitness"]))
    rows = []
    for name, val_m, fit, test_m in zip(["model1", "model2", "model3", "champion"],
                                        [*input_metrics, {**champ.metrics, "fitness": champ.fitness}],
                                        test["fitness"], test["measurements"]):
        rows.append([name, val_m["fitness"], fit, test_m["perplexity"], test_m["accuracy"],
                     test_m["flops_per_token"], test_m["tokens_per_s"], test_m["memory_mb"]])
    tr.table("final/champion_vs_inputs", ["Model", "Fitness (selection set)", "Fitness (test)", "Perplexity (test)",
                                          "Accuracy (test)", "FLOPs/token", "Tokens/s", "Memory (MB)"], rows)
    # -- combo effectiveness ------------------------------------------------------------------------------
    digests = {m["weights_sha256"] for m in input_metrics}
    usage, avg, wins, best_combo, worst_combo = combo_stats(gens, digests)
    tr.table("combos/effectiveness", ["Combo ID", "Binary", "Techniques", "Usage Count", "Avg Fitness",
                                      "Champions Produced"],
             [[combos.bits(c), combos.bits(c), combos.decode(c).label, usage[c], avg[c], wins[c]] for c in range(8)])
    tr.table("evolution/history", ["Generation", "Best Fitness", "Avg Fitness", "Diversity", "Best Combo"],
             [[g.index, g.best, g.mean, g.diversity, history_combo(g.best_individual, input_metrics)] for g in gens])
    final = {
        "final/generations_completed": len(gens), "final/best_fitness": champ.fitness,
        "final/selection_fitness_improvement": improvement,  # the selection set: the winner's-curse figure
        "final/total_evolution_time_minutes": minutes,
        "final/champion_combo_id": recipe.combo,   # best/worst/win rate: merged models only (``combo_stats``)
        "final/best_combo": "" if best_combo is None else combos.bits(best_combo),  # "": no merged model
        "final/worst_combo": "" if worst_combo is None else combos.bits(worst_combo),
        "final/combo_win_rate": {combos.bits(c): wins[c] / len(gens) for c in range(8)},
        "final/converged_at_generation": result.champion_generation,  # where the best stopped rising
        "final/convergence_reason": result.convergence_reason,
        "final/best_input_fitness": best_input,
        "final/evaluations_per_second": result.evaluations / max(result.eval_seconds, 1e-9),
        "final/models_measured": measured,  # distinct merged weights measured (cache by weights hash)
        "final/speed_term": str(p.speed_term), **test["metrics"],
        "final/champion_unchanged_input": same or "",   # "model3": the champion is that input, no merge won
    }
    tr.summary(final)
    write_json_atomic(ckpt / "metrics.json", {**final, "val_metrics": champ.metrics})
    publish(ckpt, Path(cfg.paths.artifacts).absolute() / "evomerge" / "champion")
    # -- the log and the charts -----------------------------------------------------------------------------
    log_path = tr.write_json("evolution_log.json", evolution_log(cfg, result, input_metrics, dirs, final))
    xs = [g.index for g in gens]
    best, mean, worst, div = ([g.best for g in gens], [g.mean for g in gens], [g.worst for g in gens],
                              [g.diversity for g in gens])
    tr.line_series("charts/fitness_evolution", xs, [best, mean, worst], ["Best", "Average", "Worst"],
                   "Fitness Evolution", "Generation")
    tr.line_series("charts/diversity_evolution", xs, [div], ["diversity"], "Population Diversity Over Time",
                   "generation")
    pdir = run_dir / "plots"
    fit_png = plots.line_plot(pdir / "fitness_evolution.png", xs, {"best": best, "average": mean, "worst": worst},
                              "Fitness evolution", "generation", "fitness (1.0 = average input)")
    div_png = plots.line_plot(pdir / "diversity_evolution.png", xs, {"diversity": div},
                              "Population diversity", "generation", "mean pairwise distance")
    heat = plots.heatmap(pdir / "combo_usage.png", [combo_counts(g, digests) for g in gens],
                         "Combo usage per generation (merged models only)", "combo", "generation",
                         xticklabels=[combos.bits(c) for c in range(8)], cbar_label="merged models")
    tr.image("charts/fitness_evolution_png", fit_png)
    tr.image("charts/diversity_evolution_png", div_png)
    tr.image("charts/combo_usage", heat)
    tr.artifact("phase2-champion", "model", [ckpt], f"Best evolved model after {len(gens)} generations",
                {"fitness": champ.fitness, "selection_improvement": improvement,
                 "test_improvement": test["metrics"]["final/test_fitness_improvement"], "combo_id": recipe.combo,
                 "generation": result.champion_generation, "architecture": ARCHITECTURE})
    tr.artifact("phase2-evolution-log", "dataset", [log_path], "Complete evolution history")
    out = Path(cfg.paths.artifacts).absolute() / "evomerge" / "champion"
    print("\n".join(f"{r[0]:9s} fitness selection {r[1]:.4f}  test {r[2]:.4f}  test ppl {r[3]:.2f}  acc {r[4]:.3f}"
                    for r in rows))
    t = test["metrics"]
    ci = t["final/test_fitness_improvement_ci95"]
    print(f"champion: combo {combo.bits} ({combo.label}), generation {result.champion_generation}"
          + (f" — its weights are {same}'s unchanged: no merge won" if same else "") + "; "
          f"{len(gens)} generations ({result.convergence_reason}), {minutes:.2f} min")
    print("combos (merged models only): " + (f"best {final['final/best_combo']}, worst {final['final/worst_combo']}"
                                             if best_combo is not None else "none: every model measured was an input "
                                             "unchanged, so final/best_combo and final/worst_combo are empty"))
    print(f"selection set (chose the champion, biased up): fitness {champ.fitness:.4f} vs best input "
          f"{best_input:.4f} ({improvement:+.2f}%)")
    print(f"test set ({t['final/test_rows']} rows, {t['final/test_questions']} questions, "
          f"{t['final/test_excluded_overlap']} overlapping the selection set and {t['final/test_excluded_repeats']} "
          f"repeated rows excluded): fitness "
          f"{t['final/test_fitness']:.4f} vs the selection set's best input ({t['final/test_best_input']}) "
          f"{t['final/test_best_input_fitness']:.4f}: improvement {t['final/test_fitness_improvement']:+.2f}% "
          f"[95% CI {ci[0]:+.2f}, {ci[1]:+.2f}] -> {t['final/test_verdict']} vs > {float(p.improvement_threshold):g}% "
          f"({t['final/test_verdict_why']}); perplexity ratio {t['final/test_ppl_ratio']:.4f} "
          f"[{t['final/test_ppl_ratio_ci95'][0]:.4f}, {t['final/test_ppl_ratio_ci95'][1]:.4f}]"
          + (f"; accuracy delta {t['final/test_accuracy_delta']:+.3f} [{t['final/test_accuracy_delta_ci95'][0]:+.3f}, "
             f"{t['final/test_accuracy_delta_ci95'][1]:+.3f}], exact p {t['final/test_accuracy_delta_p']:.3g}"
             if "final/test_accuracy_delta" in t else ""))
    return {"checkpoint": str(out), "run_dir": str(run_dir), "metrics": final}


def evolution_log(cfg, result, input_metrics, dirs, final) -> dict:
    return {
        "combo_bits": "bit 1 Linear(0)/SLERP(1), bit 2 DARE(0)/TIES(1), bit 3 FrankenMerge(0)/DFS(1), left to right",
        "config": OmegaConf.to_container(cfg.phase, resolve=True),
        "inputs": [{"dir": str(d), **m} for d, m in zip(dirs, input_metrics)],
        "generations": [{
            "generation": g.index, "best_fitness": g.best, "avg_fitness": g.mean, "worst_fitness": g.worst,
            "fitness_std": g.std, "diversity": g.diversity, "unique_models": unique_models(g),
            "unique_recipes": g.unique_genomes, "elites_distinct": elites_distinct(g), "duration_s": g.duration_s,
            "individuals": [{"index": i, "recipe": ind.genome.to_dict(), "combo": combos.bits(ind.genome.combo),
                             "techniques": combos.decode(ind.genome.combo).label, "metrics": ind.metrics,
                             "fitness": ind.fitness, "elite": ind.elite, "cached": ind.cached}
                            for i, ind in enumerate(g.individuals)]} for g in result.generations],
        "champion": {"recipe": result.champion.genome.to_dict(), "fitness": result.champion.fitness,
                     "generation": result.champion_generation},
        "final": final,
    }

