"""Smoke tests of the benchmarks: each script runs for real (a subprocess, tiny settings) and prints its figures,
parsed here and checked for sanity (present, finite, positive; tokens equal where the script compares them).
The figures themselves are machine-dependent and not asserted."""
from __future__ import annotations

import math
import os
import re
import subprocess
import sys

import pytest
import torch

from agentforge.artifacts import save_model
from agentforge.data.tokenizer import ByteTokenizer
from agentforge.models import CognateConfig, CognateModel
from tests.conftest import REPO

NUM = r"([-+]?\d+(?:\.\d+)?)"


def bench(name: str, *args: str, timeout: int = 120) -> str:
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / name), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def figure(out: str, pattern: str) -> float:
    m = re.search(pattern, out)
    assert m, f"{pattern!r} not in the output:\n{out}"
    value = float(m.group(1))
    assert math.isfinite(value) and value > 0, (pattern, value)
    return value


def test_bench_generation_prints_both_speeds_and_equal_tokens():
    out = bench("bench_generation.py", "--tokens", "6", "--prompt", "8", "--repeats", "2")
    assert "medians of 2 interleaved runs" in out
    for kind in ("cached", "uncached"):
        figure(out, rf"{kind}\s*:\s*{NUM} tokens/s")
    figure(out, rf"ratio cached/uncached tokens/s: {NUM}")
    assert "same tokens: True" in out  # the cache is exact: the script's own check, printed


@pytest.mark.slow  # runs a benchmark script (5-8 s on 2 cores): the fast tier stays under ~10 min
def test_bench_throughput_prints_flops_and_ratios():
    out = bench("bench_throughput.py", "--batch", "2", "--seq", "16", "--steps", "2", "--no-grad-steps", "1",
                "--muon-grokfast")
    assert "medians of 2 interleaved steps" in out
    figure(out, rf"matmul peak \(fp32 1024\^3\): {NUM} TFLOP/s")
    figure(out, rf"ratio Muon-Grokfast \+ clipping / AdamW step time \(same model\): {NUM}")
    for name in ("cognate \\(3 steps\\)", "plain transformer", "cognate, 1 no-grad", "cognate, Muon-Grokfast"):
        figure(out, rf"{name}\s*:\s*{NUM} tokens/s")
    figure(out, rf"ratio cognate/plain achieved FLOP/s: {NUM}")
    flop_ratio = figure(out, rf"FLOP/token ratio {NUM}")
    assert 2 < flop_ratio < 4  # 3 recursion steps against one pass, counted (plus the memory and halting head)
    assert 0 < figure(out, rf"FLOPs per step {NUM}x") < 1  # a no-grad step skips its backward


@pytest.mark.slow  # runs a benchmark script (5-8 s on 2 cores): the fast tier stays under ~10 min
def test_bench_halting_on_a_tiny_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = CognateModel(CognateConfig(d_model=32, n_layers=1, n_heads=2, ffn_hidden=64, window=16, max_steps=3,
                                       max_seq_len=128, ltm_slots=8, ltm_key_dim=8))
    save_model(tmp_path / "ckpt", model, ByteTokenizer())
    # 128-token rows: a held-out row starts at its item (datamodule.pack_documents), and a GSM8K-format item's
    # computed digits come after its ~85-character question, so 64-token rows hold none
    out = bench("bench_halting.py", str(tmp_path / "ckpt"), "--seq", "128", "--rows", "4", "--computation-rows", "8")
    losses = re.search(r"mean loss L_n \(val\): (.*)", out)
    assert losses and len(losses.group(1).split()) == 3  # one loss per step count, 1..max_steps
    assert all(math.isfinite(float(v)) and float(v) > 0 for v in losses.group(1).split())
    for kind in ("all val tokens", "computed digits", "letters"):
        assert re.search(rf"gain L_n - L_\(n\+1\), {kind}\s*\(\d+ tokens\): 1->2: [-+]\d", out), out
    f_halt = figure(out, rf"halting \(row skip, early stop\) {NUM}")
    f_max = figure(out, rf"every token to 3 steps {NUM}")
    assert f_halt <= f_max * 1.0001  # halting never runs more steps than max_steps


@pytest.mark.slow
def test_bench_pipeline_times_two_settings_and_prints_their_ratio(tmp_path):
    """bench_pipeline.py runs the real pipeline (tiny overrides) once per setting in fresh output dirs and prints
    each wall time, the per-step times from pipeline_state.json and the ratio of the two; ``--logs`` keeps each run's
    output."""
    from tests.test_pipeline import ARGS

    extra = [a for a in ARGS if not a.startswith(("phase=", "hardware="))]
    out = subprocess.run([sys.executable, "benchmarks/bench_pipeline.py", "--hardware", "cpu,auto", "--logs",
                          str(tmp_path / "logs"), "--", *extra], cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stderr[-2000:]
    logs = sorted(p.name for p in (tmp_path / "logs").iterdir())
    assert logs == ["pipeline_auto_1.log", "pipeline_cpu_1.log"]
    assert "pipeline " in (tmp_path / "logs" / "pipeline_cpu_1.log").read_text()
    walls = {h: float(x) for h, x in re.findall(r"hardware=(\w+): pipeline wall time ([\d.]+) s", out.stdout)}
    assert set(walls) == {"cpu", "auto"} and all(w > 0 for w in walls.values())
    assert "cognate-m1" in out.stdout and "bitnet" in out.stdout
    ratio = float(re.search(r"hardware=cpu ÷ hardware=auto: ([\d.]+)", out.stdout).group(1))
    assert ratio == pytest.approx(walls["cpu"] / walls["auto"], rel=0.01)
