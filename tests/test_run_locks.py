"""Two live processes never share a run directory or a training work dir (``agentforge/locks.py``). The other process
is played by this test process holding the claim (``locks.claim``: flock on the directory, per open file, so a
subprocess's claim of the same directory is refused exactly as a second CLI run's would be)."""
from __future__ import annotations

import pytest

from agentforge import locks
from agentforge.phases.cognate import model_dir
from tests.conftest import TINY, run_cli


@pytest.fixture
def held(tmp_path):
    claimed = []

    def hold(directory):
        assert locks.claim(directory)
        claimed.append(directory)
        return directory

    yield hold
    for d in claimed:
        locks.release(d)


def test_claims_by_hand(tmp_path, monkeypatch):
    d = tmp_path / "d"
    assert locks.claim(d) and d.is_dir() and locks.claim(d)     # created; a second claim by the holder holds
    locks.release(d)
    locks.release(d)                                            # nothing held: nothing to do
    for var in locks.RANK_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    assert not locks.worker_rank()
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert not locks.worker_rank()
    monkeypatch.setenv("LOCAL_RANK", "1")                       # a DDP rank re-running the command line
    assert locks.worker_rank()


@pytest.mark.faults
def test_a_run_dir_another_live_process_writes_is_refused(tmp_path, held):
    """Before: two identical commands started together with one hydra.run.dir both passed the "already holds a run"
    check (nothing written yet), both exited 0, and metrics.jsonl held every step twice."""
    run_dir = held(tmp_path / "shared_run")
    proc = run_cli(["phase=cognate", *TINY, f"hydra.run.dir={run_dir}"], tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(
        f"error: the run directory {run_dir} is being written by another agentforge process right now")
    assert {p.name for p in run_dir.iterdir()} <= {"agentforge.log"}   # no run records of the refused run


def test_a_claimed_dir_is_refused_in_another_process_until_released(tmp_path, held):
    """``locks.claim`` in a second process while this one holds the dir (what ``training.resume.claim_work_dir``, called
    by the Cognate phase and each Quiet-STaR fit before deciding about last.ckpt, turns into one error line: the
    slow test below runs it through the CLI)."""
    import subprocess
    import sys

    work = held(tmp_path / "model1.work")
    code = f"import sys\nfrom agentforge.locks import claim\nsys.exit(0 if claim({str(work)!r}) else 3)\n"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 3
    locks.release(work)
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0   # free again: claimed


@pytest.mark.slow
@pytest.mark.faults
def test_a_cognate_work_dir_in_use_is_refused_and_its_checkpoint_kept(tmp_path, held):
    """Before: a run with another config found a live run's last.ckpt in the shared <model>.work dir, called it stale
    and deleted it, so the live run's "run the same command again to continue" later started over."""
    out = model_dir((tmp_path / "outputs" / "artifacts").absolute(), 1)
    work = held(out.with_name(out.name + ".work"))
    (work / "last.ckpt").write_bytes(b"the live run's checkpoint")
    proc = run_cli(["phase=cognate", *TINY, "optimizer.lr=0.002"], tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"error: {work}: another agentforge process is training into it right now" in proc.stderr
    assert (work / "last.ckpt").read_bytes() == b"the live run's checkpoint"
    assert not out.exists()   # nothing published
