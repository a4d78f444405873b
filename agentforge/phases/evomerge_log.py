"""EvoMerge's per-generation logging and combo statistics: what each generation logs under the seed's
``evolution/*`` and ``models/model_<i>/*`` keys, and the per-combo usage, fitness and wins of the history and combo
tables. A model whose weights equal an input's (an identity recipe of generation 0, or a recipe that degenerates
to one) is no merge and counts for no combo (``is_merged``). Split out of ``phases/evomerge.py``."""
from __future__ import annotations

import statistics

from agentforge.merge import combos

UNMERGED = -1   # ``models/model_<i>/combo_id`` of a model whose weights are an input's: no combo's merge


class GenerationLogger:
    """Logs the seed's per-generation and per-model keys as each generation finishes (distinct weights as
    ``unique_models``, merged models only per combo, and whether elite1 and elite2 are different weights). A model
    that is an input's weights logs ``combo_id`` ``UNMERGED`` (-1): before, generation 0's three inputs read as
    combos 0, 1 and 2 (an audit)."""

    def __init__(self, tracker, max_generations: int, input_digests: set[str]):
        self.tracker, self.max_generations, self.input_digests = tracker, max_generations, input_digests
        self.initial = None

    def __call__(self, g, result) -> None:
        if self.initial is None:
            self.initial = g.best
        counts, top = combo_counts(g, self.input_digests), elites(g)
        mean_dur = statistics.fmean(x.duration_s for x in result.generations)
        m = {"evolution/generation": g.index, "evolution/best_fitness": g.best, "evolution/avg_fitness": g.mean,
             "evolution/worst_fitness": g.worst, "evolution/fitness_std": g.std,
             "evolution/fitness_improvement": (g.best - self.initial) / abs(self.initial),
             "evolution/diversity": g.diversity, "evolution/unique_models": unique_models(g),
             **{f"evolution/combo_{combos.bits(c)}_count": counts[c] for c in range(combos.N_COMBOS)},
             "evolution/elite1_fitness": top[0].fitness, "evolution/elite2_fitness": top[-1].fitness,
             "evolution/elites_distinct": elites_distinct(g),
             "time/generation_duration_seconds": g.duration_s,
             "time/estimated_completion_minutes": (self.max_generations - g.index - 1) * mean_dur / 60}
        for idx, ind in enumerate(g.individuals):
            pre = f"models/model_{idx}/"
            m.update({pre + "fitness": ind.fitness, pre + "perplexity": ind.metrics["perplexity"],
                      pre + "accuracy": ind.metrics["accuracy"], pre + "inference_time": ind.metrics["inference_time_ms"],
                      pre + "memory_usage": ind.metrics["memory_mb"],
                      pre + "combo_id": ind.genome.combo if is_merged(ind, self.input_digests) else UNMERGED})
        self.tracker.log(m, step=g.index)
        best = g.best_individual
        print(f"gen {g.index}: best {g.best:.4f} ({combos.bits(best.genome.combo)})  avg {g.mean:.4f}  "
              f"diversity {g.diversity:.3f}  evals {g.evaluations}  {g.duration_s:.1f}s")


def is_merged(ind, input_digests: set[str]) -> bool:
    """False when the individual's weights equal an input's (the evaluator's weights hash: a generation-0 identity
    recipe, or a recipe that degenerates to one): it carries an arbitrary combo id and no merge by that combo's
    techniques, so it counts for no combo (``combo_counts``, ``combo_stats``, the combo-usage heatmap)."""
    return ind.metrics.get("weights_sha256") not in input_digests


def combo_counts(g, input_digests: set[str]) -> list[int]:
    """Per combo (0..7): the generation's merged models of that combo (``is_merged``; inputs unchanged skipped)."""
    counts = [0] * combos.N_COMBOS
    for ind in g.individuals:
        if is_merged(ind, input_digests):
            counts[ind.genome.combo] += 1
    return counts


def unique_models(g) -> int:
    """Distinct models in the generation: distinct weight digests (``metrics["weights_sha256"]``), not distinct
    recipes (an input's identity recipe in two combos, or an elite and a child that rebuilds it, are one model)."""
    return len({ind.metrics["weights_sha256"] for ind in g.individuals})


def elites(g) -> list:  # the two best members in the GA's order (a stable sort, as ``evolve`` picks its elites)
    return sorted(g.individuals, key=lambda i: i.fitness, reverse=True)[:2]


def elites_distinct(g) -> bool:  # False: elite1 and elite2 are the same weights (an input and a rebuild of it)
    return len({i.metrics["weights_sha256"] for i in elites(g)}) == 2


def unchanged_input(input_metrics: list[dict], champion_metrics: dict) -> str | None:
    """The input ("model2") whose weights the champion's equal (the evaluator's weights hash), or None: a recipe
    that weights one input fully (an identity recipe of generation 0, or any that degenerates to one) wins
    with no merge at all, and its combo's technique names should not suggest one."""
    digest = champion_metrics.get("weights_sha256")
    same = [i for i, m in enumerate(input_metrics) if digest and m.get("weights_sha256") == digest]
    return f"model{same[0] + 1}" if same else None


def history_combo(ind, input_metrics: list[dict]) -> str:
    """A generation's best combo for the history table: "010", or "010 (model3 unchanged)" when no merge won."""
    same = unchanged_input(input_metrics, ind.metrics)
    return combos.bits(ind.genome.combo) + (f" ({same} unchanged)" if same else "")


def combo_stats(gens, input_digests: set[str]):
    """Per combo (0..7): usage, fitnesses and generation wins of the *merged* models only (``is_merged``), and the
    best and worst combo by mean fitness (None when no merged model exists); a generation whose best is an input
    unchanged is won by no combo (the win rates then sum to less than 1)."""
    merged = lambda ind: is_merged(ind, input_digests)
    usage, fits, wins = [0] * combos.N_COMBOS, [[] for _ in range(combos.N_COMBOS)], [0] * combos.N_COMBOS
    for g in gens:
        for ind in filter(merged, g.individuals):
            usage[ind.genome.combo] += 1
            fits[ind.genome.combo].append(ind.fitness)
        if merged(g.best_individual):
            wins[g.best_individual.genome.combo] += 1
    avg = [statistics.fmean(f) if f else float("nan") for f in fits]
    used = [c for c in range(combos.N_COMBOS) if fits[c]]
    best = max(used, key=avg.__getitem__) if used else None
    return usage, avg, wins, best, min(used, key=avg.__getitem__) if used else None
