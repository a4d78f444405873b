"""phase=codegen through the real CLI on a tiny budget (a few steps, 2 problems, n=2), and its bad inputs."""
from __future__ import annotations

import csv
import json
import math
import subprocess
import sys

import pytest

from agentforge.errors import ConfigError
from tests.conftest import REPO, compose_cfg, run_cli
from tests.test_codegen import MODE

TINY_CODEGEN = ["phase=codegen", "data=python_code", "logger=wandb", "hardware=cpu", f"phase.sandbox={MODE}",
                "phase.num_problems=2", "phase.n_samples=2", "phase.pass_k=[1,2]", "phase.max_epochs=1",
                "phase.steps_per_epoch=2", "phase.val_rows=2", "data.seq_len=32", "data.batch_size=2",
                "phase.max_new_tokens=6", "phase.latency_tokens=4", "phase.context_tokens=48", "data.max_files=40",
                "phase.n_resamples=200"]


def test_codegen_cli_tiny_end_to_end(tmp_path):
    proc = run_cli(TINY_CODEGEN, tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = list((tmp_path / "outputs" / "runs").glob("*/*_codegen_*"))
    assert len(runs) == 1
    out = runs[0] / "codegen"
    stats = json.loads((out / "stats.json").read_text())
    assert stats["candidate"] == "cognate" and stats["baseline"] == "gpt2_scratch"
    assert "trained from scratch" in stats["baseline_description"]
    assert stats["optimizers"] == {"cognate": "muon_grokfast", "gpt2_scratch": "adamw"}
    assert stats["train_rows"] == {n: {"seq_len": 48, "batch_size": 1} for n in ("cognate", "gpt2_scratch")}
    assert set(stats["budget_ceiling_pass_at_1"]) == {"cognate", "gpt2_scratch"}
    assert stats["train_run_failures"] == 0 and stats["train_run_failures_by_model"] == {"cognate": 0, "gpt2_scratch": 0}
    assert "warning: cognate: 2 of 2 prompts (100%) outgrow the context (48 tokens" in proc.stdout
    for k in ("pass_at_1", "pass_at_2"):
        assert {"cognate", "gpt2_scratch", "delta", "ci95", "p_value", "n"} <= set(stats[k]) and stats[k]["n"] == 2
    assert stats["verdict"] in ("SUCCESS", "PARTIAL", "FAILURE", "INCONCLUSIVE") and stats["reasons"]
    for name in ("cognate", "gpt2_scratch"):
        res = json.loads((out / f"{name}_results.json").read_text())
        assert [p["task_id"] for p in res["problems"]] == ["HumanEval/0", "HumanEval/1"]
        assert all(p["num_samples"] == 2 and p["passed"] + p["failed"] + p["timeout"] + p["error"] == 2
                   for p in res["problems"])
        assert res["kpis"]["param_count"] > 0 and res["kpis"]["latency_tokens"] == 4
        assert res["training"]["steps"] == 2 and res["kpis"]["peak_memory_mb"] > 0
        # each model trained in a process of its own: its peak is that process's high-water mark, comparable
        assert res["training"]["isolated"] and res["kpis"]["memory_shared_process"] is False
        assert res["kpis"]["peak_memory_mb"] == res["training"]["peak_train_ram_mb"] >= res["training"]["rss_before_train_mb"]
    memory = next(c for c in stats["efficiency"] if c["threshold"] == "max_memory_ratio")
    assert memory["ok"] is not None and "note" not in memory   # decided, not "not comparable"
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 8 and {s["outcome"] for s in samples} <= {"passed", "failed", "timeout", "error"}
    corpus = json.loads((out / "corpus.json").read_text())
    assert corpus["files_found"] == 40 and corpus["signatures_checked"] > 100
    report = (out / "report.md").read_text()
    assert "canonical solutions pass@1 = 1.000 on 2 problems" in report and "Verdict" in report
    assert "cognate `muon_grokfast`, gpt2_scratch `adamw`" in report and "Budget ceiling" in report
    assert "Characters per completion" in report and "1 x 48 tokens" in report and "peak train RAM MB" in report
    assert "a true peak, comparable between the models" in report
    assert (out / "plots" / "pass_at_k.png").is_file() and (out / "plots" / "training_loss.png").is_file()
    assert (runs[0] / "tables" / "dashboard__stat_summary.csv").is_file()
    _dashboard_train_loss_is_cross_entropy(runs[0])
    offline = list(runs[0].glob("wandb/offline-run-*"))
    assert offline, "the W&B run was written"
    from agentforge.tracking.wandb_offline import read_offline_run
    tags = read_offline_run(offline[0]).tags   # the verdict labels the run (section 6); p of 2 problems is >= 0.05
    assert tags[:3] == ["codegen", "humaneval", "gpt2_scratch"] and stats["verdict"] in tags and "INCONCLUSIVE" in tags
    assert (tmp_path / "outputs" / "artifacts" / "codegen" / "cognate" / "model.safetensors").is_file()
    gate = [sys.executable, str(REPO / "scripts" / "kpi_gate.py"), str(out / "stats.json")]
    ok = subprocess.run(gate + ["--require", "pass_at_1.n>=2", "--require", "n_problems==2"], capture_output=True,
                        text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    failed = subprocess.run(gate + ["--require", "verdict_score>=2"], capture_output=True, text=True)
    assert failed.returncode == 1 and "FAIL" in failed.stdout  # a tiny model is no SUCCESS: the gate says so


def _dashboard_train_loss_is_cross_entropy(run_dir):
    """The dashboard's training-loss panel compares like with like: each model's train/loss is its next-token
    cross-entropy (log of its train/perplexity), not Cognate's optimized objective (train/objective, larger)."""
    with (run_dir / "tables" / "dashboard__train_loss_data.csv").open() as f:
        table = list(csv.DictReader(f))
    assert table and {"cognate", "gpt2_scratch"} <= set(table[0])
    for name in ("cognate", "gpt2_scratch"):
        rows = [json.loads(x) for x in next(run_dir.rglob(f"train_{name}/metrics.jsonl")).read_text().splitlines()]
        steps = {r["_step"]: r for r in rows if "train/loss" in r}
        for row in table:
            r = steps[int(float(row["step"]))]
            assert float(row[name]) == pytest.approx(r["train/loss"], rel=1e-6)
            assert abs(math.log(r["train/perplexity"]) - r["train/loss"]) < 1e-3
            assert r["train/objective"] > r["train/loss"] if name == "cognate" else r["train/objective"] == r["train/loss"]


# ~5 s through the real CLI: in the slow tier; its refusals in process: the test below; the CLI's one error line for
# a codegen setting: test_codegen_bad_setting_is_one_error_line_naming_the_key
@pytest.mark.slow
def test_codegen_bad_inputs_give_one_error_line(tmp_path):
    proc = run_cli(["phase=codegen", "logger=none"], tmp_path, timeout=120)
    assert proc.returncode != 0 and "error:" in proc.stderr and "data=python_code" in proc.stderr
    # the other bad inputs in-process (a CLI run costs ~7 s; the CLI turns these errors into the line above)
    from agentforge.data.formats import DatasetError
    from agentforge.main import run

    with pytest.raises(DatasetError, match="missing.jsonl"):
        run(compose_cfg(["phase=codegen", "data=python_code", "logger=none", "phase.benchmark=mbpp",
                         f"phase.benchmark_path={tmp_path / 'missing.jsonl'}", f"phase.sandbox={MODE}"], tmp_path))
    with pytest.raises(ConfigError, match="phase.top_p"):
        run(compose_cfg(["phase=codegen", "data=python_code", "logger=none", "phase.top_p=0"], tmp_path))


def test_codegen_bad_inputs_are_refused_in_process(tmp_path):
    """The test above's refusals through ``main.run`` in this process: data other than python_code, a benchmark file
    that is not there, a bad phase.top_p."""
    from agentforge.data.formats import DatasetError
    from agentforge.main import run

    with pytest.raises(ConfigError, match="use data=python_code"):
        run(compose_cfg(["phase=codegen", "logger=none"], tmp_path))
    with pytest.raises(DatasetError, match="missing.jsonl"):
        run(compose_cfg(["phase=codegen", "data=python_code", "logger=none", "phase.benchmark=mbpp",
                         f"phase.benchmark_path={tmp_path / 'missing.jsonl'}", f"phase.sandbox={MODE}"], tmp_path))
    with pytest.raises(ConfigError, match="phase.top_p"):
        run(compose_cfg(["phase=codegen", "data=python_code", "logger=none", "phase.top_p=0"], tmp_path))


@pytest.mark.parametrize("override,key", [("phase.checkpoint=no_such_dir", "phase.checkpoint")])
def test_codegen_bad_setting_is_one_error_line_naming_the_key(tmp_path, override, key):
    """Through the real CLI (one key: each run costs ~9 s; the other keys' rules are checked by hand below)."""
    proc = run_cli(["phase=codegen", "data=python_code", "logger=none", f"phase.sandbox={MODE}", override], tmp_path,
                   timeout=120)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode != 0 and len(errors) == 1 and key in errors[0], proc.stderr[-2000:]
    assert not list((tmp_path / "outputs" / "runs").glob("*/*"))  # refused before a run dir is kept


def test_codegen_rules_by_hand(tmp_path):
    from agentforge.config import validate
    from agentforge.phases.codegen import RULES

    def error(*overrides):
        try:
            validate(compose_cfg(["phase=codegen", "data=python_code", *overrides], tmp_path), RULES)
        except ConfigError as exc:
            return str(exc)
    assert error() is None and error("phase.gradient_clip=0", "phase.pass_k=[10]") is None
    assert error(f"phase.checkpoint={tmp_path}") is None  # an existing directory passes; load_model checks its files
    assert error("phase.pass_k=[]").startswith("phase.pass_k must be a non-empty list of integers >= 1")
    assert error("phase.pass_k=[1,0]").startswith("phase.pass_k must be")
    assert error("phase.gradient_clip=-1").startswith("phase.gradient_clip must be a number >= 0")
    assert error("phase.pass_k=1").startswith("phase.pass_k must be")
    assert error("phase.pass_k=[1.5]").startswith("phase.pass_k must be")
    assert error("phase.gradient_clip=null").startswith("phase.gradient_clip must be a number >= 0")
    assert error("phase.checkpoint=5").startswith("phase.checkpoint must be null or an existing")
