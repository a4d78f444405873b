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

Each step times its parts (``evals.speed.PartTimes``; the CUDA device synchronized at part boundaries only) and
reports them as ``time/<part>_s``, ``time/other_s`` and ``time/total_s`` in its run's summary and metrics.json and
as one printed line (``tracking.part_times.report_times``). Baking: load, data, open (the run and its loggers),
evidence_before, fit (less its validation and epoch checkpoints), control_fit, control_eval, evidence_after, report,
save. RL: load, data, open, accuracy (the held-out accuracies: the baked model's and each check's), anti_theater
(each check), fit (the episodes), checkpoint, thinking_cost, report, save. A last line times the whole phase.
Each step also logs and prints where its fit and the evaluations after it ran (``time/fit_device``,
``time/eval_device``, ``tracking.part_times.fit_devices``): with hardware=gpu, ``cuda:0`` and ``cpu`` — Lightning
returns the model to the CPU when a fit ends, so evidence_after, control_eval and thinking_cost run there (and
evidence_before and the RL's first accuracies and check, before the fits, too). Unlike the Cognate phase, this phase
does not move its models back (``hardware.eval_device`` is not read here): with every evaluation moved to the GPU
(``training.trainer.to_eval_device``) the default pipeline ran on an H100, but the tiny-config CUDA test
(``tests/test_quietstar.py``) died with "an illegal memory access" (2026-11-28). The likely cause, found later by
reading the code and simulating on the CPU: CUDA graphs captured in the evaluations before the fits replayed after
Lightning had freed the cuBLAS workspace they had captured (its accelerator clears the workspaces at every fit's
setup and teardown). ``models.graphs`` now gives each capture a workspace of its own (``_clear_cublas_workspaces``).
Until a GPU run confirms that fix, the tested CPU path stays.
"""
from __future__ import annotations

import copy
import shutil
from pathlib import Path

import torch
from omegaconf import OmegaConf, open_dict

from agentforge.artifacts import load_model
from agentforge.data import formats, synthetic
from agentforge.data.build import eval_sets
from agentforge.data.tokenizer import BOS_ID, PAD_ID
from agentforge.errors import ConfigError
from agentforge.evals.speed import PartTimes
from agentforge.io import CheckpointError, pipeline_copy_hint, source_fields
from agentforge.phases.context import timed_run_context
from agentforge.phases.quietstar_fit import fit_step, step_dirs, work_dir
from agentforge.phases.quietstar_report import finish_baking, finish_rl, phase_times_line
from agentforge.phases.rules import PHASE_RULES
from agentforge.reasoning import baking as bk
from agentforge.reasoning.rl import ThoughtConfig, check_sizes, document_windows, seen_windows
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
from agentforge.tracking.part_times import devices_line, fit_devices, report_times
from agentforge.tracking.spec_config import flat_config, step_optimizer
from agentforge.training.baking_module import BakingModule
from agentforge.training.rl_module import QuietStarModule, check_metrics, task_accuracy

RULES = PHASE_RULES["quietstar"]
QS_EVAL_REASON = "Lightning moved the model to the CPU when the fit ended; this phase evaluates it there"


def run(cfg) -> dict:
    step = cfg.get("step") or cfg.phase.step
    r = cfg.phase.rl
    if int(r.seq_len) < int(r.context_len) + int(r.n_true):
        raise ConfigError(f"phase.rl.seq_len ({r.seq_len}) must be >= phase.rl.context_len + phase.rl.n_true")
    dirs = step_dirs(cfg)   # each step's (input, output)
    ckpt = cfg.get("ckpt_path")
    if step == "both" and ckpt not in (None, "auto", "none", "fresh", "last", False):
        raise ConfigError(f"ckpt_path={ckpt}: a checkpoint file belongs to one step; add step=baking or step=rl")
    out: dict = {"metrics": {}}
    outs = {k: dst for k, (_, dst) in dirs.items()}
    phase, step_times = PartTimes(), {}   # the whole phase's line: each step's span, closing its run included
    if step in ("baking", "both"):
        src = dirs["baking"][0]
        with phase("baking"):
            times = PartTimes()   # the step's parts, from loading its input to its report
            with times("load"):
                loaded = _load(src, "run phase=evomerge first, or pass phase.input=DIR")
                if step == "both":  # step 2's sizes, before baking: the baked model keeps the input's max_seq_len
                    check_sizes(r, loaded[0].config.max_seq_len, _documents(loaded[1], int(cfg.seed), "test", HELDOUT_DOCS),
                                _seen(loaded[1], int(cfg.seed), r))
            res = run_baking(_sub(cfg, "phase3-step1-baking"), loaded, outs["baking"], src, times)
        _barrier()  # under DDP every rank reads the baked model only once rank 0 has published it
        if not res:  # a DDP rank other than 0: it trains, rank 0 writes
            if step == "baking":
                return {}
            res = {"metrics": {}, "checkpoint": None}
        out.update(checkpoint=res["checkpoint"], run_dir=str(Path(cfg.paths.run_dir).absolute()))
        out["metrics"].update(res["metrics"])
        step_times.update({"baking": res["times"]} if "times" in res else {})
    if step in ("rl", "both"):
        src = dirs["rl"][0]
        with phase("rl"):
            times = PartTimes()
            with times("load"):
                loaded = _load(src, "run phase=quietstar step=baking first, or pass phase.input=DIR")
            res = run_rl(_sub(cfg, "phase3-step2-rl"), loaded, outs["rl"], src, times)
        if not res:
            return {}
        out.update(checkpoint=res["checkpoint"], run_dir=str(Path(cfg.paths.run_dir).absolute()))
        out["metrics"].update(res["metrics"])
        step_times["rl"] = res["times"]
    for s in ([step] if step != "both" else ["baking", "rl"]):
        for d in ([outs[s], outs[s].with_name(outs[s].name + "_control")] if s == "baking" else [outs[s]]):
            shutil.rmtree(work_dir(d), ignore_errors=True)  # finished: nothing left to resume
    print(phase_times_line(phase, step_times))
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


def source_meta(src: Path, src_cfg: dict) -> dict:
    """What a step's checkpoint ``meta`` says of its input: the input's own ``meta`` (the chain back to Cognate), its
    directory and its weights' digest (``io.source_fields``: the directory is overwritten by the next publish)."""
    return {"source": src_cfg.get("meta", {}), **source_fields(src)}


def _load(src: Path, hint: str):
    if not (src / "config.json").is_file():
        raise CheckpointError(f"{src}: no input checkpoint for phase=quietstar — {hint}{pipeline_copy_hint(src)}")
    return load_model(src)


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
def run_baking(cfg, loaded, out_dir: Path, src: Path, times: PartTimes) -> dict:
    """Step 1 on ``loaded`` (model, tokenizer, config); ``times``: the step's parts (its input's loading already in)."""
    b, seed = cfg.phase.baking, int(cfg.seed)
    model, tok, src_cfg = loaded
    source = source_meta(src, src_cfg)
    with times("load"):
        ids = _prepare(model, tok, seed)
        teacher = _frozen(model)
    with times("data"):
        if b.examples_path:
            train, val = split_user_examples(load_examples(b.examples_path), int(b.val_per_strategy))
        else:
            train = generate_examples(int(b.examples_per_strategy), seed, "train")
            val = generate_examples(int(b.val_per_strategy), seed, "val")
        train_s, val_s = by_strategy(train), by_strategy(val)
        strategies = [s for s in STRATEGIES if train_s[s.key] and val_s[s.key]]
        if not strategies:   # before the run dir: nothing to bake or to validate on
            raise ConfigError(f"phase.baking.examples_path={b.examples_path}: no strategy has both training and "
                              "held-out examples (the last phase.baking.val_per_strategy of each strategy are held out, "
                              "at least one is trained on; a question also trained on is not held out): give each "
                              "strategy at least 2 examples with distinct questions")
        prompts = {s.key: tok.encode(s.prompt) for s in strategies}

        def pairs(records):
            return [(tok.encode(e["question"]), tok.encode(e["response"])) for e in records]

        train_p, val_p = ({s.key: pairs(by[s.key]) for s in strategies} for by in (train_s, val_s))
        usage_ids = {"thinking": [ids[THINK_START]], "strategy": [ids[t] for t in STRATEGY_TOKENS],
                     **{s.key: [ids[s.token]] for s in strategies}}
        ocfg = step_optimizer(cfg, "baking")
        module = BakingModule(model, teacher, train_p, val_p, prompts, b, ocfg, str(cfg.phase.on_nonfinite), seed,
                              cfg.phase.get("inject_nan_at_step"))
    module.part_times = times   # its per-epoch validation: the part "validation", inside "fit"
    tags = ["phase3", "step1", "prompt-baking", "supervised"]
    spec = flat_config(cfg, "baking", num_strategies=len(strategies), training_examples=len(train))
    with timed_run_context(cfg, times, run_name="phase3-step1-baking", group="phase3-quietstar", tags=tags,
                           job_type="quietstar", spec=spec) as ctx:
        tr = ctx.tracker
        tr.log({"config/num_special_tokens": len(ids), "config/num_strategies": len(strategies),
                "config/training_examples": len(train), "config/kl_coef": float(ocfg["kl_coef"])})
        print(f"Quiet-STaR step 1 (baking): {len(strategies)} strategies, {len(train)} examples; run dir {ctx.run_dir}")
        with times("evidence_before"):
            before = bk.bake_eval(model, teacher, val_p, prompts, b, usage_ids)
        with times("fit"):
            trainer, hours = fit_step(cfg, ctx, module, "baking", src, out_dir, int(b.epochs),
                                      float(cfg.phase.gradient_clip), times)
        control = _bake_control(cfg, teacher, train_p, val_p, prompts, ocfg, src, out_dir, times)
        if not trainer.is_global_zero:
            return {}
        devices = fit_devices(trainer, model)   # where evidence_after runs (finish_baking's save moves it to the CPU)
        # base=teacher: the frozen teacher is the model before baking, so run unprompted it is the unbaked student;
        # each validation example is scored before and after baking in one pass (the paired gain, prompt effect)
        with times("evidence_after"):
            final = bk.bake_eval(model, teacher, val_p, prompts, b, usage_ids,
                                 {k: v["teacher_usage"] for k, v in before["per"].items()}, base=teacher)
        tr.log({"baking/thinking_token_usage": final["thinking_usage"],
                "baking/strategy_token_usage": final["strategy_usage"]}, step=trainer.global_step)
        with times("report"):   # the checkpoint's save and publish inside it: the part "save"
            res = finish_baking(ctx, cfg, model, tok, source, strategies, before, final, module.history, hours,
                                train + val, out_dir, control, times)
        reported = report_times(ctx, times, "baking", res["files"], devices)
        print(devices_line(devices, "baking", QS_EVAL_REASON))
        return {**res, "times": reported}


def _bake_control(cfg, teacher, train_p, val_p, prompts, ocfg, src: Path, out_dir: Path,
                  times: PartTimes) -> dict | None:
    """``phase.baking.control=shuffled``: bake a copy of the input the same way (same examples, steps and seed) with
    each prompt's tokens shuffled, and score it against the real prompted teacher (``baking_evidence.
    control_evidence``). Its own Trainer logs nothing (its figures are in the step's summary) and resumes from
    ``baked_control.work``. Timed as ``control_fit`` (its validation and checkpoints included) and ``control_eval``."""
    b = cfg.phase.baking
    if str(b.control) == "none":
        return None
    with times("control_fit"):
        model = copy.deepcopy(teacher).requires_grad_(True)
        shuffled = bk.shuffled_prompts(prompts, int(cfg.seed))
        module = BakingModule(model, teacher, train_p, val_p, shuffled, b, ocfg, str(cfg.phase.on_nonfinite),
                              int(cfg.seed))
        trainer, _ = fit_step(cfg, None, module, "baking_control", src, out_dir.with_name(out_dir.name + "_control"),
                              int(b.epochs), float(cfg.phase.gradient_clip))
    if not trainer.is_global_zero:
        return None
    with times("control_eval"):
        return bk.bake_eval(model, teacher, val_p, prompts, b, base=teacher)


# ---------------------------------------------------------------- step 2: Quiet-STaR RL
HELDOUT_DOCS = 40  # held-out (test-split) documents per task, one anti-theater window in each of eval_windows of them
TRAIN_DOCS = 200   # training-split documents per task in the RL training stream


def _documents(tok, seed: int, split: str, n: int) -> list[torch.Tensor]:
    """``n`` rendered GSM8K-format problems and ``n`` plain texts of ``split``, each one document (BOS ... EOS);
    a held-out split's are distinct problems (``synthetic.generate``)."""
    return [torch.tensor(tok.encode(formats.render(rec, formats.TASK_FORMAT[task]), bos=True, eos=True),
                         dtype=torch.long)
            for task in ("arithmetic", "plain_text") for rec in synthetic.generate(task, n, seed, split)]


def _stream(tok, seed: int, split: str, n: int) -> torch.Tensor:
    """The documents of ``_documents`` as one token stream (documents separated by their EOS)."""
    return torch.cat(_documents(tok, seed, split, n))


def _fit_numerics_differ(trainer) -> bool:
    """Whether the fit's checks ran on another device or precision than the evaluations outside it (the CPU in fp32:
    Lightning's teardown returns the model there). Then the last check's accuracies, paired against the baked model's
    for rl/improvement_over_baked, would compare a device and precision change along with the RL update (an audit:
    under CPU bf16 autocast 6 of 8 greedy answers of a tiny model changed against fp32)."""
    return trainer.strategy.root_device.type != "cpu" or str(trainer.precision) not in ("32-true", "32", "64-true", "64")


def _seen(tok, seed: int, r) -> set[bytes]:
    """The RL training stream's windows of ``phase.rl`` (r) context_len + n_true tokens (``rl.seen_windows``)."""
    return seen_windows(_stream(tok, seed, "train", TRAIN_DOCS), int(r.context_len) + int(r.n_true))


def run_rl(cfg, loaded, out_dir: Path, src: Path, times: PartTimes) -> dict:
    """Step 2 on ``loaded`` (model, tokenizer, config); ``times``: the step's parts (its input's loading already in)."""
    r, seed = cfg.phase.rl, int(cfg.seed)
    model, tok, src_cfg = loaded
    source = source_meta(src, src_cfg)
    with times("load"):
        ids = _prepare(model, tok, seed)
        ref = _frozen(model)
        ocfg = step_optimizer(cfg, "rl")
        tc = ThoughtConfig(int(r.num_thoughts), int(r.thought_length), int(r.n_true), int(r.context_len),
                           float(r.temperature), float(ocfg["kl_coef"]))
        with torch.random.fork_rng():  # the head's initial weights depend on the seed alone, not on what ran before
            torch.manual_seed(seed)
            head = MixingHead(model.config.d_model, init_weight=float(r.mixing_init_weight))
    with times("data"):
        tids = {"start": ids[THINK_START], "end": ids[THINK_END],
                "banned": [PAD_ID, BOS_ID, ids[THINK_START], ids[THINK_END]]}
        train_stream, held = _stream(tok, seed, "train", TRAIN_DOCS), _documents(tok, seed, "test", HELDOUT_DOCS)
        seen = seen_windows(train_stream, tc.context_len + tc.n_true)   # no held-out window is training text
        check_sizes(r, model.config.max_seq_len, held, seen)  # before the run dir exists
        # one window per held-out document (distinct problems), the documents drawn without replacement: the windows
        # are the independent units of the checks' CIs. The test split, as the accuracies below: Cognate stopped early
        # on val-split rows (2 of the 4 arithmetic problems of its val rows were among the old val windows' documents)
        eval_windows = document_windows(held, int(r.eval_windows), tc.context_len, tc.n_true,
                                        torch.Generator().manual_seed(seed + 1), seen)
        # the test split: EvoMerge chose the champion on the val split's first questions (its selection set), so
        # val questions would score the lineage on what selected it (4 of 4 ARC and PIQA questions were)
        evals = eval_sets(OmegaConf.to_container(cfg.data, resolve=True), seed, int(r.eval_examples), "test",
                          "phase.rl.eval_examples")
        module = QuietStarModule(model, ref, head, train_stream, eval_windows, evals, tok, tc, tids, r, ocfg,
                                 float(cfg.phase.gradient_clip), str(cfg.phase.on_nonfinite), seed)
    module.part_times = times   # each check: the parts "anti_theater" and "accuracy" (inside "fit" too)
    tags = ["phase3", "step2", "quiet-star", "rl", "reinforce"]
    with timed_run_context(cfg, times, run_name="phase3-step2-rl", group="phase3-quietstar", tags=tags,
                           job_type="quietstar", spec=flat_config(cfg, "rl")) as ctx:
        tr = ctx.tracker
        tr.log({"config/num_thoughts": tc.num_thoughts, "config/thought_length": tc.thought_length,
                "config/kl_coef": tc.kl_coef, "config/num_episodes": int(r.num_episodes)})
        print(f"Quiet-STaR step 2 (rl): {r.num_episodes} episodes, {tc.num_thoughts} thoughts x {tc.thought_length} "
              f"tokens at {r.thought_positions} positions x {r.batch_size} sequences; run dir {ctx.run_dir}")
        with times("accuracy"):
            baked_acc = task_accuracy(ref, tok, evals, int(r.gen_tokens))
        first = module.check(0)  # before training (a resumed run gets its checks back from the checkpoint)
        module.history["checks"] = [first]
        tr.log({k: v for k, v in check_metrics(first).items()}, step=0)
        with times("fit"):
            trainer, hours = fit_step(cfg, ctx, module, "rl", src, out_dir, QuietStarModule.epochs(r), 0.0, times)
        if not trainer.is_global_zero:
            return {}
        devices = fit_devices(trainer, model)   # before finish_rl's save moves the model to the CPU
        if _fit_numerics_differ(trainer):   # the last check ran in the fit: on its device, under its precision
            last = module.history["checks"][-1]
            module.history["checks"][-1] = module.check(last["episode"])   # where check 0 and the baked model ran
            print(f"rl: the last check (episode {last['episode']}) re-run after the fit on the CPU in fp32, where the "
                  f"baked model's accuracies and the first check were measured (the fit ran on {devices['time/fit_device']}"
                  f" at precision {trainer.precision})")
        with times("report"):   # "thinking_cost" and "save" are parts inside it
            res = finish_rl(ctx, cfg, model, head, tok, tc, tids, source, module.history, baked_acc, hours, out_dir,
                            times)
        reported = report_times(ctx, times, "rl", res["files"], devices)
        print(devices_line(devices, "rl", QS_EVAL_REASON))
        return {**res, "times": reported}
