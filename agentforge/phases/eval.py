"""Evaluate a checkpoint at a named stage and write ``eval_results/{stage}_results.json``.

    python -m agentforge phase=eval checkpoint=outputs/artifacts/cognate/model1 stage=baseline
    python -m agentforge phase=eval stage=after_surgery            # zero-init recursive wrapper
    python -m agentforge phase=eval stage=finetuned_vanilla        # fine-tune phase.finetune_steps, then eval
    python -m agentforge phase=eval stage=finetuned_recursive      # surgery, fine-tune, eval

Stages ``after_surgery`` and ``finetuned_recursive`` wrap the model with the recursive refiner
(``phase.recursive=auto``); the identity of the zero-initialized wrapper is checked and its largest
logit difference reported. ``finetuned_*`` stages fine-tune briefly (``phase.finetune_steps``, by
default 30) through the shared LMModule/Trainer and publish the result to ``{artifacts}/eval/{stage}``.
Results go to the run dir and to ``{artifacts}/eval_results/`` where ``phase=compare`` finds them.
"""
from __future__ import annotations

import json
import random
import re
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import torch
from omegaconf import OmegaConf

from agentforge.artifacts import load_any, publish, publish_json
from agentforge.data import formats, synthetic
from agentforge.data.build import eval_sets, file_records_of_split, held_out, per_format, training_file_prompts
from agentforge.data.datamodule import LMDataModule, pack_documents
from agentforge.errors import ConfigError
from agentforge.evals import checkpoints as recursive_ckpt
from agentforge.evals.collect import collect_metrics, gate_or_raise
from agentforge.evals.intervals import stage_intervals
from agentforge.evals.reference_fit import shortfall
from agentforge.evals.runner import EvalSettings, evaluate
from agentforge.evals.speed import memory_regime
from agentforge.io import source_fields, weights_sha256, write_json_atomic
from agentforge.models.surgery import ARCHITECTURE as RECURSIVE_ARCH
from agentforge.models.surgery import identity_gap, wrap
from agentforge.phases.context import run_context
from agentforge.phases.rules import PHASE_RULES
from agentforge.quant.checkpoint import ARCHITECTURE as PACKED_ARCH

RULES = PHASE_RULES["eval"]
RECURSIVE_STAGES = ("after_surgery", "finetuned_recursive")
HF_SPLITS = {"gsm8k": "test", "arc": "test", "piqa": "validation"}
_STAGE_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")   # no leading '.': '.' and '..' name the folders above


def pick(cfg, key: str):
    """The issue's top-level spelling (``checkpoint=``) wins over ``phase.KEY``."""
    top = cfg.get(key)
    return top if top is not None else cfg.phase.get(key)


def results_path(root: Path, stage: str) -> Path:
    return Path(root) / "eval_results" / f"{stage}_results.json"


def load_sets(cfg, n: int | dict[str, int], sources: dict | None = None) -> dict[str, list[dict]]:
    """Held-out test sets per format: synthetic, or data.eval_paths' file (less any record of data.path's train and
    val splits, and its val half: ``build.held_out``), or else — when data.path has that format — data.path's own
    test split (``build.file_records_of_split``); phase.hf_datasets replaces a format with `datasets`' split, put
    through the same filter and split. ``sources`` (when given) is filled with where each format's records came from."""
    data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    n, hf = per_format(n), cfg.phase.get("hf_datasets") or []
    paths = {f: p for f, p in (data_cfg.get("eval_paths") or {}).items() if p}
    replaced = {*hf, *([data_cfg.get("format") or "gsm8k"] if data_cfg.get("path") else [])} - set(paths)
    choice_key = "phase.choice_examples" if cfg.phase.get("choice_examples") else "phase.eval_examples"
    sets = eval_sets(data_cfg, int(cfg.seed), {f: 0 if f in replaced else k for f, k in n.items()}, split="test",
                     key={"gsm8k": "phase.eval_examples", "arc": choice_key, "piqa": choice_key})
    src = {f: str(paths.get(f) or "synthetic") for f in sets}
    if data_cfg.get("path"):
        fmt = data_cfg.get("format") or "gsm8k"
        if fmt not in ("gsm8k", "arc", "piqa"):
            raise ConfigError(f"data.format={fmt!r}: phase=eval scores gsm8k, arc or piqa files")
        if fmt not in paths:  # an eval file given for the format is used: it is the held-out set asked for
            sets[fmt] = file_records_of_split(data_cfg, "test", limit=n[fmt])
            src[fmt] = f"{data_cfg['path']} (data.path, test split)"
    other = training_file_prompts(data_cfg, "test") if hf else set()
    for name in hf:
        if name not in HF_SPLITS:
            raise ConfigError(f"phase.hf_datasets: {name!r} is not one of {sorted(HF_SPLITS)}")
        recs = formats.load_hf(name, HF_SPLITS[name])
        sets[name] = held_out(recs, name, other, "test", "phase.hf_datasets", f"{name}/{HF_SPLITS[name]}")[:n[name]]
        src[name] = f"hf:{name}/{HF_SPLITS[name]} (test half)"
    if sources is not None:
        sources.update(src)
    return sets


def eval_rows(sets: dict, tokenizer, seed: int, seq_len: int, n_rows: int) -> torch.Tensor:
    """[n_rows, seq_len + 1] rows of the held-out examples (+ synthetic prose) for perplexity, no document spanning
    two rows (``pack_documents``: the rows are the independent units of the perplexity comparisons' paired tests)."""
    texts = [formats.render(r, fmt) for fmt in ("gsm8k", "arc", "piqa") for r in sets.get(fmt, [])]
    texts += [r["text"] for r in synthetic.generate("plain_text", max(n_rows, 8), seed, "test")]
    random.Random(seed).shuffle(texts)
    rows = pack_documents(texts, tokenizer, seq_len)
    i = 0
    while len(rows) < n_rows and i < 50:  # small sets: add prose until the rows are there
        texts += [r["text"] for r in synthetic.generate("plain_text", 64, seed + i + 1, "test")]
        rows, i = pack_documents(texts, tokenizer, seq_len), i + 1
    return rows[:n_rows]


def finetune(ctx, cfg, model, tokenizer, steps: int) -> dict | None:
    """A short fine-tune through the shared LMModule and Trainer on the held-out-free training mix: ``steps``
    optimizer steps, under DDP too (each rank ``data.batch_size`` rows a step). None on a DDP rank other than 0
    (as Cognate's ``trainer.is_global_zero``): rank 0 alone evaluates, times and writes the results."""
    from agentforge.training.lm_module import LMModule
    from agentforge.training.trainer import build_trainer

    p = cfg.phase
    mix = OmegaConf.to_container(p.finetune_mix, resolve=True)
    dm = LMDataModule(tokenizer, [{"epochs": 1, "mix": mix}], seq_len=min(int(cfg.data.seq_len),
                      int(model.config.max_seq_len)), batch_size=int(cfg.data.batch_size), steps_per_epoch=steps,
                      val_rows=int(p.val_rows), seed=int(cfg.seed) + 1)
    optim = OmegaConf.to_container(cfg.optimizer, resolve=True)
    optim["lr"] = float(p.finetune_lr or optim["lr"])
    optim["warmup_steps"] = min(int(optim.get("warmup_steps", 0)), steps // 5)
    module = LMModule(model, optim, steps, on_nonfinite="skip", chunk_width=int(p.chunk_width))
    trainer = build_trainer(OmegaConf.to_container(cfg.hardware, resolve=True), loggers=ctx.loggers, callbacks=[],
                            max_epochs=1, max_steps=steps, default_root_dir=ctx.run_dir, gradient_clip_val=1.0,
                            enable_progress_bar=False, enable_checkpointing=False)
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    model.eval()
    seconds = time.perf_counter() - t0
    leave_process_group()
    if not trainer.is_global_zero:
        return None
    h = module.history
    return {"steps": int(trainer.global_step), "lr": optim["lr"], "seconds": seconds,
            "train_loss": h["train_loss"][-1] if h["train_loss"] else None,
            "val_loss": h["val_loss"][-1] if h["val_loss"] else None,
            "skipped_steps": module.skipped_steps, "unstable": module.skipped_steps > 0, "mix": mix}


def leave_process_group() -> None:
    """After a DDP fine-tune, on every rank: rank 0 then evaluates alone, so nothing it runs may wait on the other
    ranks, which have returned (``tasks.lm_metrics``' torchmetrics would sync its states over any process group it
    finds, and the run would fail when rank 1 exits). No collective is left: the fit has ended on every rank."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _guard_results_overwrite(artifacts: Path, ckpt: Path, stage: str | None = None) -> None:
    """Without ``stage=`` the stage is "baseline": refuse to replace the baseline results of *another* checkpoint
    that way (a forgotten ``stage=`` overwrote them silently); ``stage=NAME`` replaces them on purpose, with a
    one-line notice naming the checkpoint whose results it replaces."""
    f = results_path(artifacts, stage or "baseline")
    try:
        other = json.loads(f.read_text()).get("checkpoint")
    except (OSError, ValueError, AttributeError):
        return
    if other and Path(other).absolute() != ckpt:
        if stage:
            print(f"note: {f} holds stage {stage}'s results of another checkpoint ({other}); this run replaces them")
            return
        raise ConfigError(f"stage: not given, so it is 'baseline', and {f} holds the baseline of another checkpoint "
                          f"({other}); give stage=NAME for this one, or stage=baseline to replace that baseline")


def run(cfg) -> dict:
    p = cfg.phase
    if cfg.get("stages") is not None:
        raise ConfigError(f"stages={cfg.get('stages')} is phase=compare's; phase=eval evaluates one stage=NAME")
    stage = str(pick(cfg, "stage") or "baseline")
    if not _STAGE_NAME.match(stage):
        raise ConfigError(f"stage={stage!r}: use letters, digits, '_', '-' or '.' only, not starting with '.' "
                          "(the stage names its folder under artifacts/eval)")
    artifacts = Path(cfg.paths.artifacts).absolute()
    ckpt = Path(pick(cfg, "checkpoint") or artifacts / "cognate" / "model1").absolute()
    _guard_results_overwrite(artifacts, ckpt, stage if pick(cfg, "stage") else None)
    model, tokenizer, ck_cfg = load_any(ckpt)
    already = ck_cfg.get("architecture") == RECURSIVE_ARCH
    recursive = p.recursive if p.recursive != "auto" else (stage in RECURSIVE_STAGES or already)
    steps = p.finetune_steps if p.finetune_steps is not None else (30 if stage.startswith("finetuned") else 0)
    if steps > 0 and ck_cfg.get("architecture") == PACKED_ARCH:   # before the run dir: it would fail in its first step
        raise ConfigError(f"stage={stage}: fine-tuning needs float weights, and {ckpt} is a packed BitNet checkpoint "
                          "(ternary codes); evaluate it without fine-tuning (phase.finetune_steps=0) or fine-tune its "
                          "input model")
    s = EvalSettings(gen_tokens=int(p.gen_tokens), pass_k_samples=int(p.pass_k_samples),
                     pass_k=tuple(int(k) for k in p.pass_k), temperature=float(p.temperature),
                     latency_tokens=int(p.latency_tokens), chunk_width=int(p.chunk_width),
                     batch_size=int(p.batch_size), seed=int(cfg.seed))
    n_gsm, n_choice = int(p.eval_examples), int(p.choice_examples or p.eval_examples)
    sources: dict[str, str] = {}
    sets = load_sets(cfg, {"gsm8k": n_gsm, "arc": n_choice, "piqa": n_choice}, sources)
    seq_len = min(int(cfg.data.seq_len), int(model.config.max_seq_len))
    rows = eval_rows({f: v[:n_gsm] for f, v in sets.items()}, tokenizer, int(cfg.seed), seq_len, int(p.val_rows))
    tags = ["eval", stage] + (["recursive"] if recursive else [])
    with run_context(cfg, run_name=f"eval-{stage}", group="evaluation", tags=tags, job_type="eval") as ctx:
        tr = ctx.tracker
        surgery, ft = None, None
        if recursive and not already:
            base = model
            try:
                model = wrap(base, int(p.max_inner_steps), p.refine_hidden)
            except TypeError as exc:
                raise ConfigError(f"stage={stage} needs the recursive surgery: {exc}; set phase.recursive=false") from None
            gap = identity_gap(base, model, rows[:, :-1], s.batch_size)
            surgery = {"max_abs_logit_diff": gap, "tolerance": float(p.surgery_tolerance),
                       "identity_ok": gap <= float(p.surgery_tolerance), "added_params": model.added_params(),
                       "max_inner_steps": model.max_inner_steps}
            print(f"surgery: {model.added_params():,} zero-init refiner parameters; largest logit difference "
                  f"{gap:.3g} ({'OK' if surgery['identity_ok'] else 'EXCEEDS'} tolerance {p.surgery_tolerance})")
        if steps > 0:
            ft = finetune(ctx, cfg, model, tokenizer, int(steps))
            if ft is None:   # a DDP rank other than 0: it trained; rank 0 evaluates and writes
                return {}
            loss = {k: "–" if ft[k] is None else f"{ft[k]:.4f}" for k in ("train_loss", "val_loss")}
            print(f"fine-tuned {ft['steps']} steps: train loss {loss['train_loss']}, val loss {loss['val_loss']}")
        saved = None
        if (surgery or ft) and p.save_model:
            saved = save_stage_model(ctx.run_dir / "checkpoints" / stage, artifacts / "eval" / stage, model,
                                     tokenizer, {"phase": "eval", "stage": stage, "source": str(ckpt), **source_fields(ckpt)})
        print(f"evaluating {stage} ({sum(x.numel() for x in model.parameters()):,} params) from {ckpt}")
        res = evaluate_stage(model, tokenizer, sets, rows, s, p.get("native_kernel", "auto"))
        m = res["metrics"]
        cut = shortfall(res.get("reference_fit"))
        if cut:
            print(f"warning: {cut}; phase=compare gives no verdict on the accuracy targets (INCONCLUSIVE) for it")
        if m.get("gen/truncated_rate", 0) > 0:
            print(f"warning: {m['gen/truncated_rate']:.1%} of the GSM8K generations hit phase.gen_tokens={s.gen_tokens} "
                  f"without EOS; a final number running to the cut is not credited, so reasoning_accuracy may be low "
                  f"for length: raise phase.gen_tokens above the answers' length in tokens")
        if surgery:
            m["surgery_max_abs_diff"] = surgery["max_abs_logit_diff"]
        results = {"stage": stage, "checkpoint": str(ckpt), "checkpoint_weights_sha256": weights_sha256(ckpt),
                   "evaluated_checkpoint": saved or str(ckpt),
                   "architecture": RECURSIVE_ARCH if recursive else ck_cfg.get("architecture"),
                   "recursive": bool(recursive), "created": datetime.now(timezone.utc).isoformat(),
                   "seed": int(cfg.seed), "device": str(next(model.parameters()).device),
                   "torch_threads": torch.get_num_threads(), "settings": vars(s) | {"pass_k": list(s.pass_k)},
                   "datasets": {k: len(v) for k, v in sets.items()}, "dataset_sources": sources,
                   "eval_rows": list(rows.shape), "kernels": res["kernels"],
                   "metrics": m, "surgery": surgery, "finetune": ft, "timings_s": res["timings_s"],
                   "reference_fit": res.get("reference_fit"),
                   "memory_regime": memory_regime(next(model.parameters()).device, ft is not None),
                   "per_example": res["per_example"]}
        line = summary_line(stage, m, res["per_example"])   # all computed before anything is published
        out = write_json_atomic(results_path(ctx.run_dir, stage), results)
        stable = publish_json(results_path(artifacts, stage), results)
        report(tr, stage, results)
        print(line)
    collect_metrics(ctx.run_dir)
    gate = OmegaConf.to_container(p.gate, resolve=True) if p.get("gate") else {}
    if gate:
        gate_or_raise(results, {k if "." in k else f"metrics.{k}": v for k, v in gate.items()}, f"stage {stage}")
    return {"run_dir": str(ctx.run_dir), "report": str(stable), "results": str(out), "metrics": m,
            "checkpoint": saved, "published": [x for x in (saved, str(stable)) if x]}   # what a sweep's jobs share


SPEED_KEYS = ("forward_tokens_per_sec", "latency_ms", "latency_tokens", "decode_cached", "throughput_tokens_per_sec",
              "peak_memory_mb")


def evaluate_stage(model, tokenizer, sets: dict, rows: torch.Tensor, s: EvalSettings,
                   native_kernel: str | bool = "auto") -> dict:
    """``runner.evaluate``, with timing noise kept out of every quality figure. A packed BitNet model's kernels
    (int8 or float, which agree only to float rounding) are chosen by measurement (``choose_kernels``), so
    its losses, accuracies and generations are scored on the default kernels (``load_any`` chooses none),
    and only then are the kernels chosen and the speed figures (``SPEED_KEYS``) measured on that choice (one
    row's quality pass, discarded, comes with them); ``examples_per_sec`` is the quality pass's, on the
    default kernels. ``kernels``: which each used (None for a model without ternary layers). ``native_kernel``
    (``phase.native_kernel``, as ``phase=bitnet`` reads it: ``quant.native.wanted``) makes the native decode kernel a
    candidate; until 2026-11-28 it was one only where BitNet had built it earlier in the same process (the pipeline),
    so the same packed model's speed differed between ``phase=eval`` and the pipeline (an audit)."""
    from agentforge.quant.bitlinear import BitLinear
    from agentforge.quant.checkpoint import choose_kernels, kernel_summary

    frozen = [m for m in model.modules() if isinstance(m, BitLinear) and m.frozen]
    if not frozen:
        return {**evaluate(model, tokenizer, sets, rows, s), "kernels": None}
    from agentforge.quant import native

    native.offer(native_kernel)   # a decoding candidate once built (loads in ~0.1 s where make install built it)
    quality = {"prefill": frozen[0].kernel, "decode": frozen[0].kernel_decode}
    res = evaluate(model, tokenizer, sets, rows, replace(s, latency_tokens=0))
    chosen = choose_kernels(model)
    timed = evaluate(model, tokenizer, {}, rows[:1], s)
    res["metrics"].update({k: timed["metrics"][k] for k in SPEED_KEYS if k in timed["metrics"]})
    res["timings_s"]["speed"] = timed["timings_s"]["speed"]
    print(f"quality figures on the default kernels (prefill {quality['prefill']}, decode {quality['decode']}); "
          f"speed figures on the kernels chosen by measurement: {kernel_summary(chosen)}")
    res["kernels"] = {"quality": quality, "speed": {"prefill": chosen["kernel"], "decode": chosen.get("decode_kernel"),
                                                    "measured_ms": chosen}}
    return res


def save_stage_model(run_ckpt: Path, published: Path, model, tokenizer, meta: dict) -> str:
    if hasattr(model, "refine"):
        recursive_ckpt.save_recursive(run_ckpt, model, tokenizer, meta)
    else:
        from agentforge.artifacts import save_model

        save_model(run_ckpt, model, tokenizer, meta)
    publish(run_ckpt, published)
    return str(published)


def report(tr, stage: str, results: dict) -> None:
    """evaluation/{stage}/* scalars, the generations table and the chunk-length histogram."""
    m = results["metrics"]
    tr.summary({f"evaluation/{stage}/{k}": v for k, v in m.items() if isinstance(v, (int, float))})
    per = results["per_example"]
    if per.get("generations"):
        rows = [[i, g, c] for i, (g, c) in enumerate(zip(per["generations"], per["gsm8k_correct"]))]
        tr.table(f"evaluation/{stage}/generations", ["example", "generation", "correct"], rows)
    if per.get("chunk_lengths"):
        tr.histogram(f"evaluation/{stage}/chunk_lengths", per["chunk_lengths"])


def summary_line(stage: str, m: dict, per_example: dict | None = None) -> str:
    """The stage's figures on one line; the answer accuracies and the perplexity with [95% CI] and n."""
    keys = ("perplexity", "token_accuracy", "reasoning_accuracy", "pass_at_1", "pass_at_10", "arc_easy_accuracy",
            "piqa_accuracy", "throughput_tokens_per_sec", "latency_ms", "peak_memory_mb", "avg_refine_steps",
            "commit_rate", "stability_at_k")
    iv = stage_intervals(per_example or {})

    def cell(k):
        if f"{k}_ci95" not in iv:
            return f"{k} {m[k]:.4g}"
        lo, hi = iv[f"{k}_ci95"]
        return f"{k} {m[k]:.4g} [{lo:.4g}, {hi:.4g}] n={iv[f'{k}_n']}"
    return f"{stage}: " + "  ".join(cell(k) for k in keys if k in m)
