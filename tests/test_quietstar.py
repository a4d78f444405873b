"""Phase 3 end to end: the real CLI on a tiny Cognate checkpoint, and its user errors."""
from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from omegaconf import OmegaConf

from agentforge.artifacts import load_model, save_model
from agentforge.data.tokenizer import ByteTokenizer
from agentforge.errors import ConfigError
from agentforge.io import CheckpointError, load_tensors, weights_sha256
from agentforge.main import run
from agentforge.models import CognateConfig, CognateModel
from agentforge.reasoning.strategies import STRATEGIES
from agentforge.reasoning.tokens import SPECIAL_TOKENS
from agentforge.tracking.wandb_offline import find_offline_runs
from tests.conftest import compose_cfg, run_cli
from tests.test_faults import _env

QS_TINY = ["logger=csv", "hardware=cpu", "phase.baking.epochs=1", "phase.baking.steps_per_epoch=2",
           "phase.baking.batch_size=2", "phase.baking.examples_per_strategy=1", "phase.baking.val_per_strategy=1",
           "phase.baking.sample_tokens=2", "phase.baking.usage_tokens=2", "phase.rl.num_episodes=2",
           "phase.rl.num_thoughts=2", "phase.rl.thought_length=2", "phase.rl.thought_positions=1",
           "phase.rl.batch_size=1", "phase.rl.seq_len=24", "phase.rl.context_len=16", "phase.rl.n_true=2",
           "phase.rl.anti_theater_every=1", "phase.rl.eval_windows=2", "phase.rl.eval_examples=2",
           "phase.rl.gen_tokens=2", "phase.rl.inference_tokens=1"]


@pytest.fixture(scope="module")
def tiny_input(tmp_path_factory):
    """A small untrained Cognate checkpoint (Phase 3 needs only a checkpoint to start from)."""
    torch.manual_seed(0)
    cfg = CognateConfig(vocab_size=272, d_model=32, n_layers=1, n_heads=2, ffn_hidden=64, window=64, max_steps=2,
                        ltm_slots=8, ltm_key_dim=8)
    path = tmp_path_factory.mktemp("qs_input") / "model"
    save_model(path, CognateModel(cfg), ByteTokenizer())
    return path


def _metrics(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    keys = set().union(*rows)
    return rows, keys


def test_quietstar_cli_both_steps(tiny_input, tmp_path):
    proc = run_cli(["phase=quietstar", f"phase.input={tiny_input}", *QS_TINY], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    art = tmp_path / "outputs" / "artifacts" / "quietstar"
    for name in ("baked", "reasoning"):
        model, tok, cfg = load_model(art / name)
        assert tok.special_tokens == list(SPECIAL_TOKENS) and model.config.vocab_size >= tok.vocab_size
        assert cfg["meta"]["step"] == ("baking" if name == "baked" else "rl")
        src = tiny_input if name == "baked" else art / "baked"   # which model each read, by its weights' digest
        assert cfg["meta"]["source_weights_sha256"] == weights_sha256(src) and len(weights_sha256(src)) == 16
    head = load_tensors(art / "reasoning" / "mixing_head.safetensors")
    assert any(k.endswith("weight") for k in head)
    run_dir = next((tmp_path / "outputs" / "runs").glob("*/*_quietstar_*"))
    _, bkeys = _metrics(run_dir / "phase3-step1-baking")
    for k in ("baking/loss", "baking/learning_rate", "baking/accuracy_mece", "baking/accuracy_overall",
              "baking/val_accuracy", "baking/val_accuracy_mece", "baking/convergence_progress", "baking/final_accuracy", "baking/converged",
              "baking/thinking_token_usage", "baking/strategy_token_usage"):
        assert k in bkeys, k
    assert (run_dir / "phase3-step1-baking" / "tables" / "baking__strategy_accuracy_table.csv").is_file()
    rows, rkeys = _metrics(run_dir / "phase3-step2-rl")
    for k in ("rl/reward", "rl/avg_reward", "rl/avg_coherence_score", "rl/semantic_coherence", "rl/kl_divergence",
              "rl/thought_diversity", "anti_theater/divergence", "anti_theater/all_passed", "rl/inference_time_ms",
              "rl/final_reward", "rl/improvement_over_baked", "rl/improvement_over_baked_n",
              # beside the spec's keys (an audit): lm_loss's two parts, the mixing weight's sign, the thoughts' drift
              "rl/mixed_nll", "rl/base_ce", "rl/mixing_weight_negative_share", "rl/post_thought_gain",
              "rl/kl_divergence_thoughts", "rl/final_mixing_weight", "rl/final_post_thought_gain"):
        assert k in rkeys, k
    step_rows = [r for r in rows if "rl/lm_loss" in r]
    # rl/learning_rate is the rate the episode's step used, as the optimizer's own key says (before: the next one's)
    used = {r["_step"]: r["optimizer/muon_lr"] for r in rows if "optimizer/muon_lr" in r}
    paired = [(r["rl/learning_rate"], used[r["_step"]]) for r in step_rows if r["_step"] in used]
    assert paired and all(a == pytest.approx(b, rel=1e-9) for a, b in paired), paired
    assert step_rows and all(r["rl/lm_loss"] == pytest.approx(r["rl/mixed_nll"] + r["rl/base_ce"], rel=1e-5)
                             for r in step_rows)
    final_w = next(r for r in rows if "rl/final_mixing_weight" in r)
    assert final_w["rl/final_mixing_weight"] == pytest.approx(step_rows[-1]["rl/mixing_weight"], rel=1e-6)
    # the report's warning line (and summary key) exactly when the final mean mixing weight is below 0
    assert ("thoughts enter the prediction with a negative weight" in proc.stdout) is (final_w["rl/final_mixing_weight"] < 0)
    assert ("rl/final_mixing_weight_warning" in final_w) is (final_w["rl/final_mixing_weight"] < 0)
    summary = next(r for r in rows if "rl/improvement_over_baked_n" in r)   # the improvement is paired by question
    assert summary["rl/improvement_over_baked_n"] >= 2 and len(summary["rl/improvement_over_baked_ci95"]) == 2
    assert "paired by question" in summary["rl/improvement_over_baked_test"]
    for k in ("baking/final_accuracy_n", "baking/final_accuracy_ci95", "baking/initial_accuracy_ci95",
              "baking/accuracy_gain", "baking/accuracy_gain_ci95", "baking/accuracy_gain_n", "baking/prompt_effect_share",
              "baking/prompt_effect_n_positions", "baking/prompt_effect_n_examples", "baking/prompt_effect_accuracy",
              "baking/kl_reduction_ci95", "baking/final_accuracy_verdict", "baking/final_accuracy_why",
              "baking/control_prompt_effect_accuracy", "baking/prompt_effect_vs_control_ci95",
              "baking/prompt_effect_vs_control_n", "baking/accuracy_vs_control_ci95"):
        assert k in bkeys, k
    brows, _ = _metrics(run_dir / "phase3-step1-baking")
    _per_strategy_keys_are_measured_values(brows, run_dir / "phase3-step1-baking")
    bsum = next(r for r in brows if "baking/final_accuracy_verdict" in r)
    # 1 validation example per strategy: n = 10 < 30, so no verdict; converged follows the verdict
    assert bsum["baking/final_accuracy_n"] == 10 and bsum["baking/final_accuracy_verdict"] == "INCONCLUSIVE"
    assert bsum["baking/converged"] is False and "unbaked model already scores" in bsum["baking/final_accuracy_why"]
    assert bsum["baking/accuracy_gain"] == pytest.approx(bsum["baking/final_accuracy"] - bsum["baking/initial_accuracy"])
    assert "baked: " in proc.stdout and "gain " in proc.stdout and "shuffled-prompt control" in proc.stdout
    assert not list((tmp_path / "outputs" / "artifacts" / "quietstar").glob("*.work"))   # the control's too
    # both steps train in eval mode, and QK-clip (τ 30 / 25) reads the real max attention logit (it read 0 before)
    for rows_ in (brows, rows):
        logits = [r["optimizer/max_attention_logit"] for r in rows_ if "optimizer/max_attention_logit" in r]
        assert logits and min(logits) > 0, logits
    summary_rl = next(r for r in rows if "anti_theater/final_correlation_n_informative" in r)
    assert summary_rl["anti_theater/final_correlation_n"] == summary_rl["anti_theater/final_correlation_n_informative"]
    checks = [r for r in rows if "anti_theater/divergence" in r]
    assert len(checks) == 3  # before training, after episode 1 and 2
    assert "anti-theater (n=" in proc.stdout and "thinking cost:" in proc.stdout
    # the held-out accuracies' n and CI; the thinking cost as the median per-round ratio with its CI over 7 rounds
    assert summary_rl["rl/final_gsm8k_accuracy_n"] >= 2 and summary_rl["rl/final_arc_accuracy_n"] >= 2
    lo, hi = summary_rl["rl/final_arc_accuracy_ci95"]
    assert lo <= summary_rl["rl/final_arc_accuracy"] <= hi
    lo, hi = summary_rl["rl/thinking_cost_ratio_ci95"]
    assert summary_rl["rl/thinking_cost_ratio_n"] == 7 and lo <= summary_rl["rl/thinking_cost_ratio"] <= hi
    assert "median of per-round ratios" in proc.stdout and "interleaved rounds" in proc.stdout
    # the held-out accuracies are thought-free: the printed line and the summary's descriptions say so
    assert "held-out accuracy, answered directly, without thoughts" in proc.stdout
    for k in ("rl/final_gsm8k_accuracy_test", "rl/final_arc_accuracy_test", "rl/improvement_over_baked_test"):
        assert "answered directly, without thoughts" in summary_rl[k], k
    _part_times_cover_each_step(run_dir, art, proc.stdout)


TIME_PARTS = {"baking": ["load", "data", "open", "evidence_before", "fit", "validation", "checkpoint", "control_fit",
                         "control_eval", "evidence_after", "report", "save", "other"],
              "rl": ["load", "data", "open", "accuracy", "anti_theater", "fit", "checkpoint", "report", "thinking_cost",
                     "save", "other"]}


def _part_times_cover_each_step(run_dir, art, stdout):
    """Each step's W&B summary row and published metrics.json carry time/<part>_s for every part (>= 0) and
    time/total_s; the parts and other sum to the total (every second in one part); one printed line per step and
    one for the phase, whose step spans are at least the steps' own totals."""
    lines = stdout.splitlines()
    phase_line = next(x for x in lines if x.startswith("Quiet-STaR time (s): "))
    spans = dict(p.rsplit(" ", 1) for p in phase_line.split(": ", 1)[1].split(" (total")[0].split(", "))
    for step, sub, out in (("baking", "phase3-step1-baking", "baked"), ("rl", "phase3-step2-rl", "reasoning")):
        rows, _ = _metrics(run_dir / sub)
        t = next(r for r in rows if "time/total_s" in r)
        assert [k for k in t if k.startswith("time/")] == [*[f"time/{p}_s" for p in TIME_PARTS[step]], "time/total_s",
                                                          "time/fit_device", "time/eval_device"], t
        assert t["time/fit_device"] == t["time/eval_device"] == "cpu"
        assert f"{step} devices: fit on cpu, evaluations after it on cpu" in lines
        parts = [t[f"time/{p}_s"] for p in TIME_PARTS[step]]
        assert all(v >= 0 for v in parts) and t["time/total_s"] > 0, t
        assert sum(parts) == pytest.approx(t["time/total_s"], rel=1e-9, abs=1e-9)   # the parts cover the step
        assert sum(parts[:-1]) <= t["time/total_s"] + 1e-9
        assert t["time/fit_s"] > 0 and t["time/save_s"] > 0
        saved = json.loads((art / out / "metrics.json").read_text())
        assert {k: saved[k] for k in t if k.startswith("time/")} == {k: v for k, v in t.items() if k.startswith("time/")}
        line = next(x for x in lines if x.startswith(f"{step} time (s): "))
        assert line == (f"{step} time (s): " + ", ".join(f"{p} {t[f'time/{p}_s']:.1f}" for p in TIME_PARTS[step])
                        + f" (total {t['time/total_s']:.1f})")
        assert float(spans[step]) >= round(t["time/total_s"], 1) - 0.1


def _per_strategy_keys_are_measured_values(rows, run_dir):
    """2 baking steps (1 epoch): step s baked strategy s, so baking/accuracy_<key> (training batch) is written once, at
    that step, and no other step repeats it; the held-out agreement of every strategy is baking/val_accuracy_<key>, once
    per epoch; the strategy table (the per-strategy thresholds' verdicts) shows the held-out values, not the training."""
    keys = [s.key for s in STRATEGIES]
    train = [(r["_step"], k) for r in rows for k in r if k.startswith("baking/accuracy_") and k[16:] in keys]
    assert train == [(0, "baking/accuracy_chain_of_thought"), (1, "baking/accuracy_mece")], train
    assert [r["_step"] for r in rows if "baking/accuracy_overall" in r] == [0, 1]
    val = [r for r in rows if "baking/val_accuracy" in r]
    assert len(val) == 1 and all(f"baking/val_accuracy_{k}" in val[0] for k in keys)
    assert not any(k.startswith("baking/val_accuracy_") for r in rows if r is not val[0] for k in r)
    table = list(csv.DictReader((run_dir / "tables" / "baking__strategy_accuracy_table.csv").open()))
    by_name = {s.name: s.key for s in STRATEGIES}
    for row in table:   # final evaluation = the model the last validation measured
        shown = float(row["Accuracy [95% CI]"].split()[0])
        assert shown == pytest.approx(val[0][f"baking/val_accuracy_{by_name[row['Strategy']]}"], abs=1.5e-3)


def test_missing_input_and_bad_values_are_one_line_errors(tmp_path):
    cfg = compose_cfg(["phase=quietstar", "logger=none"], tmp_path)
    with pytest.raises(CheckpointError, match="phase=evomerge"):
        run(cfg)
    rl = cfg.copy()
    rl.step = "rl"
    with pytest.raises(CheckpointError, match="step=baking"):
        run(rl)
    for key, bad in [("phase.step", "talk"), ("phase.rl.num_thoughts", 1), ("phase.baking.sampled_fraction", 2.0),
                     ("step", "nope"), ("phase.baking.prompt_position", "middle")]:
        wrong = cfg.copy()
        OmegaConf.update(wrong, key, bad)
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            run(wrong)
    wrong = cfg.copy()
    OmegaConf.update(wrong, "ckpt_path", "some/last.ckpt")
    with pytest.raises(ConfigError, match="belongs to one step"):
        run(wrong)


@pytest.mark.parametrize("step", ["rl", "both"])
def test_rl_sizes_the_model_or_held_out_stream_cannot_hold_are_one_line_errors_before_any_run(tiny_input, tmp_path, step):
    """Checked before the run dir exists and, for step=both, before baking (with the input's max_seq_len)."""
    cases = [(["phase.rl.thought_length=500"], r"phase\.rl\.context_len .*thought_length.* exceeds .*max_seq_len=512"),
             (["phase.rl.context_len=600", "phase.rl.seq_len=700"], r"phase\.rl\.context_len \(600\)"),
             (["phase.rl.seq_len=200000"], r"phase\.rl\.seq_len=200000 must be below the held-out stream's \d+ tokens"),
             (["phase.rl.eval_windows=100000"], r"phase\.rl\.eval_windows=100000 windows \(one per held-out document.*"
                                                r"need 100000 documents that hold one; 80 of the 80")]
    for overrides, match in cases:
        cfg = compose_cfg(["phase=quietstar", "logger=none", f"step={step}", f"phase.input={tiny_input}", *overrides],
                          tmp_path)
        with pytest.raises(ConfigError, match=match):
            run(cfg)
        assert not (tmp_path / "run").exists() and not (tmp_path / "outputs" / "artifacts" / "quietstar").exists()


def test_anti_theater_windows_are_one_per_held_out_document_at_the_default_sizes(tiny_input, tmp_path, monkeypatch):
    """The eval windows run_rl builds (default phase.rl sizes, the real held-out documents' lengths, seed 42): 64
    windows in 64 different test-split documents, each inside its document (one stream's disjoint sequences still
    put 64 windows in 56 documents, 39 clusters linked by a shared one)."""
    from agentforge.phases import quietstar as qs

    real = qs._documents
    seen = {}

    def numbered(tok, seed, split, n):   # held-out document i's tokens become 10_000 * i + 0, 1, 2, ...
        docs = real(tok, seed, split, n)
        if split == "train":             # the training stream as it is
            return docs
        seen["split"] = split
        return [10_000 * i + torch.arange(len(d)) for i, d in enumerate(docs)]
    monkeypatch.setattr(qs, "_documents", numbered)

    class Built(Exception):
        pass

    def module(model, ref, head, train_stream, eval_windows, *args, **kwargs):
        raise Built(eval_windows)

    monkeypatch.setattr(qs, "QuietStarModule", module)
    cfg = compose_cfg(["phase=quietstar", "logger=none", "step=rl", f"phase.input={tiny_input}"], tmp_path)
    assert cfg.seed == 42 and cfg.phase.rl.eval_windows == 64
    with pytest.raises(Built) as got:
        run(cfg)
    w, width = got.value.args[0], cfg.phase.rl.context_len + cfg.phase.rl.n_true
    assert w.shape == (64, width) and seen["split"] == "test"
    assert len({int(r[0]) // 10_000 for r in w}) == 64                                   # 64 different documents
    assert all(torch.equal(r, torch.arange(int(r[0]), int(r[0]) + width)) for r in w)   # each inside its own


@pytest.mark.slow  # two CLI runs, ~15 s on a 2-core CPU
def test_rl_size_errors_from_the_cli_exit_2_with_one_line_and_no_run_dir(tiny_input, tmp_path):
    for i, bad in enumerate(["phase.rl.thought_length=500", "phase.rl.seq_len=200000"]):
        proc = run_cli(["phase=quietstar", "step=rl", f"phase.input={tiny_input}", "logger=csv", bad], tmp_path / str(i))
        assert proc.returncode == 2, proc.stderr[-3000:]
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: phase.rl."), proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr
        assert not list((tmp_path / str(i) / "outputs").rglob("*_quietstar_*"))


def test_user_examples_hold_out_the_last_of_each_strategy(tmp_path):
    from agentforge.reasoning.strategies import load_examples
    from agentforge.reasoning.strategies import split_user_examples as _split_user

    p = tmp_path / "mine.jsonl"
    p.write_text("".join(json.dumps({"strategy": s, "question": f"q{i}", "response": f" [thinking] r{i}"}) + "\n"
                         for s in ("mece", "doubt") for i in range(3)))
    train, val = _split_user(load_examples(p), 1)
    assert [e["question"] for e in val] == ["q2", "q2"] and len(train) == 4
    # mece holds out q2, but doubt trains on q2 (its held-out record is q3): mece's q2 is dropped from validation
    p.write_text("".join(json.dumps({"strategy": s, "question": q, "response": " [thinking] r"}) + "\n"
                         for s, q in (("mece", "q0"), ("mece", "q1"), ("mece", "q2"), ("doubt", "q2"), ("doubt", "q3"))))
    train, val = _split_user(load_examples(p), 1)
    assert [e["question"] for e in val] == ["q3"] and {e["question"] for e in train} == {"q0", "q1", "q2"}
    # by content, not as strings: re-spaced, or a template question under another name and item, is the same question
    ada = "Ada has 5 apples. Ada gets 3 more. How many apples does Ada have now?"
    p.write_text("".join(json.dumps({"strategy": "mece", "question": q, "response": " [thinking] r"}) + "\n"
                         for q in (ada, ada.replace("Ada has", "Ada  has") + " ",
                                   "Ben has 3 coins. Ben gets 5 more. How many coins does Ben have now?")))
    train, val = _split_user(load_examples(p), 2)
    assert len(train) == 1 and val == []


def test_user_examples_with_no_strategy_to_hold_out_are_one_error_before_any_run(tiny_input, tmp_path):
    """One example per strategy: each is trained on, none held out, so no strategy can be baked and validated; a
    ConfigError naming the file before the run dir (it was a ZeroDivisionError in the first evaluation)."""
    p = tmp_path / "one_each.jsonl"
    p.write_text("".join(json.dumps({"strategy": s.key, "question": f"q {s.key}", "response": " [thinking] r"}) + "\n"
                         for s in STRATEGIES))
    cfg = compose_cfg(["phase=quietstar", "logger=none", "step=baking", f"phase.input={tiny_input}",
                       f"phase.baking.examples_path={p}"], tmp_path)
    with pytest.raises(ConfigError, match=r"phase\.baking\.examples_path=.*one_each\.jsonl: no strategy has both"):
        run(cfg)
    assert not (tmp_path / "run").exists() and not (tmp_path / "outputs" / "artifacts" / "quietstar").exists()


def test_pipeline_threshold_rows_show_the_anti_theater_verdict_n_and_ci(tmp_path):
    from agentforge.pipeline.thresholds import headline_metrics, threshold_rows

    summary = {"anti_theater/final_ablation_drop": 0.03, "anti_theater/final_ablation_drop_n": 64,
               "anti_theater/final_ablation_drop_ci95": [0.004, 0.056],
               "anti_theater/final_ablation_drop_verdict": "INCONCLUSIVE", "rl/final_reward": 1.0}
    rows = threshold_rows({"quietstar": headline_metrics(summary)}, tmp_path)
    assert rows == [["Phase 3 RL", "anti_theater/final_ablation_drop", "> 0.02", 0.03,
                     "INCONCLUSIVE (n=64, 95% CI [0.004, 0.056])"]]  # the point estimate alone would say PASS


RESUME = ["phase.baking.epochs=4", "phase.rl.num_episodes=4", "logger=none"]


def _kill_when(args: list[str], cwd, marker, deadline_s: float = 240):
    """Run the CLI in ``cwd`` and SIGKILL it as soon as ``marker`` (an epoch checkpoint) exists."""
    proc = subprocess.Popen([sys.executable, "-m", "agentforge", *args], cwd=cwd, env=_env(cwd),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + deadline_s
    while not marker.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    torch.load(marker, weights_only=True)  # the checkpoint left behind is whole


@pytest.mark.slow  # four CLI runs: about 2 minutes on a 2-core CPU
@pytest.mark.faults
def test_sigkill_in_baking_and_in_rl_then_rerun_resumes_to_the_uninterrupted_weights(tiny_input, tmp_path):
    args = ["phase=quietstar", f"phase.input={tiny_input}", *QS_TINY, *RESUME]
    ref = run_cli(args, tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr[-3000:]

    run = tmp_path / "killed"
    run.mkdir()
    art = run / "outputs" / "artifacts" / "quietstar"
    _kill_when(args, run, art / "baked.work" / "last.ckpt")      # after baking epoch 1 of 4
    assert not (art / "baked").exists()
    _kill_when(args, run, art / "reasoning.work" / "last.ckpt")  # baking resumed and done; RL epoch 1 of 4
    assert (art / "baked").is_dir() and not (art / "reasoning").exists()
    again = run_cli(args, run)
    assert again.returncode == 0, again.stderr[-3000:]
    # baking and its shuffled-prompt control (both finished: nothing left to train), and RL
    assert again.stdout.count("resuming from") == 3
    assert not [p.name for p in art.glob("*.work")]
    for name in ("baked/model.safetensors", "reasoning/model.safetensors", "reasoning/mixing_head.safetensors"):
        a = load_tensors(tmp_path / "ref" / "outputs" / "artifacts" / "quietstar" / name)
        b = load_tensors(art / name)
        assert a.keys() == b.keys()
        diff = [k for k in a if not torch.equal(a[k], b[k])]
        assert not diff, f"{name}: resumed weights differ in {diff[:5]}"
    checks = json.loads((art / "reasoning" / "metrics.json").read_text())["anti_theater_checks"]
    assert [c["episode"] for c in checks] == [0, 1, 2, 3, 4]  # the checks before the kill survived it


@pytest.mark.slow   # ~10 s; the same non-finite stop (LMModule's) is in the default tier for Cognate:
#                     test_faults.py::test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint
def test_nan_baking_loss_stops_with_one_line_naming_the_step(tiny_input, tmp_path):
    proc = run_cli(["phase=quietstar", f"phase.input={tiny_input}", *QS_TINY, "phase.inject_nan_at_step=1"], tmp_path)
    assert proc.returncode != 0
    assert "non-finite value at step 1" in proc.stderr and "phase.on_nonfinite=skip" in proc.stderr
    assert not (tmp_path / "outputs" / "artifacts" / "quietstar" / "baked").exists()


@pytest.mark.slow
def test_ddp_two_cpu_processes_bake_and_think_writing_once(tiny_input, tmp_path):
    args = ["phase=quietstar", f"phase.input={tiny_input}", "hardware=ddp", "hardware.accelerator=cpu",
            "hardware.devices=2", *[a for a in QS_TINY if not a.startswith(("logger", "hardware"))], "logger=wandb"]
    proc = run_cli(args, tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dirs = [d for d in (tmp_path / "outputs" / "runs").rglob("*_quietstar_*") if d.is_dir()]
    assert len(run_dirs) == 1, run_dirs
    assert len(find_offline_runs(tmp_path / "outputs")) == 2  # phase3-step1-baking and phase3-step2-rl
    for step, key in (("phase3-step1-baking", "baking/loss"), ("phase3-step2-rl", "rl/reward")):
        rows = [json.loads(x) for x in (run_dirs[0] / step / "metrics.jsonl").read_text().splitlines()]
        steps = [r.get("_step") for r in rows if key in r]
        assert steps and len(steps) == len(set(steps)), f"{step}: a metric row was written by both ranks"
    for name in ("baked", "reasoning"):
        load_model(tmp_path / "outputs" / "artifacts" / "quietstar" / name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_quietstar_fits_on_the_gpu_and_evaluates_on_the_cpu(tiny_input, tmp_path):
    """hardware=gpu at the tiny sizes: both steps fit on the GPU, their evaluations run on the CPU (the phase does not
    move the models back after Lightning's teardown: the module docstring says why), and the checkpoints load. With
    the evaluations moved to the GPU this run died with "an illegal memory access" on an H100 (2026-11-28); whether the
    fits alone pass here was not yet run on a GPU."""
    qs = [a for a in QS_TINY if not a.startswith("hardware=")]
    proc = run_cli(["phase=quietstar", f"phase.input={tiny_input}", "hardware=gpu", *qs], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for step in ("baking", "rl"):
        assert (f"{step} devices: fit on cuda:0, evaluations after it on cpu (Lightning moved the model to the CPU "
                "when the fit ended; this phase evaluates it there)") in proc.stdout.splitlines()
    for name in ("baked", "reasoning"):
        load_model(tmp_path / "outputs" / "artifacts" / "quietstar" / name)


@pytest.mark.slow   # ~11 s; test_quietstar_wiring tags each check in-process, in the fast tier
def test_a_fit_under_another_precision_reruns_its_last_check_where_the_baked_model_was_measured(tiny_input, tmp_path):
    """hardware.precision=bf16-mixed on the CPU (as a GPU fit runs bf16): the fit's checks run under autocast, the
    baked model's accuracies and check 0 in fp32 outside it, so the last check is re-run after the fit in fp32 and
    rl/improvement_over_baked pairs like with like. Its held-out accuracy then equals an fp32 measurement of the
    published model; the default fp32 fit (test_quietstar_cli_both_steps) reruns nothing."""
    from agentforge.data.build import eval_sets
    from agentforge.training.rl_module import task_accuracy

    proc = run_cli(["phase=quietstar", "step=rl", f"phase.input={tiny_input}", *QS_TINY,
                    "hardware.precision=bf16-mixed"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rl: the last check (episode 2) re-run after the fit on the CPU in fp32" in proc.stdout
    model, tok, _ = load_model(tmp_path / "outputs" / "artifacts" / "quietstar" / "reasoning")
    cfg = compose_cfg(["phase=quietstar", *QS_TINY], tmp_path)
    evals = eval_sets(OmegaConf.to_container(cfg.data, resolve=True), int(cfg.seed), 2, "test", "phase.rl.eval_examples")
    with torch.no_grad():
        fp32 = task_accuracy(model, tok, evals, 2)
    saved = json.loads((tmp_path / "outputs" / "artifacts" / "quietstar" / "reasoning" / "metrics.json").read_text())
    assert saved["rl/final_arc_accuracy"] == fp32["arc"] and saved["rl/final_gsm8k_accuracy"] == fp32["gsm8k"]
