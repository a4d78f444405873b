"""The real CLI: help, config printing, config errors, a W&B-offline Cognate run read back, the sweep."""
from __future__ import annotations

import csv
import json
import math
import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf, open_dict

from agentforge.artifacts import load_model
from agentforge.config import validate
from agentforge.data.build import build_datamodule
from agentforge.errors import ConfigError
from agentforge.evals.tasks import mean_loss
from agentforge.phases import cognate
from agentforge.tracking.provenance import git_state
from agentforge.tracking.wandb_offline import find_offline_runs, read_offline_run
from tests.conftest import TINY, compose_cfg, run_cli

PHASE1_KEYS = [
    "train/loss", "train/perplexity", "train/objective", "train/learning_rate", "train/gradient_norm", "train/step", "train/epoch",
    "act/avg_halting_steps", "act/max_halting_steps", "act/min_halting_steps", "act/halting_variance",
    "ltm/memory_usage", "ltm/write_operations", "ltm/read_operations", "ltm/avg_surprise_score",
    "system/tokens_per_second", "val/loss", "val/perplexity", "val/gsm8k_accuracy", "val/arc_easy_accuracy",
    "val/piqa_accuracy", "curriculum/stage", "curriculum/dataset_mix", "time/epoch_duration_minutes",
    "time/estimated_completion_hours", "final/train_loss", "final/val_loss", "final/perplexity",
    "final/gsm8k_accuracy", "final/arc_accuracy", "final/piqa_accuracy", "final/total_training_time_hours",
    "final/model_size_mb", "final/total_params", "diversity/avg_halting_steps", "diversity/ltm_usage",
    "diversity/inference_time_ms",
]


def test_help_and_cfg_job(tmp_path):
    h = run_cli(["--help"], tmp_path)
    assert h.returncode == 0
    for group in ("phase", "model", "optimizer", "hardware", "logger", "data", "size"):
        assert f"{group}:" in h.stdout
    assert "experiment_phase is internal" in h.stdout   # the one group a user should not set is named as such
    c = run_cli(["--cfg", "job", "model=m2"], tmp_path)
    assert c.returncode == 0
    job = OmegaConf.create(c.stdout)
    assert job.model.name == "m2" and job.phase.name == "cognate"


def test_help_imports_neither_torch_nor_lightning(tmp_path):
    """`--help` answers in under a second: torch and Lightning are imported only when a phase runs."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "agentforge", "--help"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "phase:" in proc.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "hydra" in imported and not imported & {"torch", "lightning"}


@pytest.mark.parametrize("override,key", [
    ("optimizer.lr=-0.1", "optimizer.lr"),
    # one real CLI run in the fast tier; the other keys' runs (~7 s each) in the slow tier
    pytest.param("model.n_layers=0", "model.n_layers", marks=pytest.mark.slow),
    pytest.param("data.seq_len=abc", "data.seq_len", marks=pytest.mark.slow),
    pytest.param("model.act_threshold=1.5", "model.act_threshold", marks=pytest.mark.slow),
])
def test_bad_values_fail_fast_with_one_line_naming_the_key(tmp_path, override, key):
    proc = run_cli(["phase=cognate", override, "logger=none"], tmp_path, timeout=60)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    err = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and key in err[0], proc.stderr
    assert not list((tmp_path / "outputs").rglob("*.safetensors"))
    assert not (tmp_path / "outputs" / "runs").exists() or not any((tmp_path / "outputs" / "runs").rglob("*.yaml"))


@pytest.mark.parametrize("args,expected", [
    (["model=m9"], "Could not find 'model/m9'; Available options in 'model': m1, m2, m3"),
    (["nonsense_group=x"], "nonsense_group: no such key (check its spelling"),
    (["phase=cognate", "phase.max_epoch=3"], "phase.max_epoch: no such key (did you mean phase.max_epochs? check "
                                             "its spelling; `python -m agentforge --cfg job` prints every key)"),
    # Hydra adds any key given with +: a group's setting that nothing reads is refused (cli_errors.added_key_problem)
    (["phase=cognate", "+phase.epocs=2"], "error: +phase.epocs: phase=cognate has no such setting, so nothing would "
                                          "read it (did you mean phase.max_epochs? `python -m agentforge"),
    (["phase=cognate", "+model.d_modle=3"], "+model.d_modle: model has no such setting, so nothing would read it (did "
                                            "you mean model.d_model?"),
    (["phase.max_epochs=[1"], "no viable alternative at input '[1'"),
    (["data.eval_paths={gsm8k:/x.jsonl}"], "data.eval_paths.gsm8k: no such key in data.eval_paths (its default "
                                           "lacks it); write +data.eval_paths=... to set keys the default lacks"),
])
def test_what_hydra_refuses_is_one_error_line_and_exit_2(tmp_path, args, expected):
    """Misspelled keys and groups, unknown options and unparsable overrides (agentforge/cli_errors.py): one line,
    no Hydra report (search path, HYDRA_FULL_ERROR hint), no traceback, nothing written."""
    proc = run_cli(args, tmp_path, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and proc.stderr.startswith("error: ")
    assert expected in proc.stderr and "HYDRA_FULL_ERROR" not in proc.stderr
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("*.yaml"))


_values = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=8), st.lists(st.integers(), max_size=2))
_keys = ["model.n_layers", "model.d_model", "model.n_heads", "model.act_threshold", "model.max_steps",
         "optimizer.lr", "optimizer.weight_decay", "data.seq_len", "data.batch_size", "seed", "phase.max_epochs",
         "phase.on_nonfinite", "hardware.precision", "logger.name", "model.ltm_slots"]


# sizes and counts: anything but a positive int (None, a bool, a float, text, a list, 0 or less) must be refused
_POSITIVE_INTS = {"model.n_layers", "model.d_model", "model.n_heads", "model.max_steps", "data.seq_len",
                  "data.batch_size", "phase.max_epochs", "model.ltm_slots"}


@pytest.fixture(scope="module")
def base_cfg(tmp_path_factory):
    return compose_cfg(["logger=none"], tmp_path_factory.mktemp("cfg"))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(_keys), value=_values)
def test_fuzzed_config_values_give_a_message_never_a_traceback(base_cfg, key, value):
    cfg = base_cfg.copy()
    with open_dict(cfg):
        OmegaConf.update(cfg, key, value, force_add=True)
    plainly_bad = key in _POSITIVE_INTS and not (type(value) is int and value > 0)
    try:
        validate(cfg, cognate.RULES)
    except ConfigError as exc:
        assert key in str(exc) or key.split(".")[0] in str(exc)
    else:
        assert not plainly_bad, f"{key}={value!r} was accepted"


def test_cognate_run_logs_every_phase1_key_to_offline_wandb(tmp_path):
    proc = run_cli(["phase=cognate", "model=m1", *[a for a in TINY if not a.startswith("logger")]], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "anonymous setting has no effect" not in proc.stderr   # Lightning's anonymous=None is left out
    runs = find_offline_runs(tmp_path / "outputs")
    assert len(runs) == 1
    run = read_offline_run(runs[0])
    assert run.name == "phase1-cognate-model1" and run.project == "agent-forge-v2"
    assert {"phase1", "cognate", "model1", "pretraining"} <= set(run.tags)
    missing = [k for k in PHASE1_KEYS if k not in run.history_keys()]
    assert not missing, missing
    assert run.exit_code == 0
    assert {"phase1-model1-checkpoint", "phase1-model1-config"} <= set(run.artifacts)
    # the seed plan's flat run config (tracking/spec_config.py), filterable as `phase == 1`, beside the nested tree
    cfg = compose_cfg(["model=m1", *TINY], tmp_path)
    assert run.config["phase"] == 1 and run.config["model_id"] == 1 and run.config["architecture"] == "TRM-Titans-MAG"
    assert run.config["optimizer"] == "Muon-Grokfast" and run.config["muon_lr"] == cfg.optimizer.lr
    assert run.config["num_epochs"] == cfg.phase.max_epochs == 2 and run.config["batch_size"] == cfg.data.batch_size
    assert run.config["phase_config"]["max_epochs"] == 2 and run.config["optimizer_config"]["lr"] == cfg.optimizer.lr
    assert run.config["model"]["model_id"] == 1   # the rest of the nested tree is where it was
    assert run.config["provenance"]["torch_threads"] == 1 and "commit" in run.config["provenance"]["git"]
    losses = [row["train/loss"] for row in run.history if "train/loss" in row]
    assert len(losses) == 6 and all(math.isfinite(v) for v in losses)
    # train/loss is the cross-entropy of the halted output (perplexity = exp(loss), as the seed logs them, in the
    # units of val/loss); the optimized objective (PonderNet + deep-supervised per-step CE) has its own key
    train_rows = [row for row in run.history if "train/loss" in row]
    for row in train_rows:
        assert abs(math.log(row["train/perplexity"]) - row["train/loss"]) < 1e-3, row
        assert math.isfinite(row["train/objective"]) and row["train/objective"] > row["train/loss"], row
        # its terms, the evaluation plan's train/loss/* keys, sum to it (float32 sums, logged as floats)
        terms = [row[f"train/loss/{t}"] for t in ("halt", "ponder", "deep_supervision")]
        assert sum(terms) == pytest.approx(row["train/objective"], rel=1e-5) and min(terms) >= 0, row
    val = [row["val/loss"] for row in run.history if "val/loss" in row]
    assert abs(losses[-1] - val[-1]) < 1.0, (losses[-1], val[-1])   # the objective is ~2.5x it on this model
    halting = [row["act/avg_halting_steps"] for row in run.history if "act/avg_halting_steps" in row]
    assert all(1 <= h <= 4 for h in halting)
    # act/* are training batches' figures; the held-out rows' halting spread is diversity/*, with their mean
    assert "diversity/halting_steps_std" in run.summary and "act/halting_steps_std" not in run.summary
    # the checkpoint is the trained model: its loss on the held-out rows equals the logged final/val_loss
    ckpt = tmp_path / "outputs" / "artifacts" / "cognate" / "model1"
    model, tok, meta = load_model(ckpt)
    metrics = json.loads((ckpt / "metrics.json").read_text())
    # the README's units: *_mb keys are MiB (2^20 bytes), *_gb keys GiB
    assert metrics["final/model_size_mb"] == (ckpt / "model.safetensors").stat().st_size / 2**20
    rss = [row["system/ram_used_gb"] for row in run.history if "system/ram_used_gb" in row]
    assert rss and all(0.05 < g < 64 for g in rss)   # a few hundred MiB of process, in GiB
    dm = build_datamodule(OmegaConf.to_container(cfg.data), tok, stages=OmegaConf.to_container(cfg.phase.curriculum),
                          seed=cfg.seed, steps_per_epoch=3, val_rows=cfg.phase.val_rows)
    assert mean_loss(model, dm.val_rows_tensor()) == pytest.approx(metrics["final/val_loss"], rel=1e-4)
    # final/train_loss: the last epoch's mean train/loss (cross-entropy), not the objective
    assert metrics["final/train_loss"] == pytest.approx(sum(losses[-3:]) / 3, rel=1e-5)
    assert metrics["final/total_params"] == sum(p.numel() for p in model.parameters())
    _part_times_cover_the_phase(run.summary, metrics, proc.stdout)


# seq_len 32 holds no recall item: no recall_check
TIME_PARTS = ["setup", "open", "fit", "validation", "task_accuracy", "checkpoint", "report", "held_out", "save", "latency",
              "ablations", "halting_check", "diversity_rows", "other"]


def _part_times_cover_the_phase(summary: dict, metrics: dict, stdout: str):
    """time/<part>_s (each >= 0, in the order the parts first started), time/other_s and time/total_s in the published
    metrics.json, the same in the W&B summary; the parts and other sum to the total; the printed line; the devices."""
    t = {k: v for k, v in metrics.items() if k.startswith("time/")}
    assert list(t) == [*[f"time/{p}_s" for p in TIME_PARTS], "time/total_s", "time/fit_device", "time/eval_device"], t
    parts = [t[f"time/{p}_s"] for p in TIME_PARTS]
    assert all(v >= 0 for v in parts) and t["time/fit_s"] > 0 and t["time/validation_s"] > 0, t
    assert sum(parts) == pytest.approx(t["time/total_s"], rel=1e-9, abs=1e-9)   # every second in one part
    assert {k: summary[k] for k in t} == t
    assert t["time/fit_device"] == t["time/eval_device"] == "cpu"
    assert ("Cognate model1 time (s): " + ", ".join(f"{p} {t[f'time/{p}_s']:.1f}" for p in TIME_PARTS)
            + f" (total {t['time/total_s']:.1f})") in stdout.splitlines()
    assert "Cognate model1 devices: fit on cpu, evaluations after it on cpu" in stdout.splitlines()
    assert "Cognate model1 closing the run (loggers, W&B finish): " in stdout


def test_timed_validation_is_a_part_and_a_raising_loop_is_closed():
    from agentforge.evals.speed import PartTimes
    from agentforge.training.part_callbacks import TimedValidation

    clock = iter(range(100)).__next__
    times = PartTimes(clock)   # t0 = 0
    cb = TimedValidation(times)
    with times("fit"):                      # 1
        cb.on_validation_start(None, None)  # 2
        cb.on_validation_end(None, None)    # 3
        cb.on_validation_start(None, None)  # 4
        cb.on_exception(None, None, RuntimeError())   # 5: the loop raised
    assert times.seconds == {"fit": 3, "validation": 2} and not times._open   # the fit closed at 6


def test_multirun_makes_three_runs_and_three_checkpoints(cognate_artifacts):
    outputs = cognate_artifacts.parent
    status = list((outputs / "multirun").rglob("sweep_status.jsonl"))
    assert len(status) == 1
    rows = [json.loads(x) for x in status[0].read_text().splitlines()]
    assert len(rows) == 3 and all(r["ok"] for r in rows)
    assert len({r["run_dir"] for r in rows}) == 3
    with (status[0].parent / "sweep_table.csv").open() as f:   # the jobs' results side by side
        table = list(csv.DictReader(f))
    assert sorted(r["model"] for r in table) == ["m1", "m2", "m3"]
    assert {r["final/val_loss"] for r in table} == {str(r["metrics"]["final/val_loss"]) for r in rows}
    sizes = set()
    for i in (1, 2, 3):
        model, _, cfg = load_model(cognate_artifacts / "cognate" / f"model{i}")
        sizes.add(model.config.ltm_slots)
        assert cfg["meta"]["model_id"] == i
        prov = cfg["meta"]["provenance"]   # the code and numerics that wrote it (io.save_checkpoint)
        assert prov["commit"] == git_state()["commit"] and prov["torch_threads"] == 1   # OMP_NUM_THREADS=1 (run_cli)
        assert prov["torch"] == torch.__version__
        assert torch.isfinite(next(model.parameters())).all()
    assert len(sizes) == 3


def test_recall_ablation_is_run_exactly_when_its_rows_fit():
    """The cognate phase's fit check against the real rows: at seq_len 114 with a 72-character gap some item
    takes 116 tokens (BOS + 20 + 1 + 72 + 1 + 20 + EOS) and recall_rows refuses it; at 115 all fit."""
    from agentforge.data.recall import recall_rows

    assert not cognate.recall_fits(114, 72) and cognate.recall_fits(115, 72)
    with pytest.raises(ValueError, match="does not fit"):
        recall_rows(64, 114, 0, "val", gap=72)
    rows, mask = recall_rows(64, 115, 0, "val", gap=72)
    assert rows.shape == (64, 116) and bool(mask.any(1).all())


def test_held_out_pass_counts_flops_deterministically_with_the_halting_steps(tmp_path):
    """cognate.held_out_pass: the FLOPs per token and LTM usage repeat exactly on the same rows (a count, not a
    timing), and its halting steps are evals.speed.halting_distribution's."""
    from agentforge.artifacts import cognate_config_from
    from agentforge.data.tokenizer import RESERVED_VOCAB
    from agentforge.evals.speed import halting_distribution
    from agentforge.models import CognateModel

    cfg = compose_cfg(TINY, tmp_path)
    torch.manual_seed(0)
    model = CognateModel(cognate_config_from(OmegaConf.to_container(cfg.model, resolve=True), RESERVED_VOCAB))
    rows = torch.randint(0, 256, (20, 33), generator=torch.Generator().manual_seed(1))
    h1, u1, f1 = cognate.held_out_pass(model, rows)
    h2, u2, f2 = cognate.held_out_pass(model, rows)
    assert f1 == f2 > 0 and u1 == u2 and 0 <= u1 <= 1
    assert torch.equal(h1, h2) and torch.equal(h1, halting_distribution(model, rows))


@pytest.mark.parametrize("key", ["phase.val_rows", "phase.halting_rows"])
def test_row_counts_a_paired_bootstrap_cannot_use_are_refused_before_training(base_cfg, key):
    """The ablations and the digits-vs-letters halting measure pair rows after training: 1 row used to crash
    there (``paired bootstrap needs at least 2 examples``) with the training already spent."""
    cfg = base_cfg.copy()
    with open_dict(cfg):
        OmegaConf.update(cfg, key, 1, force_add=True)
    with pytest.raises(ConfigError, match=f"{key} must be an integer >= 2, got 1"):
        validate(cfg, cognate.RULES)


@pytest.mark.parametrize("key,value,message", [
    ("hardware.threads", "abc", "hardware.threads must be null or an integer >= 1, got 'abc'"),
    ("hardware.devices", 0, "hardware.devices must be a device count >= 1"),
    ("hardware.strategy", "bogus", "hardware.strategy must be a Lightning strategy name"),
    ("hardware.deterministic", "maybe", "hardware.deterministic must be true, false or 'warn'"),
])
def test_hardware_values_lightning_would_reject_late_are_refused_at_start(base_cfg, key, value, message):
    """Before, these passed validation and failed inside Lightning (or ``int()``) after the run dir was written."""
    cfg = base_cfg.copy()
    with open_dict(cfg):
        OmegaConf.update(cfg, key, value, force_add=True)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate(cfg, cognate.RULES)


@pytest.mark.parametrize("key,value", [("hardware.devices", [0, 1]), ("hardware.devices", -1),
                                       ("hardware.devices", "auto"), ("hardware.strategy", "ddp_spawn"),
                                       ("hardware.strategy", "fsdp_cpu_offload"), ("hardware.deterministic", "warn"),
                                       ("hardware.threads", 2)])
def test_hardware_values_lightning_accepts_pass(base_cfg, key, value):
    cfg = base_cfg.copy()
    with open_dict(cfg):
        OmegaConf.update(cfg, key, value, force_add=True)
    validate(cfg, cognate.RULES)


@pytest.mark.parametrize("value,message", [
    ({"foo": "/x.jsonl"}, "data.eval_paths must be a mapping of gsm8k / arc / piqa"),
    ({"gsm8k": 3}, "data.eval_paths must be a mapping of gsm8k / arc / piqa"),
    ("/x.jsonl", "data.eval_paths must be a mapping of gsm8k / arc / piqa")])
def test_eval_paths_other_than_the_three_formats_are_refused_at_start(base_cfg, value, message):
    """``+data.eval_paths={foo: FILE}`` was a KeyError traceback when the held-out sets were built."""
    cfg = base_cfg.copy()
    with open_dict(cfg):
        OmegaConf.update(cfg, "data.eval_paths", value, force_add=True, merge=False)
    with pytest.raises(ConfigError, match=message):
        validate(cfg, cognate.RULES)


def test_a_missing_eval_file_is_named_by_its_key(tmp_path):
    from agentforge.data.build import eval_sets
    from agentforge.errors import AgentForgeError

    with pytest.raises(AgentForgeError, match=r"data\.eval_paths\.arc"):
        eval_sets({"eval_paths": {"arc": str(tmp_path / "none.jsonl")}}, 0, 2)


def test_compare_stages_given_as_one_word_is_refused(tmp_path):
    from agentforge.main import run
    from tests.conftest import compose_cfg

    cfg = compose_cfg(["phase=compare", "stages=nope", "logger=none"], tmp_path)
    with pytest.raises(ConfigError, match=r"stages=nope must be a list of stage names, e\.g\. stages=\[nope\]"):
        run(cfg)


def test_hardware_gpu_without_a_gpu_fails_before_the_run_starts(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    proc = run_cli(["phase=cognate", "hardware=gpu", "logger=wandb"], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: hardware.accelerator=gpu but no GPU is visible; use "
                                                "hardware=cpu or hardware=auto"], proc.stderr[-2000:]
    assert not [p for p in (tmp_path / "outputs").rglob("*") if p.is_file()]   # no run dir, no W&B run
    # hardware=cpu with an accelerator override: the advice is to drop the override, not to use hardware=cpu (given)
    proc = run_cli(["phase=cognate", "hardware=cpu", "hardware.accelerator=gpu", "logger=none"], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: hardware.accelerator=gpu overrides hardware=cpu's accelerator, "
                                                "but no GPU is visible; drop the hardware.accelerator override (or use "
                                                "hardware=gpu on a machine with a GPU)"], proc.stderr[-2000:]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("eval_device,expected", [("fit", "cuda:0"), ("cpu", "cpu")])
def test_cuda_cognate_evaluates_where_hardware_eval_device_says(tmp_path, eval_device, expected):
    """hardware=gpu: the evaluations after the fit run on the GPU by default (Lightning's teardown had left the model
    on the CPU), on the CPU with hardware.eval_device=cpu; the metrics say where, and the checkpoint loads."""
    tiny = [a for a in TINY if not a.startswith("hardware=")]
    proc = run_cli(["phase=cognate", "model=m1", "hardware=gpu", f"hardware.eval_device={eval_device}", *tiny],
                   tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = tmp_path / "outputs" / "artifacts" / "cognate" / "model1"
    metrics = json.loads((ckpt / "metrics.json").read_text())
    assert (metrics["time/fit_device"], metrics["time/eval_device"]) == ("cuda:0", expected)
    assert math.isfinite(metrics["ablation/trained_val_loss"]) and math.isfinite(metrics["final/val_loss"])
    load_model(ckpt)


def test_compare_with_a_stage_without_results_fails_before_the_run_starts(tmp_path):
    proc = run_cli(["phase=compare", "stages=[nope,alsonope]", "logger=wandb"], tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "nope_results.json: no results for stage 'nope'" in lines[0], proc.stderr[-2000:]
    assert not [p for p in (tmp_path / "outputs").rglob("*") if p.is_file()]   # no run dir, no W&B run
