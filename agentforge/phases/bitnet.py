"""Phase 4, BitNet: compress a Cognate-family model to ternary 1.58-bit weights (BitNet b1.58, Ma et al.
2024, arXiv:2402.17764), calibrate its 8-bit activation scales on real rows, store it packed, evaluate it
before and after, and fine-tune with the straight-through estimator when the accuracy drop is too large.

    python -m agentforge phase=bitnet
    python -m agentforge phase=bitnet phase.input=outputs/artifacts/cognate/model1 phase.fine_tune=always

Input: ``{artifacts}/quietstar/reasoning`` or ``phase.input``. Output: ``{artifacts}/bitnet/compressed``
(packed safetensors + config.json, loadable with ``agentforge.artifacts.load_any``), and in the run dir
the fp32/fp16 reference files the ratio is measured against, tables, plots and compression_config.json.
Accuracy is the share of the held-out GSM8K (exact match), ARC-Easy and PIQA (choice) questions answered
right, pooled (with the default equal set sizes, the mean of the three task accuracies); the accuracy drop is
relative, 100 * (before - after) / before percent, paired on the same questions, with its n, 95 % CI and McNemar's
exact p, and the speedup is the median of per-round ratios of interleaved timings with its CI
(``quant/report.py``).
"""
from __future__ import annotations

import copy
import math
import statistics
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from agentforge.artifacts import load_model, publish
from agentforge.data.build import build_datamodule, eval_sets
from agentforge.errors import ConfigError
from agentforge.evals import tasks
from agentforge.evals.speed import halting_distribution, interleaved_forward_times
from agentforge.io import CheckpointError, pipeline_copy_hint, save_tensors, source_fields
from agentforge.phases.context import run_context
from agentforge.phases.rules import PHASE_RULES
from agentforge.quant import calibrate, convert, native
from agentforge.quant.checkpoint import (
    ARCHITECTURE,
    choose_kernels,
    kernel_summary,
    load_packed,
    save_packed,
    unique_state,
)
from agentforge.quant.recovery import RecoveryCallback
from agentforge.quant.report import (
    accuracy_evidence,
    breakdown,
    drop_line,
    pooled_accuracy,
    print_summary,
    speedup_evidence,
)
from agentforge.tracking import plots
from agentforge.tracking.spec_config import flat_config
from agentforge.training.lm_module import LMModule
from agentforge.training.trainer import build_trainer

RULES = PHASE_RULES["bitnet"]
MB = 2**20


def input_dir(cfg) -> Path:
    if cfg.phase.get("input"):
        return Path(str(cfg.phase.input)).expanduser().absolute()
    default = Path(cfg.paths.artifacts).absolute() / "quietstar" / "reasoning"
    if not (default / "config.json").is_file():
        raise CheckpointError(f"{default}: no Quiet-STaR reasoning checkpoint — run phase=quietstar first, "
                              f"or pass phase.input=DIR (any Cognate-family checkpoint){pipeline_copy_hint(default)}")
    return default


def quant_knobs(p) -> dict:
    return {"threshold": float(p.sparsity_threshold), "per_channel": bool(p.per_channel),
            "act_bits": None if p.activation_bits is None else int(p.activation_bits),
            "act_scale": str(p.activation_scale)}


def evaluate(model, tokenizer, val_rows, evals, p) -> dict:
    """Perplexity, each question's 1/0 correctness ("correct": {task: [...]}, in the order of ``evals[task]``), the
    task accuracies and the pooled accuracy (the composite)."""
    was = model.training
    model.eval()
    try:
        loss = tasks.mean_loss(model, val_rows)
        gens = tasks.gsm8k_generations(model, tokenizer, evals["gsm8k"], int(p.gen_tokens))
        correct = {"gsm8k": tasks.gsm8k_correct(gens, evals["gsm8k"]),
                   "arc": tasks.choice_correct(model, tokenizer, evals["arc"], "arc"),
                   "piqa": tasks.choice_correct(model, tokenizer, evals["piqa"], "piqa")}
        out = {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "accuracy": pooled_accuracy(correct),
               "correct": correct, **{f"{k}_accuracy": sum(c) / max(len(c), 1) for k, c in correct.items()},
               "halting_steps": float(halting_distribution(model, val_rows).mean())}  # ACT steps set the compute
        return out
    finally:
        model.train(was)


def relative_drop(before: float, after: float) -> float:
    """Percent of the accuracy lost; 0 when nothing was there to lose and nothing was lost."""
    if before > 0:
        return 100.0 * (before - after) / before
    return 0.0 if after >= before else math.inf


def fine_tune_needed(mode: str, drop: float, max_drop: float) -> bool:
    """``phase.fine_tune``: "always", "never", or "auto": only when the relative accuracy drop (%) of the compressed
    model exceeds ``phase.max_accuracy_drop`` (a drop equal to it does not trigger). "auto" acts on the point drop,
    not on its CI: fine-tuning is a cheap safety action, not a claim that the drop is real; whether the drop meets
    the threshold is decided from its CI in the summary (``quant.report.print_summary``) and the pipeline report."""
    return mode == "always" or (mode == "auto" and drop > max_drop)


def run(cfg) -> dict:
    p = cfg.phase
    if p.activation_scale == "static" and p.activation_bits is None:
        raise ConfigError("phase.activation_scale=static needs phase.activation_bits (got null)")
    src = input_dir(cfg)
    model, tokenizer, _ = load_model(src)
    unused, leaves = convert.unmatched_patterns(model, list(p.preserved_layers))
    if unused:   # a misspelled [lm_hed] quantized lm_head without a word: the ratio and drop of another model
        raise ConfigError(f"phase.preserved_layers: {unused} match no module of the model (names end in {leaves})")
    data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    seed, seq_len = int(cfg.seed), int(cfg.data.seq_len)
    if seq_len > model.config.max_seq_len:   # else its first evaluation raises, inside the run
        raise ConfigError(f"data.seq_len={seq_len} exceeds the input model's max_seq_len={model.config.max_seq_len} "
                          f"({src}): lower data.seq_len")
    stages = [{"epochs": max(int(p.fine_tune_epochs), 1), "mix": OmegaConf.to_container(p.fine_tune_mix)}]
    dm = build_datamodule(data_cfg, tokenizer, stages=stages, seed=seed,
                          steps_per_epoch=int(p.fine_tune_steps_per_epoch), val_rows=int(p.val_rows))
    n_cal, bs = int(p.calibration_samples), int(data_cfg["batch_size"])
    cal_dm = build_datamodule(data_cfg, tokenizer, stages=stages, seed=seed + 1,
                              steps_per_epoch=math.ceil(n_cal / bs), val_rows=1)
    evals = eval_sets(data_cfg, seed, int(p.eval_examples))
    tags = ["phase4", "bitnet", "compression", "quantization"]
    with run_context(cfg, run_name="phase4-bitnet-compression", group="phase4-bitnet", tags=tags,
                     job_type="bitnet", spec=flat_config(cfg, "bitnet")) as ctx:
        t_start = time.perf_counter()
        tr, run_dir = ctx.tracker, ctx.run_dir
        print(f"BitNet b1.58: compressing {src} ({model.num_params():,} parameters); run dir {run_dir}")
        val_rows, cal_rows = dm.val_rows_tensor(), cal_dm.train_rows(0)[:n_cal]
        # reference files of the same model: what the compression ratio is measured against
        state = unique_state(model)   # a tied embedding once, as in the packed file
        ref32 = save_tensors(run_dir / "reference" / "fp32.safetensors", {k: v.float() if v.is_floating_point() else v
                                                                         for k, v in state.items()})
        ref16 = save_tensors(run_dir / "reference" / "fp16.safetensors", {k: v.half() if v.is_floating_point() else v
                                                                         for k, v in state.items()})
        before = evaluate(model, tokenizer, val_rows, evals, p)
        print(f"before: perplexity {before['perplexity']:.2f}  accuracy {before['accuracy']:.3f}")

        qmodel = copy.deepcopy(model)
        names = convert.convert_to_bitlinear(qmodel, list(p.preserved_layers), **quant_knobs(p))
        if not names:
            raise ConfigError(f"phase.preserved_layers={list(p.preserved_layers)} preserves every linear layer; "
                              f"nothing is left to quantize")
        stats = calibrated(tr, model, qmodel, cal_rows, names, p)
        layer_rows = log_compression(tr, qmodel, p)
        ckpt_dir = run_dir / "checkpoints" / "compressed"
        loaded = pack_and_reload(qmodel, tokenizer, ckpt_dir, p, src)
        after = evaluate(loaded, tokenizer, val_rows, evals, p)
        drop = relative_drop(before["accuracy"], after["accuracy"])
        print(f"after compression: perplexity {after['perplexity']:.2f}  accuracy {after['accuracy']:.3f}  drop "
              f"{drop_line(drop, accuracy_evidence(before['correct'], after['correct'], evals, drop))}")
        needed = fine_tune_needed(str(p.fine_tune), drop, float(p.max_accuracy_drop))
        curve, shipped = None, {"final/accuracy_drop_before_finetune": drop, "final/shipped": "compressed"}
        if needed and int(p.fine_tune_epochs) > 0:
            ptq_state = copy.deepcopy(qmodel.state_dict())
            recovery = fine_tune(ctx, cfg, qmodel, tokenizer, dm, val_rows, evals, after["accuracy"])
            if recovery is None:   # a DDP rank other than 0: it trained; rank 0 evaluates, times and writes
                return {}
            loaded = pack_and_reload(qmodel, tokenizer, ckpt_dir, p, src)
            tuned = evaluate(loaded, tokenizer, val_rows, evals, p)
            recovery.finish(tuned["accuracy"])
            curve = recovery.curve
            if tuned["accuracy"] < after["accuracy"]:   # it lost accuracy: the model before fine-tuning ships
                print(f"fine-tuning lowered the validation accuracy ({after['accuracy']:.3f} -> "
                      f"{tuned['accuracy']:.3f}): the compressed model before fine-tuning ships")
                qmodel.load_state_dict(ptq_state)
                loaded = pack_and_reload(qmodel, tokenizer, ckpt_dir, p, src)
            else:
                after, shipped["final/shipped"] = tuned, "compressed + fine-tuned"
                print(f"the fine-tuned model ships; its drop mixes compression with {int(p.fine_tune_epochs) * int(p.fine_tune_steps_per_epoch)} "
                      f"training steps the fp32 reference did not get, and it was chosen on these validation "
                      f"questions (the pipeline's row recomputes the drop on the eval test sets)")
            layer_rows = convert.layer_stats(qmodel, str(p.packing), _itemsize(p))
        native.offer(p.native_kernel)  # a candidate for decoding once built
        choose_kernels(loaded)  # once, on the model that ships (a fine-tuned one replaces the first reload)
        before["rounds_s"], after["rounds_s"] = interleaved_forward_times([model, loaded], seq_len, int(p.speed_repeats))
        log_kernel_choice(ctx.tracker, loaded)
        result = finalize(ctx, cfg, before, after, layer_rows, stats, ckpt_dir, ref32, ref16, needed, curve,
                          time.perf_counter() - t_start, evals, convert.zero_counts(loaded))  # the model that ships
        tr.summary(shipped)
        result["metrics"].update(shipped)
        return result


def log_kernel_choice(tr, model) -> None:
    """speed/* keys: the packed model's kernel per regime, chosen at load by ``select_kernel``, and the
    medians (ms) it was chosen on: prefill = a 64-token forward, decode = per KV-cached one-token step."""
    info = getattr(model, "bitnet_kernel", None)
    if not info:
        return
    names = {"kernel": "prefill_kernel", "int8_ms": "prefill_int8_ms", "float_ms": "prefill_float_ms"}
    tr.log({f"speed/{names.get(k, k)}": v for k, v in info.items()})
    print(f"kernels chosen by measurement: {kernel_summary(info)}")


def _itemsize(p) -> int:
    return {"float16": 2, "bfloat16": 2, "float32": 4}[str(p.preserved_dtype)]


def calibrated(tr, model, qmodel, cal_rows, names, p) -> dict:
    """Activation statistics of the full-precision model on the calibration rows; sets the clips."""
    def on_batch(done, running):
        tr.log({"calibration/sample": done, "calibration/layer_activations": running})

    stats = calibrate.activation_stats(model, cal_rows, names, int(p.calibration_batch_size),
                                       float(p.calibration_percentile), int(p.activation_bits or 8), on_batch)
    calibrate.apply_clips(qmodel, stats)
    gammas = {n: qmodel.get_submodule(n).ternary()[1] for n in names}
    tr.log({"calibration/scale_factors": {n: st["scale"] for n, st in stats.items()},
            "calibration/weight_scales": {n: float(g.mean()) for n, g in gammas.items()}})
    tr.table("calibration/layer_stats", ["Layer", "Tokens", "Mean |x|", "Mean token absmax", "Max token absmax",
                                         "Clip", "Activation scale", "Weight scale (mean gamma)"],
             [[n, st["tokens"], st["abs_mean"], st["absmax_mean"], st["absmax_max"], st["clip"], st["scale"],
               float(gammas[n].mean())] for n, st in stats.items()])
    print(f"calibrated {len(stats)} layers on {len(cal_rows)} rows ({cal_rows[:, :-1].numel():,} tokens)")
    return stats


def log_compression(tr, qmodel, p) -> list[dict]:
    rows = convert.layer_stats(qmodel, str(p.packing), _itemsize(p))
    for i, r in enumerate(rows):
        tr.log({"compression/layer": i, "compression/layer_name": r["name"],
                "compression/original_params": r["original_params"], "compression/quantized_params": r["quantized_params"],
                "compression/preserved_params": r["preserved_params"], "compression/sparsity": r["sparsity"],
                "compression/compression_ratio": r["compression_ratio"]})
        tr.log({"compression/layers_compressed": i + 1, "compression/total_layers": len(rows),
                "compression/progress": (i + 1) / len(rows)})
    return rows


def pack_and_reload(qmodel, tokenizer, ckpt_dir: Path, p, src: Path):
    """Write the packed checkpoint, load it back, and check the ternary values came back exactly."""
    save_packed(ckpt_dir, qmodel, tokenizer, scheme=str(p.packing), preserved_dtype=str(p.preserved_dtype),
                meta={"phase": "bitnet", "source": str(src), **source_fields(src)})
    loaded, _, _ = load_packed(ckpt_dir, choose_kernel=False)  # default kernels; chosen once at the end
    for name, layer in convert.bitlinear_layers(qmodel):
        codes, gamma = layer.ternary()
        got_codes, got_gamma = loaded.get_submodule(name).ternary()
        if not (torch.equal(codes, got_codes) and torch.equal(gamma, got_gamma)):
            raise RuntimeError(f"packed round trip changed layer {name}")  # a bug, not a user error
    return loaded


def fine_tune(ctx, cfg, qmodel, tokenizer, dm, val_rows, evals, base_accuracy: float) -> RecoveryCallback | None:
    """STE fine-tuning of the latent weights through the shared Lightning path (LMModule + build_trainer);
    returns the recovery callback, whose last point ``finish`` takes from the reloaded packed model; None on a
    DDP rank other than 0 (``trainer.is_global_zero``, as Cognate): rank 0 alone evaluates, times and writes."""
    p = cfg.phase
    epochs, steps = int(p.fine_tune_epochs), int(p.fine_tune_steps_per_epoch)
    optim_cfg = {**OmegaConf.to_container(cfg.optimizer, resolve=True), "lr": float(p.fine_tune_lr)}
    module = LMModule(qmodel, optim_cfg, epochs * steps, "stop")
    cb = RecoveryCallback(ctx.tracker, lambda m: evaluate(m, tokenizer, val_rows, evals, p), base_accuracy, epochs)
    trainer = build_trainer(OmegaConf.to_container(cfg.hardware, resolve=True), loggers=ctx.loggers, callbacks=[cb],
                            max_epochs=epochs, default_root_dir=ctx.run_dir, enable_checkpointing=False,
                            gradient_clip_val=float(p.gradient_clip) or None, enable_progress_bar=False)
    print(f"fine-tuning with the STE: {epochs} epochs x {steps} steps, lr {float(p.fine_tune_lr):g}")
    trainer.fit(module, datamodule=dm)
    qmodel.eval()
    return cb if trainer.is_global_zero else None


def finalize(ctx, cfg, before, after, layer_rows, stats, ckpt_dir, ref32, ref16, needed, curve, seconds, evals, counts):
    p, tr, run_dir = cfg.phase, ctx.tracker, ctx.run_dir
    packed_bytes = (ckpt_dir / "model.safetensors").stat().st_size
    fp32_bytes, fp16_bytes = ref32.stat().st_size, ref16.stat().st_size
    ratio, ratio16 = fp32_bytes / packed_bytes, fp16_bytes / packed_bytes
    quant_rows = [r for r in layer_rows if r["quantized"]]
    # sparsity / zero / nonzero: the whole model, each tensor once; *_ternary: the BitLinear weights alone
    zeros, n_params, zeros_t, n_quant = (counts[k] for k in ("zeros", "params", "ternary_zeros", "ternary_params"))
    drop = relative_drop(before["accuracy"], after["accuracy"])
    evidence = accuracy_evidence(before["correct"], after["correct"], evals, drop)
    speed = speedup_evidence(before["rounds_s"], after["rounds_s"])   # median of per-round ratios, its CI
    ms_before, ms_after = (1e3 * statistics.median(x["rounds_s"]) for x in (before, after))
    evaluation = {
        "evaluation/accuracy_before": before["accuracy"], "evaluation/accuracy_after": after["accuracy"],
        "evaluation/accuracy_drop": before["accuracy"] - after["accuracy"], "evaluation/accuracy_drop_percent": drop,
        "evaluation/perplexity_before": before["perplexity"], "evaluation/perplexity_after": after["perplexity"],
        "evaluation/perplexity_increase": after["perplexity"] - before["perplexity"],
        "evaluation/inference_time_before_ms": ms_before, "evaluation/inference_time_after_ms": ms_after,
        "evaluation/inference_speedup": speed["value"], "evaluation/inference_speedup_n": speed["n"],
        "evaluation/inference_speedup_ci95": speed["ci95"],
        "evaluation/model_size_before_mb": fp32_bytes / MB, "evaluation/model_size_after_mb": packed_bytes / MB,
        "evaluation/compression_ratio": ratio, "evaluation/compression_ratio_vs_fp16": ratio16,
        "evaluation/sparsity_overall": zeros / max(n_params, 1), "evaluation/zero_params": zeros,
        "evaluation/nonzero_params": n_params - zeros, "evaluation/total_params": n_params,
        "evaluation/sparsity_ternary": zeros_t / max(n_quant, 1), "evaluation/zero_params_ternary": zeros_t,
        "evaluation/nonzero_params_ternary": n_quant - zeros_t,
        **{f"evaluation/{k}_before": before[f"{k}_accuracy"] for k in ("gsm8k", "arc", "piqa")},
        **{f"evaluation/{k}_after": after[f"{k}_accuracy"] for k in ("gsm8k", "arc", "piqa")},
        "evaluation/avg_halting_steps_before": before["halting_steps"],
        "evaluation/avg_halting_steps_after": after["halting_steps"],
        **{k: v for k, v in evidence.items() if k.startswith("evaluation/")},
    }
    tr.log(evaluation)
    final = {"final/compression_ratio": ratio, "final/compression_ratio_vs_fp16": ratio16,
             "final/preserved_dtype": str(p.preserved_dtype), "final/accuracy_drop": drop,
             # the thresholds this phase's verdicts used, so the pipeline's rows decide at the same ones
             "final/compression_ratio_threshold": float(p.min_compression),
             "final/accuracy_drop_threshold": float(p.max_accuracy_drop),
             **{k: v for k, v in evidence.items() if k.startswith("final/")},
             "final/inference_speedup": speed["value"], "final/inference_speedup_n": speed["n"],
             "final/inference_speedup_ci95": speed["ci95"], "final/inference_speedup_test": speed["test"],
             "final/sparsity": evaluation["evaluation/sparsity_overall"], "final/total_time_hours": seconds / 3600,
             "final/sparsity_ternary": evaluation["evaluation/sparsity_ternary"], "final/fine_tuning_needed": needed}
    tr.summary(final)
    # tables and charts
    tr.table("compression/layers", ["Layer", "Type", "Params", "Quantized", "Preserved", "Sparsity", "Compression"],
             [[r["name"], r["kind"], r["original_params"], r["quantized_params"], r["preserved_params"],
               r["sparsity"], r["compression_ratio"]] for r in layer_rows])
    tr.table("compression/breakdown", ["Layer Type", "Params", "Quantized", "Preserved", "Compression"],
             breakdown(layer_rows))
    labels, values = [r["name"] for r in layer_rows], [r["compression_ratio"] for r in layer_rows]
    bar_png = plots.bar_plot(run_dir / "plots" / "compression_by_layer.png", labels, values,
                             "Compression Ratio by Layer (fp32 bytes / stored bytes)", "ratio")
    tr.table("charts/compression_by_layer_data", ["Layer", "Compression Ratio"], [list(x) for x in zip(labels, values)])
    if tr.wandb is not None:
        import wandb

        table = wandb.Table(columns=["Layer", "Compression Ratio"], data=[list(x) for x in zip(labels, values)])
        tr.wandb.log({"charts/compression_by_layer": wandb.plot.bar(table, "Layer", "Compression Ratio",
                                                                     title="Compression Ratio by Layer")})
    tr.histogram("charts/sparsity_distribution", [r["sparsity"] for r in quant_rows])
    pngs = [bar_png]
    if curve is not None:
        pngs.append(plots.line_plot(run_dir / "plots" / "accuracy_recovery.png", curve["epoch"],
                                    {"accuracy": curve["accuracy"]}, "Accuracy Recovery During Fine-Tuning",
                                    "epoch", "accuracy composite"))
        tr.line_series("charts/accuracy_recovery", curve["epoch"], [curve["accuracy"]], ["accuracy"],
                       "Accuracy Recovery During Fine-Tuning", "epoch")
    for png in pngs:
        tr.image(f"charts/{png.stem}", png)
    config_json = tr.write_json("compression_config.json", {
        "architecture": ARCHITECTURE, "quantization": OmegaConf.to_container(p, resolve=True),
        "activation_calibration": stats,
        "bytes": {"packed": packed_bytes, "fp32": fp32_bytes, "fp16": fp16_bytes}, "layers": layer_rows})
    out_dir = Path(cfg.paths.artifacts).absolute() / "bitnet" / "compressed"
    publish(ckpt_dir, out_dir)
    tr.artifact("phase4-compressed-model", "model", [ckpt_dir], "BitNet 1.58-bit compressed model",
                {"compression_ratio": ratio, "accuracy_drop": drop, "size_mb": packed_bytes / MB})
    tr.artifact("phase4-compression-config", "config", [config_json], "Quantization configuration and scale factors")
    print_summary(p, evaluation, final, fp16_bytes, fp32_bytes, packed_bytes)
    return {"checkpoint": str(out_dir), "run_dir": str(run_dir), "metrics": {**evaluation, **final}}

