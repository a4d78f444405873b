"""EvoMerge's reporting: which input an unchanged champion is, the combo statistics over merged models only, the
depth range kept, bad settings refused before any run dir, and the pipeline report's EvoMerge row."""
from __future__ import annotations

import itertools
import json
import math
import random
from types import SimpleNamespace as NS

import pytest

from agentforge.errors import ConfigError
from agentforge.main import run as run_phase
from agentforge.merge.recipe import Recipe, Space, crossover, initial_population, mutate
from agentforge.pipeline.thresholds import headline_metrics, threshold_rows
from tests.conftest import compose_cfg, run_cli
from tests.test_evomerge import TINY_EVO, _save_tiny


def test_unchanged_input_names_the_input_whose_weights_the_champion_equals():
    from agentforge.phases.evomerge_log import unchanged_input

    inputs = [{"weights_sha256": "a"}, {"weights_sha256": "b"}, {"weights_sha256": "c"}]
    assert unchanged_input(inputs, {"weights_sha256": "c"}) == "model3"
    assert unchanged_input(inputs, {"weights_sha256": "d"}) is None and unchanged_input(inputs, {}) is None


def test_combo_statistics_credit_only_merged_models():
    from agentforge.phases.evomerge_log import combo_stats, history_combo

    ind = lambda combo, fit, digest: NS(genome=NS(combo=combo), fitness=fit, metrics={"weights_sha256": digest})
    gen = lambda *inds: NS(individuals=list(inds), best_individual=max(inds, key=lambda i: i.fitness))
    # gen 0: input "c" (combo 2) is best; gen 1: a merge of combo 5 wins, a recipe of combo 7 rebuilds input "a"
    gens = [gen(ind(0, 1.0, "a"), ind(2, 1.2, "c"), ind(3, 0.9, "m1")),
            gen(ind(2, 1.2, "c"), ind(5, 1.3, "m2"), ind(7, 1.0, "a"), ind(3, 0.9, "m1"))]
    usage, avg, wins, best, worst = combo_stats(gens, {"a", "b", "c"})
    assert usage == [0, 0, 0, 2, 0, 1, 0, 0] and wins == [0, 0, 0, 0, 0, 1, 0, 0]
    assert (best, worst) == (5, 3) and avg[3] == 0.9 and math.isnan(avg[2])
    # no merged model at all: no best or worst combo, no wins
    assert combo_stats(gens[:1], {"a", "c", "m1"})[2:] == ([0] * 8, None, None)
    inputs = [{"weights_sha256": x} for x in "abc"]  # the history table names an unchanged input as such
    assert history_combo(ind(2, 1.2, "c"), inputs) == "010 (model3 unchanged)" and history_combo(ind(5, 1, "m"), inputs) == "101"


def test_generation_keys_count_distinct_weights_and_merged_models_only():
    """A smoke run's generation 1 logged unique_models 4 and combo_010_count 2 with 3 of its 4 members model3's
    weights unchanged: both counted recipes. Now distinct weight digests, and per combo merged models only."""
    from agentforge.phases.evomerge_log import GenerationLogger, combo_counts, elites_distinct, unique_models

    ind = lambda combo, fit, digest: NS(genome=NS(combo=combo), fitness=fit, metrics={
        "weights_sha256": digest, "perplexity": 2.0, "accuracy": 0.5, "inference_time_ms": 1.0, "memory_mb": 1.0})
    gen = lambda i, *inds: NS(index=i, individuals=list(inds), best=max(x.fitness for x in inds), mean=1.0, worst=0.9,
                              std=0.1, diversity=0.5, duration_s=1.0, evaluations=1, unique_genomes=len(inds),
                              best_individual=max(inds, key=lambda x: x.fitness))
    inputs = {"a", "b", "c"}
    # the smoke run's generation 1: model3 ("c") as an elite, two recipes of combo 010 rebuilding it, one merge
    g1 = gen(1, ind(2, 1.2, "c"), ind(2, 1.2, "c"), ind(7, 1.2, "c"), ind(5, 1.1, "m1"))
    assert unique_models(g1) == 2 and g1.unique_genomes == 4
    assert combo_counts(g1, inputs) == [0, 0, 0, 0, 0, 1, 0, 0]
    assert not elites_distinct(g1)          # elite1 and elite2 are model3 twice
    g0 = gen(0, ind(0, 1.0, "a"), ind(1, 0.8, "b"), ind(2, 1.2, "c"), ind(3, 0.9, "m0"))
    assert unique_models(g0) == 4 and combo_counts(g0, inputs) == [0, 0, 0, 1, 0, 0, 0, 0] and elites_distinct(g0)
    logged = []
    tracker = NS(log=lambda m, step: logged.append(m))
    logger = GenerationLogger(tracker, 2, inputs)
    result = NS(generations=[g0, g1])
    for g in (g0, g1):
        logger(g, result)
    m0, m1 = logged
    assert (m0["evolution/unique_models"], m1["evolution/unique_models"]) == (4, 2)
    assert m1["evolution/combo_010_count"] == 0 and m1["evolution/combo_101_count"] == 1
    assert sum(m1[f"evolution/combo_{c:03b}_count"] for c in range(8)) == 1
    assert (m0["evolution/elite1_fitness"], m0["evolution/elite2_fitness"], m0["evolution/elites_distinct"]) == (1.2, 1.0, True)
    assert (m1["evolution/elite1_fitness"], m1["evolution/elite2_fitness"], m1["evolution/elites_distinct"]) == (1.2, 1.2, False)


def test_depth_range_bounds_round_inward_and_keep_the_input_depth():
    from agentforge.phases.evomerge import depth_space

    assert depth_space(5, 0.5, 1.5) == Space(5, 3, 7)  # round() gave 2..8 (0.4 n .. 1.6 n)
    assert depth_space(10, 0.7, 1.3) == Space(10, 7, 13) and depth_space(2, 0.7, 1.3) == Space(2, 2, 2)
    rng = random.Random(0)
    for n, lo, hi in itertools.product(range(1, 13), (0.1, 0.25, 0.5, 0.7, 0.75, 1.0), (1.0, 1.3, 1.5, 2.0)):
        sp = depth_space(n, lo, hi)
        assert lo * n - 1e-6 <= sp.min_layers <= n <= sp.max_layers <= hi * n + 1e-6  # n: the inputs' depth
        pop = initial_population(rng, sp, 8)
        for _ in range(3):  # the operators keep every merged depth inside the space
            pop = [mutate(crossover(a, b, rng), rng, sp, 0.5, 0.1) for a, b in zip(pop, pop[1:] + pop[:1])]
            assert all(sp.min_layers <= r.n_layers() <= sp.max_layers for r in pop)


def test_phase_keeps_merged_depth_in_range_and_counts_no_input_as_a_merge(tmp_path):
    ins = [_save_tiny(tmp_path / f"m{i}", i, ltm_slots=s) for i, s in enumerate((32, 128, 16))]
    # 2-layer inputs, depth_range [0.7, 1.3]: depth 2 only (ceil 1.4 .. floor 2.6); round() allowed 1..3
    m = run_phase(compose_cfg(TINY_EVO + [f"phase.inputs=[{','.join(ins)}]", "phase.depth_range=[0.7,1.3]",
                                          "phase.population_size=6"], tmp_path))["metrics"]
    log = json.loads((tmp_path / "run" / "evolution_log.json").read_text())
    inds = [i for g in log["generations"] for i in g["individuals"]]
    assert {Recipe.from_dict(i["recipe"]).n_layers() for i in inds} == {2}
    inputs = {i["weights_sha256"] for i in log["inputs"]}
    merged = {i["combo"] for i in inds if i["metrics"]["weights_sha256"] not in inputs}
    assert {m["final/best_combo"], m["final/worst_combo"]} <= merged
    wins = [max(g["individuals"], key=lambda i: i["fitness"])["metrics"]["weights_sha256"] not in inputs
            for g in log["generations"]]
    assert sum(m["final/combo_win_rate"].values()) == pytest.approx(sum(wins) / len(wins))
    rows = [r.split(",") for r in (tmp_path / "run/tables/combos__effectiveness.csv").read_text().splitlines()[1:]]
    assert sum(int(r[3]) for r in rows) == sum(i["metrics"]["weights_sha256"] not in inputs for i in inds)


@pytest.mark.parametrize(("override", "key", "cli"), [("+phase.fitness_weights.bogus=1", "phase.fitness_weights", 1),
                                                      ("phase.fitness_weights=null", "phase.fitness_weights", 0),
                                                      ("phase.eval.seq_len=65", "phase.eval.seq_len", 0),
                                                      ("phase.eval.speed_seq_len=65", "phase.eval.speed_seq_len", 0),
                                                      pytest.param("phase.eval.speed_seq_len=65", "phase.eval.speed_seq_len",
                                                                   1, marks=pytest.mark.slow)])  # loads the phase: ~5-10 s
def test_more_bad_settings_name_their_key_before_any_run_dir(tmp_path, override, key, cli):
    args = TINY_EVO + [f"phase.inputs=[{','.join(_save_tiny(tmp_path / f'm{i}', i) for i in range(3))}]", override]
    if cli:  # the real CLI (~3 s): one error line, exit 2, no traceback (inputs' max_seq_len: 64)
        proc = run_cli(args, tmp_path)
        errs = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
        assert proc.returncode == 2 and len(errs) == 1 and key in errs[0], proc.stderr[-1500:]
        assert "Traceback" not in proc.stderr and not (tmp_path / "outputs" / "runs").exists()
    else:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            run_phase(compose_cfg(args, tmp_path))
        assert not (tmp_path / "run").exists()


def test_report_row_says_no_merge_won_when_the_champion_is_an_input_unchanged(tmp_path):
    m = {"final/fitness_improvement": 0.0, "final/fitness_improvement_ci95": [0.0, 0.0], "final/test_ppl_ratio": 1.0,
         "final/test_ppl_ratio_ci95": [1.0, 1.0], "final/champion_unchanged_input": "model3"}
    row = lambda **kw: threshold_rows({"evomerge": headline_metrics({**m, **kw})}, tmp_path)[0][4]
    assert "no merge won: the champion is model3 unchanged; quality vs the best input" in row()
    assert "no merge won" not in row(**{"final/champion_unchanged_input": ""}) and "perplexity ratio 1.000" in row()
