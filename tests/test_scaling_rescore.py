"""The trusted re-scoring (``agentforge/scaling/rescore.py``), the EVOLVE block's size cap and the paired
bootstrap interval of the test-set improvement. The scored logits are recomputed from the returned weights
in a sandbox that cannot see the project's code: a child that returns other logits than its weights give
(the red-team's n-gram forgery) is ``forged``, and so is a model whose rows' logits depend on the other
rows of the batch or on earlier calls (the spot check); honest variants score exactly as before."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from agentforge.sandbox import run_sandboxed, strongest_mode
from agentforge.scaling import rescore
from agentforge.scaling.bootstrap import paired_bootstrap
from agentforge.scaling.evaluator import (
    FAIL_SCORE,
    MAX_BLOCK_CHARS,
    check_static,
    evaluate,
    scored,
    selection_only,
    split_block,
)
from agentforge.scaling.failures import CandidateFailure
from agentforge.scaling.fit import fit_scaling_law
from agentforge.scaling.variants import FRAMEWORKS, variant_path
from tests.conftest import REPO, compose_cfg, run_cli
from tests.scaling_forgeries import (
    ACROSS_BIG_BATCHES,
    ACROSS_CALLS,
    ACROSS_CALLS_PRELUDE,
    ACROSS_ROWS,
    ACROSS_SOME_ROWS,
    NGRAM,
    ROW_SET,
)
from tests.test_sandbox_scaling import BASE_BLOCK, candidate
from tests.test_scaling import TINY_CLI, TINY_SETTINGS, with_block

SALT = "fixed-salt-for-the-regression-test"
SETTINGS = {**TINY_SETTINGS, "trust": {**TINY_SETTINGS["trust"], "test_rows": 64}}
# (loss_xs, loss_s, test_loss_xs, test_loss_s) under SETTINGS and SALT: the selection losses computed by the evaluator
# before the re-scoring existed (the child's logits scored), reproduced bit for bit on the machine that wrote them; the
# test losses re-pinned on 2026-11-27, when the test set moved to the tasks' test split (trust.make_test_rows)
BEFORE = {"baseline": (5.411227261944085, 5.2300658462079985, 5.437728157758559, 5.243919943871262),
          "framework": (5.411227259076181, 5.230065845873559, 5.437728160009536, 5.243919946354265)}


def evaluate_salted(path, tmp_path, settings=SETTINGS):
    cache = tmp_path / "cache"
    cache.mkdir(exist_ok=True)
    (cache / "heldout.key").write_text(SALT)
    return evaluate(path, settings, cache_dir=cache, timeout_s=120)


# -- honest variants: unchanged -----------------------------------------------------------------------------
# every shipped variant in the slow tier (~9-15 s each); in the default tier honest weights stay valid through the
# re-scoring in test_sandbox_scaling.py's baseline fixture and test_scaling.py's entry-file test (matrix_mixer)
@pytest.mark.slow
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_shipped_variants_score_as_before_from_their_weights(framework, tmp_path):
    result = evaluate_salted(variant_path(framework), tmp_path)
    assert result["valid"] == 1.0, result["error"]
    got = tuple(result[k] for k in ("loss_xs", "loss_s", "test_loss_xs", "test_loss_s"))
    assert got == pytest.approx(BEFORE["baseline" if framework == "baseline" else "framework"], rel=1e-6)
    checks = result["rescore"]  # the child's logits equal those recomputed from its weights, rows alone too
    assert checks["child_gap"] <= 1e-6 and checks["spot_gap"] <= 1e-6 and checks["spot_rows"] == 128
    assert len(result["sizes"][0]["test_row_losses"]) == 64


# -- forgeries ----------------------------------------------------------------------------------------------
@pytest.mark.faults
def test_ngram_logits_in_place_of_the_weights_logits_are_forged(tmp_path):
    path = candidate(tmp_path, NGRAM)  # the static check lets it through
    result = evaluate_salted(path, tmp_path, TINY_SETTINGS)
    assert (result["valid"], result["error_kind"], result["combined_score"]) == (0.0, "forged", FAIL_SCORE)
    assert "size s: the logits the child returned are not those of its weights" in result["error"], result["error"]
    assert "by more than the tolerance" in result["error"] and "up to" not in result["error"]   # no gap digits
    again = evaluate_salted(path, tmp_path, TINY_SETTINGS)
    assert again["cached"] is True and again["error_kind"] == "forged"  # a trusted verdict: kept


@pytest.mark.faults
@pytest.mark.parametrize("prelude,edit", [pytest.param("", ACROSS_ROWS, marks=pytest.mark.slow),
                                          pytest.param(ACROSS_CALLS_PRELUDE, ACROSS_CALLS, marks=pytest.mark.slow),
                                          pytest.param("", ACROSS_BIG_BATCHES, marks=pytest.mark.slow)],
                         ids=["batch_mean", "state_across_calls", "batch_mean_in_big_batches"])
def test_models_that_feed_on_other_heldout_rows_fail_the_spot_check(prelude, edit, tmp_path):
    path = candidate(tmp_path, prelude, BASE_BLOCK.replace(*edit))
    result = evaluate_salted(path, tmp_path, TINY_SETTINGS)
    assert (result["valid"], result["error_kind"]) == (0.0, "forged"), result["error"]
    # the first two also change the probe rows' answers between the child's batches (the probe's first halves,
    # then the pairs) and the re-scoring's (the pairs): caught there first; the third only by the spot check
    caught_by = ("computed alone differ from its logits among the other rows",
                 *(["the logits the child returned are not those of its weights"]
                   if edit is not ACROSS_BIG_BATCHES else []))
    assert any(c in result["error"] for c in caught_by), result["error"]


@pytest.mark.slow   # ~20 s; its mechanism in the default tier: the next test
@pytest.mark.faults
def test_a_model_that_reads_the_set_of_heldout_rows_fails_the_spot_check(tmp_path):
    """The spot check's rows arrive one at a time over a pipe, never as a file: a model whose logits depend on the
    set of rows it can read (``ROW_SET``: a prior counted from them) answers a row alone otherwise than in the batch.
    Until 2026-11-28 the spot rows lay in a file of the spot sandbox's dir, and this model was scored ``valid``
    (a red-team's version of it, a suffix-matching predictor, scored 2.75 against the baseline's 0.61)."""
    path = candidate(tmp_path, ROW_SET)  # the static check lets it through
    result = evaluate_salted(path, tmp_path, TINY_SETTINGS)
    assert (result["valid"], result["error_kind"]) == (0.0, "forged"), result["error"]
    assert "computed alone differ from its logits among the other rows" in result["error"], result["error"]


@pytest.mark.slow   # ~23 s (two evaluations); the spot check's other forgeries stay in the default tier
@pytest.mark.faults
def test_a_model_that_feeds_on_other_rows_for_a_few_rows_only_is_caught_by_checking_every_row(tmp_path):
    """A spot check of k secret rows let a model that mixes a fraction f of the rows through with probability
    (1 - f)^k, and every edit drew new rows; every row is now computed alone (``trust.spot_rows: all``)."""
    path = candidate(tmp_path, "", BASE_BLOCK.replace(*ACROSS_SOME_ROWS))
    sample = {**TINY_SETTINGS, "trust": {**TINY_SETTINGS["trust"], "spot_rows": 4}}
    missed = evaluate_salted(path, tmp_path, sample)   # 4 secret rows of 64: none of them is a mixed one
    assert missed["valid"] == 1.0 and missed["rescore"]["spot_rows"] == 4, missed["error"]
    result = evaluate_salted(path, tmp_path, TINY_SETTINGS)  # the default: all 64
    assert (result["valid"], result["error_kind"]) == (0.0, "forged"), result["error"]
    assert "computed alone differ from its logits among the other rows" in result["error"]


@pytest.mark.skipif(strongest_mode() != "bwrap", reason="needs bubblewrap")
def test_the_inference_sandbox_sees_no_project_code_or_data():
    synthetic = REPO / "agentforge" / "data" / "synthetic.py"
    probe = ("import importlib, json\nout = {}\nimport agentforge.scaling.model as m\nout['model'] = m.__file__\n"
             "for name in ('agentforge.data.synthetic', 'agentforge.scaling.trust'):\n"
             "    try:\n        importlib.import_module(name)\n        out[name] = 'imported'\n"
             "    except ImportError:\n        out[name] = 'missing'\n"
             f"for path in ({str(synthetic)!r}, {str(REPO / 'README.md')!r}):\n"
             "    try:\n        open(path).read(10)\n        out[path] = 'read'\n"
             "    except OSError:\n        out[path] = 'unreadable'\nprint(json.dumps(out))\n")
    files = rescore.program_files(variant_path("baseline").read_text())
    seen = json.loads(run_sandboxed(["python", "-c", probe], files, mount_package=False).stdout)
    assert seen["model"] == "/sandbox/agentforge/scaling/model.py"  # the copy ScalingLM is built from
    assert seen["agentforge.data.synthetic"] == seen["agentforge.scaling.trust"] == "missing"
    assert seen[str(synthetic)] == seen[str(REPO / "README.md")] == "unreadable"
    control = json.loads(run_sandboxed(["python", "-c", probe.replace("import agentforge.scaling.model as m\n"
                                                                      "out['model'] = m.__file__\n", "")], {}).stdout)
    assert control["agentforge.data.synthetic"] == "imported" and control[str(synthetic)] == "read"  # the child's view


def test_logprob_gap_ignores_a_shift_per_row_and_bounds_the_loss():
    a = torch.randn(5, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert rescore.logprob_gap(a, a + torch.arange(5.0)[:, None]) < 1e-12
    b = a.clone()
    b[2, 3] += 0.5
    gap = rescore.logprob_gap(a, b)
    loss = lambda x: torch.nn.functional.cross_entropy(x.double(), torch.full((5,), 3), reduction="none")  # noqa: E731
    assert 0 < (loss(a) - loss(b)).abs().max() <= gap + 1e-12


# -- the block cap ------------------------------------------------------------------------------------------
def test_block_size_cap_is_well_above_the_shipped_blocks_and_refused_statically(tmp_path):
    shipped = [len("\n".join(split_block(variant_path(f).read_text())[1])) for f in FRAMEWORKS]
    assert max(shipped) * 5 < MAX_BLOCK_CHARS
    padding = MAX_BLOCK_CHARS - len(BASE_BLOCK.strip()) - 64
    assert check_static(with_block("baseline", f"# {'x' * padding}\n{BASE_BLOCK}")) == "baseline"  # under the cap
    table = with_block("baseline", f"_COUNTS = {'0123456789abcdef' * (MAX_BLOCK_CHARS // 16)!r}\n{BASE_BLOCK}")
    with pytest.raises(CandidateFailure) as err:
        check_static(table)
    assert err.value.kind == "forbidden" and f"more than the {MAX_BLOCK_CHARS} allowed" in str(err.value)
    path = tmp_path / "table.py"
    path.write_text(table)
    result = evaluate(path, TINY_SETTINGS, cache_dir=tmp_path / "cache")  # refused before any sandbox
    assert result["error_kind"] == "forbidden" and result["combined_score"] == FAIL_SCORE


# -- the bootstrap interval of the test improvement --------------------------------------------------------
def sizes_and_reference(cand_rows: dict, base_rows: dict):
    params = {"a": math.e, "b": math.e ** 2}
    sizes = [{"name": k, "params": params[k], "loss": 3.0 - i, "test_loss": float(np.mean(cand_rows[k])),
              "test_row_losses": list(cand_rows[k])} for i, k in enumerate(params)]
    base_losses = {k: float(np.mean(v)) for k, v in base_rows.items()}
    base_fit = fit_scaling_law(list(params.values()), list(base_losses.values())).fitness  # as the baseline's run
    ref = {"fitness": 1.0, "losses": {"a": 3.0, "b": 2.0}, "test_fitness": base_fit, "test_losses": base_losses,
           "test_rows": base_rows, "params": params}
    return sizes, ref


def score(cand_rows: dict, base_rows: dict, settings: dict | None = None) -> dict:
    sizes, ref = sizes_and_reference(cand_rows, base_rows)
    return scored(sizes, settings or {"fitness": {}}, ref)


def test_improvement_interval_collapses_to_the_point_for_constant_rows():
    got = score({"a": [3.2] * 50, "b": [2.6] * 50}, {"a": [3.1] * 50, "b": [2.9] * 50},
                {"fitness": {"tolerance": 0.2}, "trust": {"bootstrap": 200}})
    assert got["test_improvement"] == pytest.approx((0.6 + 0.3) - 0.2)  # −slope + gain at b − baseline fitness
    assert got["test_improvement_ci95"] == pytest.approx([got["test_improvement"]] * 2)
    assert got["test_improvement_n"] == 50.0
    assert not any(k.startswith("test_") for k in selection_only(got))


def test_improvement_interval_is_paired_and_shrinks_with_more_rows():
    rng = np.random.default_rng(0)
    base = {"a": rng.gamma(2.0, 1.5, 400), "b": rng.gamma(2.0, 1.2, 400)}
    same = score(base, base)
    assert same["test_improvement"] == 0.0 and same["test_improvement_ci95"] == [0.0, 0.0]  # paired: no noise
    cand = {"a": base["a"] + rng.normal(0, 0.3, 400), "b": base["b"] - 0.05 + rng.normal(0, 0.3, 400)}
    got = score(cand, base)
    low, high = got["test_improvement_ci95"]
    assert low < got["test_improvement"] < high
    more = score({k: np.tile(v, 4) for k, v in cand.items()}, {k: np.tile(v, 4) for k, v in base.items()})
    assert 0.4 < (more["test_improvement_ci95"][1] - more["test_improvement_ci95"][0]) / (high - low) < 0.6
    with pytest.raises(ValueError):
        paired_bootstrap({"a": [1.0]}, {"b": [1.0]}, lambda c, b: 0.0)


def test_phase_checks_the_new_trust_settings(tmp_path):
    from agentforge.errors import ConfigError
    from agentforge.phases import scaling

    trust = scaling.settings_from_cfg(compose_cfg(["phase=scaling"], tmp_path))["trust"]
    assert trust["spot_rows"] == "all" and trust["logit_tol"] == 1e-4 and trust["bootstrap"] == 1000
    for bad in ("phase.trust.spot_rows=0", "phase.trust.spot_rows=some", "phase.trust.bootstrap=10", "phase.trust.logit_tol=-1"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            scaling.settings_from_cfg(compose_cfg(["phase=scaling", bad], tmp_path))


@pytest.mark.slow
def test_cli_reports_and_logs_the_improvement_interval(tmp_path):
    cli = [o for o in TINY_CLI if not o.startswith("phase.fitness.reference")]
    proc = run_cli(["phase=scaling", *cli, "phase.variant=matrix_mixer", "phase.fitness.reference=baseline",
                    "phase.trust.test_rows=64", "phase.seeds=1"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "improvement over the baseline = " in proc.stdout and "paired bootstrap over 64 rows" in proc.stdout
    assert "covers rows only" in proc.stdout  # one baseline seed: the interval says it misses training randomness
    run_dir = next((tmp_path / "outputs" / "runs").glob("*/*"))
    logged = {k: v for line in (run_dir / "metrics.jsonl").read_text().splitlines()
              for k, v in json.loads(line).items()}
    low, high = logged["scaling/test_improvement_ci95"]
    assert math.isfinite(low) and low <= high and logged["scaling/test_improvement_n"] == 64
    assert (logged["scaling/test_improvement_ci95_lo"], logged["scaling/test_improvement_ci95_hi"]) == (low, high)
    fitness = json.loads((run_dir / "fitness.json").read_text())
    assert fitness["test_improvement_ci95"] == [low, high] and fitness["rescore"]["child_gap"] == 0.0
    assert not [k for k in selection_only(fitness) if k.startswith("test_")]  # OpenEvolve's view: none of it


def test_each_size_is_rescored_in_its_own_sandbox_with_only_its_weights(tmp_path):
    """One sandbox for all sizes let a size's forward read the other sizes' weight files (an ensemble whose extra
    parameters no count sees). A candidate that lists the weight files it can see, at import, in each re-scoring
    sandbox: it sees its own size's alone, and the logits still come back for every size."""
    import importlib.util
    import re

    from safetensors.torch import save

    from agentforge.sandbox import SandboxLimits
    from agentforge.scaling import trust
    from agentforge.scaling.model import ScalingLM

    sizes = TINY_SETTINGS["sizes"]
    assert len(sizes) >= 2
    spec = importlib.util.spec_from_file_location("baseline_variant", variant_path("baseline"))
    variant = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(variant)
    vocab = trust.expected_shapes(sizes[0])["embed.weight"][0]
    weights = {f"weights_{s['name']}.safetensors": save(ScalingLM(vocab, s["d_model"], s["n_layers"], s["n_heads"],
                                                                  variant.Attention).state_dict()) for s in sizes}
    spy = ("\nimport os as _os, sys as _sys\n"
           "print('WEIGHTS', sorted(f for f in _os.listdir('.') if f.startswith('weights_')), file=_sys.stderr)\n")
    code = variant_path("baseline").read_text() + spy
    rows = {"rows": torch.randint(0, vocab, (3, 8)), "probe": torch.randint(0, vocab, (2, 8))}
    out = rescore.infer(code, TINY_SETTINGS, weights, rows, "batch", sandbox=strongest_mode(), log_dir=tmp_path,
                        limits=SandboxLimits(wall_s=120, cpu_s=240, memory_mb=2**20, max_procs=68, max_file_mb=256))
    seen = re.findall(r"WEIGHTS (\[.*\])", (tmp_path / "rescore.log").read_text())
    assert seen == [str([f"weights_{s['name']}.safetensors"]) for s in sizes]
    assert sorted(out) == sorted(s["name"] for s in sizes) and all(out[s["name"]]["last"].shape == (3, vocab)
                                                                     for s in sizes)
