"""Scaling-law evaluator: the fit, the static checks, the sandboxed rejections, the cache, the CLI and the
OpenEvolve entry file. Sandbox runs use two tiny sizes and a handful of steps."""
from __future__ import annotations

import importlib.util
import json
import math

import numpy as np
import pytest
from torch import nn

from agentforge.errors import ConfigError
from agentforge.scaling.evaluator import BLOCK_END, BLOCK_START, FAIL_SCORE, check_static, evaluate
from agentforge.scaling.failures import CandidateFailure
from agentforge.scaling.fit import fit_scaling_law
from agentforge.scaling.variants import FRAMEWORKS, variant_path
from tests.conftest import REPO, compose_cfg, run_cli, run_in_process

TINY_SETTINGS = {
    "sizes": [{"name": "xs", "d_model": 16, "n_layers": 1, "n_heads": 2},
              {"name": "s", "d_model": 32, "n_layers": 1, "n_heads": 2}],
    "train": {"steps": 4, "eval_every": 2, "batch_size": 2, "seq_len": 16, "val_rows": 2, "gradient_clip": 1.0,
              "lr": 3e-3, "warmup_steps": 1},
    "optimizer": {"name": "adamw", "lr": 3e-3, "weight_decay": 0.0, "warmup_steps": 1, "min_lr_ratio": 0.1},
    "hardware": {"accelerator": "cpu", "devices": 1, "precision": "32-true", "threads": 1},
    "mix": {"plain_text": 1.0}, "check": {"seq_len": 8}, "seed": 0, "fit_params": "total",
    "trust": {"heldout_rows": 64, "probe_rows": 2, "loss_floor": 0.05}, "fitness": {"reference": None},
}
TINY_CLI = ["logger=none", "hardware=cpu", "phase.train.steps=4", "phase.train.eval_every=2",
            "phase.train.batch_size=2", "phase.train.seq_len=16", "phase.train.val_rows=2", "phase.check.seq_len=8",
            "phase.trust.heldout_rows=64", "phase.trust.probe_rows=2", "phase.fitness.reference=null",
            "phase.presets.cpu=[{name:xs,d_model:16,n_layers:1,n_heads:2},{name:s,d_model:32,n_layers:1,n_heads:2}]"]


def with_block(framework: str, block: str) -> str:
    """The framework template with its EVOLVE block replaced by ``block``."""
    code = variant_path(framework).read_text()
    head, rest = code.split(BLOCK_START + "\n")
    _, tail = rest.split(BLOCK_END + "\n")
    return f"{head}{BLOCK_START}\n{block.strip()}\n{BLOCK_END}\n{tail}"


COEFF = '''
class Coefficients(nn.Module):
    def __init__(self, head_dim: int, n_heads: int):
        super().__init__()
        self.scale = 1.0 / math.sqrt(head_dim)

    def forward(self, q, k):
{body}
'''
NONCAUSAL = COEFF.format(body="        return torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)")
NAN = COEFF.format(body="        t = q.shape[-2]\n        return causal_mask(t, q.device).float() * float('nan')")
HANG = COEFF.format(body="        while True:\n            pass")
CRASH = COEFF.format(body="        raise RuntimeError('boom')")
GREEDY = "_big = torch.empty(600_000_000)  # 2.4 GB while the candidate is imported\n" + COEFF.format(
    body="        return causal_mask(q.shape[-2], q.device).float()")


def write(tmp_path, name: str, code: str):
    path = tmp_path / f"{name}.py"
    path.write_text(code)
    return path


def run_eval(path, tmp_path, **kw):
    kw.setdefault("timeout_s", 120)
    kw.setdefault("memory_mb", 4096)
    return evaluate(path, TINY_SETTINGS, cache_dir=tmp_path / "cache", work_dir=tmp_path / "work", **kw)


# -- the fit ------------------------------------------------------------------------------------------------
def test_fit_recovers_known_slope_and_intercept():
    params = [5e5, 1e6, 2e6, 4e6]
    fit = fit_scaling_law(params, [4.0 - 0.3 * math.log(n) for n in params])
    assert fit.slope == pytest.approx(-0.3) and fit.intercept == pytest.approx(4.0)
    assert fit.r2 == pytest.approx(1.0) and fit.fitness == pytest.approx(0.3)


def test_fit_with_noise_has_r2_below_one_and_slope_close():
    rng = np.random.default_rng(0)
    params = np.geomspace(1e4, 1e7, 8)
    losses = 6.0 - 0.2 * np.log(params) + rng.normal(0, 0.02, size=8)
    fit = fit_scaling_law(params, losses)
    assert 0.9 < fit.r2 < 1.0 and fit.slope == pytest.approx(-0.2, abs=0.02)
    assert fit.predict([1e5])[0] == pytest.approx(fit.intercept + fit.slope * math.log(1e5))


@pytest.mark.parametrize("params,losses", [([1e5], [3.0]), ([1e5, 1e5], [3.0, 2.0]), ([1e5, 2e5], [3.0, float("nan")])])
def test_fit_rejects_degenerate_input(params, losses):
    with pytest.raises(ValueError):
        fit_scaling_law(params, losses)


def test_a_failed_fit_names_no_figure_and_a_flat_curve_scores_zero():
    """A failed fit's message reaches the search (OpenEvolve's prompt) and on the test set its losses are the test
    losses: it says which condition failed, no number (an audit). A flat curve's fitness is 0.0, not -0.0."""
    with pytest.raises(ValueError) as err:
        fit_scaling_law([1e5, 2e5, 4e5], [3.123456, 3.023456, float("inf")])
    assert "a loss is not finite" in str(err.value) and "3.123456" not in str(err.value)
    flat = fit_scaling_law([1e5, 2e5], [3.0, 3.0])
    assert flat.fitness == 0.0 and math.copysign(1.0, flat.fitness) == 1.0 and flat.r2 == 1.0


# -- static checks (no process is started) ------------------------------------------------------------------
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_templates_pass_static_checks(framework):
    assert check_static(variant_path(framework).read_text()) == framework


@pytest.mark.parametrize("mutate,kind", [
    (lambda c: c.replace("y = self.coefficients(q, k) @ v", "y = v"), "outside_block"),
    (lambda c: c.replace("# scaling-framework: coefficient_dynamics\n", ""), "outside_block"),
    (lambda c: c.replace(BLOCK_END + "\n", ""), "outside_block"),
    (lambda c: c.replace("        t = q.shape[-2]\n", "        import os\n        t = q.shape[-2]\n"), "forbidden"),
    (lambda c: c.replace("        t = q.shape[-2]\n", "        t = eval('q.shape[-2]')\n"), "forbidden"),
    (lambda c: c.replace("        t = q.shape[-2]\n", "        t = q.__class__\n"), "forbidden"),
    (lambda c: c.replace("def forward(self, q", "def forward(self q"), "crash"),
    # bare carriage returns end lines for Python, not for split_block: 40 in a comment moved the import past the
    # block's line range, out of the check's sight (it was accepted)
    (lambda c: c.replace("        t = q.shape[-2]\n", "        #" + "\r" * 40 + "\n        import os\n"
                                                      "        t = q.shape[-2]\n"), "forbidden"),
], ids=["frame_edit", "header_removed", "marker_removed", "import_os", "eval", "dunder", "syntax", "bare_cr"])
def test_static_checks_reject_with_reason(mutate, kind, tmp_path):
    code = mutate(variant_path("coefficient_dynamics").read_text())
    with pytest.raises(CandidateFailure) as err:
        check_static(code)
    assert err.value.kind == kind
    result = run_eval(write(tmp_path, "bad", code), tmp_path)  # and evaluate() reports it, no exception
    assert result["valid"] == 0.0 and result["error_kind"] == kind and result["combined_score"] == FAIL_SCORE


def test_whitespace_at_line_ends_is_not_an_edit():
    code = variant_path("matrix_mixer").read_text().replace("import math\n", "import math   \n")
    assert check_static(code) == "matrix_mixer"


# -- sandboxed evaluation -----------------------------------------------------------------------------------
@pytest.mark.slow   # ~15 s; the baseline's scoring stays in the default tier (test_scaling_rescore.py pins its losses,
#                     test_openevolve_entry_file_contract checks the cache is written)
def test_baseline_scores_and_repeat_hits_cache(tmp_path):
    first = run_eval(variant_path("baseline"), tmp_path)
    assert first["valid"] == 1.0, first["error"]
    assert first["cached"] is False and math.isfinite(first["fitness"])
    assert first["combined_score"] == first["fitness"] == -first["slope"]
    assert first["params_xs"] < first["params_s"] and set(first) >= {"loss_xs", "loss_s", "r2", "intercept"}
    assert first["checks"]["max_relative_leak"] == 0.0
    second = run_eval(variant_path("baseline"), tmp_path)
    assert second["cached"] is True and second["combined_score"] == first["combined_score"]
    assert len(list((tmp_path / "cache").glob("*.json"))) == 1
    # the baseline with fitness.reference=baseline (a plain `phase=scaling` run) is the same entry as the reference
    # a candidate trains (`reference: None`): the baseline needs no reference, so no second training
    third = evaluate(variant_path("baseline"), {**TINY_SETTINGS, "fitness": {"reference": "baseline"}},
                     cache_dir=tmp_path / "cache", work_dir=tmp_path / "work", timeout_s=120, memory_mb=4096)
    assert third["cached"] is True and third["combined_score"] == first["combined_score"]


@pytest.mark.parametrize("block,kind,extra", [
    (NONCAUSAL, "non_causal", {}),
    (NAN, "non_finite", {}),
    (CRASH, "crash", {}),
    (GREEDY, "memory", {"memory_mb": 1024}),
    (HANG, "timeout", {"timeout_s": 3}),   # its sandbox reaches the hanging forward of the early checks in ~1.3 s
], ids=["noncausal", "nan", "crash", "memory", "hangs"])
def test_sandbox_rejects_bad_candidates_with_reason(block, kind, extra, tmp_path):
    code = with_block("coefficient_dynamics", block)
    assert check_static(code) == "coefficient_dynamics"  # the block is well-formed; the sandbox must catch it
    result = run_eval(write(tmp_path, kind, code), tmp_path, **extra)
    assert result["valid"] == 0.0 and result["combined_score"] == FAIL_SCORE
    assert result["error_kind"] == kind, result["error"]
    cached = list((tmp_path / "cache").glob("*.json"))
    assert cached == []  # found by the candidate's own process (the early checks), or not reproducible


# -- config and CLI -----------------------------------------------------------------------------------------
def test_phase_config_parses_and_checks_sizes(tmp_path):
    from agentforge.config import validate
    from agentforge.phases import scaling

    cfg = compose_cfg(["phase=scaling"], tmp_path)
    validate(cfg, scaling.RULES)
    settings = scaling.settings_from_cfg(cfg)
    assert len(settings["sizes"]) == 4 and settings["optimizer"]["lr"] == cfg.phase.train.lr
    assert [s["d_model"] for s in scaling.sizes_of(compose_cfg(["phase=scaling", "phase.preset=seed"], tmp_path))] \
        == [96, 128, 128, 192]
    two = "[{name:a,d_model:30,n_layers:1,n_heads:4},{name:b,d_model:32,n_layers:1,n_heads:4}]"
    bad = compose_cfg(["phase=scaling", f"phase.presets.cpu={two}"], tmp_path)
    with pytest.raises(ConfigError, match="even size"):
        scaling.settings_from_cfg(bad)


@pytest.mark.slow   # 20 s; the fast tier runs phase=scaling's CLI in test_sandbox_scaling and the evaluator's fit and
# cache in test_baseline_scores_and_repeat_hits_cache
def test_cli_scaling_reports_fit_then_hits_cache(tmp_path, capsys):
    proc = run_cli(["phase=scaling", *TINY_CLI], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "cache: miss" in proc.stdout and "fit: loss =" in proc.stdout
    runs = sorted((tmp_path / "outputs" / "runs").glob("*/*"))
    fitness = json.loads((runs[0] / "fitness.json").read_text())
    assert fitness["valid"] == 1.0 and (runs[0] / "plots" / "scaling_law.png").is_file()
    rows = [json.loads(line) for line in (runs[0] / "metrics.jsonl").read_text().splitlines()]
    logged = {k for r in rows for k in r}
    assert {"scaling/loss_xs", "scaling/slope", "scaling/intercept", "scaling/r2", "scaling/fitness"} <= logged
    # the same command again, run in this process (main.run; no interpreter to start), on the same outputs
    again = run_in_process(["phase=scaling", *TINY_CLI], tmp_path, capsys)
    assert "cache: hit" in again.stdout and "fit: loss =" in again.stdout, again.stdout[-2000:]


@pytest.mark.slow
def test_cli_scaling_with_the_cache_off_scores_the_same_rows_each_run(tmp_path):
    """phase.cache=false: evaluated afresh each time, on the same held-out and test rows (the held-out key is kept
    apart from the cache), so two runs of one command give one fitness."""
    fits = []
    for _ in range(2):
        proc = run_cli(["phase=scaling", *TINY_CLI, "phase.cache=false"], tmp_path)
        assert proc.returncode == 0 and "cache: off (phase.cache=false)" in proc.stdout, proc.stderr[-2000:]
        run = sorted((tmp_path / "outputs" / "runs").glob("*/*"))[-1]
        fits.append(json.loads((run / "fitness.json").read_text()))
    assert fits[0]["cached"] is False and fits[1]["cached"] is False and fits[0]["fitness"] == fits[1]["fitness"]
    assert fits[0]["test_loss_xs"] == fits[1]["test_loss_xs"] and fits[0]["loss_s"] == fits[1]["loss_s"]


@pytest.mark.slow
def test_cli_rejects_noncausal_program_with_exit_2(tmp_path):
    path = write(tmp_path, "noncausal", with_block("coefficient_dynamics", NONCAUSAL))
    proc = run_cli(["phase=scaling", f"phase.program={path}", *TINY_CLI], tmp_path)
    assert proc.returncode == 2 and "rejected (non_causal)" in proc.stderr, proc.stderr[-2000:]


# -- the OpenEvolve entry file ------------------------------------------------------------------------------
def test_openevolve_entry_file_contract(tmp_path, monkeypatch, openevolve_outputs):
    spec = importlib.util.spec_from_file_location("oe_eval", REPO / "openevolve" / "evaluator.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setenv("AGENTFORGE_OUTPUTS", str(openevolve_outputs))   # shared: test_scaling_testsplit.py
    monkeypatch.setenv("AGENTFORGE_SCALING_OVERRIDES", " ".join(f"'{o}'" for o in TINY_CLI))
    edited = write(tmp_path, "edited", variant_path("matrix_mixer").read_text().replace("y = self.mixer(q, k) @ v",
                                                                                            "y = v"))
    bad = mod.evaluate_metrics(str(edited))
    assert bad["combined_score"] == FAIL_SCORE and bad["error_kind"] == "outside_block"
    good = mod.evaluate(str(variant_path("matrix_mixer")))
    metrics = good if isinstance(good, dict) else good.metrics
    assert metrics["valid"] == 1.0 and metrics["combined_score"] == metrics["fitness"]
    assert not [k for k in metrics if k.startswith("test_")]   # the search never sees the test set's figures
    assert list((openevolve_outputs / "artifacts" / "scaling_cache").glob("*.json"))
    for name in ("coefficient_dynamics", "test_time_regression", "matrix_mixer"):
        import yaml

        oe_cfg = yaml.safe_load((REPO / "openevolve" / f"config_{name}.yaml").read_text())
        assert oe_cfg["evaluator"]["timeout"] > 0 and oe_cfg["llm"]["models"]
        assert "EVOLVE-BLOCK" in oe_cfg["prompt"]["system_message"]


def test_the_readme_departures_from_the_openevolve_seed():
    """README: 'the fixed model around the evolved attention is the project's pre-norm block with RMSNorm and SwiGLU
    ..., not the seed's LayerNorm and GELU, and has no dropout ...; the OpenEvolve configs keep a population of 50'."""
    import yaml

    from agentforge.models.layers import RMSNorm, SwiGLU
    from agentforge.scaling.model import ScalingLM

    model = ScalingLM(256, 32, 2, 2, lambda d, h: nn.Identity())
    kinds = {type(m) for m in model.modules()}
    assert {RMSNorm, SwiGLU} <= kinds and not kinds & {nn.LayerNorm, nn.GELU, nn.Dropout}
    for cfg in sorted((REPO / "openevolve").glob("config_*.yaml")):
        assert yaml.safe_load(cfg.read_text())["database"]["population_size"] == 50, cfg.name
