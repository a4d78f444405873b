"""Reliability: SIGKILL and bit-exact resume, NaN handling, bad input, untrusted pickles, secrets,
a full disk, and a sweep with a failing job. Run alone with `make test-faults`."""
from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from agentforge.io import load_tensors
from tests.conftest import TINY, run_cli, run_in_process

pytestmark = pytest.mark.faults

BASE = ["phase=cognate", "model=m3", "hardware=cpu", "logger=none", "phase.val_rows=4", "phase.eval_examples=2",
        "phase.gen_tokens=4", "data.batch_size=4", "data.seq_len=32", "phase.early_stopping_patience=10"]


def _env(tmp: Path) -> dict:
    env = dict(os.environ, AGENTFORGE_OUTPUTS=str(tmp / "outputs"), WANDB_MODE="offline", OMP_NUM_THREADS="1")
    env.pop("WANDB_API_KEY", None)
    return env


def _no_tmp_files(root: Path) -> bool:
    return not [p for p in root.rglob("*.tmp") if p.is_file()]


@pytest.mark.slow   # ~24 s; in the default tier a SIGTERM'd run resumes from its checkpoint
# (test_errors_signals.py::test_sigterm_says_how_to_continue_exits_143_and_the_rerun_resumes)
def test_sigkill_then_rerun_resumes_and_matches_an_uninterrupted_run_bit_for_bit(tmp_path, capsys):
    args = [*BASE, "phase.max_epochs=5", "phase.steps_per_epoch=6"]
    run_in_process(args, tmp_path / "ref", capsys)   # the uninterrupted run: main.run in this process (no start-up)

    run = tmp_path / "killed"
    run.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "agentforge", *args], cwd=run, env=_env(run),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = run / "outputs" / "artifacts" / "cognate" / "model3.work" / "last.ckpt"
    deadline = time.time() + 240
    while not last.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    final = run / "outputs" / "artifacts" / "cognate" / "model3"
    assert not final.exists(), "the run finished before it could be killed"
    torch.load(last, weights_only=True)  # the checkpoint left behind is whole

    again = run_cli(args, run)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming from" in again.stdout
    assert "warning: resuming with other numerics" not in again.stdout   # the same thread count and device
    a = load_tensors(tmp_path / "ref" / "outputs" / "artifacts" / "cognate" / "model3" / "model.safetensors")
    b = load_tensors(final / "model.safetensors")
    assert a.keys() == b.keys()
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff, f"resumed weights differ in {diff[:5]}"
    assert _no_tmp_files(run)


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    proc = run_cli([*BASE, "phase.max_epochs=3", "phase.steps_per_epoch=3", "phase.inject_nan_at_step=4"], tmp_path)
    assert proc.returncode == 2
    assert "non-finite value at step 4" in proc.stderr and "Traceback" not in proc.stderr
    assert "the last good checkpoint (end of epoch 0) is kept" in proc.stderr
    work = tmp_path / "outputs" / "artifacts" / "cognate" / "model3.work" / "last.ckpt"
    assert torch.load(work, weights_only=True)["global_step"] == 3
    assert not (tmp_path / "outputs" / "artifacts" / "cognate" / "model3").exists()
    # the run did work before it stopped: its directory (metrics of the 4 steps) stays, unlike a bad-input run's
    assert list((tmp_path / "outputs" / "runs").rglob("metrics.jsonl"))
    logs = list((tmp_path / "outputs" / "runs").rglob("agentforge.log"))   # the error is in the run's log file,
    assert logs and "non-finite value at step 4" in logs[0].read_text()   # and on the console only as error:
    assert "non-finite value at step 4" not in proc.stdout


def test_a_stop_in_the_first_epoch_says_no_checkpoint_was_written():
    """The epoch checkpoints are written at each epoch's end: a NaN at step 1 used to say "the last good checkpoint
    is kept" with none on disk."""
    from agentforge.training.lm_module import LMModule

    assert LMModule(torch.nn.Linear(2, 2), {}, total_steps=1)._kept() == (
        "no checkpoint was written (the first epoch had not ended)")


def test_nan_loss_can_be_skipped(tmp_path, capsys):
    """The run ends normally (in this process: the CLI's handling of a non-finite loss, which stops the run by
    default, is the test above; a run that returns is the CLI's exit 0)."""
    ran = run_in_process([*BASE, "phase.max_epochs=2", "phase.steps_per_epoch=3", "phase.inject_nan_at_step=1",
                          "phase.on_nonfinite=skip"], tmp_path, capsys)
    assert "step skipped" in ran.stdout + ran.stderr


def test_malformed_dataset_file_is_one_clear_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "x", "answer": "#### 3"}\n{oops\n')
    proc = run_cli([*BASE, f"data.path={bad}", "data.format=gsm8k"], tmp_path)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "bad.jsonl:2" in lines[0]
    assert not list((tmp_path / "outputs").rglob("*.safetensors"))


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickle_carrying_code_is_refused_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _Evil(str(marker))}, evil)
    assert not marker.exists()
    proc = run_cli([*BASE, f"ckpt_path={evil}"], tmp_path)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "refused: the training checkpoint holds objects other than tensors" in lines[0]
    assert "Traceback" not in proc.stderr and "UserWarning" not in proc.stderr, proc.stderr[-2000:]
    assert not marker.exists(), "unpickling ran the payload"
    # refused before the run starts: no run dir, W&B run or Cognate work dir (its fingerprint) is left behind
    left = [p for p in (tmp_path / "outputs").rglob("*") if p.is_file()] if (tmp_path / "outputs").exists() else []
    assert not left, left


def test_a_plain_pickle_as_ckpt_path_is_refused_before_the_run_starts(tmp_path):
    """Not a torch zip archive: refused by ``resume_path`` before the run dir, the W&B run or the work dir exist
    (the payload is never unpickled either)."""
    import pickle

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"state_dict": {}, "payload": _Evil(str(marker))}))
    proc = run_cli([*BASE, f"ckpt_path={evil}"], tmp_path)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "not a training checkpoint this tool saved" in lines[0], proc.stderr[-2000:]
    assert not marker.exists()
    left = [p for p in (tmp_path / "outputs").rglob("*") if p.is_file()] if (tmp_path / "outputs").exists() else []
    assert not left, left


def test_api_key_never_reaches_configs_logs_or_artifacts(tmp_path):
    secret = "sk-test-0123456789abcdef"
    proc = run_cli(["phase=cognate", "model=m1", *[a for a in TINY if not a.startswith("logger")],
                    f"+logger.api_key={secret}"], tmp_path, env={"WANDB_API_KEY": secret})
    assert proc.returncode == 0, proc.stderr[-2000:]
    leaks = []
    for f in (tmp_path / "outputs").rglob("*"):
        if f.is_file() and secret.encode() in f.read_bytes():
            leaks.append(str(f.relative_to(tmp_path)))
    assert not leaks, leaks
    prov = json.loads(next((tmp_path / "outputs" / "runs").rglob("provenance.json")).read_text())
    assert "+logger.api_key=<redacted>" in prov["argv"]   # the command line it records, redacted


@pytest.mark.slow   # ~13 s; the single-run key test stays in the fast tier
def test_api_key_never_reaches_a_multiruns_records(tmp_path):
    """The same promise for a multirun whose jobs fail when they run (a resume checkpoint that is not there: found
    only once each job starts; the sweep's own records are the point). Hydra's launcher echoing each job's
    overrides to the console ('#0 : ...') is the user's own command line, not a record, and is not checked."""
    secret = "sk-test-0123456789abcdef"
    proc = run_cli(["-m", *BASE, f"ckpt_path={tmp_path}/a.ckpt,{tmp_path}/b.ckpt", f"+logger.api_key={secret}"],
                   tmp_path, timeout=120)
    assert proc.returncode != 0 and "FAILED job 1" in proc.stderr, proc.stderr[-2000:]
    leaks = [str(f.relative_to(tmp_path)) for f in (tmp_path / "outputs").rglob("*")
             if f.is_file() and secret.encode() in f.read_bytes()]
    failed = [ln for ln in proc.stderr.splitlines() if "FAILED job" in ln]
    assert len(failed) == 2 and not leaks and not [ln for ln in failed if secret in ln], (leaks, failed)


def test_a_sweep_with_a_bad_value_is_refused_before_any_job(tmp_path):
    """``optimizer.lr=0.01,-1``: every job's composed config gets the start-up checks before the first job starts:
    one ``error:`` line naming the job, its overrides (the secret redacted) and the key; exit 2; nothing written
    (job 0, whose value is fine, did not run for minutes first)."""
    secret = "sk-test-0123456789abcdef"
    proc = run_cli(["-m", *BASE, "optimizer.lr=0.01,-1", "model.n_layers=1,2", f"+logger.api_key={secret}"],
                   tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith("error: job 2 of 4 [") and "optimizer.lr=-1" in lines[0], lines
    assert "optimizer.lr must be a number > 0" in lines[0] and "<redacted>" in lines[0] and secret not in proc.stderr
    assert "#0 :" not in proc.stdout + proc.stderr   # Hydra's launcher never announced a job
    assert not [f for f in (tmp_path / "outputs").rglob("*") if f.is_file()]


def test_a_sweep_refused_before_any_job_leaves_nothing(tmp_path):
    """``model=m1,m9``: Hydra's sweeper composes every job before launching any and refuses m9 after it has written
    the sweep's multirun.yaml (with the secret among the overrides); that file, its sweep dir and date folder go."""
    secret = "sk-test-0123456789abcdef"
    proc = run_cli(["-m", "phase=cognate", "model=m1,m9", f"+logger.api_key={secret}", "logger=none"], tmp_path,
                   timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "model/m9" in lines[0]
    assert not [f for f in (tmp_path / "outputs").rglob("*") if f.is_file()]
    assert not list((tmp_path / "outputs" / "multirun").iterdir())


def _limit_file_size():
    resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, 1_000_000))


@pytest.mark.slow   # ~9 s; a publish that cannot write is one line in the default tier (test_errors_signals.py)
def test_a_full_disk_gives_one_line_and_no_partial_files(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "agentforge", *BASE, "phase.max_epochs=2", "phase.steps_per_epoch=3",
                           "model.d_model=256", "model.n_heads=4"], cwd=tmp_path, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=300, preexec_fn=_limit_file_size)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "no room to write" in lines[0]
    assert _no_tmp_files(tmp_path / "outputs")
    assert not (tmp_path / "outputs" / "artifacts" / "cognate" / "model3").exists()


def test_one_failing_job_does_not_stop_the_sweep(tmp_path):
    """A job that fails when it runs (its resume checkpoint is not there) is recorded; the next job still runs."""
    proc = run_cli(["-m", *BASE, "phase.max_epochs=1", "phase.steps_per_epoch=2", f"ckpt_path={tmp_path}/a.ckpt,fresh"],
                   tmp_path)
    assert proc.returncode != 0
    assert "1 of 2 jobs succeeded" in proc.stdout
    assert "FAILED job 0" in proc.stderr and "a.ckpt: file not found" in proc.stderr
    assert (tmp_path / "outputs" / "artifacts" / "cognate" / "model3" / "config.json").is_file()


def _bad_checkpoint(kind: str, root: Path, good: Path) -> Path:
    import shutil

    d = root / kind
    if kind == "missing":
        return d
    shutil.copytree(good, d)
    if kind == "truncated":
        w = d / "model.safetensors"
        w.write_bytes(w.read_bytes()[: w.stat().st_size // 3])
    elif kind == "wrong_format":
        (d / "config.json").write_text('{"format": "someone-elses", "model": {}}')
    elif kind == "wrong_architecture":
        cfg = json.loads((d / "config.json").read_text())
        cfg["model"]["d_model"] = 64
        (d / "config.json").write_text(json.dumps(cfg))
    return d


@pytest.mark.parametrize("kind,message", [
    # ~5 s each through the real CLI: all but "truncated" in the slow tier (a missing checkpoint's error in process:
    # test_eval.py's test_eval_missing_checkpoint_is_a_checkpoint_error; the CLI's one line for such an error: here)
    pytest.param("missing", "not found", marks=pytest.mark.slow), ("truncated", "truncated or corrupt"),
    pytest.param("wrong_format", "not an Agent Forge checkpoint", marks=pytest.mark.slow),
    pytest.param("wrong_architecture", "shape", marks=pytest.mark.slow)])
def test_bad_checkpoints_give_one_line_and_exit_2(tmp_path, cognate_artifacts, kind, message):
    bad = _bad_checkpoint(kind, tmp_path, cognate_artifacts / "cognate" / "model1")
    proc = run_cli(["phase=eval", f"checkpoint={bad}", "stage=bad", "logger=none", "hardware=cpu"], tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and message in lines[0] and str(bad) in lines[0], proc.stderr[-2000:]
    assert not list((tmp_path / "outputs").rglob("bad_results.json"))
    assert not (tmp_path / "outputs" / "runs").exists(), "the failed run left its directory (or an empty runs/) behind"


def test_a_skipped_non_finite_gradient_step_changes_no_weight_even_with_qk_clip_due():
    """on_nonfinite=skip on a non-finite gradient: Lightning still calls the optimizer step, which must find nothing
    to do — no update (gradients dropped) and no QK-clip rescaling of W_q/W_k from the skipped step's recorded
    attention logits (here far above tau, so the clip would fire: it does on the same step without the skip)."""
    import copy

    from agentforge.models import CognateConfig, CognateModel
    from agentforge.optim import build_optimizer
    from agentforge.training.lm_module import LMModule

    torch.manual_seed(0)
    model = CognateModel(CognateConfig(d_model=32, n_layers=1, n_heads=2, ffn_hidden=64, window=8, max_steps=2,
                                       ltm_slots=4, ltm_key_dim=8)).train()
    cfg = {"name": "muon_grokfast", "lr": 1e-2, "weight_decay": 0.0, "warmup_steps": 0, "min_lr_ratio": 0.1,
           "kl_coef": 0.0, "grokfast": "ema", "grokfast_alpha": 0.9, "grokfast_lambda": 0.3, "qk_clip": 1e-3}
    ids = torch.randint(0, 256, (2, 13), generator=torch.Generator().manual_seed(1))
    changed = {}
    for skip in (False, True):
        twin = copy.deepcopy(model)
        module = LMModule(twin, cfg, total_steps=4, on_nonfinite="skip")
        module.print = lambda *a, **k: None  # Lightning's print needs a Trainer
        opt, _ = build_optimizer(twin, cfg, 4)
        module.on_train_batch_start(None, 0)
        twin(ids[:, :-1], ids[:, 1:]).loss.backward()   # records each head's max logit (train mode, autograd on)
        assert twin.blocks[0].attn.max_logit.max() > 1e-3
        if skip:
            twin.embed.weight.grad.view(-1)[0] = float("inf")
        module.on_before_optimizer_step(opt)
        before = {k: v.clone() for k, v in twin.state_dict().items()}
        opt.step()
        changed[skip] = [k for k, v in twin.state_dict().items() if not torch.equal(v, before[k])]
        assert module.skipped_steps == int(skip)
    assert "blocks.0.attn.q_proj.weight" in changed[False]   # the clip fires on a normal step...
    assert changed[True] == []                             # ...and nothing moves on a skipped one


def test_a_skipped_non_finite_loss_step_changes_no_weight_even_with_qk_clip_due(tmp_path):
    """on_nonfinite=skip on a non-finite loss: training_step returns None, yet Lightning (32-bit precision) still
    calls the optimizer's step with the closure; the step must not QK-clip W_q/W_k from the logits the skipped
    forward recorded (tau here is far below them, so the clip would fire). A real Trainer, one step."""
    import copy

    import lightning as L

    from agentforge.models import CognateConfig, CognateModel
    from agentforge.training.lm_module import LMModule

    torch.manual_seed(0)
    model = CognateModel(CognateConfig(d_model=32, n_layers=1, n_heads=2, ffn_hidden=64, window=8, max_steps=2,
                                       ltm_slots=4, ltm_key_dim=8))
    cfg = {"name": "muon_grokfast", "lr": 1e-2, "weight_decay": 0.0, "warmup_steps": 0, "min_lr_ratio": 0.1,
           "kl_coef": 0.0, "grokfast": "ema", "grokfast_alpha": 0.9, "grokfast_lambda": 0.3, "qk_clip": 1e-3}
    rows = torch.randint(0, 256, (2, 13), generator=torch.Generator().manual_seed(1))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(rows), batch_size=2)
    changed = {}
    for inject in (None, 0):
        twin = copy.deepcopy(model)
        before = {k: v.clone() for k, v in twin.state_dict().items()}
        module = LMModule(twin, cfg, total_steps=1, on_nonfinite="skip", inject_nan_at_step=inject)
        L.Trainer(max_steps=1, accelerator="cpu", precision="32-true", logger=False, enable_checkpointing=False,
                  enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                  limit_val_batches=0, default_root_dir=tmp_path).fit(module, loader)
        changed[inject] = [k for k, v in twin.state_dict().items() if not torch.equal(v, before[k])]
        assert module.skipped_steps == (inject is not None)
    assert "blocks.0.attn.q_proj.weight" in changed[None]   # a normal step moves (and clips) the weights...
    assert changed[0] == []                                  # ...a skipped one moves none


@pytest.mark.faults
def test_an_outputs_path_that_cannot_hold_runs_is_one_line(tmp_path):
    """A file where the outputs directory should be, or a path under one: Hydra's own run-dir creation raised a
    29-line traceback (exit 1); now one error line naming where the path came from, exit 2, nothing written."""
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    for args, env, key in ((["phase=cognate"], {"AGENTFORGE_OUTPUTS": str(blocker)}, "AGENTFORGE_OUTPUTS"),
                           (["phase=cognate", f"paths.outputs={blocker / 'sub'}"], {}, "paths.outputs")):
        proc = run_cli(args, tmp_path, env=env)
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"error: {key} = "), proc.stderr
        assert "writable directory" in lines[0] and blocker.read_text() == "x"


def test_a_file_where_hydra_puts_the_run_dirs_is_one_line(tmp_path):
    """``<outputs>/runs`` (or ``multirun``) a file: Hydra's run-dir creation raised NotADirectoryError (exit 1, an
    audit); the start-up probe now names it. Checked by the function the CLI calls before Hydra starts."""
    from agentforge.cli_errors import outputs_problem

    assert outputs_problem(["phase=cognate"], {"AGENTFORGE_OUTPUTS": str(tmp_path)}) is None
    for sub in ("runs", "multirun"):
        (tmp_path / sub).write_text("x")
        said = outputs_problem(["phase=cognate"], {"AGENTFORGE_OUTPUTS": str(tmp_path)})
        assert said.startswith(f"AGENTFORGE_OUTPUTS = {str(tmp_path)!r}: ") and f"{sub}' is not a directory" in said
        (tmp_path / sub).unlink()


@pytest.mark.faults
@pytest.mark.slow   # ~9 s; the default tier's interrupt test is SIGTERM's (test_errors_signals.py), the same
#                     continue-line path; make test-faults runs this one
def test_ctrl_c_says_how_to_continue(tmp_path):
    """SIGINT mid-training: Lightning shuts down and exited 1 with no word of what to do; now one error line
    that says to run the same command again, exit 130 (as shells report a Ctrl-C)."""
    args = [*BASE, "phase.max_epochs=50", "phase.steps_per_epoch=6"]
    # SIGINT as a terminal delivers it: a test run started in the background (`make test &`, nohup) passes SIGINT
    # ignored to its children, and Python then keeps ignoring it (the run finished, exit 0)
    proc = subprocess.Popen([sys.executable, "-m", "agentforge", *args], cwd=tmp_path, env=_env(tmp_path),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    last = tmp_path / "outputs" / "artifacts" / "cognate" / "model3.work" / "last.ckpt"
    deadline = time.time() + 240
    while not last.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1].startswith("error: interrupted (Ctrl-C): run the same command again")


def test_a_missing_input_names_the_pipeline_run_that_has_it(tmp_path):
    """After ``phase=pipeline`` the models are under ``outputs/pipeline/<run>/artifacts/``; a standalone phase that
    looks under ``outputs/artifacts/`` says which pipeline run has the input and the override that reads it."""
    from agentforge.io import pipeline_copy_hint

    outputs = tmp_path / "outputs"
    assert pipeline_copy_hint(outputs / "artifacts" / "quietstar" / "reasoning") == ""
    for run in ("default", "seed7"):
        d = outputs / "pipeline" / run / "artifacts" / "quietstar" / "reasoning"
        d.mkdir(parents=True)
        (d / "config.json").write_text("{}")
    (outputs / "pipeline" / "default" / "artifacts" / "eval_results").mkdir()
    (outputs / "pipeline" / "default" / "artifacts" / "eval_results" / "phase2_champion_results.json").write_text("{}")
    assert pipeline_copy_hint(outputs / "artifacts" / "cognate" / "model1") == ""       # no pipeline run has it
    assert pipeline_copy_hint(outputs / "artifacts" / "eval_results", holds="*_results.json") == (
        f"; the pipeline run 'default' has one: add paths.artifacts={outputs}/pipeline/default/artifacts")
    proc = run_cli(["phase=bitnet", "logger=none", "hardware=cpu"], tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and lines[0].endswith(
        f"the pipeline run 'default' has one: add paths.artifacts={outputs}/pipeline/default/artifacts "
        f"(other pipeline runs with one: seed7)"), lines
