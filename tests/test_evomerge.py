"""The genetic algorithm on a toy problem (elitism, early stopping, seeding, diversity), the phase's
input checks, and the real CLI end to end on the tiny Cognate checkpoints."""
from __future__ import annotations

import copy
import itertools
import json
import math
import random
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from agentforge.artifacts import load_model, save_model
from agentforge.data.tokenizer import ByteTokenizer
from agentforge.errors import ConfigError
from agentforge.evals import stats
from agentforge.io import CheckpointError
from agentforge.main import run as run_phase
from agentforge.merge import combos, fitness, heldout
from agentforge.merge.evaluator import RecipeEvaluator, weights_digest
from agentforge.merge.evolution import EvoConfig, evolve, mean_pairwise
from agentforge.merge.recipe import Recipe, Space, identity_recipe, random_recipe
from agentforge.models import CognateConfig, CognateModel
from agentforge.pipeline.thresholds import headline_metrics, threshold_rows
from tests.conftest import compose_cfg, run_cli

# -- the GA on a toy genome: a tuple of 4 integers, fitness = -(distance to the target)^2 ----------------

TARGET = (3, -2, 5, 0)


def _fit(g):
    return -sum((a - b) ** 2 for a, b in zip(g, TARGET)), {"x": list(g)}


def _mutate(g, rng):
    return tuple(x + rng.choice((-1, 0, 1)) if rng.random() < 0.5 else x for x in g)


def _cross(a, b, rng):
    return tuple(x if rng.random() < 0.5 else y for x, y in zip(a, b))


def _dist(a, b):
    return sum(abs(x - y) for x, y in zip(a, b))


def _run(seed=0, cfg=None, fit=_fit, init=None):
    rng = random.Random(seed)
    cfg = cfg or EvoConfig(population_size=8, generations=15, elite_count=2, patience=50)
    init = init or [tuple(rng.randint(-10, 10) for _ in TARGET) for _ in range(cfg.population_size)]
    return evolve(init, fit, _mutate, _cross, _dist, cfg, rng)


def test_elitism_best_never_falls_and_elites_are_unchanged():
    res = _run()
    bests = [g.best for g in res.generations]
    assert all(b2 >= b1 for b1, b2 in itertools.pairwise(bests))
    assert bests[-1] > bests[0]
    for prev, g in zip(res.generations, res.generations[1:]):
        top2 = list(dict.fromkeys(i.genome for i in sorted(prev.individuals, key=lambda i: i.fitness,
                                                           reverse=True)))[:2]   # the two best distinct genomes
        assert [i.genome for i in g.individuals[:2]] == top2 and all(i.elite for i in g.individuals[:2])
    assert res.champion.fitness == max(bests)


def test_without_elites_the_best_can_fall():
    # control for the test above: the same run with no elites loses its best at least once
    res = _run(cfg=EvoConfig(population_size=8, generations=15, elite_count=0, patience=50))
    bests = [g.best for g in res.generations]
    assert any(b2 < b1 for b1, b2 in itertools.pairwise(bests))


def test_early_stopping_after_patience_flat_generations():
    res = _run(cfg=EvoConfig(population_size=4, generations=50, elite_count=1, patience=3, threshold=0.001),
               fit=lambda g: (1.0, {}))
    assert len(res.generations) == 4 and res.convergence_reason == "early_stop"  # gen 0 + 3 without gain
    res = _run(cfg=EvoConfig(population_size=4, generations=6, patience=10))
    assert len(res.generations) == 6 and res.convergence_reason == "max_gen"


def test_threshold_ignores_gains_below_it():
    calls = iter(range(10**6))
    fit = lambda g: (next(calls) * 1e-6, {})
    res = _run(cfg=EvoConfig(population_size=4, generations=50, elite_count=1, patience=2, threshold=0.01), fit=fit)
    assert res.convergence_reason == "early_stop" and len(res.generations) == 3


def test_same_seed_same_run_and_cache_by_genome():
    a, b, c = _run(seed=1), _run(seed=1), _run(seed=2)
    key = lambda r: [[(i.genome, i.fitness) for i in g.individuals] for g in r.generations]
    assert key(a) == key(b) and key(a) != key(c)
    seen = set()
    for g in a.generations:
        for ind in g.individuals:
            assert ind.cached == (ind.genome in seen)  # evaluated once, whichever generation repeats it
            seen.add(ind.genome)
    assert a.evaluations == len(seen)


def test_diversity_is_pairwise_distance_and_shrinks_as_population_converges():
    assert mean_pairwise([(1, 1, 1, 1)] * 5, _dist) == 0.0
    assert mean_pairwise([(0, 0, 0, 0), (1, 0, 0, 0), (0, 0, 0, 3)], _dist) == pytest.approx((1 + 3 + 4) / 3)
    res = _run(cfg=EvoConfig(population_size=8, generations=20, elite_count=2, patience=50))
    divs = [g.diversity for g in res.generations]
    assert divs[-1] < divs[0] and len(set(divs)) > 2


# -- fitness protocol: identical weights, deterministic cost terms, held-out test figures ----------------------

def _tiny_models(n=3):
    out = []
    for seed in range(n):
        torch.manual_seed(seed)
        m = CognateModel(CognateConfig(d_model=16, n_heads=2, ffn_hidden=24, n_layers=2, window=8, max_seq_len=64,
                                       ltm_key_dim=8))
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.05 * torch.randn_like(p))
        out.append(m.eval())
    return out


def _data(seed, rows=6, questions=3):
    g = torch.Generator().manual_seed(seed)
    recs = [{"question": f"q{seed}-{i} which?", "choices": {"label": ["A", "B"], "text": ["yes", "no"]},
             "answerKey": "AB"[i % 2]} for i in range(questions)]
    return fitness.EvalData(rows=torch.randint(0, 256, (rows, 17), generator=g), choice={"arc": recs},
                            speed_seq_len=8, speed_batch=1, speed_repeats=1)


def _evaluator(models, speed_mode):
    states = [m.state_dict() for m in models]
    ev = RecipeEvaluator(states, [m.config for m in models], ByteTokenizer(), _data(0), {"perplexity": 0.4,
                         "accuracy": 0.3, "speed": 0.2, "memory": 0.1}, speed_mode, yardstick=models[0])
    ms = [fitness.measure(m, ByteTokenizer(), ev.data, models[0]) for m in models]
    ev.reference = fitness.Reference.of(ms, ev.data.n_accuracy_examples())
    return ev, ms


def test_identical_weights_cannot_show_a_fitness_change_whatever_the_recipe_or_timing_noise():
    models, sp = _tiny_models(), Space(2, 1, 3)
    # the noisy timed speed term: recipes that rebuild the same weights still share one measurement
    ev, _ = _evaluator(models, "timed")
    same = [identity_recipe(1, sp, c) for c in range(8)]
    same.append(replace(same[0], dare_seed=99, density=0.3))  # lam = 0: DARE adds nothing, whatever the mask
    fits = {ev(r)[0] for r in same}
    assert len(fits) == 1 and ev.measured == 1
    # registered inputs: a recipe that rebuilds input 3 reuses the input's own measurement, nothing measured
    ev, ms = _evaluator(models, "timed")
    ev.register(models[2].state_dict(), models[2].config, ms[2])
    fit, metrics = ev(identity_recipe(2, sp, 5))
    assert ev.measured == 0 and fit == ev.score(ms[2]) and metrics["inference_time_ms"] == ms[2]["inference_time_ms"]
    # the default FLOPs speed term is deterministic: two separate measurements, bit-identical fitness
    r = random_recipe(random.Random(3), sp, combo=6)
    a, b = _evaluator(models, "flops")[0], _evaluator(models, "flops")[0]
    assert a(r)[0] == b(r)[0] and a.measured == b.measured == 1
    assert weights_digest(models[0].state_dict(), models[0].config) != weights_digest(models[1].state_dict(),
                                                                                      models[1].config)


def test_test_rows_that_occur_in_the_selection_set_are_dropped():
    sel, test = _data(0), _data(1, rows=5)
    test.rows[1] = sel.rows[4]
    test.rows[3] = sel.rows[0]
    test.choice["arc"].append(sel.choice["arc"][2])
    kept, removed, repeats = heldout.disjoint_from(test, sel)
    assert (removed, repeats) == (3, 0) and len(kept.rows) == 3 and len(kept.choice["arc"]) == 3
    assert torch.equal(kept.rows, test.rows[[0, 2, 4]])
    sel_rows = {r.numpy().tobytes() for r in sel.rows}
    assert not any(r.numpy().tobytes() in sel_rows for r in kept.rows)
    # GSM8K questions too: of two test questions, the one also in the selection set goes (kept 1, removed 1)
    q1, q2 = {"question": "1 + 1?", "answer": "#### 2"}, {"question": "2 + 3?", "answer": "#### 5"}
    kept, removed, _ = heldout.disjoint_from(replace(_data(1), gsm8k=[q1, q2]), replace(_data(0), gsm8k=[dict(q2)]))
    assert kept.gsm8k == [q1] and removed == 1


def test_test_improvement_of_an_identical_champion_is_exactly_zero_and_cannot_pass():
    models, tok = _tiny_models(), ByteTokenizer()
    w = {"perplexity": 0.4, "accuracy": 0.3, "speed": 0.2, "memory": 0.1}
    compare = lambda champ, mode, k=0: heldout.compare_on_test(models, champ, tok, _data(1), _data(0), w, mode,
                                                               n_resamples=500, comparator=k)
    # the comparison input is the one given (the phase: the best on the selection set), never re-picked on the test
    # rows (that biased the CI towards FAIL: an audit); each input in turn, its test fitness as measured
    for k in range(3):
        got = compare(models[0], "flops", k)
        assert got["metrics"]["final/test_best_input"] == f"model{k + 1}"
        assert got["metrics"]["final/test_best_input_fitness"] == got["fitness"][k]
    with pytest.raises(ValueError, match="comparator 3 is not an input index"):
        compare(models[0], "flops", 3)
    twin = copy.deepcopy(models[0])  # a copy of the comparison input
    m = compare(twin, "flops")["metrics"]
    assert m["final/test_fitness_improvement"] == 0.0 and m["final/test_fitness_improvement_ci95"] == [0.0, 0.0]
    assert m["final/test_ppl_ratio"] == 1.0 and m["final/test_accuracy_delta"] == 0.0
    assert m["final/test_loss_delta_test"] == "sign_flip_exact"   # 6 rows < 30: the exact test, not the bootstrap
    assert m["final/test_rows"] == 6 and m["final/fitness_improvement"] == m["final/test_fitness_improvement"]
    assert m["final/test_fitness_improvement_n"] == 3 and m["final/test_verdict"] == "INCONCLUSIVE"  # n < 30
    assert stats.threshold_verdict(m["final/test_fitness_improvement_ci95"], ">", 20.0, n=30)[0] == "FAIL"
    # timed speed term: the copy shares its original's measurement (no fresh timing draw), so it can
    # never come out above the inputs
    out = compare(copy.deepcopy(models[0]), "timed")
    assert out["fitness"][3] == out["fitness"][0] and out["metrics"]["final/test_fitness_improvement"] <= 0.0
    # the same function with other weights (a 1e-6 nudge), 32 rows and questions (enough for a verdict): its own
    # timing draw is the difference, held fixed in the CI, so the timed verdict is INCONCLUSIVE however the draw fell
    # (it read PASS or FAIL by the draw, zero-width CI and all: an audit)
    nudged = copy.deepcopy(models[0])
    with torch.no_grad():
        next(nudged.parameters()).view(-1)[0] += 1e-6
    got = heldout.compare_on_test(models, nudged, tok, _data(1, 32, 32), _data(0, 32, 32), w, "timed", threshold=0.0,
                                  n_resamples=200, comparator=0)
    m, speeds = got["metrics"], [x["speed_ratio"] for x in got["measurements"]]
    best = int(m["final/test_best_input"][-1]) - 1
    assert m["final/test_fitness_improvement_n"] >= 30 and speeds[3] != speeds[best]
    assert m["final/test_verdict"] == m["final/fitness_improvement_verdict"] == "INCONCLUSIVE"
    assert "timing noise is not in it" in m["final/fitness_improvement_why"]


def test_test_improvement_and_its_ci_by_hand():
    ref = fitness.Reference(perplexity=1.0, accuracy=0.5, tokens_per_s=1.0, speed_ratio=1.0, memory_mb=1.0,
                            flops_per_token=1.0, acc_floor=0.25)
    base = {"speed_ratio": 1.0, "memory_mb": 1.0, "flops_per_token": 1.0}
    champ = {**base, "row_losses": [0.5, 1.0, 1.5, 1.0], "correct": [1, 1, 0, 1], "flops_per_token": 0.5}
    best = {**base, "row_losses": [1.0, 1.0, 1.0, 1.2], "correct": [1, 0, 0, 1]}
    for m in (champ, best):
        m["perplexity"], m["accuracy"] = math.exp(sum(m["row_losses"]) / 4), sum(m["correct"]) / 4
    w = {"perplexity": 0.4, "accuracy": 0.3, "speed": 0.2, "memory": 0.1}
    # log ratio = 0.4 (1.05 - 1.0) + 0.3 log((0.75 + 0.25) / (0.5 + 0.25)) + 0.2 log(2)
    expected = 100 * (math.exp(0.4 * 0.05 + 0.3 * math.log(1.0 / 0.75) + 0.2 * math.log(2)) - 1)
    point, ci = heldout.fitness_improvement_ci(champ, best, ref, w, "flops", n_resamples=2000)
    assert point == pytest.approx(expected)
    assert point == pytest.approx(100 * (fitness.score(champ, ref, w) / fitness.score(best, ref, w) - 1))
    assert ci[0] < point < ci[1]
    assert stats.threshold_verdict(ci, ">", 20)[0] == "INCONCLUSIVE"  # 4 rows, 4 questions: the CI spans 20
    # one question cannot be resampled: no CI (scipy's bootstrap raised), so no verdict
    one = [{**m, "correct": m["correct"][:1]} for m in (champ, best)]
    point1, ci1 = heldout.fitness_improvement_ci(*one, ref, w, "flops", n_resamples=200)
    assert math.isfinite(point1) and all(math.isnan(x) for x in ci1)
    assert stats.threshold_verdict(ci1, ">", 20)[0] == "INCONCLUSIVE"


def test_two_diverged_models_differ_only_by_what_fitness_score_sees():
    """Mean losses 60 and 55 nats: fitness.measure caps the perplexity at exp(50), so score sees no perplexity
    difference; the improvement must clamp the losses at 50 alike, or it reads 100 (e^(0.4 (55 - 60) + 0.3 log(4/3))
    - 1) = -85.2 % where score's ratio gives +9.0 %."""
    ref = fitness.Reference(perplexity=1.0, accuracy=0.5, tokens_per_s=1.0, speed_ratio=1.0, memory_mb=1.0,
                            flops_per_token=1.0, acc_floor=0.25)
    base = {"speed_ratio": 1.0, "memory_mb": 1.0, "flops_per_token": 1.0, "perplexity": math.exp(50.0)}
    champ = {**base, "row_losses": [59.0, 61.0], "correct": [1, 1, 0, 1], "accuracy": 0.75}
    best = {**base, "row_losses": [54.0, 56.0], "correct": [1, 0, 0, 1], "accuracy": 0.5}
    w = {"perplexity": 0.4, "accuracy": 0.3, "speed": 0.2, "memory": 0.1}
    # both capped at 50: only the accuracy term differs, 0.3 log((0.75 + 0.25) / (0.5 + 0.25))
    expected = 100 * ((1.0 / 0.75) ** 0.3 - 1)
    point, _ = heldout.fitness_improvement_ci(champ, best, ref, w, "flops", n_resamples=200)
    assert point == pytest.approx(expected)
    assert point == pytest.approx(100 * (fitness.score(champ, ref, w) / fitness.score(best, ref, w) - 1))


# -- the phase ----------------------------------------------------------------------------------------------

TINY_EVO = ["logger=none", "hardware=cpu", "phase=evomerge", "phase.population_size=4", "phase.generations=2",
            "phase.eval.rows=2", "phase.eval.seq_len=16", "phase.eval.choice_examples=2",
            "phase.eval.speed_seq_len=8", "phase.eval.speed_repeats=1", "phase.eval.test_rows=6", "phase.eval.test_choice_examples=2",
            "phase.eval.bootstrap_resamples=1000"]


def _save_tiny(path, seed, **kw):
    torch.manual_seed(seed)
    model = CognateModel(CognateConfig(**{"d_model": 16, "n_heads": 2, "ffn_hidden": 24, "n_layers": 2,
                                          "window": 8, "max_seq_len": 64, "ltm_key_dim": 8, **kw}))
    save_model(path, model, ByteTokenizer())
    return str(path)


def test_missing_input_checkpoint_is_a_clear_error(tmp_path):
    cfg = compose_cfg(TINY_EVO, tmp_path)
    with pytest.raises(CheckpointError, match=r"cognate/model1: no Cognate checkpoint — run phase=cognate first "
                                              r"\(it writes model1, model2 and model3\), or pass phase.inputs=\[a,b,c\]$"):
        run_phase(cfg)
    assert not (tmp_path / "run").exists()  # failed before making anything


def test_input_of_another_size_is_a_clear_error_but_memory_slots_may_differ(tmp_path):
    ok = [_save_tiny(tmp_path / "a", 0, ltm_slots=32), _save_tiny(tmp_path / "b", 1, ltm_slots=128)]
    bad = _save_tiny(tmp_path / "c", 2, d_model=32)
    cfg = compose_cfg(TINY_EVO + [f"phase.inputs=[{ok[0]},{ok[1]},{bad}]"], tmp_path)
    with pytest.raises(CheckpointError, match=r"c: cannot be merged .*d_model 16 vs 32"):
        run_phase(cfg)
    no_memory = _save_tiny(tmp_path / "e", 2, memory=False)   # its memory weights never trained: refused too
    cfg = compose_cfg(TINY_EVO + [f"phase.inputs=[{ok[0]},{ok[1]},{no_memory}]"], tmp_path)
    with pytest.raises(CheckpointError, match=r"e: cannot be merged .*memory True vs False.*memory switch"):
        run_phase(cfg)
    (tmp_path / "d").mkdir()
    cfg = compose_cfg(TINY_EVO + [f"phase.inputs=[{ok[0]},{ok[1]},{tmp_path / 'd'}]"], tmp_path)
    with pytest.raises(CheckpointError, match="incomplete checkpoint"):
        run_phase(cfg)


@pytest.mark.parametrize(("override", "key"), [("phase.elite_count=4", "phase.elite_count"),
                                               ("phase.inputs=just_one", "phase.inputs"),
                                               ("phase.depth_range=[1.5,2]", "phase.depth_range"),
                                               ("phase.eval.test_rows=1", "phase.eval.test_rows"),
                                               ("phase.speed_term=wallclock", "phase.speed_term"),
                                               ("phase.dare_rescale=l2", "phase.dare_rescale")])
def test_bad_settings_name_their_key(tmp_path, override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        run_phase(compose_cfg([*TINY_EVO, override], tmp_path))


def test_seeded_phase_is_deterministic_by_default_and_never_below_the_best_input_on_the_selection_set(tmp_path):
    ins = [_save_tiny(tmp_path / f"m{i}", i, ltm_slots=s) for i, s in enumerate((32, 128, 16))]
    logs, tests = [], []
    for k in range(2):
        cfg = compose_cfg(TINY_EVO + [f"phase.inputs=[{','.join(ins)}]"], tmp_path / str(k))  # speed term: FLOPs
        out = run_phase(cfg)
        log = json.loads((tmp_path / str(k) / "run" / "evolution_log.json").read_text())
        logs.append([[(i["recipe"], i["fitness"]) for i in g["individuals"]] for g in log["generations"]])
        tests.append(out["metrics"]["final/test_fitness_improvement"])
    assert logs[0] == logs[1] and tests[0] == tests[1]
    # gen 0 holds the inputs themselves; elitism keeps the champion at or above every one of them
    input_fits = [m["fitness"] for m in log["inputs"]]
    first = log["generations"][0]["individuals"]
    assert [i["recipe"]["weights"] for i in first[:3]] == [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    assert [i["fitness"] for i in first[:3]] == input_fits
    assert all(log["champion"]["fitness"] >= f for f in input_fits)
    assert out["metrics"]["final/selection_fitness_improvement"] >= 0  # the selection set only
    assert out["metrics"]["final/best_fitness"] >= out["metrics"]["final/best_input_fitness"]
    # the decision figure: the same champion on test rows disjoint from the selection rows, the same
    # figure in both runs (deterministic terms), its CI around it
    m = out["metrics"]
    assert m["final/test_rows"] + m["final/test_excluded_overlap"] + m["final/test_excluded_repeats"] >= 6
    assert m["final/test_rows"] >= 2
    lo, hi = m["final/test_fitness_improvement_ci95"]
    assert lo <= m["final/test_fitness_improvement"] <= hi
    assert m["final/test_verdict"] == "INCONCLUSIVE"  # fewer than 30 test rows here
    assert m["final/fitness_improvement"] == m["final/test_fitness_improvement"]  # the report's key: the test figure
    assert m["final/fitness_improvement_threshold"] == float(cfg.phase.improvement_threshold)   # the verdict's
    # the pipeline report's EvoMerge threshold row reads that test figure, decided by its CI and n
    row = next(r for r in threshold_rows({"evomerge": headline_metrics(m)}, tmp_path) if r[0] == "Phase 2 EvoMerge")
    assert row[3] == m["final/test_fitness_improvement"]
    assert row[4].startswith(f"INCONCLUSIVE (n={m['final/test_fitness_improvement_n']}, 95% CI")
    assert log["final"]["final/test_fitness_improvement"] == m["final/test_fitness_improvement"]


def test_cli_end_to_end_on_cognate_checkpoints(cognate_artifacts, tmp_path):
    proc = run_cli(TINY_EVO + ["logger=csv", f"paths.artifacts={cognate_artifacts}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "best input" in proc.stdout and "model3    fitness selection" in proc.stdout
    assert re.search(r"\d+ overlapping the selection set and \d+ repeated rows excluded", proc.stdout)
    assert "test set (" in proc.stdout and "95% CI" in proc.stdout
    run = Path(next(x for x in proc.stdout.splitlines() if x.startswith("run_dir: "))[len("run_dir: "):])
    log = json.loads((run / "evolution_log.json").read_text())
    assert len(log["generations"]) == 2 and all(len(g["individuals"]) == 4 for g in log["generations"])
    first = log["generations"][0]["individuals"]
    assert [i["combo"] for i in first] == ["000", "001", "010", "011"]  # gen 0 spreads the combos
    assert [i["recipe"]["base"] for i in first[:3]] == [0, 1, 2]  # ... and its first 3 are the inputs
    assert [i["metrics"]["perplexity"] for i in first[:3]] == [m["perplexity"] for m in log["inputs"]]
    carried = [i["metrics"]["weights_sha256"] for i in log["generations"][1]["individuals"] if i["elite"]]
    assert len(carried) == 2 and len(set(carried)) == 2   # the elites are distinct models (phase passes identity)
    assert log["champion"]["fitness"] >= max(m["fitness"] for m in log["inputs"])
    # a champion whose weights are an input's unchanged is named as such, not as a merge of its combo's techniques
    final = json.loads((run / "checkpoints" / "champion" / "metrics.json").read_text())
    same = [f"model{i + 1}" for i, m in enumerate(log["inputs"])
            if m["weights_sha256"] == final["val_metrics"]["weights_sha256"]]
    assert final["final/champion_unchanged_input"] == (same[0] if same else "")
    # the test comparison's input is the best on the selection set, chosen before the test rows are looked at
    chosen = max(range(3), key=lambda i: log["inputs"][i]["fitness"])
    assert final["final/test_best_input"] == f"model{chosen + 1}"
    assert (f"its weights are {same[0]}'s unchanged: no merge won" in proc.stdout) == bool(same)
    for ind in first:
        assert set(ind) >= {"recipe", "combo", "metrics", "fitness"}
        assert set(ind["metrics"]) >= {"perplexity", "accuracy", "tokens_per_s", "memory_mb"}
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    keys = set().union(*rows)
    # per generation: unique_models = distinct weight digests; combo counts = merged models only (an input's weights
    # unchanged count for no combo); elites_distinct says whether elite1 and elite2 are different weights
    inputs, bits = {m["weights_sha256"] for m in log["inputs"]}, [combos.bits(c) for c in range(8)]
    per_gen = [r for r in rows if "evolution/unique_models" in r]
    assert len(per_gen) == len(log["generations"])
    for g, r in zip(log["generations"], per_gen):
        digests = [i["metrics"]["weights_sha256"] for i in g["individuals"]]
        assert r["evolution/unique_models"] == g["unique_models"] == len(set(digests))
        merged = [i["combo"] for i in g["individuals"] if i["metrics"]["weights_sha256"] not in inputs]
        assert [r[f"evolution/combo_{b}_count"] for b in bits] == [merged.count(b) for b in bits]
        assert [r[f"models/model_{i}/combo_id"] for i in range(len(g["individuals"]))] == [   # -1: an input's weights
            int(i["combo"], 2) if i["metrics"]["weights_sha256"] not in inputs else -1 for i in g["individuals"]]
        top = sorted(g["individuals"], key=lambda i: i["fitness"], reverse=True)[:2]
        assert r["evolution/elites_distinct"] == g["elites_distinct"] == (top[0]["metrics"]["weights_sha256"]
                                                                          != top[1]["metrics"]["weights_sha256"])
        assert (r["evolution/elite1_fitness"], r["evolution/elite2_fitness"]) == tuple(i["fitness"] for i in top)
    expected = {"evolution/generation", "evolution/best_fitness", "evolution/avg_fitness", "evolution/worst_fitness",
                "evolution/fitness_std", "evolution/fitness_improvement", "evolution/diversity",
                "evolution/unique_models", "evolution/elite1_fitness", "evolution/elite2_fitness", "evolution/elites_distinct",
                "time/generation_duration_seconds", "time/estimated_completion_minutes",
                "models/model_0/fitness", "models/model_3/combo_id", "models/model_2/inference_time",
                "models/model_1/memory_usage", "final/generations_completed", "final/best_fitness",
                "final/fitness_improvement", "final/total_evolution_time_minutes", "final/champion_combo_id",
                "final/best_combo", "final/worst_combo", "final/combo_win_rate", "final/converged_at_generation",
                "final/convergence_reason", "final/test_fitness_improvement", "final/test_fitness_improvement_ci95",
                "final/test_fitness_improvement_n", "final/test_ppl_ratio", "final/test_accuracy_delta",
                "final/selection_fitness_improvement", "final/models_measured"}
    expected |= {f"evolution/combo_{combos.bits(c)}_count" for c in range(8)}
    assert expected <= keys, sorted(expected - keys)
    for f in ("tables/evolution__history.csv", "tables/combos__effectiveness.csv", "plots/combo_usage.png",
              "plots/fitness_evolution.png", "plots/diversity_evolution.png", "tables/final__champion_vs_inputs.csv"):
        assert (run / f).is_file(), f
    assert len((run / "tables/combos__effectiveness.csv").read_text().splitlines()) == 9
    champ = cognate_artifacts / "evomerge" / "champion"
    meta = json.loads((champ / "config.json").read_text())["meta"]
    assert meta["phase"] == "evomerge" and meta["combo"] in {combos.bits(c) for c in range(8)}
    model, _, _ = load_model(champ)
    assert model.config.n_layers == Recipe.from_dict(meta["recipe"]).n_layers()
