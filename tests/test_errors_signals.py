"""SIGTERM, an artifacts directory that cannot be written (read-only, full at publish) and wrong-type config values:
each gives one ``error:`` line, a non-zero exit, no traceback and no partial output (no ``*.tmp``, no run dir)."""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import compose_cfg, run_cli, run_in_process

pytestmark = pytest.mark.faults

COGNATE = ["phase=cognate", "model=m3", "experiment=smoke", "phase.val_rows=4", "phase.early_stopping_patience=10"]


def _errors(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("error:")]


def _tmp_left(root: Path) -> list[Path]:
    return [p for p in root.rglob("*.tmp")] if root.exists() else []


def _env(tmp: Path) -> dict:
    env = dict(os.environ, AGENTFORGE_OUTPUTS=str(tmp / "outputs"), WANDB_MODE="offline", OMP_NUM_THREADS="1")
    env.pop("WANDB_API_KEY", None)
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def _default_signals() -> None:
    # as a shell delivers them: a test run started in the background passes SIGINT ignored to its children
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _terminate_at_first_checkpoint(args: list[str], tmp: Path) -> tuple[int, str]:
    """Start ``python -m agentforge ARGS``, send SIGTERM once Cognate's epoch checkpoint exists; (rc, stderr)."""
    proc = subprocess.Popen([sys.executable, "-m", "agentforge", *args], cwd=tmp, env=_env(tmp),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=_default_signals)
    last = tmp / "outputs" / "artifacts" / "cognate" / "model3.work" / "last.ckpt"
    deadline = time.time() + 240
    while not last.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be terminated"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


# -- 1. SIGTERM -----------------------------------------------------------------------------------------------------

def test_sigterm_says_how_to_continue_exits_143_and_the_rerun_resumes(tmp_path, capsys):
    """``timeout`` / SLURM preemption / ``docker stop``: Lightning's SIGTERMException (a bare SystemExit) ended the
    run with exit 0 and nothing said; now one error line saying to run the same command again, exit 143."""
    args = [*COGNATE, "phase.max_epochs=3", "phase.steps_per_epoch=3"]
    rc, err = _terminate_at_first_checkpoint(args, tmp_path)
    assert rc == 143, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    lines = _errors(err)
    assert len(lines) == 1 and lines[0].startswith("error: terminated (SIGTERM): run the same command again to "
                                                   "continue"), err[-2000:]
    art = tmp_path / "outputs" / "artifacts" / "cognate"
    assert not (art / "model3").exists() and not _tmp_left(art)

    # the training time counts the interrupted run's too (an audit: a resumed run reported its own 0.03 s): the
    # checkpoint's count is set to an hour, far above what the rerun takes, and the rerun's total must hold it
    import torch

    ckpt = art / "model3.work" / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["agentforge_fit_seconds"] > 0
    step = state["loops"]["fit_loop"]["epoch_loop.state_dict"]["_batches_that_stepped"]   # the checkpoint's (3 or 6)
    state["agentforge_fit_seconds"] = 3600.0
    assert state["agentforge_numerics"] == {"threads": 1, "device": "cpu"}   # OMP_NUM_THREADS=1 (run_cli)
    state["agentforge_numerics"]["threads"] = 2   # as if written on a machine with another thread count
    torch.save(state, ckpt)
    # the same command again, in this process (main.run; the CLI's rerun after a kill: test_faults.py's SIGKILL test)
    again = run_in_process(args, tmp_path, capsys)
    assert "resuming from" in again.stdout
    assert [ln for ln in again.stdout.splitlines() if ln.startswith("warning: ")] == [
        "warning: resuming with other numerics than the checkpoint was written with (threads 2 then 1): the resumed "
        "run will not be bit-identical to an uninterrupted one"]
    assert (art / "model3" / "config.json").is_file()
    # the line names the run dir that logged the steps before the resume, and which of its rows count: the killed run
    # may have logged steps after its checkpoint, which this run redid (it said only "logged in <dir>")
    first = sorted((tmp_path / "outputs" / "runs").glob("*/*_cognate_*"))[0]
    said = re.search(r"resumed: ([0-9.]+) s of training before this run .* logged in (\S+) \((.*)\)$", again.stdout,
                     re.MULTILINE)
    assert said and float(said.group(1)) == 3600.0 and Path(said.group(2)) == first, again.stdout[-2000:]
    assert said.group(3) == f"its rows before step {step} count; those from step {step} on were redone in this run"
    final = json.loads((art / "model3" / "metrics.json").read_text())
    assert 1.0 < final["final/total_training_time_hours"] < 1.1
    assert "resumed:" not in (first / "agentforge.log").read_text()   # the fresh run printed no such line


@pytest.mark.slow
def test_sigterm_in_a_sweep_records_the_job_and_exits_143(tmp_path):
    rc, err = _terminate_at_first_checkpoint(["-m", *COGNATE, "phase.max_epochs=4", "phase.steps_per_epoch=6"],
                                             tmp_path)
    assert rc == 143 and len(_errors(err)) == 1 and "Traceback" not in err, err[-2000:]
    rows = [json.loads(ln) for f in (tmp_path / "outputs" / "multirun").rglob("sweep_status.jsonl")
            for ln in f.read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["ok"] is False and "SIGTERM" in rows[0]["error"], rows


# -- 2. an artifacts directory that cannot be written ---------------------------------------------------------------

@pytest.fixture
def mounts():
    """``mount(path, options)``: a tmpfs at ``path`` (read-only with ``ro``; tiny with ``size=``), unmounted after the
    test; skips where this machine allows no mounts (not root, a restricted container)."""
    done: list[Path] = []

    def mount(path: Path, options: str) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        if shutil.which("mount") is None or subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                                                           capture_output=True).returncode != 0:
            pytest.skip("this machine cannot mount a tmpfs")
        done.append(path)
        return path

    yield mount
    for path in reversed(done):
        subprocess.run(["umount", str(path)], capture_output=True)


@pytest.fixture
def read_only_dir(tmp_path, mounts):
    """A directory no file can be created in: chmod 0o555 for a normal user; as root (whom permissions do not stop)
    a read-only tmpfs mount."""
    path = tmp_path / "read_only"
    if os.geteuid() != 0:
        path.mkdir()
        path.chmod(0o555)
        yield path
        path.chmod(0o755)
    else:
        yield mounts(path, "ro,size=64k")


@pytest.mark.parametrize("phase", [["phase=cognate", "model=m3"], ["phase=eval", "phase.stage=x"]])
def test_a_read_only_artifacts_dir_is_refused_before_any_work(tmp_path, read_only_dir, cognate_artifacts, phase):
    """A read-only ``paths.artifacts`` ran the whole eval (or training) and then lost its results to an
    ``OSError: [Errno 30]`` traceback; now one line naming the key at start-up, exit 2, no run dir."""
    ckpt = [f"phase.checkpoint={cognate_artifacts / 'cognate' / 'model1'}"] if "phase=eval" in phase else []
    proc = run_cli([*phase, *ckpt, "experiment=smoke", f"paths.artifacts={read_only_dir}"], tmp_path, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = _errors(proc.stderr)
    assert len(lines) == 1 and lines[0].startswith(f"error: paths.artifacts = '{read_only_dir}' is not writable"), lines
    assert not (tmp_path / "outputs" / "runs").exists()


def test_an_artifacts_path_under_a_file_is_refused_before_any_work(tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    proc = run_cli([*COGNATE, f"paths.artifacts={blocker / 'sub'}"], tmp_path, timeout=120)
    lines = _errors(proc.stderr)
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert lines[0].startswith("error: paths.artifacts = ") and "writable directory" in lines[0], lines
    assert blocker.read_text() == "x" and not (tmp_path / "outputs" / "runs").exists()


@pytest.mark.parametrize("where,options,message", [
    # the full disk in the slow tier (~6 s): the publish's removal of its partial copy on ENOSPC is the test below, the
    # CLI's one "no room to write" line and no .tmp left test_faults.py's full-disk test, an eval's failed publish here
    pytest.param("artifacts", "size=256k", "no room to write", marks=pytest.mark.slow),
    ("artifacts/eval", "ro,size=64k", "cannot write")])
def test_a_publish_that_cannot_write_is_one_line_and_leaves_no_tmp(tmp_path, mounts, cognate_artifacts, where,
                                                                   options, message):
    """The eval's fine-tuned model published to a full disk (``shutil.Error``, a truncated ``model.safetensors`` and a
    0-byte ``config.json`` left in ``x.tmp``) or into a read-only directory: one line naming it, exit 2, no .tmp."""
    art = tmp_path / "artifacts"
    mounts(tmp_path / where, options)
    proc = run_cli(["phase=eval", f"phase.checkpoint={cognate_artifacts / 'cognate' / 'model1'}", "phase.stage=x",
                    "phase.finetune_steps=1", "experiment=smoke", f"paths.artifacts={art}"], tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = _errors(proc.stderr)
    assert len(lines) == 1 and lines[0].startswith(f"error: {message} {art / 'eval' / 'x'} ("), lines
    assert not _tmp_left(art) and not (art / "eval" / "x").exists()


def test_publish_removes_its_partial_copy_and_keeps_the_previous_model(tmp_path, monkeypatch):
    """A copy that fails half-way (the disk fills): ``{dst}.tmp`` is removed, the model published before stays,
    and the error is an OSError with its errno and the directory (``shutil.copytree`` raised ``shutil.Error``)."""
    from agentforge.artifacts import publish

    src, dst = tmp_path / "src", tmp_path / "art" / "model3"
    src.mkdir()
    (src / "model.safetensors").write_bytes(b"w" * 1000)
    (src / "config.json").write_text("{}")
    dst.mkdir(parents=True)
    (dst / "config.json").write_text('{"old": true}')

    def full(a, b, **kw):
        Path(b).write_bytes(Path(a).read_bytes()[:10])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(b))

    monkeypatch.setattr(shutil, "copyfile", full)
    with pytest.raises(OSError) as info:
        publish(src, dst)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(dst)
    assert not isinstance(info.value, shutil.Error)
    assert sorted(p.name for p in dst.parent.iterdir()) == ["model3"]
    assert (dst / "config.json").read_text() == '{"old": true}'


# -- 3. wrong-type config values ------------------------------------------------------------------------------------

PIPE = ["phase=pipeline", "phase.run_name=bad"]


WRONG_TYPES = [
    (["phase=cognate", "phase.curriculum=5"], "phase.curriculum must be"),
    (["phase=cognate", "phase.curriculum=[{epochs:1,mix:5}]"], "phase.curriculum[0].mix must be"),
    (["phase=cognate", "phase.curriculum=[{epochs:one,mix:{recall:1}}]"], "phase.curriculum[0].epochs must be"),
    (["phase=cognate", "model.dataset_weights=3"], "model.dataset_weights must be"),
    (["phase=cognate", "ckpt_path=5"], "ckpt_path must be"),
    (["phase=quietstar", "ckpt_path=5"], "ckpt_path must be"),
]


@pytest.mark.parametrize("args,key", WRONG_TYPES)
def test_a_wrong_type_config_value_fails_the_start_up_checks_naming_the_key(tmp_path, args, key):
    """The start-up checks the CLI runs first (``main.check_start``), in-process; the CLI's one line, exit 2 and
    no run dir for such a refusal are checked end to end below (a fast case and the pipeline's overrides)."""
    from agentforge.errors import ConfigError
    from agentforge.main import check_start

    with pytest.raises(ConfigError, match=re.escape(key)):
        check_start(compose_cfg([*args, "logger=none", "hardware=cpu"], tmp_path))


@pytest.mark.parametrize("args,key", [
    WRONG_TYPES[0],
    pytest.param(*WRONG_TYPES[3], marks=pytest.mark.slow),
    ([*PIPE, "phase.overrides.cognate=['phase.curriculum=5']"], "phase.overrides.cognate (pipeline step cognate-m1):"
                                                                " phase.curriculum must be"),
    pytest.param([*PIPE, "phase.overrides.cognate=['model.dataset_weights=3']"],
                 "phase.overrides.cognate (pipeline step cognate-m1): model.dataset_weights must be",
                 marks=pytest.mark.slow),
])
def test_a_wrong_type_config_value_is_one_line_and_no_run_dir(tmp_path, args, key):
    proc = run_cli([*args, "logger=none", "hardware=cpu"], tmp_path, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = _errors(proc.stderr)
    assert len(lines) == 1 and key in lines[0], proc.stderr[-2000:]
    assert not [f for f in (tmp_path / "outputs").rglob("*") if f.is_file()]
    assert not (tmp_path / "outputs" / "runs").exists() and not (tmp_path / "outputs" / "pipeline").exists()


def test_a_sigterm_outside_a_jobs_run_dies_of_the_signal_without_a_traceback(tmp_path):
    """The handler raises only while a job's ``run`` is in progress: a SIGTERM between the jobs of a sweep or at
    exit (a red team hit Hydra composing the next job: exit 1 with a Terminated traceback) kills the process by the
    signal as it would have without the handler, and a forked child dies of it silently too."""
    code = ("import os, signal, time, multiprocessing as mp\n"
            "from omegaconf import OmegaConf\n"
            "import agentforge.main as m\n"
            "m.run = lambda cfg: {}\n"
            "m._run_job(OmegaConf.create({}))\n"
            # the signal goes once the child runs its target, and again each second until it dies: one sent right
            # after fork() can land before CPython's after-fork reset of pending signals, which drops it (seen twice
            # under load, the child then sleeping on)
            "ready = mp.get_context('fork').Event()\n"
            "def nap():\n    ready.set(); time.sleep(90)\n"
            "child = mp.get_context('fork').Process(target=nap)\n"
            "child.start(); ready.wait(30)\n"
            "for _ in range(60):\n"
            "    os.kill(child.pid, signal.SIGTERM); child.join(1)\n"
            "    if child.exitcode is not None: break\n"
            "print('child', child.exitcode, flush=True)\n"
            "os.kill(os.getpid(), signal.SIGTERM)\n"
            "time.sleep(5)\n"
            "print('survived')\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=150,
                          preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))
    assert proc.returncode == -signal.SIGTERM, (proc.returncode, proc.stderr[-2000:])
    assert "child -15" in proc.stdout and "survived" not in proc.stdout
    assert "Traceback" not in proc.stderr and "Terminated" not in proc.stderr, proc.stderr[-2000:]
