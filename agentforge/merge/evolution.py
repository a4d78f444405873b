"""A generational genetic algorithm with elitism, tournament selection and early stopping.

Generic over the genome: the caller passes ``evaluate(genome) -> (fitness, metrics)``, ``mutate``,
``crossover`` and ``distance`` (genomes must be hashable). Each generation:

1. evaluate every member (an evaluation is cached by genome, so an elite or a repeated child costs
   nothing and always keeps the fitness it had);
2. record best/mean/worst/std fitness, diversity = mean pairwise ``distance`` between members, and
   the number of distinct genomes (``unique_genomes``: distinct genomes can still build the same model, so a
   caller that can tell models apart counts them itself; EvoMerge counts distinct weight digests);
3. stop early when the best fitness has not risen by more than ``threshold`` for ``patience``
   generations (as Keras' EarlyStopping with ``min_delta``), or after ``generations``;
4. otherwise the next population is the ``elite_count`` best members unchanged (the best distinct ones, by
   ``identity``: the genome, or what the caller says builds the same model; EvoMerge passes the weight digest, so
   two recipes that rebuild one input do not take both elite slots; the best again only when fewer distinct
   members exist), then children: two
   parents by tournament selection (the best of ``tournament_size`` members drawn at random), uniform
   crossover with probability ``crossover_rate`` (else a copy of the first parent), then mutation.

With elite_count >= 1 and cached evaluations the best fitness of a generation never falls. All
randomness comes from the ``random.Random`` passed in, so a seed fixes the run.
(Holland 1975; Goldberg 1989, "Genetic Algorithms in Search, Optimization and Machine Learning".)
"""
from __future__ import annotations

import itertools
import random
import statistics
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class EvoConfig:
    population_size: int = 8
    generations: int = 50
    elite_count: int = 2
    tournament_size: int = 3
    crossover_rate: float = 0.5
    patience: int = 5
    threshold: float = 0.001

    def __post_init__(self):
        if self.population_size < 2:
            raise ValueError("population_size must be >= 2")
        if not 0 <= self.elite_count < self.population_size:
            raise ValueError("elite_count must be in [0, population_size)")
        if self.generations < 1 or self.tournament_size < 1 or self.patience < 1:
            raise ValueError("generations, tournament_size and patience must be >= 1")


@dataclass
class Individual:
    genome: Any
    fitness: float
    metrics: dict
    cached: bool          # evaluated in an earlier generation (or twice in this one)
    elite: bool           # carried over unchanged from the previous generation


@dataclass
class Generation:
    index: int
    individuals: list[Individual]
    best: float
    mean: float
    worst: float
    std: float
    diversity: float
    unique_genomes: int   # distinct genomes, not distinct models (see step 2 above)
    duration_s: float
    evaluations: int      # evaluations actually run (cache misses)

    @property
    def best_individual(self) -> Individual:
        return max(self.individuals, key=lambda i: i.fitness)


@dataclass
class EvolutionResult:
    generations: list[Generation] = field(default_factory=list)
    champion: Individual | None = None
    champion_generation: int = 0
    convergence_reason: str = "max_gen"  # "max_gen" | "early_stop"
    evaluations: int = 0
    eval_seconds: float = 0.0


def mean_pairwise(genomes: Sequence, distance: Callable[[Any, Any], float]) -> float:
    pairs = list(itertools.combinations(genomes, 2))
    return statistics.fmean(distance(a, b) for a, b in pairs) if pairs else 0.0


def evolve(initial: Sequence[Hashable], evaluate: Callable[[Any], tuple[float, dict]],
           mutate: Callable[[Any, random.Random], Any], crossover: Callable[[Any, Any, random.Random], Any],
           distance: Callable[[Any, Any], float], cfg: EvoConfig, rng: random.Random,
           on_generation: Callable[[Generation, EvolutionResult], None] | None = None,
           identity: Callable[[Individual], Hashable] = lambda m: m.genome) -> EvolutionResult:
    if len(initial) != cfg.population_size:
        raise ValueError(f"initial population has {len(initial)} members, population_size is {cfg.population_size}")
    cache: dict[Hashable, tuple[float, dict]] = {}
    result = EvolutionResult()
    population, elites = list(initial), [False] * len(initial)
    best_so_far, wait = float("-inf"), 0
    for gen in range(cfg.generations):
        t0, n_eval = time.perf_counter(), 0
        members = []
        for genome, elite in zip(population, elites):
            cached = genome in cache
            if not cached:
                te = time.perf_counter()
                cache[genome] = evaluate(genome)
                result.eval_seconds += time.perf_counter() - te
                n_eval += 1
            fit, metrics = cache[genome]
            members.append(Individual(genome, fit, metrics, cached, elite))
        fits = [m.fitness for m in members]
        g = Generation(gen, members, max(fits), statistics.fmean(fits), min(fits), statistics.pstdev(fits),
                       mean_pairwise(population, distance), len(set(population)), time.perf_counter() - t0, n_eval)
        result.generations.append(g)
        result.evaluations += n_eval
        top = g.best_individual
        if result.champion is None or top.fitness > result.champion.fitness:
            result.champion, result.champion_generation = top, gen
        if gen == 0 or g.best > best_so_far + cfg.threshold:
            best_so_far, wait = max(best_so_far, g.best), 0
        else:
            wait += 1
        stop = wait >= cfg.patience
        result.convergence_reason = "early_stop" if stop else "max_gen"
        if on_generation is not None:
            on_generation(g, result)
        if stop or gen == cfg.generations - 1:
            break
        population = [m.genome for m in elite_members(members, cfg.elite_count, identity)]
        elites = [True] * len(population)
        while len(population) < cfg.population_size:
            a, b = _tournament(members, cfg.tournament_size, rng), _tournament(members, cfg.tournament_size, rng)
            child = crossover(a, b, rng) if rng.random() < cfg.crossover_rate else a
            population.append(mutate(child, rng))
            elites.append(False)
    return result


def elite_members(members: list[Individual], n: int, identity: Callable[[Individual], Hashable]) -> list[Individual]:
    """The ``n`` fittest members with distinct ``identity`` (ties keep the population's order), then, when fewer
    than ``n`` are distinct, the fittest of the rest."""
    ranked = sorted(members, key=lambda m: m.fitness, reverse=True)
    chosen, seen = [], set()
    for m in ranked:
        if len(chosen) < n and identity(m) not in seen:
            chosen.append(m)
            seen.add(identity(m))
    rest = [m for m in ranked if all(m is not c for c in chosen)]
    return chosen + rest[: n - len(chosen)]


def _tournament(members: list[Individual], k: int, rng: random.Random):
    return max(rng.sample(members, min(k, len(members))), key=lambda m: m.fitness).genome
