"""Provenance (``tracking/provenance.py``): what every run dir's ``provenance.json`` and every checkpoint's
``config.json`` ``meta.provenance`` record, and the resume warning for another thread count or device
(``training/trainer.py``: ``numerics_warning``). All in-process and fast; the real CLI's run dirs and checkpoints
are checked in test_readme_claims_behaviour.py and test_cli.py, the resumed run's warning in test_errors_signals.py."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from agentforge.tracking import provenance

REPO = Path(__file__).resolve().parents[1]
GIT = shutil.which("git")
needs_git = pytest.mark.skipif(GIT is None, reason="git not installed")


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.email=t@example.com", "-c", "user.name=t", *args],
                          capture_output=True, text=True, check=True, timeout=30).stdout


@pytest.fixture
def tiny_repo(tmp_path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "a.py").write_text("x = 1\n")
    _git(repo, "add", "a.py")
    _git(repo, "commit", "-q", "-m", "one")
    return repo


@needs_git
def test_the_source_trees_commit_is_heads():
    """The package's own checkout (this repository, when it is one): its HEAD commit, as ``git rev-parse HEAD``."""
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=30)
    if head.returncode != 0:
        pytest.skip("the tests do not run from a git checkout")
    assert provenance.SOURCE_ROOT == REPO
    state = provenance.git_state()
    assert state["commit"] == head.stdout.strip() and isinstance(state["dirty"], bool)


def test_outside_a_checkout_every_git_field_is_none(tmp_path, monkeypatch):
    assert provenance.git_state(tmp_path) == {"commit": None, "dirty": None, "diff_sha256": None}
    monkeypatch.setenv("PATH", str(tmp_path))   # no git at all: still no error
    assert provenance.git_state(REPO) == {"commit": None, "dirty": None, "diff_sha256": None}


@needs_git
def test_a_folder_inside_a_checkout_is_not_its_top_level(tiny_repo):
    """A package installed in a virtual environment that sits inside another repository: not that repository's."""
    inner = tiny_repo / "venv" / "site-packages"
    inner.mkdir(parents=True)
    assert provenance.git_state(inner)["commit"] is None


@needs_git
def test_the_dirty_flag_flips_when_a_tracked_file_changes(tiny_repo):
    clean = provenance.git_state(tiny_repo)
    assert clean == {"commit": _git(tiny_repo, "rev-parse", "HEAD").strip(), "dirty": False, "diff_sha256": None}
    (tiny_repo / "untracked.txt").write_text("not part of the source")
    assert provenance.git_state(tiny_repo)["dirty"] is False   # untracked files do not count
    (tiny_repo / "a.py").write_text("x = 2\n")
    dirty = provenance.git_state(tiny_repo)
    assert dirty["commit"] == clean["commit"] and dirty["dirty"] is True and len(dirty["diff_sha256"]) == 64
    (tiny_repo / "a.py").write_text("x = 3\n")
    assert provenance.git_state(tiny_repo)["diff_sha256"] != dirty["diff_sha256"]   # which changes, not only whether


def test_only_the_named_environment_variables_are_recorded(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "wandb-secret-value")
    monkeypatch.setenv("HF_TOKEN", "hf-secret-value")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    prov = provenance.collect(argv=["agentforge"])
    assert list(prov["env"]) == list(provenance.ENV_VARS)
    assert prov["env"]["OMP_NUM_THREADS"] == "3" and prov["env"]["MKL_NUM_THREADS"] is None
    text = json.dumps(prov)
    assert "WANDB_API_KEY" not in text and "wandb-secret-value" not in text and "hf-secret-value" not in text


def test_the_command_line_is_redacted_and_the_record_is_json():
    prov = provenance.collect(argv=["agentforge", "phase=cognate", "+logger.api_key=sk-abc123", "hf_token=hf-x"])
    assert prov["argv"] == ["agentforge", "phase=cognate", "+logger.api_key=<redacted>", "hf_token=<redacted>"]
    text = json.dumps(prov)
    assert "sk-abc123" not in text and "hf-x" not in text
    assert prov["torch_threads"] == torch.get_num_threads()
    assert prov["versions"]["torch"] == metadata.version("torch")
    assert {"python", *provenance.PACKAGES} == set(prov["versions"])
    assert prov["cuda"]["available"] == torch.cuda.is_available()
    assert prov["hostname"] and prov["time_utc"].endswith("+00:00")


def test_a_missing_package_is_none():
    assert provenance.package_versions(("surely-not-an-installed-package",))["surely-not-an-installed-package"] is None


def test_the_final_thread_count_replaces_the_first_only_when_it_changed():
    threads = torch.get_num_threads()
    prov = {"torch_threads": threads}
    assert provenance.with_final_threads(prov) is None
    try:
        torch.set_num_threads(threads + 1)
        assert provenance.with_final_threads(prov) == {"torch_threads": threads + 1, "torch_threads_at_start": threads}
    finally:
        torch.set_num_threads(threads)


# -- where it is written ------------------------------------------------------------------------------------------

def test_run_context_writes_provenance_json_and_gives_it_to_wandb(tmp_path, monkeypatch):
    """Every run dir: ``provenance.json`` beside the config files, all of them the bookkeeping that error clean-up
    (``main.BOOKKEEPING``) and the pipeline's untouched-dir check (``rundirs.BOOKKEEPING``) treat as no work; the W&B
    config gets it under one key; a thread count the phase set during the run is the one recorded at the end."""
    from agentforge import main
    from agentforge.phases import context
    from agentforge.pipeline import rundirs
    from tests.conftest import compose_cfg

    seen = {}

    def fake_loggers(logger_cfg, run_dir, name, group, tags, config):
        seen["config"] = config
        return []

    monkeypatch.setattr(context, "build_loggers", fake_loggers)
    monkeypatch.setattr(context, "finish", lambda loggers, status: None)
    cfg = compose_cfg(["phase=cognate", "logger=none", "+logger.api_key=sk-zzz"], tmp_path)
    threads = torch.get_num_threads()
    try:
        with context.run_context(cfg, run_name="r", group=None, tags=[]) as ctx:
            files = {p.name for p in ctx.run_dir.iterdir()}
            first = json.loads((ctx.run_dir / "provenance.json").read_text())
            torch.set_num_threads(threads + 1)     # what build_trainer does with hardware.threads
    finally:
        torch.set_num_threads(threads)
    assert files == {"config_resolved.yaml", "overrides.yaml", "provenance.json"}
    assert files <= main.BOOKKEEPING and files <= rundirs.BOOKKEEPING
    assert first["torch_threads"] == threads and first["git"] == provenance.git_state()
    assert first["status"] == "running" and seen["config"]["provenance"] == {k: v for k, v in first.items()
                                                                             if k != "status"}
    last = json.loads((ctx.run_dir / "provenance.json").read_text())
    assert last["torch_threads"] == threads + 1 and last["torch_threads_at_start"] == threads
    assert last["status"] == "finished" and last["ended_utc"] >= first["time_utc"]
    with pytest.raises(RuntimeError), context.run_context(cfg, run_name="r", group=None, tags=[]) as ctx:
        raise RuntimeError("the phase failed")
    assert json.loads((ctx.run_dir / "provenance.json").read_text())["status"] == "failed"
    assert "sk-zzz" not in (ctx.run_dir / "provenance.json").read_text()


def test_every_checkpoint_config_records_the_code_and_threads(tmp_path):
    from agentforge.io import read_checkpoint_config, save_checkpoint

    save_checkpoint(tmp_path / "ck", {"w": torch.zeros(2)}, architecture="x", model_config={}, meta={"phase": "p"})
    meta = read_checkpoint_config(tmp_path / "ck")["meta"]
    assert meta["phase"] == "p"
    assert meta["provenance"] == {**provenance.git_state(), "torch": torch.__version__,
                                  "torch_threads": torch.get_num_threads()}


# -- the resume warning -------------------------------------------------------------------------------------------

def test_numerics_warning_names_what_differs_and_is_silent_otherwise():
    from agentforge.training.trainer import numerics_warning

    now = {"threads": 1, "device": "cpu"}
    assert numerics_warning(now, dict(now)) is None
    assert numerics_warning(None, now) is None          # a checkpoint from before they were stored: unknown
    w = numerics_warning({"threads": 2, "device": "cpu"}, now)
    assert w == ("warning: resuming with other numerics than the checkpoint was written with (threads 2 then 1): "
                 "the resumed run will not be bit-identical to an uninterrupted one")
    w = numerics_warning({"threads": 2, "device": "NVIDIA H200"}, now)
    assert w.startswith("warning: ") and "(threads 2 then 1, device NVIDIA H200 then cpu)" in w


def test_the_epoch_checkpoint_stores_the_numerics_and_warns_on_a_resume_with_others(tmp_path, capsys):
    """The callback Cognate and each Quiet-STaR step train with (``TimedEpochCheckpoint``): the thread count and
    device go into every checkpoint it writes; resuming one with others prints one ``warning:`` line (rank 0)."""
    import inspect

    from agentforge.phases import cognate, quietstar_fit
    from agentforge.training.part_callbacks import TimedEpochCheckpoint
    from agentforge.training.trainer import FINGERPRINT_KEY, NUMERICS_KEY

    for phase in (cognate.run, quietstar_fit.fit_step):
        assert "TimedEpochCheckpoint(" in inspect.getsource(phase)
    cb = TimedEpochCheckpoint(tmp_path / "last.ckpt", "fp", None)
    trainer, module = SimpleNamespace(is_global_zero=True), SimpleNamespace(device=torch.device("cpu"))
    ckpt: dict = {}
    cb.on_save_checkpoint(trainer, module, ckpt)
    assert ckpt == {FINGERPRINT_KEY: "fp", NUMERICS_KEY: {"threads": torch.get_num_threads(), "device": "cpu"}}
    cb.on_load_checkpoint(trainer, module, ckpt)
    assert capsys.readouterr().out == ""
    ckpt[NUMERICS_KEY]["threads"] += 1
    cb.on_load_checkpoint(trainer, module, ckpt)
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith("warning: ") and "bit-identical" in out[0]
    cb.on_load_checkpoint(SimpleNamespace(is_global_zero=False), module, ckpt)   # other DDP ranks: silent
    assert capsys.readouterr().out == ""


@needs_git
def test_a_repo_without_commits_or_a_git_too_slow_gives_none(tmp_path, tiny_repo, monkeypatch):
    """A checkout with no commit yet (rev-parse HEAD fails) and a git past its timeout are None, never an error."""
    empty = tmp_path / "empty"
    empty.mkdir()
    _git(empty, "init", "-q")
    none = {"commit": None, "dirty": None, "diff_sha256": None}
    assert provenance.git_state(empty) == none
    monkeypatch.setattr(provenance, "GIT_TIMEOUT_S", 1e-6)
    assert provenance.git_state(tiny_repo) == none


def test_cuda_devices_are_counted_without_starting_cuda(monkeypatch):
    """Lightning's fork-safe count; a device's name is asked only when CUDA was already started (asking starts it,
    and a forked DDP rank cannot use CUDA its parent started)."""
    import lightning.fabric.accelerators.cuda as lcuda

    def no_name(i):
        raise AssertionError("would start CUDA")

    monkeypatch.setattr(lcuda, "num_cuda_devices", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", no_name)
    assert provenance.cuda_info() == {"available": True, "device_count": 2, "devices": []}
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: f"gpu{i}")
    assert provenance.cuda_info()["devices"] == ["gpu0", "gpu1"]


def test_the_weights_digest_covers_the_whole_file(tmp_path):
    """Two 2 MiB weight files that differ only in their last byte are two models (EvoMerge's distinct-model count
    and elites rest on it); a directory without weights has no digest; the source path is recorded absolute."""
    from agentforge.io import WEIGHTS_FILE, source_fields, weights_sha256

    for name, last in (("a", b"\0"), ("b", b"\1")):
        (tmp_path / name).mkdir()
        (tmp_path / name / WEIGHTS_FILE).write_bytes(bytes(2 * 2**20 - 1) + last)
    assert weights_sha256(tmp_path / "a") != weights_sha256(tmp_path / "b")
    assert len(weights_sha256(tmp_path / "a")) == 16 and weights_sha256(tmp_path) is None
    monkeypatch_cwd = Path.cwd()
    try:
        os.chdir(tmp_path)
        assert source_fields("a")["source_checkpoint"] == str(tmp_path / "a")
    finally:
        os.chdir(monkeypatch_cwd)


def test_hardware_threads_is_applied_before_any_phase_builds_a_model(tmp_path, monkeypatch):
    """A reproducibility audit: hardware.threads reached torch only when a Trainer was built, after the model's init
    (the memory's orthogonal init is a QR whose numbers depend on the thread count), and never in phase=eval /
    bitnet without a fit. main.run now sets it first; unset, the process's starting count."""
    from types import SimpleNamespace

    from agentforge import main
    from agentforge.training.trainer import STARTUP_THREADS
    from tests.conftest import compose_cfg

    seen = []
    monkeypatch.setattr(main, "get_phase", lambda name: SimpleNamespace(run=lambda cfg: seen.append(
        torch.get_num_threads()) or {}))
    was = torch.get_num_threads()
    try:
        torch.set_num_threads(3)   # what an earlier job of a multirun, or a machine's cores, left
        main.run(compose_cfg(["phase=eval", "hardware=cpu", "hardware.threads=2"], tmp_path))
        main.run(compose_cfg(["phase=eval", "hardware=cpu"], tmp_path))
    finally:
        torch.set_num_threads(was)
    assert seen == [2, STARTUP_THREADS]
