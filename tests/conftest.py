"""Shared fixtures: the real composed config with tmp paths, the real CLI in a subprocess, and tiny
Cognate checkpoints (trained once per session through the real CLI) for the later phases' tests."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict

from agentforge.main import CONF_DIR

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
GSM8K_TEST = SHARED / "data" / "gsm8k" / "test.jsonl"

# Settings that make any training run take seconds on a 2-core CPU.
TINY = ["logger=none", "hardware=cpu", "phase.max_epochs=2", "phase.steps_per_epoch=3", "phase.val_rows=4",
        "phase.eval_examples=2", "phase.gen_tokens=4", "data.batch_size=4", "data.seq_len=32"]

torch.set_num_threads(1)


def compose_cfg(overrides: list[str], tmp_path: Path):
    """The real config, composed as the CLI would, with every path under tmp_path."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose(config_name="config", overrides=overrides)
    finally:
        GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.paths.outputs = str(tmp_path / "outputs")
        cfg.paths.artifacts = str(tmp_path / "outputs" / "artifacts")
        cfg.paths.run_dir = str(tmp_path / "run")
    return cfg


def run_cli(args: list[str], tmp_path: Path, timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m agentforge ARGS`` with outputs under tmp_path/outputs and W&B offline."""
    full_env = dict(os.environ, AGENTFORGE_OUTPUTS=str(tmp_path / "outputs"), WANDB_MODE="offline",
                    WANDB_SILENT="true", OMP_NUM_THREADS="1")
    full_env.pop("WANDB_API_KEY", None)
    full_env.pop("HYDRA_FULL_ERROR", None)
    full_env.update(env or {})
    Path(tmp_path).mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, "-m", "agentforge", *args], cwd=tmp_path, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def run_in_process(overrides: list[str], tmp_path: Path, capsys, artifacts: Path | None = None) -> SimpleNamespace:
    """What ``python -m agentforge OVERRIDES`` runs, in this process: ``main.run`` (the start-up checks, then the
    phase) on the composed config (``compose_cfg``; ``paths.artifacts`` = ``artifacts`` when given), with no
    interpreter or Lightning import to pay for; an error raises instead of exiting. Returns the phase's ``result``
    and what it printed (``stdout``, ``stderr``). Each phase keeps real-CLI runs of its own; this is for the
    further runs a test makes."""
    from agentforge.main import run

    cfg = compose_cfg(overrides, tmp_path)
    if artifacts is not None:
        with open_dict(cfg):
            cfg.paths.artifacts = str(artifacts)
    capsys.readouterr()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # as run_cli's OMP_NUM_THREADS=1, whatever an earlier test left
    try:
        result = run(cfg)
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr()
    return SimpleNamespace(result=result, stdout=printed.out, stderr=printed.err)


@pytest.fixture(scope="session")
def cognate_artifacts(tmp_path_factory) -> Path:
    """Three tiny Cognate checkpoints trained by the real CLI; returns the artifacts dir."""
    root = tmp_path_factory.mktemp("cognate")
    proc = run_cli(["-m", "phase=cognate", "model=m1,m2,m3", *TINY], root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    art = root / "outputs" / "artifacts"
    for i in (1, 2, 3):
        assert (art / "cognate" / f"model{i}" / "config.json").is_file()
    return art


@pytest.fixture(scope="session")
def openevolve_outputs(tmp_path_factory) -> Path:
    """The AGENTFORGE_OUTPUTS of the tests that score the shipped ``matrix_mixer`` through openevolve/evaluator.py
    with test_scaling.TINY_CLI: the first of them to run trains it in the sandbox (a cache miss, ~7 s), the
    others get the same settings' cached entry."""
    return tmp_path_factory.mktemp("openevolve_outputs")


def autograd_nodes(t: torch.Tensor) -> list:
    """Every autograd node of the graph that produced ``t`` (each once)."""
    seen, todo = {}, [t.grad_fn]
    while todo:
        fn = todo.pop()
        if fn is not None and fn not in seen:
            seen[fn] = None
            todo.extend(nxt for nxt, _ in fn.next_functions)
    return list(seen)
