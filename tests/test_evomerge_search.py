"""EvoMerge's search (agentforge/merge): the initial population, recipe layers and determinism, compatibility, the
mutation and crossover operators' bounds, and the fitness (weighted geometric mean of ratios, timed speed)."""
from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from agentforge.merge import combos
from agentforge.merge.recipe import (
    Recipe,
    Space,
    canonical,
    crossover,
    features,
    identity_recipe,
    incompatibility,
    initial_population,
    materialize,
    mutate,
    random_recipe,
)
from agentforge.models import CognateConfig
from tests.test_merge import SMALL, _inputs, _recipe


def test_initial_population_seeds_the_inputs_and_spreads_the_combos():
    sp = Space(2, 1, 3)
    pop = initial_population(random.Random(0), sp, 8)
    assert [r.combo for r in pop] == list(range(8))
    assert pop[:3] == [identity_recipe(i, sp, i) for i in range(3)]
    assert all(0 not in r.weights for r in pop[3:])  # random recipes stay in WEIGHT_RANGE
    assert [r.combo for r in initial_population(random.Random(0), sp, 10)] == [*range(8), 0, 1]
    assert initial_population(random.Random(0), sp, 2) == [identity_recipe(i, sp, i) for i in range(2)]
    rng = random.Random(1)
    for _ in range(200):  # mutation moves a zero weight into WEIGHT_RANGE, never to an all-zero vector
        child = mutate(crossover(pop[rng.randrange(3)], pop[rng.randrange(8)], rng), rng, sp, 0.5, 0.3)
        assert sum(child.weights) > 0 and all(w == 0 or w >= 0.05 for w in child.weights)
        assert len(features(child, sp)) == len(features(pop[0], sp))


def test_recipe_layers_and_determinism():
    states, cfgs = _inputs()
    r = _recipe(combo=combos.encode("slerp", "dare", "dfs"), lam=0.7, density=0.5, dare_seed=3,
                hops=((1, 0), (0, 1), (3, 1)), scales=(1.0, 1.2, 0.9))
    s1, cfg = materialize(r, states, cfgs)
    s2, _ = materialize(r, states, cfgs)
    assert cfg.n_layers == 3 and all(torch.equal(s1[k], s2[k]) for k in s1)
    s3, _ = materialize(canonical(Recipe(**{**r.__dict__, "dare_seed": 4})), states, cfgs)
    assert not torch.equal(s1["embed.weight"], s3["embed.weight"])
    r_fm = _recipe(combo=combos.encode("linear", "ties", "frankenmerge"), slices=((2, 1, 2), (0, 0, 2)))
    s4, cfg4 = materialize(r_fm, states, cfgs)
    assert cfg4.n_layers == 3 and torch.equal(s4["blocks.0.attn.k_proj.weight"], states[1]["blocks.1.attn.k_proj.weight"])


def test_compatibility_allows_memory_slots_not_shapes():
    c = CognateConfig(**SMALL)
    assert incompatibility(c, CognateConfig(**{**SMALL, "ltm_slots": 128, "max_steps": 2})) is None
    assert "d_model 16 vs 32" in incompatibility(c, CognateConfig(**{**SMALL, "d_model": 32}))


def test_search_operators_stay_in_bounds_and_round_trip():
    sp, rng = Space(2, 1, 3), random.Random(0)
    rs = [random_recipe(rng, sp, combo=c) for c in range(8)]
    for _ in range(200):
        a, b = rng.sample(rs, 2)
        child = mutate(crossover(a, b, rng), rng, sp, 0.5, 0.3)
        assert sp.min_layers <= child.n_layers() <= sp.max_layers
        assert all(0 <= s < 4 and 0 <= x < y <= 2 for s, x, y in child.slices)
        assert Recipe.from_dict(child.to_dict()) == child
        assert len(features(child, sp)) == len(features(a, sp))
        rs[rng.randrange(8)] = child
    for r in rs:  # the features survive the round trip and are fractions of the space
        assert features(Recipe.from_dict(r.to_dict()), sp) == features(r, sp)
        assert all(0.0 <= f <= 1.0 for f in features(r, sp)), features(r, sp)


@settings(max_examples=150, deadline=None)
@given(n=st.integers(1, 6), lo=st.floats(0.2, 1.0), hi=st.floats(1.0, 2.5), seed=st.integers(0, 2**32 - 1),
       rate=st.floats(0.05, 1.0))
def test_mutation_keeps_both_layer_plans_within_min_and_max_layers(n, lo, hi, seed, rate):
    sp = Space(n, max(1, round(n * lo)), max(n, round(n * hi)))
    rng = random.Random(seed)
    r = random_recipe(rng, sp)
    for _ in range(60):  # a chain of mutations: each step must keep the bounds (shrink included)
        r = mutate(r, rng, sp, rate, 0.3)
        franken = sum(b - a for _, a, b in r.slices)
        assert sp.min_layers <= franken <= sp.max_layers, (r.slices, sp)
        assert sp.min_layers <= len(r.hops) <= sp.max_layers, (r.hops, sp)


# -- fitness ---------------------------------------------------------------------------------------------------

def test_fitness_is_weighted_geometric_mean_of_ratios_to_the_inputs():
    """Each term is a ratio to the inputs' MEAN measurement (the inputs are skewed so that no median or other middle
    value equals it: ppl 4, 5, 9 -> mean 6 (median 5); acc 0.25, 0.25, 1 -> 0.5; FLOPs 60, 80, 160 -> 100; memory
    1, 1, 4 MB -> 2), and the fitness is their weighted geometric mean with the weights normalised to sum 1."""
    from agentforge.merge.fitness import Reference, score, terms

    inputs = [{"perplexity": p, "accuracy": a, "tokens_per_s": 100.0, "speed_ratio": 1.0, "memory_mb": mb,
               "flops_per_token": f} for p, a, mb, f in ((4.0, 0.25, 1.0, 60.0), (5.0, 0.25, 1.0, 80.0),
                                                          (9.0, 1.0, 4.0, 160.0))]
    ref = Reference.of(inputs, n_accuracy_examples=4)   # ppl 6, acc 0.5, speed 1, 2 MB, 100 FLOPs, floor 1/4
    assert (ref.perplexity, ref.accuracy, ref.memory_mb, ref.flops_per_token, ref.acc_floor) == (6, 0.5, 2, 100, 0.25)
    m = {"perplexity": 3.0, "accuracy": 0.0, "tokens_per_s": 50.0, "speed_ratio": 4.0, "memory_mb": 1.0,
         "flops_per_token": 25.0}
    # speed term: FLOPs by default (deterministic), the timed ratio on request
    assert terms(m, ref) == {"perplexity": 2.0, "accuracy": 0.25 / 0.75, "speed": 4.0, "memory": 2.0}
    assert terms({**m, "flops_per_token": 50.0}, ref, "timed")["speed"] == 4.0
    assert terms({**m, "speed_ratio": 0.5}, ref, "flops")["speed"] == 4.0
    with pytest.raises(ValueError, match="speed mode"):
        terms(m, ref, "wallclock")
    expected = 2.0 ** 0.4 * (1 / 3) ** 0.3 * 4.0 ** 0.2 * 2.0 ** 0.1
    assert score(m, ref) == pytest.approx(expected)
    assert score(m, ref, {"perplexity": 2.0, "speed": 2.0}) == pytest.approx((2.0 * 4.0) ** 0.5)
    avg = {"perplexity": 6.0, "accuracy": 0.5, "tokens_per_s": 1.0, "speed_ratio": 1.0, "memory_mb": 2.0,
           "flops_per_token": 100.0}
    assert score(avg, ref) == pytest.approx(1.0)  # the average input scores 1
    # 4x worse perplexity is not bought back by 3x speed at the default weights
    slow_good = dict(avg)
    fast_bad = {**avg, "perplexity": 24.0, "flops_per_token": 100.0 / 3}
    assert score(fast_bad, ref) < score(slow_good, ref)


def test_timed_speed_interleaves_model_and_yardstick_and_takes_the_median_per_round_ratio(monkeypatch):
    """fitness.timed (speed="timed"): one untimed round, then ``speed_repeats`` rounds whose order rotates (model
    first, then the yardstick first, ...), every pass in eval mode on [speed_batch, speed_seq_len]; the ratio is the
    median of the per-round t_yardstick / t_model, the time the median of the model's passes."""
    from agentforge.evals import speed
    from agentforge.merge import fitness

    order = []

    class Probe(torch.nn.Embedding):
        def __init__(self, name):
            super().__init__(256, 4)
            self.name = name

        def forward(self, ids):
            order.append((self.name, self.training, tuple(ids.shape)))
            return super().forward(ids)

    model, yard = Probe("m").train(), Probe("y")
    data = fitness.EvalData(rows=torch.zeros(1, 9, dtype=torch.long), speed_seq_len=7, speed_batch=3, speed_repeats=3)
    # per timed pass (round order m y | y m | m y): model 1, 2, 4 s; yardstick 3, 3, 2 s -> ratios 3, 1.5, 0.5
    durations = iter([1.0, 3.0, 3.0, 2.0, 4.0, 2.0])
    clock = {"t": 0.0, "start": True}

    def perf_counter():
        if not clock["start"]:
            clock["t"] += next(durations)
        clock["start"] = not clock["start"]
        return clock["t"]

    with monkeypatch.context() as m:
        m.setattr(speed.time, "perf_counter", perf_counter)
        ms, ratio = fitness.timed(model, yard, data)
    assert [name for name, _, _ in order] == list("my" "my" "ym" "my")
    assert all(not training and shape == (3, 7) for _, training, shape in order) and model.training
    assert ms == 2000.0 and ratio == 1.5


def test_the_elites_are_the_best_distinct_models():
    """Two recipes that rebuild one model (same weight digest) no longer take both elite slots: the second slot goes
    to the best other model; with fewer distinct models than slots, the best fill the rest."""
    from agentforge.merge.evolution import Individual, elite_members

    ind = lambda name, fit, digest: Individual(name, fit, {"weights_sha256": digest}, False, False)
    members = [ind("r1", 1.2, "c"), ind("r2", 1.2, "c"), ind("r3", 1.1, "m"), ind("r4", 1.15, "c")]
    by_digest = lambda m: m.metrics["weights_sha256"]
    assert [m.genome for m in elite_members(members, 2, by_digest)] == ["r1", "r3"]
    assert [m.genome for m in elite_members(members, 2, lambda m: m.genome)] == ["r1", "r2"]
    same = [ind("r1", 1.0, "c"), ind("r2", 1.3, "c")]
    assert [m.genome for m in elite_members(same, 2, by_digest)] == ["r2", "r1"]
