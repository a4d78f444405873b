"""Resume guard (``training/resume.py``): a re-run resumes only a checkpoint that its own config wrote — the
fingerprint travels inside the checkpoint, not in a file a later run rewrites first — and a checkpoint whose
weights do not fit the model is one ``error:`` line and exit 2 (named by ``ckpt_path``) or a fresh start with a
one-line notice (found by the tool itself), never a traceback. Run with ``make test-faults``."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from agentforge.io import load_tensors
from agentforge.training.resume import resume_path, start_work_dir
from agentforge.training.trainer import FINGERPRINT_KEY
from tests.conftest import compose_cfg, run_cli, run_in_process

pytestmark = pytest.mark.faults

BASE = ["phase=cognate", "model=m3", "hardware=cpu", "logger=none", "phase.val_rows=4", "phase.eval_examples=2",
        "phase.gen_tokens=4", "data.batch_size=4", "data.seq_len=32", "phase.early_stopping_patience=10"]
TINY = [*BASE, "phase.max_epochs=2", "phase.steps_per_epoch=3"]
WORK = Path("outputs/artifacts/cognate/model3.work")


@pytest.fixture(scope="module")
def m3_ckpt(tmp_path_factory) -> Path:
    """A real m3 training checkpoint (Lightning's full state, fingerprint inside) from the real CLI: a NaN injected
    at step 4 stops the run in epoch 2 and keeps epoch 1's ``last.ckpt`` (global step 3)."""
    root = tmp_path_factory.mktemp("m3_ckpt")
    proc = run_cli([*TINY, "phase.inject_nan_at_step=4"], root)
    assert proc.returncode == 2 and "non-finite value at step 4" in proc.stderr, proc.stderr[-2000:]
    last = root / WORK / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 3
    return last


def _variant(src: Path, dst: Path, *, fp: str | None = None, rename: bool = False) -> Path:
    """A copy of the checkpoint ``src`` with its fingerprint set to ``fp`` and/or its first state-dict key renamed
    (what a code change that renames a module does)."""
    ckpt = torch.load(src, weights_only=True)
    if fp is not None:
        ckpt[FINGERPRINT_KEY] = fp
    if rename:
        sd = ckpt["state_dict"]
        first = next(iter(sd))
        ckpt["state_dict"] = {(k + "_renamed" if k == first else k): v for k, v in sd.items()}
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, dst)
    return dst


def _error_lines(proc) -> list[str]:
    return [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]


# -- the decision itself (in-process, fast) -----------------------------------------------------------------------

def test_the_checkpoint_carries_its_configs_fingerprint_and_decides_the_auto_resume(m3_ckpt, tmp_path, capsys):
    """The red-team state: the work dir's fingerprint file already names the NEW config (a later run wrote it and
    was killed before its first epoch checkpoint), while last.ckpt is still the OLD config's. The file's own
    fingerprint decides: not resumed, said in one line; starting fresh removes it before the new fingerprint."""
    stored = torch.load(m3_ckpt, weights_only=True)
    fp_old = stored[FINGERPRINT_KEY]
    assert fp_old == (m3_ckpt.parent / "fingerprint").read_text().strip()  # EpochCheckpoint wrote the run's own
    expected = stored["state_dict"]
    work = tmp_path / "work"
    last = work / "last.ckpt"
    work.mkdir()
    shutil.copy(m3_ckpt, last)
    (work / "fingerprint").write_text("0123456789abcdef")  # the new config's, written first
    assert resume_path(None, work, "0123456789abcdef", expected=expected) is None
    assert capsys.readouterr().out.strip() == (f"not resuming: {last} was written by a different configuration; "
                                               f"starting fresh")
    assert resume_path("auto", work, fp_old, expected=expected) == str(last)  # its own config: resumed
    start_work_dir(work, "0123456789abcdef", None)
    assert not last.exists() and (work / "fingerprint").read_text() == "0123456789abcdef"
    assert resume_path(None, work, "0123456789abcdef", expected=expected) is None


def test_asked_for_by_name_another_configs_checkpoint_resumes_with_a_note(m3_ckpt, tmp_path, capsys):
    work = tmp_path / "work"
    shutil.copy(m3_ckpt, tmp_path / "a.ckpt")
    work.mkdir()
    shutil.copy(m3_ckpt, work / "last.ckpt")
    expected = torch.load(m3_ckpt, weights_only=True)["state_dict"]
    assert resume_path("last", work, "another", expected=expected) == str(work / "last.ckpt")
    assert resume_path(str(tmp_path / "a.ckpt"), work, "another", expected=expected) == str(tmp_path / "a.ckpt")
    notes = capsys.readouterr().out.splitlines()
    assert len(notes) == 2 and all("was written by a different configuration; resuming from it as ckpt_path asks"
                                   in n for n in notes)
    start_work_dir(work, "another", str(work / "last.ckpt"))  # resuming: the checkpoint stays
    assert (work / "last.ckpt").is_file()


def test_auto_resume_skips_a_checkpoint_whose_weights_no_longer_fit(m3_ckpt, tmp_path, capsys):
    work = tmp_path / "work"
    fp = torch.load(m3_ckpt, weights_only=True)[FINGERPRINT_KEY]
    expected = torch.load(m3_ckpt, weights_only=True)["state_dict"]
    last = _variant(m3_ckpt, work / "last.ckpt", rename=True)
    assert resume_path(None, work, fp, expected=expected) is None
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"not resuming: {last} does not fit this model: its weights are named differently")
    assert out.endswith("; starting fresh") and "\n" not in out
    last.write_bytes(b"truncated")
    assert resume_path(None, work, fp, expected=expected) is None
    assert capsys.readouterr().out.startswith(f"not resuming: {last} ")


# -- defect 2 through the real CLI: a checkpoint that does not fit is one error line --------------------------------

@pytest.mark.parametrize("kind,message", [
    ("other_size", "does not fit this model: "),           # an m3 tiny checkpoint into size=small: other shapes
    ("not_lightning", "is not a training checkpoint this tool saved"),   # torch.save({'x': [1, 2]})
    ("renamed_key", "does not fit this model: its weights are named differently"),   # ckpt_path=last
])
def test_a_resume_checkpoint_that_does_not_fit_is_one_error_line_and_exit_2(m3_ckpt, tmp_path, kind, message):
    if kind == "other_size":
        bad, args = m3_ckpt, [*TINY, "experiment=smoke", "size=small", f"ckpt_path={m3_ckpt}"]
    elif kind == "not_lightning":
        bad = tmp_path / "x.ckpt"
        torch.save({"x": [1, 2]}, bad)
        args = [*TINY, f"ckpt_path={bad}"]
    else:
        bad = _variant(m3_ckpt, tmp_path / WORK / "last.ckpt", rename=True)
        args = [*TINY, "ckpt_path=last"]
    proc = run_cli(args, tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = _error_lines(proc)
    assert len(lines) == 1, proc.stderr[-3000:]
    assert str(bad) in lines[0] and message in lines[0] and "ckpt_path=fresh" in lines[0], lines[0]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "resuming from" not in proc.stdout
    if kind == "other_size":
        assert "shapes" in lines[0]


@pytest.mark.parametrize("renamed", [pytest.param(False, marks=pytest.mark.slow), True], ids=["fits", "renamed_key"])
def test_auto_resume_of_a_checkpoint_that_no_longer_fits_starts_fresh(m3_ckpt, tmp_path, renamed, capsys):
    """The AUTO path (a last.ckpt the tool found itself, of this very config): resumed when its weights fit; with one
    state-dict key renamed (a code change) the run says so in one line and starts fresh, exit 0, no traceback.
    The run is ``main.run`` in this process (a run that returns is the CLI's exit 0; the CLI's own auto-resume:
    test_faults.py's SIGKILL test)."""
    fp = _fingerprint(TINY, tmp_path)
    last = _variant(m3_ckpt, tmp_path / WORK / "last.ckpt", fp=fp, rename=renamed)
    proc = run_in_process(TINY, tmp_path, capsys)
    assert "Traceback" not in proc.stderr
    if renamed:
        notice = [ln for ln in proc.stdout.splitlines() if ln.startswith("not resuming:")]
        assert len(notice) == 1 and f"{last} does not fit this model" in notice[0], proc.stdout[-3000:]
        assert "resuming from" not in proc.stdout
    else:
        assert f"resuming from {last}" in proc.stdout and "not resuming" not in proc.stdout
    assert (tmp_path / "outputs/artifacts/cognate/model3/model.safetensors").is_file()


def _fingerprint(args: list[str], tmp_path: Path) -> str:
    from agentforge.phases.cognate import fingerprint

    return fingerprint(compose_cfg(args, tmp_path / "compose"))


@pytest.mark.slow  # two Quiet-STaR runs: about 40 s on a 2-core CPU
def test_quietstar_refuses_a_cognate_checkpoint_and_skips_another_configs_leftover(m3_ckpt, tmp_path):
    """Quiet-STaR shares the guard (``quietstar_fit.fit_step``): a Cognate training checkpoint named for the baking
    step is one error line; the same file left in ``baked.work`` (another config's) is not resumed."""
    from agentforge.artifacts import save_model
    from agentforge.data.tokenizer import ByteTokenizer
    from agentforge.models import CognateConfig, CognateModel
    from tests.test_quietstar import QS_TINY

    torch.manual_seed(0)
    src = tmp_path / "input"
    save_model(src, CognateModel(CognateConfig(vocab_size=272, d_model=32, n_layers=1, n_heads=2, ffn_hidden=64,
                                               window=64, max_steps=2, ltm_slots=8, ltm_key_dim=8)), ByteTokenizer())
    args = ["phase=quietstar", "step=baking", f"phase.input={src}", *QS_TINY, "phase.baking.control=none"]
    proc = run_cli([*args, f"ckpt_path={m3_ckpt}"], tmp_path / "named")
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = _error_lines(proc)
    assert len(lines) == 1 and "does not fit this model" in lines[0] and "Traceback" not in proc.stderr, proc.stderr
    left = shutil.copy(m3_ckpt, _mk(tmp_path / "auto/outputs/artifacts/quietstar/baked.work") / "last.ckpt")
    proc = run_cli(args, tmp_path / "auto")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"not resuming: {left} was written by a different configuration" in proc.stdout
    assert "resuming from" not in proc.stdout


def _mk(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


# -- defect 1 end to end: two kills, then the second config's rerun -------------------------------------------------

def _kill_when(args: list[str], cwd: Path, ready, log: Path, deadline_s: float = 240) -> None:
    """Run the CLI in ``cwd`` (stdout unbuffered into ``log``) and SIGKILL it as soon as ``ready()``."""
    env = dict(os.environ, AGENTFORGE_OUTPUTS=str(cwd / "outputs"), WANDB_MODE="offline", OMP_NUM_THREADS="1",
               PYTHONUNBUFFERED="1")
    env.pop("WANDB_API_KEY", None)
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "agentforge", *args], cwd=cwd, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
        deadline = time.time() + deadline_s
        while not ready() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it could be killed: {log.read_text()[-2000:]}"


@pytest.mark.slow  # four CLI runs: about a minute on a 2-core CPU
def test_a_rerun_never_resumes_another_configs_checkpoint_after_two_kills(tmp_path):
    a = [*BASE, "phase.max_epochs=2", "phase.steps_per_epoch=20"]
    b = [*a, "optimizer.lr=0.0001"]
    ref = run_cli(b, tmp_path / "ref")   # B uninterrupted
    assert ref.returncode == 0, ref.stderr[-3000:]

    run = _mk(tmp_path / "killed")
    last, marker = run / WORK / "last.ckpt", run / WORK / "fingerprint"
    _kill_when(a, run, last.is_file, tmp_path / "a.log")                  # (i) A, after its first epoch checkpoint
    fp_a = marker.read_text().strip()
    assert torch.load(last, weights_only=True)[FINGERPRINT_KEY] == fp_a

    def b_started() -> bool:
        try:
            return marker.read_text().strip() not in ("", fp_a)
        except FileNotFoundError:
            return False

    _kill_when(b, run, b_started, tmp_path / "b.log")                      # (ii) B, killed in its first epoch
    log = (tmp_path / "b.log").read_text()
    assert f"not resuming: {last} was written by a different configuration" in log, log[-2000:]
    assert not last.exists(), "the stale checkpoint must be gone before the new fingerprint is written"

    again = run_cli(b, run)                                               # (iii) B again
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from" not in again.stdout, again.stdout[-3000:]
    want = load_tensors(tmp_path / "ref/outputs/artifacts/cognate/model3/model.safetensors")
    got = load_tensors(run / "outputs/artifacts/cognate/model3/model.safetensors")
    assert want.keys() == got.keys()
    diff = [k for k in want if not torch.equal(want[k], got[k])]
    assert not diff, f"the rerun's weights differ from an uninterrupted run's in {diff[:5]}"


def test_a_checkpoint_without_a_fingerprint_trusts_only_a_marker_older_than_itself(tmp_path, capsys):
    """Checkpoints written before fingerprints were embedded fall back on the work dir's marker, which the old code
    rewrote when a run started: a marker newer than last.ckpt names a run that may not have written it (config A's
    checkpoint, then a killed run of B rewrote the marker: B resumed A's weights), so nothing resumes; an older
    marker is the run's own and the checkpoint resumes as before."""
    import os

    from agentforge.training.resume import resume_path

    lin = torch.nn.Linear(2, 2)
    sd = {f"model.{k}": v for k, v in lin.state_dict().items()}
    w = tmp_path / "work"
    w.mkdir()
    (w / "fingerprint").write_text("A")
    torch.save({"state_dict": sd, "pytorch-lightning_version": "2.6.6", "optimizer_states": [{}], "epoch": 0},
               w / "last.ckpt")
    older = (w / "last.ckpt").stat().st_mtime_ns - 10**9
    os.utime(w / "fingerprint", ns=(older, older))
    assert resume_path(None, w, "A", expected=sd) == str(w / "last.ckpt")      # its own, older marker: resumes
    (w / "fingerprint").write_text("B")                                          # a later run of B rewrote it
    newer = (w / "last.ckpt").stat().st_mtime_ns + 10**9
    os.utime(w / "fingerprint", ns=(newer, newer))
    assert resume_path(None, w, "B", expected=sd) is None
    assert "unknown configuration" in capsys.readouterr().out


def test_the_training_time_counts_the_checkpoints_and_round_trips():
    """``LMModule.fit_seconds``: the time restored from the checkpoint plus this process's fit; saved with the run
    dir that logged it (a resumed Cognate run reported only its own 0.03 s, an audit)."""
    from agentforge.training.lm_module import LMModule

    m = LMModule(torch.nn.Linear(2, 2), {}, total_steps=1)
    m.on_load_checkpoint({"agentforge_fit_seconds": 1000.0, "agentforge_run_dir": "/r/first"})
    m.on_fit_start()
    assert 1000.0 <= m.fit_seconds() < 1010.0 and m.resumed_from_run == "/r/first"
    ck: dict = {}
    m.run_dir = "/r/second"
    m.on_save_checkpoint(ck)
    assert ck["agentforge_fit_seconds"] >= 1000.0 and ck["agentforge_run_dir"] == "/r/second"
