"""The whole pipeline at the smallest sizes: killed mid-way, rerun, resumed, every artifact valid; and a
2-value multirun with two separate W&B runs."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from agentforge.artifacts import load_any
from agentforge.tracking.wandb_offline import find_offline_runs, read_offline_run
from tests.conftest import TINY, run_cli, run_in_process

COGNATE = ["phase.max_epochs=1", "phase.steps_per_epoch=3", "phase.val_rows=4", "phase.eval_examples=2",
           "phase.gen_tokens=4", "data.batch_size=4", "data.seq_len=32"]
EVOMERGE = ["phase.population_size=4", "phase.generations=1", "phase.eval.rows=2", "phase.eval.seq_len=16",
            "phase.eval.choice_examples=2", "phase.eval.test_rows=8", "phase.eval.speed_seq_len=8",
            "phase.eval.speed_repeats=1", "phase.eval.test_choice_examples=2", "phase.eval.bootstrap_resamples=200"]
QUIETSTAR = ["phase.baking.epochs=1", "phase.baking.steps_per_epoch=2", "phase.baking.batch_size=2",
             "phase.baking.examples_per_strategy=1", "phase.baking.val_per_strategy=1", "phase.baking.sample_tokens=2",
             "phase.baking.usage_tokens=2", "phase.rl.num_episodes=2", "phase.rl.num_thoughts=2",
             "phase.rl.thought_length=2", "phase.rl.thought_positions=1", "phase.rl.batch_size=1",
             "phase.rl.seq_len=24", "phase.rl.context_len=16", "phase.rl.n_true=2", "phase.rl.anti_theater_every=1",
             "phase.rl.eval_windows=2", "phase.rl.eval_examples=1", "phase.rl.gen_tokens=2",
             "phase.rl.inference_tokens=1", "phase.baking.control=none"]   # the control: test_quietstar.py
BITNET = ["data.batch_size=4", "data.seq_len=32", "phase.calibration_samples=8", "phase.val_rows=4",
          "phase.eval_examples=2", "phase.gen_tokens=4", "phase.fine_tune=never", "phase.speed_repeats=1"]
EVAL = ["phase.eval_examples=2", "phase.choice_examples=2", "phase.val_rows=2", "phase.gen_tokens=4", "phase.pass_k_samples=0",
        "phase.latency_tokens=8", "data.seq_len=32", "data.batch_size=4"]


def _list(key: str, items: list[str]) -> str:
    return f"phase.overrides.{key}=[" + ",".join(f'"{i}"' for i in items) + "]"


ARGS = ["phase=pipeline", "logger=none", "hardware=cpu", "phase.run_name=t", "phase.overlap_train_draws=2000",
        "phase.overlap_heldout=20", _list("cognate", COGNATE),
        _list("evomerge", EVOMERGE), _list("quietstar", QUIETSTAR), _list("bitnet", BITNET), _list("eval", EVAL)]


@pytest.mark.slow   # ~27-35 s: the fast tier's budget; SIGKILL + resume stays in the default tier in test_faults.py
@pytest.mark.faults
def test_pipeline_killed_mid_way_resumes_and_finishes_with_valid_artifacts(tmp_path, monkeypatch, capsys):
    env = dict(os.environ, AGENTFORGE_OUTPUTS=str(tmp_path / "outputs"), OMP_NUM_THREADS="1")
    state = tmp_path / "outputs" / "pipeline" / "t" / "pipeline_state.json"
    proc = subprocess.Popen([sys.executable, "-m", "agentforge", *ARGS], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    done = 0
    while proc.poll() is None and time.time() < deadline:
        if state.is_file():
            try:
                done = sum(s["status"] == "done" for s in json.loads(state.read_text())["steps"])
            except ValueError:
                done = 0
            if done >= 2:
                break
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert done >= 2 and proc.returncode == -signal.SIGKILL, "the pipeline was not killed mid-way"
    assert not (tmp_path / "outputs" / "pipeline" / "t" / "pipeline_report.md").exists()

    again = run_cli(ARGS, tmp_path, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "cognate-m1: outputs complete, same settings, inputs and data files, skipped" in again.stdout
    steps = json.loads(state.read_text())["steps"]
    assert [s["status"] for s in steps].count("skipped (complete)") >= 2
    assert all(s["status"] in ("done", "skipped (complete)") for s in steps) and len(steps) == 12
    # the step the kill cut short, resumed or started over, logged each training step once (a resumed step logged
    # the steps after its checkpoint twice), and no write's temporary file is left in a run dir
    runs = tmp_path / "outputs" / "pipeline" / "t" / "runs"
    for log in runs.glob("*/**/metrics.jsonl"):
        rows = [json.loads(line) for line in log.read_text().splitlines()]
        trained = [r["_step"] for r in rows if any(k in r for k in ("train/loss", "baking/loss", "rl/reward"))]
        assert len(trained) == len(set(trained)), log
    assert not [p for p in runs.rglob(".*.tmp") if "wandb" not in p.parts]
    art = tmp_path / "outputs" / "pipeline" / "t" / "artifacts"
    for ckpt in ["cognate/model1", "cognate/model2", "cognate/model3", "evomerge/champion", "quietstar/baked",
                 "quietstar/reasoning", "bitnet/compressed"]:
        model, tok, cfg = load_any(art / ckpt)
        assert sum(p.numel() for p in model.parameters()) > 0
    for stage in ["phase1_model1", "phase2_champion", "phase3_reasoning", "phase4_compressed"]:
        res = json.loads((art / "eval_results" / f"{stage}_results.json").read_text())
        assert res["metrics"]["perplexity"] > 1
    report = (tmp_path / "outputs" / "pipeline" / "t" / "pipeline_report.md").read_text()
    assert "phase4_compressed" in report and "Resource usage" in report
    assert "final/compression_ratio" in report and "baking/final_accuracy" in report
    assert "| piqa | 2000 |" in report and "| 20 / 20 | 0 / 0 | 0 / 0 | 0 / 0 |" in report  # the held-out overlap check
    assert "] n=2 |" in report  # accuracies carry their n and CI
    # Phase 1 diversity is decided from its bootstrap CI over the rows each model was measured on
    assert re.search(r"\| phase1/diversity \| > 0.3 \| [^|]+ \| (PASS|FAIL|INCONCLUSIVE) \(n=\d+, 95% CI \[", report)
    assert (tmp_path / "outputs" / "pipeline" / "t" / "performance_across_phases.png").stat().st_size > 1000
    # a rerun with other settings for a step reruns it and the steps that read its outputs (here the compressed
    # model's evaluation), never reports the old outputs as new, and leaves the other steps alone (it used to rerun
    # every eval after BitNet); the skipped steps keep the time of the run that made their outputs
    changed = [a if not a.startswith("phase.overrides.bitnet=") else _list("bitnet", [*BITNET, "phase.gen_tokens=5"])
               for a in ARGS]
    # run in this process (main.run; a run that returns is the CLI's exit 0), with the overrides Hydra forwards from
    # ARGS to every step (the CLI runs above forward them: their skips depend on it) and the same outputs
    from agentforge.phases import pipeline

    monkeypatch.setenv("AGENTFORGE_OUTPUTS", str(tmp_path / "outputs"))
    forwarded = [a for a in ARGS if not a.startswith(("phase", "paths"))]   # logger=none hardware=cpu
    monkeypatch.setattr(pipeline, "_forwarded_overrides", lambda: forwarded)
    third = run_in_process(changed, tmp_path, capsys)
    assert "quietstar: outputs complete, same settings, inputs and data files, skipped" in third.stdout
    assert "bitnet: running (its settings differ from those its outputs were made with)" in third.stdout
    assert "eval-phase4_compressed: running (a step it reads from ran again (bitnet))" in third.stdout
    assert "eval-phase3_reasoning: outputs complete, same settings, inputs and data files, skipped" in third.stdout
    steps3 = json.loads(state.read_text())["steps"]
    assert [s["key"] for s in steps3][5:] == ["bitnet", "eval-phase1_model1", "eval-phase1_model2",
                                              "eval-phase1_model3", "eval-phase2_champion", "eval-phase3_reasoning",
                                              "eval-phase4_compressed"]
    skipped = ["skipped (complete)"] * 5
    assert [s["status"] for s in steps3] == skipped + ["done"] + skipped + ["done"]
    assert steps3[-1]["inputs"] == {"bitnet": steps3[5]["outputs_digest"]}   # what it read: the new model only
    assert all(s["duration_s"] > 0 for s in steps3)
    # the rerun eval step summarises its own run only (its rows used to be appended to the last run's: count 2)
    summary = json.loads((runs / "eval-phase4_compressed" / "run_summary.json").read_text())
    assert summary["records"] == 1 and summary["metrics"]["evaluation/phase4_compressed/perplexity"]["count"] == 1
    assert (runs / "eval-phase4_compressed.previous" / "run_summary.json").is_file()   # the last run's, kept aside


@pytest.mark.slow   # ~45 s: four CLI runs of a one-model Cognate pipeline; the same rules in process: test_pipeline_rerun.py
def test_the_cli_reruns_a_step_whose_data_file_changed_and_leaves_a_pipeline_a_bad_input_stopped(tmp_path):
    """A data file rewritten under the same path reruns the step, naming data.path (it was 'same settings and inputs,
    skipped', exit 0, the old model); a typo'd data.path is one error line, exit 2, and changes nothing (it recorded
    the finished step as failed and retired the valid report), in a new pipeline dir it leaves none."""
    def data(n):
        (tmp_path / "d.jsonl").write_text("".join(json.dumps({"question": f"What is {i} plus 1?",
                                                              "answer": f"{i} + 1 = {i + 1}\n#### {i + 1}"}) + "\n"
                                                  for i in range(n)))

    data(60)
    base = ["phase=pipeline", "logger=none", "hardware=cpu", "phase.phases=[cognate]", "phase.models=[m1]",
            "phase.overlap_train_draws=0", _list("cognate", COGNATE), "data.format=gsm8k"]
    args = [*base, "phase.run_name=d", "data.path=d.jsonl"]
    assert run_cli(args, tmp_path).returncode == 0
    outputs = tmp_path / "outputs"
    pipe = outputs / "pipeline" / "d"
    before = {p: p.read_bytes() for p in pipe.rglob("*") if p.is_file()}
    for name in ("d", "new"):
        typo = run_cli([*base, f"phase.run_name={name}", "data.path=d_typo.jsonl"], tmp_path)
        lines = [ln for ln in typo.stderr.splitlines() if ln.startswith("error:")]
        assert typo.returncode == 2 and len(lines) == 1 and lines[0].startswith(
            "error: d_typo.jsonl: dataset file not found"), typo.stderr[-2000:]
    assert {p: p.read_bytes() for p in pipe.rglob("*") if p.is_file()} == before
    assert not (outputs / "pipeline" / "new").exists()
    data(61)
    again = run_cli(args, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "cognate-m1: running (its data files changed since its outputs were made (data.path))" in again.stdout


@pytest.mark.slow   # ~11 s; the sweep's bookkeeping and refusals are tested in the default tier (test_faults.py)
def test_two_value_multirun_gives_two_complete_runs_with_separate_wandb_runs(tmp_path):
    proc = run_cli(["-m", "phase=cognate", "model=m1,m3", *[a for a in TINY if not a.startswith("logger")]], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [read_offline_run(r) for r in find_offline_runs(tmp_path / "outputs" / "multirun")]
    assert sorted(r.name for r in runs) == ["phase1-cognate-model1", "phase1-cognate-model3"]
    assert all(r.exit_code == 0 and "final/val_loss" in r.history_keys() for r in runs)
    for i in (1, 3):
        load_any(tmp_path / "outputs" / "artifacts" / "cognate" / f"model{i}")
    # each job records what it published; two models, two directories: no warning of a shared one
    from agentforge.tracking.sweep import STATUS_FILE

    rows = [json.loads(x) for f in (tmp_path / "outputs" / "multirun").rglob(STATUS_FILE) for x in f.read_text().split("\n") if x]
    assert sorted(r["published"].rsplit("/", 1)[-1] for r in rows) == ["model1", "model3"]
    assert "all published to" not in proc.stderr


def test_a_sweep_warns_when_its_jobs_published_to_one_directory():
    """-m ... seed=1,2 on one model: both jobs publish to artifacts/cognate/model1 and the last to finish wins."""
    from agentforge.tracking.sweep import shared_publications

    rows = [{"job": 0, "ok": True, "published": "/a/model1", "run_dir": "/r/0"},
            {"job": 1, "ok": False, "published": None, "run_dir": "/r/1"},
            {"job": 2, "ok": True, "published": "/a/model1", "run_dir": "/r/2"},
            {"job": 3, "ok": True, "published": "/a/model2", "run_dir": "/r/3"}]
    assert shared_publications(rows) == ["warning: jobs 0, 2 of this sweep all published to /a/model1: it holds "
                                         "job 2's model (the last to finish); the others' are in their run dirs (/r/0)"]


def test_threshold_table_and_cognate_diversity_by_hand(tmp_path):
    from agentforge.pipeline.thresholds import cognate_diversity, threshold_rows

    for mid, (h, u, t) in zip((1, 2, 3), [(2.0, 0.5, 10.0), (4.0, 0.5, 20.0), (6.0, 0.5, 30.0)]):
        d = tmp_path / "cognate" / f"model{mid}"
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps({"diversity/avg_halting_steps": h, "diversity/ltm_usage": u,
                                                    "diversity/inference_time_ms": t}))
    cv = (8 / 3) ** 0.5 / 4  # halting 2,4,6 and time 10,20,30 share this CV; LTM usage has CV 0
    assert cognate_diversity(tmp_path)["phase1/diversity"] == pytest.approx((cv + 0 + cv) / 3)
    rows = threshold_rows({"evomerge": {"final/fitness_improvement": 9.5},
                           "bitnet": {"final/compression_ratio": 8.4, "final/accuracy_drop": -14.0}}, tmp_path)
    got = {r[1]: r[4].split(" (")[0] for r in rows}
    # no CI from a paired test (no eval results here): the two-model rows cannot be decided; nor the diversity
    # without per-row features
    assert got == {"phase1/diversity": "INCONCLUSIVE", "final/fitness_improvement": "INCONCLUSIVE",
                   "final/compression_ratio": "PASS", "final/accuracy_drop": "INCONCLUSIVE"}


@pytest.mark.parametrize("bad,message", [
    # ~5 s each through the real CLI: in the slow tier; the same refusal in process is the test below, and the CLI's
    # one line, exit 2 and nothing written for a bad step override are test_errors_signals.py's (pipeline step cognate)
    pytest.param("phase.generation=1", "phase.generation: no such key", marks=pytest.mark.slow),
    pytest.param("phase.generations=0", "phase.generations must be an integer >= 1, got 0", marks=pytest.mark.slow)])
def test_a_bad_step_override_fails_before_any_step_runs(tmp_path, bad, message):
    """``phase.overrides.cognate=[...]`` is composed and checked with every other step's config up front: one error
    line naming the override list, no step started, nothing written."""
    proc = run_cli(["phase=pipeline", "phase.phases=[cognate,evomerge]", "phase.models=[m1]",
                    f"phase.overrides.evomerge=['{bad}']", "logger=none"], tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith("error: phase.overrides.evomerge (pipeline step evomerge): ")
    assert message in lines[0], proc.stderr[-2000:]
    assert ": running" not in proc.stdout and "ERROR" not in proc.stdout, proc.stdout[-2000:]
    assert not [p for p in (tmp_path / "outputs").rglob("*") if p.is_file()]


def test_a_misspelled_step_override_is_refused_before_any_step_runs(tmp_path, capsys):
    """The test above's first case, through ``main.run`` in this process: a ConfigError naming the override list, the
    step and the key, before any step ran or anything was written."""
    from agentforge.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        run_in_process(["phase=pipeline", "phase.phases=[cognate,evomerge]", "phase.models=[m1]",
                        "phase.overrides.evomerge=['phase.generation=1']", "logger=none"], tmp_path, capsys)
    assert str(err.value).startswith("phase.overrides.evomerge (pipeline step evomerge): ")
    assert "phase.generation: no such key" in str(err.value), str(err.value)
    assert ": running" not in capsys.readouterr().out
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


@pytest.mark.parametrize("arg,message", [("phase.phases=[cognate,foo]", "phase.phases must be a list of cognate, "),
                                         ("phase.models=[m4]", "phase.models must be a list of m1, m2, m3")])
def test_pipeline_lists_are_checked_before_lightning_loads(tmp_path, arg, message):
    """A phase rule (``rules.PIPELINE``), checked before Lightning is imported (it was a check inside the phase)."""
    from agentforge.config import check
    from agentforge.errors import ConfigError
    from agentforge.phases.rules import PHASE_RULES
    from tests.conftest import compose_cfg

    cfg = compose_cfg(["phase=pipeline", arg], tmp_path)
    with pytest.raises(ConfigError, match=message):
        check(cfg, PHASE_RULES["pipeline"])


@pytest.mark.parametrize("arg,ok", [
    ("""phase.overrides.cognate=["model=m2"]""", False),          # trained model2 under every Cognate step's name
    ("""phase.overrides.evomerge=["+model=m3"]""", False),        # did nothing
    ("""phase.overrides.eval=["phase.stage=x"]""", False),        # overrode which stage each eval step writes
    ("""phase.overrides.quietstar=["paths.artifacts=/x"]""", False),
    ("""phase.overrides.cognate=["model.d_model=64","phase.max_epochs=1"]""", True),   # a model's settings: fine
    ("""phase.overrides.eval=["phase.stages=[x]"]""", True)])   # not a key the pipeline sets (eval's own rule)
def test_step_overrides_may_not_set_what_the_pipeline_sets(tmp_path, arg, ok):
    """``phase.overrides.<phase>`` entries that set ``model=``, ``phase=``, the step's paths or an eval step's
    checkpoint/stage are refused at start-up, naming the list and pointing to phase.models."""
    from agentforge.config import check
    from agentforge.errors import ConfigError
    from agentforge.phases.rules import PHASE_RULES
    from tests.conftest import compose_cfg

    cfg = compose_cfg(["phase=pipeline", arg], tmp_path)
    if ok:
        check(cfg, PHASE_RULES["pipeline"])
    else:
        key = arg.split("=", 1)[0]
        with pytest.raises(ConfigError, match=rf"^{re.escape(key)} must be a list of overrides that leave what the "
                                              r"pipeline sets alone \(model=.*phase.models"):
            check(cfg, PHASE_RULES["pipeline"])


def test_a_model_choice_forwarded_to_the_pipeline_is_refused():
    """``phase=pipeline model=m2`` trained m1, m2 and m3 (each Cognate step sets its own model=, after the forwarded
    overrides): refused, pointing to phase.models; a model's own settings (model.d_model=...) pass on."""
    from agentforge.errors import ConfigError
    from agentforge.phases.pipeline import check_no_model_choice

    check_no_model_choice(["model.d_model=64", "seed=3", "size=tiny"])
    for given in ("model=m2", "+model=m3"):
        with pytest.raises(ConfigError, match=rf"^{re.escape(given)} does not apply to phase=pipeline.*phase.models"):
            check_no_model_choice(["seed=3", given])


@pytest.mark.slow   # ~6 s (Lightning loads before the pipeline reads its overrides); the rule: the test above
def test_a_model_choice_given_to_the_pipeline_is_refused(tmp_path):
    """``phase=pipeline model=m2`` on the command line: one error line pointing to phase.models, before any step
    runs, nothing written."""
    proc = run_cli(["phase=pipeline", "model=m2", "logger=none"], tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert lines == ["error: model=m2 does not apply to phase=pipeline, which trains one Cognate model per entry of "
                     "phase.models; choose them with phase.models=[...] (e.g. phase.models=[m2])"], proc.stderr[-2000:]
    assert not [p for p in (tmp_path / "outputs").rglob("*") if p.is_file()]


def test_a_step_is_reused_only_with_its_recorded_outputs_inputs_and_a_finished_run(tmp_path):
    """The pipeline's skip rule, on an eval-like step whose output is one JSON file: reused when a finished run with
    these settings made exactly these outputs from exactly these inputs; rerun, saying why, when the last run was
    interrupted (its record 'failed': an interrupted rerun once left an old champion 'skipped' under the new
    models), when the outputs or the outputs it was made from changed since (a standalone phase wrote there)."""
    from agentforge.phases.pipeline import _skip_reason, _stale
    from agentforge.pipeline.plan import Step, outputs_digest

    out = tmp_path / "eval_results" / "x_results.json"
    step = Step("eval-x", "eval", [], files=[out])
    assert _skip_reason(step, "fp", None, [], None, {}) == "outputs incomplete"
    out.parent.mkdir()
    out.write_text('{"metrics": {"perplexity": 3.0}}')
    d, inputs = outputs_digest(step), {"bitnet": "b1"}
    done = {"status": "done", "fingerprint": "fp", "outputs_digest": d, "inputs": inputs}
    assert _skip_reason(step, "fp", done, [], d, inputs) is None
    assert _skip_reason(step, "fp", {**done, "status": "failed"}, [], d, inputs) == \
        "no record of a finished run that made its outputs"
    assert _skip_reason(step, "fp", done, ["bitnet"], d, inputs) == "a step it reads from ran again (bitnet)"
    assert _skip_reason(step, "fp2", done, [], d, inputs).startswith("its settings differ")
    out.write_text('{"metrics": {"perplexity": 4.0}}')
    assert _skip_reason(step, "fp", done, [], outputs_digest(step), inputs) == \
        "its outputs changed since the pipeline made them"
    assert _skip_reason(step, "fp", done, [], d, {"bitnet": "b2"}) == \
        "the outputs it was made from changed since (bitnet)"
    # a phase.phases=[bitnet] run that replaced bitnet's output leaves eval-x stale, and says so
    assert _stale({"eval-x": done}, {"bitnet": "b2"}, {"bitnet"}) == ["eval-x was made from the earlier outputs of bitnet"]
    assert _stale({"eval-x": done}, {"bitnet": "b1"}, set()) == []


def test_the_fingerprint_ignores_where_the_outputs_directory_is(tmp_path):
    """An eval step's phase.checkpoint is under the artifacts dir: moving the outputs is no change of settings."""
    from omegaconf import OmegaConf

    from agentforge.pipeline.plan import step_fingerprint

    a, b = tmp_path / "a" / "artifacts", tmp_path / "b" / "artifacts"
    fa = step_fingerprint(OmegaConf.create({"phase": {"checkpoint": f"{a}/cognate/model1"}}), a)
    fb = step_fingerprint(OmegaConf.create({"phase": {"checkpoint": f"{b}/cognate/model1"}}), b)
    other = step_fingerprint(OmegaConf.create({"phase": {"checkpoint": f"{b}/cognate/model2"}}), b)
    assert fa == fb != other
