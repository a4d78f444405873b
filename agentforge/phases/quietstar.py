"""Phase 3, Quiet-STaR: bake 10 reasoning strategies into the weights, then learn to think with RL.

    python -m agentforge phase=quietstar                 # step 1 (baking) then step 2 (rl)
    python -m agentforge phase=quietstar step=rl phase.input=outputs/artifacts/quietstar/baked

Step 1 (W&B run ``phase3-step1-baking``) reads ``{artifacts}/evomerge/champion`` (or ``phase.input``),
adds the 12 special tokens, bakes each strategy's prompt (``reasoning/baking.py``) and publishes
``{artifacts}/quietstar/baked``. Step 2 (``phase3-step2-rl``) trains Quiet-STaR thoughts on the baked
model (``reasoning/thoughts.py``, ``rl.py``) with a KL leash to it, runs the anti-theater checks, and
publishes ``{artifacts}/quietstar/reasoning`` (a plain Cognate checkpoint plus ``mixing_head.safetensors``;
nothing downstream loads the head, and the step's held-out accuracies are answered directly, without thoughts).

Both steps are LightningModules (``training/baking_module.py``, ``training/rl_module.py``) trained by the
shared ``build_trainer``: the ``hardware`` group (cpu / gpu / ddp / fsdp, precision), gradient clipping
(``phase.gradient_clip``), the NaN policy (``phase.on_nonfinite``) and the loggers behave as in Cognate.
Each step writes an epoch checkpoint to ``{artifacts}/quietstar/{baked,reasoning}.work/last.ckpt``; the
same command run again after a crash resumes each step from it (``ckpt_path``: auto / last / FILE /
fresh, as Cognate), and the work dirs are removed when the command completes. Both steps train with the
model in eval mode (the memory bank held fixed, see ``FrozenPair``).
"""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import torch
from omegaconf import OmegaConf, open_dict

from agentforge.artifacts import load_model, publish, save_model
from agentforge.data import formats, synthetic
from agentforge.data.build import eval_sets
from agentforge.data.tokenizer import BOS_ID, PAD_ID
from agentforge.errors import ConfigError
from agentforge.io import CheckpointError, pipeline_copy_hint, save_tensors, write_json_atomic, write_text_atomic
from agentforge.phases.context import run_context
from agentforge.phases.quietstar_fit import fit_step, work_dir
from agentforge.phases.rules import PHASE_RULES
from agentforge.reasoning import baking as bk
from agentforge.reasoning import baking_evidence as be
from agentforge.reasoning import measures
from agentforge.reasoning.rl import ThoughtConfig, check_sizes, sample_windows
from agentforge.reasoning.strategies import (
    STRATEGIES,
    by_strategy,
    generate_examples,
    load_examples,
    split_user_examples,
)
from agentforge.reasoning.thoughts import MixingHead
from agentforge.reasoning.tokens import (
    STRATEGY_TOKENS,
    THINK_END,
    THINK_START,
    add_reasoning_tokens,
    resize_vocab,
)
from agentforge.tracking import plots
from agentforge.training.baking_module import BakingModule
from agentforge.training.rl_module import QuietStarModule, check_metrics, task_accuracy

RULES = PHASE_RULES["quietstar"]


def run(cfg) -> dict:
    step = cfg.get("step") or cfg.phase.step
    r = cfg.phase.rl
    if int(r.seq_len) < int(r.context_len) + int(r.n_true):
        raise ConfigError(f"phase.rl.seq_len ({r.seq_len}) must be >= phase.rl.context_len + phase.rl.n_true")
    artifacts = Path(cfg.paths.artifacts).absolute()
    given = Path(cfg.phase.input).absolute() if cfg.phase.get("input") else None
    ckpt = cfg.get("ckpt_path")
    if step == "both" and ckpt not in (None, "auto", "none", "fresh", "last", False):
        raise ConfigError(f"ckpt_path={ckpt}: a checkpoint file belongs to one step; add step=baking or step=rl")
    out: dict = {"metrics": {}}
    outs = {"baking": artifacts / "quietstar" / "baked", "rl": artifacts / "quietstar" / "reasoning"}
    if step in ("baking", "both"):
        src = given or artifacts / "evomerge" / "champion"
        loaded = _load(src, "run phase=evomerge first, or pass phase.input=DIR")
        if step == "both":  # step 2's sizes, before baking: the baked model keeps the input's max_seq_len
            check_sizes(r, loaded[0].config.max_seq_len, len(_stream(loaded[1], int(cfg.seed), "val", VAL_DOCS)))
        res = run_baking(_sub(cfg, "phase3-step1-baking"), loaded, outs["baking"], src)
        _barrier()  # under DDP every rank reads the baked model only once rank 0 has published it
        if not res:  # a DDP rank other than 0: it trains, rank 0 writes
            if step == "baking":
                return {}
            res = {"metrics": {}, "checkpoint": None}
        out.update(checkpoint=res["checkpoint"], run_dir=str(Path(cfg.paths.run_dir).absolute()))
        out["metrics"].update(res["metrics"])
    if step in ("rl", "both"):
        src = given if (step == "rl" and given) else artifacts / "quietstar" / "baked"
        res = run_rl(_sub(cfg, "phase3-step2-rl"), _load(src, "run phase=quietstar step=baking first, or pass phase.input=DIR"),
                     outs["rl"], src)
        if not res:
            return {}
        out.update(checkpoint=res["checkpoint"], run_dir=str(Path(cfg.paths.run_dir).absolute()))
        out["metrics"].update(res["metrics"])
    for s in ([step] if step != "both" else ["baking", "rl"]):
        for d in ([outs[s], outs[s].with_name(outs[s].name + "_control")] if s == "baking" else [outs[s]]):
            shutil.rmtree(work_dir(d), ignore_errors=True)  # finished: nothing left to resume
    return out


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def _sub(cfg, name: str):
    """The config with this step's own run dir (two W&B runs, two sets of files)."""
    sub = copy.deepcopy(cfg)
    with open_dict(sub):
        sub.paths.run_dir = str(Path(cfg.paths.run_dir).absolute() / name)
    return sub


def _load(src: Path, hint: str):
    if not (src / "config.json").is_file():
        raise CheckpointError(f"{src}: no input checkpoint for phase=quietstar — {hint}{pipeline_copy_hint(src)}")
    return load_model(src)


def _optimizer_cfg(cfg, step: str) -> dict:
    return {**OmegaConf.to_container(cfg.optimizer, resolve=True),
            **OmegaConf.to_container(cfg.phase[step].optimizer, resolve=True)}


def _prepare(model, tok, seed: int) -> dict[str, int]:
    """Add the 12 tokens; rows of tokens new to this tokenizer are initialized from the trained rows."""
    known = set(tok.special_tokens)
    ids = add_reasoning_tokens(tok)
    new = [i for t, i in ids.items() if t not in known]
    resize_vocab(model, tok.vocab_size, new, torch.Generator().manual_seed(seed))
    return ids


def _frozen(model):
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


# ---------------------------------------------------------------- step 1: prompt baking
def run_baking(cfg, loaded, out_dir: Path, src: Path) -> dict:
    b, seed = cfg.phase.baking, int(cfg.seed)
    model, tok, src_cfg = loaded
    ids = _prepare(model, tok, seed)
    if b.examples_path:
        train, val = split_user_examples(load_examples(b.examples_path), int(b.val_per_strategy))
    else:
        train = generate_examples(int(b.examples_per_strategy), seed, "train")
        val = generate_examples(int(b.val_per_strategy), seed, "val")
    train_s, val_s = by_strategy(train), by_strategy(val)
    strategies = [s for s in STRATEGIES if train_s[s.key] and val_s[s.key]]
    prompts = {s.key: tok.encode(s.prompt) for s in strategies}

    def pairs(records):
        return [(tok.encode(e["question"]), tok.encode(e["response"])) for e in records]

    train_p, val_p = ({s.key: pairs(by[s.key]) for s in strategies} for by in (train_s, val_s))
    usage_ids = {"thinking": [ids[THINK_START]], "strategy": [ids[t] for t in STRATEGY_TOKENS],
                 **{s.key: [ids[s.token]] for s in strategies}}
    teacher = _frozen(model)
    ocfg = _optimizer_cfg(cfg, "baking")
    module = BakingModule(model, teacher, train_p, val_p, prompts, b, ocfg, str(cfg.phase.on_nonfinite), seed,
                          cfg.phase.get("inject_nan_at_step"))
    tags = ["phase3", "step1", "prompt-baking", "supervised"]
    with run_context(cfg, run_name="phase3-step1-baking", group="phase3-quietstar", tags=tags, job_type="quietstar") as ctx:
        tr = ctx.tracker
        tr.log({"config/num_special_tokens": len(ids), "config/num_strategies": len(strategies),
                "config/training_examples": len(train), "config/kl_coef": float(ocfg["kl_coef"])})
        print(f"Quiet-STaR step 1 (baking): {len(strategies)} strategies, {len(train)} examples; run dir {ctx.run_dir}")
        before = bk.bake_eval(model, teacher, val_p, prompts, b, usage_ids)
        trainer, hours = fit_step(cfg, ctx, module, "baking", src, out_dir, int(b.epochs), float(cfg.phase.gradient_clip))
        control = _bake_control(cfg, teacher, train_p, val_p, prompts, ocfg, src, out_dir)
        if not trainer.is_global_zero:
            return {}
        # base=teacher: the frozen teacher is the model before baking, so run unprompted it is the unbaked student;
        # each validation example is scored before and after baking in one pass (the paired gain, prompt effect)
        final = bk.bake_eval(model, teacher, val_p, prompts, b, usage_ids, {k: v["teacher_usage"] for k, v in before["per"].items()},
                             base=teacher)
        tr.log({"baking/thinking_token_usage": final["thinking_usage"],
                "baking/strategy_token_usage": final["strategy_usage"]}, step=trainer.global_step)
        return _finish_baking(ctx, cfg, model, tok, src_cfg, strategies, before, final, module.history, hours,
                              train + val, out_dir, control)


def _bake_control(cfg, teacher, train_p, val_p, prompts, ocfg, src: Path, out_dir: Path) -> dict | None:
    """``phase.baking.control=shuffled``: bake a copy of the input the same way (same examples, steps and seed) with
    each prompt's tokens shuffled, and score it against the real prompted teacher (``baking_evidence.
    control_evidence``). Its own Trainer logs nothing (its figures are in the step's summary) and resumes from
    ``baked_control.work``."""
    b = cfg.phase.baking
    if str(b.control) == "none":
        return None
    model = copy.deepcopy(teacher).requires_grad_(True)
    shuffled = bk.shuffled_prompts(prompts, int(cfg.seed))
    module = BakingModule(model, teacher, train_p, val_p, shuffled, b, ocfg, str(cfg.phase.on_nonfinite),
                          int(cfg.seed))
    trainer, _ = fit_step(cfg, None, module, "baking_control", src, out_dir.with_name(out_dir.name + "_control"),
                      int(b.epochs), float(cfg.phase.gradient_clip))
    if not trainer.is_global_zero:
        return None
    return bk.bake_eval(model, teacher, val_p, prompts, b, base=teacher)


def _finish_baking(ctx, cfg, model, tok, src_cfg, strategies, before, final, hist, hours, examples, out_dir,
                   control: dict | None) -> dict:
    tr, b = ctx.tracker, cfg.phase.baking
    thr = float(b.convergence_threshold)
    per, per0 = final["per"], before["per"]
    rows = [be.strategy_row(s, per, per0, int(cfg.seed)) for s in strategies]
    tr.table("baking/strategy_accuracy_table", ["Strategy", "Accuracy [95% CI]", "Threshold", "Verdict",
                                                "Accuracy before baking", "Gain [95% CI, paired]",
                                                "Prompt-effect positions", "Prompt-effect accuracy [95% CI]",
                                                "KL before", "KL after", "Token usage (baked, no prompt)",
                                                "Token usage (prompted)"], rows)
    summary = {**be.baking_summary(final, thr, int(cfg.seed), control),
               "baking/total_epochs": len(hist["epoch"]), "baking/training_time_hours": hours,
               "baking/initial_val_loss": before["val_loss"], "baking/final_val_loss": final["val_loss"],
               "baking/thinking_token_usage": final["thinking_usage"],
               "baking/strategy_token_usage": final["strategy_usage"]}
    tr.summary(summary)
    tr.line_series("charts/baking_convergence", hist["epoch"], [hist["train_acc"], hist["val_acc"]],
                   ["Train Accuracy", "Val Accuracy"], "Prompt Baking Convergence", "epoch")
    png = plots.line_plot(ctx.run_dir / "plots" / "baking_convergence.png", hist["epoch"],
                          {"train agreement": hist["train_acc"], "val agreement": hist["val_acc"]},
                          "Prompt baking: agreement with the prompted model", "epoch")
    tr.image("charts/baking_convergence_png", png)
    data_file = ctx.run_dir / "reasoning_dataset.jsonl"
    write_text_atomic(data_file, "".join(json.dumps(e) + "\n" for e in examples))
    ckpt = ctx.run_dir / "checkpoints" / "baked"
    model.cpu()
    meta = {"phase": "quietstar", "step": "baking", "source": src_cfg.get("meta", {}), "accuracy": final["overall"]}
    save_model(ckpt, model, tok, meta)
    write_json_atomic(ckpt / "metrics.json", {**summary, "strategies": final["per"]})
    publish(ckpt, out_dir)
    tr.artifact("phase3-baked-model", "model", [ckpt], "Model after prompt baking (Step 1)", {"accuracy": final["overall"]})
    tr.artifact("phase3-reasoning-dataset", "dataset", [data_file],
                f"{len(examples)} reasoning examples generated by Agent Forge (10 strategies)")
    print(f"baked: {out_dir}\nagreement with the prompted model {summary['baking/initial_accuracy']:.4f} -> "
          f"{final['overall']:.4f}, >= {thr:g}: {summary['baking/final_accuracy_verdict']} "
          f"({summary['baking/final_accuracy_why']}); val KL {before['val_loss']:.2e} -> {final['val_loss']:.2e}; "
          f"token usage: thinking {final['thinking_usage']:.2f}, strategy {final['strategy_usage']:.2f}")
    return {"checkpoint": str(out_dir), "metrics": summary}


# ---------------------------------------------------------------- step 2: Quiet-STaR RL
VAL_DOCS = 40  # held-out documents per task in the stream of the anti-theater windows


def _stream(tok, seed: int, split: str, n: int) -> torch.Tensor:
    """A token stream of rendered GSM8K-format problems and plain text, documents separated by EOS."""
    ids: list[int] = []
    for task in ("arithmetic", "plain_text"):
        fmt = formats.TASK_FORMAT[task]
        for rec in synthetic.generate(task, n, seed, split):
            ids += tok.encode(formats.render(rec, fmt), bos=True, eos=True)
    return torch.tensor(ids, dtype=torch.long)


def run_rl(cfg, loaded, out_dir: Path, src: Path) -> dict:
    r, seed = cfg.phase.rl, int(cfg.seed)
    model, tok, src_cfg = loaded
    ids = _prepare(model, tok, seed)
    ref = _frozen(model)
    ocfg = _optimizer_cfg(cfg, "rl")
    tc = ThoughtConfig(int(r.num_thoughts), int(r.thought_length), int(r.n_true), int(r.context_len),
                       float(r.temperature), float(ocfg["kl_coef"]))
    with torch.random.fork_rng():  # the head's initial weights depend on the seed alone, not on what ran before
        torch.manual_seed(seed)
        head = MixingHead(model.config.d_model, init_weight=float(r.mixing_init_weight))
    tids = {"start": ids[THINK_START], "end": ids[THINK_END], "banned": [PAD_ID, BOS_ID, ids[THINK_START], ids[THINK_END]]}
    train_stream, val_stream = _stream(tok, seed, "train", 200), _stream(tok, seed, "val", VAL_DOCS)
    check_sizes(r, model.config.max_seq_len, len(val_stream))  # before the run dir exists
    # one window per held-out sequence, the sequences disjoint (drawn without replacement): the windows share no
    # token, so they are the independent units of the checks' CIs
    eval_windows = sample_windows(val_stream, int(r.eval_windows), int(r.seq_len), 1, tc.context_len, tc.n_true,
                                  torch.Generator().manual_seed(seed + 1), disjoint=True)
    evals = eval_sets(OmegaConf.to_container(cfg.data, resolve=True), seed, int(r.eval_examples))
    module = QuietStarModule(model, ref, head, train_stream, eval_windows, evals, tok, tc, tids, r, ocfg,
                             float(cfg.phase.gradient_clip), str(cfg.phase.on_nonfinite), seed)
    tags = ["phase3", "step2", "quiet-star", "rl", "reinforce"]
    with run_context(cfg, run_name="phase3-step2-rl", group="phase3-quietstar", tags=tags, job_type="quietstar") as ctx:
        tr = ctx.tracker
        tr.log({"config/num_thoughts": tc.num_thoughts, "config/thought_length": tc.thought_length,
                "config/kl_coef": tc.kl_coef, "config/num_episodes": int(r.num_episodes)})
        print(f"Quiet-STaR step 2 (rl): {r.num_episodes} episodes, {tc.num_thoughts} thoughts x {tc.thought_length} "
              f"tokens at {r.thought_positions} positions x {r.batch_size} sequences; run dir {ctx.run_dir}")
        baked_acc = task_accuracy(ref, tok, evals, int(r.gen_tokens))
        first = module.check(0)  # before training (a resumed run gets its checks back from the checkpoint)
        module.history["checks"] = [first]
        tr.log({k: v for k, v in check_metrics(first).items()}, step=0)
        trainer, hours = fit_step(cfg, ctx, module, "rl", src, out_dir, QuietStarModule.epochs(r), 0.0)
        if not trainer.is_global_zero:
            return {}
        return _finish_rl(ctx, cfg, model, head, tok, tc, tids, src_cfg, module.history, baked_acc, hours, out_dir)


def _mean(xs) -> float:
    return sum(xs) / max(len(xs), 1)


def _ci(ci) -> str:
    """'[lo, hi]', or 'no CI' where there is none (an undefined correlation has a NaN CI)."""
    if ci is None or any(x != x for x in ci):
        return "no CI"
    return f"[{ci[0]:+.3f}, {ci[1]:+.3f}]"


def _corr_n(check: dict) -> int:
    """The correlation's n: windows where quality and accuracy both vary (checks from before it was kept: all)."""
    return check.get("correlation_n_informative", check["n_windows"])


def _finish_rl(ctx, cfg, model, head, tok, tc, tids, src_cfg, hist, baked_acc, hours, out_dir) -> dict:
    tr, r = ctx.tracker, cfg.phase.rl
    checks, reward_curve, coh_all = hist["checks"], hist["reward"], hist["coherence"]
    last = checks[-1]
    cost = measures.inference_ms(model, head, tok, tc, tids, int(r.inference_tokens))
    tail = reward_curve[-max(1, len(reward_curve) // 5):]
    summary = {"rl/final_reward": _mean(tail), "rl/final_coherence": last["coherence"],
               "rl/final_gsm8k_accuracy": last["gsm8k"], "rl/final_arc_accuracy": last["arc"],
               "rl/improvement_over_baked": last["gsm8k"] - baked_acc["gsm8k"],
               **measures.improvement_evidence(last.get("gsm8k_correct"), baked_acc["gsm8k_correct"]),
               **measures.accuracy_evidence(last), **cost, "rl/total_training_time_hours": hours,
               "anti_theater/final_all_passed": last["all_passed"], "anti_theater/final_divergence": last["divergence"],
               "anti_theater/final_ablation_drop": last["ablation_drop"],
               "anti_theater/final_correlation": last["correlation"], "anti_theater/final_n_windows": last["n_windows"],
               **{f"anti_theater/final_{k}_{s}": last[f"{k}_{s}"] for k in ("divergence", "ablation_drop", "correlation")
                  for s in ("ci95", "verdict")},
               **{f"anti_theater/final_{k}_n": last["n_windows"] for k in ("divergence", "ablation_drop")},
               # the correlation's n: windows where both quality and accuracy vary across the thoughts
               "anti_theater/final_correlation_n": _corr_n(last),
               "anti_theater/final_correlation_n_informative": _corr_n(last),
               "anti_theater/final_correlation_undefined_share": last.get("correlation_undefined_share"),
               "anti_theater/final_correlation_test": "within-window Pearson r pooled over all windows; n = windows "
                                                     "where quality and accuracy both vary; percentile bootstrap over "
                                                     "windows, undefined resamples dropped",
               **({"anti_theater/final_correlation_why": last["correlation_why"]} if last.get("correlation_why") else {})}
    tr.summary(summary)
    eps = list(range(1, len(reward_curve) + 1))
    tr.line_series("charts/rl_reward", eps, [reward_curve], ["reward"], "RL Training Reward", "episode")
    tr.histogram("charts/coherence_distribution", coh_all)
    xs = [c["episode"] for c in checks]
    series = {"Divergence": [c["divergence"] for c in checks], "Ablation Drop": [c["ablation_drop"] for c in checks],
              "Correlation": [c["correlation"] for c in checks]}
    tr.line_series("charts/anti_theater_trend", xs, list(series.values()), list(series), "Anti-Theater Metrics Over Training",
                   "episode")
    tr.image("charts/rl_reward_png", plots.line_plot(ctx.run_dir / "plots" / "rl_reward.png", eps, {"reward": reward_curve},
                                                     "Quiet-STaR reward (log-lik gain per token)", "episode"))
    tr.image("charts/anti_theater_trend_png", plots.line_plot(ctx.run_dir / "plots" / "anti_theater_trend.png", xs, series,
                                                              "Anti-theater metrics", "episode"))
    tr.table("anti_theater/checks", ["Episode", "n windows", "Divergence", "95% CI", "Verdict (>0.3)", "Ablation drop",
                                     "95% CI", "Verdict (>0.02)", "Correlation", "95% CI", "Verdict (>0.5)",
                                     "Correlation n (informative windows)", "All passed"],
             [[c["episode"], c["n_windows"], *[v for k in ("divergence", "ablation_drop", "correlation")
                                               for v in (c[k], _ci(c[f"{k}_ci95"]), c[f"{k}_verdict"])], _corr_n(c),
               c["all_passed"]] for c in checks])
    ckpt = ctx.run_dir / "checkpoints" / "reasoning"
    model.cpu()
    head.cpu()
    thought_cfg = {"num_thoughts": tc.num_thoughts, "thought_length": tc.thought_length, "n_true": tc.n_true,
                   "context_len": tc.context_len, "start_token": THINK_START, "end_token": THINK_END}
    meta = {"phase": "quietstar", "step": "rl", "source": src_cfg.get("meta", {}), "thoughts": thought_cfg,
            "mixing_head": "mixing_head.safetensors"}
    save_model(ckpt, model, tok, meta)
    save_tensors(ckpt / "mixing_head.safetensors", head.state_dict(), {"d_model": str(model.config.d_model)})
    write_json_atomic(ckpt / "metrics.json", {**summary, "anti_theater_checks": checks})
    publish(ckpt, out_dir)
    tr.artifact("phase3-reasoning-model", "model", [ckpt], "Model after Quiet-STaR RL (Step 2)",
                {"gsm8k_acc": last["gsm8k"], "coherence": last["coherence"], "inference_time_ms": cost["rl/inference_time_ms"]})
    flags = ", ".join(f"{k} {last[k]:+.3f} {_ci(last[f'{k}_ci95'])} {last[f'{k}_verdict']}" if last[k] == last[k]
                      else f"{k} undefined {last[f'{k}_verdict']}"
                      for k in ("divergence", "ablation_drop", "correlation"))
    flags += (f" (correlation n={_corr_n(last)} informative windows"
              + (f"; {last['correlation_why']}" if last.get("correlation_why") else "") + ")")
    print(f"reasoning: {out_dir}\nreward {summary['rl/final_reward']:+.4f}  coherence {last['coherence']:.3f}  "
          f"anti-theater (n={last['n_windows']} windows, 95% CI): {flags}; all passed: {last['all_passed']}\n"
          f"{measures.accuracy_line(summary)}\nthinking cost: {cost['rl/inference_time_ms']:.1f} ms/token with a "
          f"thought vs {cost['rl/inference_time_ms_without_thoughts']:.1f} without ({cost['rl/thinking_cost_ratio']:.1f}x, "
          f"95% CI [{cost['rl/thinking_cost_ratio_ci95'][0]:.1f}, {cost['rl/thinking_cost_ratio_ci95'][1]:.1f}], "
          f"{cost['rl/thinking_cost_ratio_n']} interleaved rounds)")
    return {"checkpoint": str(out_dir), "metrics": summary}
