"""Phase 1, Cognate: pretrain one TRM-Titans-MAG model (``model=m1|m2|m3``) over a 3-stage curriculum.

    python -m agentforge phase=cognate model=m1
    python -m agentforge -m phase=cognate model=m1,m2,m3

Outputs: ``{artifacts}/cognate/model{id}/`` (model.safetensors, config.json, metrics.json) and the run
directory (same checkpoint, tables, plots, metrics.jsonl). A killed run resumes from
``{artifacts}/cognate/model{id}.work/last.ckpt`` when the same command is run again — only a checkpoint that this
config wrote and whose weights fit the model (``training/resume.py``: ``resume_path``, ``ckpt_path``).

Where its wall time goes (``evals.speed.PartTimes``, the CUDA device synchronized at part boundaries only):
``time/<part>_s``, ``time/other_s`` and ``time/total_s`` in its run's summary, its metrics.json and one printed line
(``tracking.part_times.report_times``). Parts: setup (config, model, data, resume check), open (the run and its
loggers), fit (the training steps), inside it validation (the loss), task_accuracy (the held-out GSM8K / ARC / PIQA
answers, ``TaskAccuracyCallback``) and checkpoint (``training/part_callbacks.py``), then report (summary, tables,
charts, artifacts) and in it held_out, save, latency, ablations, halting_check, recall_check, diversity_rows.
``time/fit_device`` and ``time/eval_device`` (also printed): where the fit ran and where the evaluations after it
ran; Lightning's teardown moves the model to the CPU when the fit ends, and the phase moves it back to the fit's
device (``hardware.eval_device=fit``, the default; ``cpu`` keeps it there: ``training.trainer.to_eval_device``). A
last line gives what closing the run (W&B's finish) took.
"""
from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping
from omegaconf import OmegaConf

from agentforge.artifacts import ARCHITECTURE, cognate_config_from, publish, save_model
from agentforge.data.build import build_datamodule, eval_sets
from agentforge.data.recall import FACT_CHARS as RECALL_FACT_CHARS
from agentforge.data.recall import recall_rows
from agentforge.data.tokenizer import RESERVED_VOCAB, ByteTokenizer
from agentforge.errors import ConfigError
from agentforge.evals.diversity import PER_ROW_KEY as DIVERSITY_ROWS
from agentforge.evals.diversity import per_row_features
from agentforge.evals.flops import counting_flops
from agentforge.evals.speed import PartTimes, forward_latency_ms
from agentforge.io import write_json_atomic
from agentforge.models import CognateModel
from agentforge.models.ablation import (
    VARIANTS,
    ablations,
    computation_rows,
    gate_line,
    halting_by_task,
    halting_verdict,
    recall_memory,
    recall_scope,
    token_scores,
)
from agentforge.phases.context import timed_run_context
from agentforge.phases.rules import PHASE_RULES, validate_curriculum
from agentforge.tracking import plots
from agentforge.tracking.callbacks import (
    CurriculumCallback,
    EpochTimeCallback,
    TaskAccuracyCallback,
    ThroughputCallback,
)
from agentforge.tracking.part_times import closing_line, devices_line, fit_devices, report_times
from agentforge.tracking.spec_config import flat_config
from agentforge.training.lm_module import LMModule
from agentforge.training.part_callbacks import TimedEpochCheckpoint, TimedValidation
from agentforge.training.resume import claim_work_dir, resume_path, resumed_note, start_work_dir
from agentforge.training.trainer import build_trainer, to_eval_device

RULES = PHASE_RULES["cognate"]


def model_dir(artifacts: Path, model_id: int) -> Path:
    return artifacts / "cognate" / f"model{model_id}"


def fingerprint(cfg) -> str:
    """Hash of everything that determines the trained weights (resume only continues the same run)."""
    keys = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("model", "data", "optimizer", "phase")}
    keys["seed"] = int(cfg.seed)
    return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:16]


def shared_settings(cfg) -> str:
    """Hash of what the three Cognate models must share to be compared (data, optimizer, phase, seed: everything
    ``fingerprint`` covers but the model), kept in each model's metrics.json (``SHARED_KEY``)."""
    keys = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("data", "optimizer", "phase")}
    keys["seed"] = int(cfg.seed)
    return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:16]


SHARED_KEY = "run/shared_settings"


def run(cfg) -> dict:
    times = PartTimes()   # where the phase's wall time goes (module docstring), from here to its report
    with times("setup"):   # the config, the tokenizer, the model, the data, the module, the resume check
        p, m = cfg.phase, cfg.model
        stages = OmegaConf.to_container(p.curriculum, resolve=True)
        validate_curriculum(stages)
        model_id = int(m.model_id)
        tokenizer = ByteTokenizer()
        model = CognateModel(cognate_config_from(OmegaConf.to_container(m, resolve=True), RESERVED_VOCAB))
        if int(cfg.data.seq_len) > model.config.max_seq_len:   # else the first training step raises
            raise ConfigError(f"data.seq_len={int(cfg.data.seq_len)} exceeds model.max_seq_len="
                              f"{model.config.max_seq_len} (the rotary table's length): lower data.seq_len or raise "
                              "model.max_seq_len")
        data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
        dm = build_datamodule(data_cfg, tokenizer, stages=stages, seed=int(cfg.seed),
                              steps_per_epoch=int(p.steps_per_epoch), val_rows=int(p.val_rows),
                              dataset_weights=OmegaConf.to_container(m.dataset_weights))
        evals = eval_sets(data_cfg, int(cfg.seed), int(p.eval_examples))
        total_steps = int(p.max_epochs) * int(p.steps_per_epoch)
        module = LMModule(model, OmegaConf.to_container(cfg.optimizer, resolve=True), total_steps, str(p.on_nonfinite),
                          inject_nan_at_step=p.get("inject_nan_at_step"))
        out_dir = model_dir(Path(cfg.paths.artifacts).absolute(), model_id)
        work_dir = out_dir.with_name(out_dir.name + ".work")
        fp = fingerprint(cfg)
        claim_work_dir(work_dir)   # no other live run decides about (or deletes) the last.ckpt below
        # the checkpoint's own fingerprint and its weights' names and shapes decide (training/resume.py), before the run
        resume = resume_path(cfg.get("ckpt_path"), work_dir, fp, expected=module.state_dict())
    tags, label = ["phase1", "cognate", f"model{model_id}", "pretraining"], f"Cognate model{model_id}"
    with timed_run_context(cfg, times, run_name=f"phase1-cognate-model{model_id}", group="phase1-cognate",
                           tags=tags, job_type="cognate", spec=flat_config(cfg, "cognate")) as ctx:
        print(f"{label} ({m.role}): {model.num_params():,} parameters; run dir {ctx.run_dir}")
        with times("fit"):   # less its validation loops and epoch checkpoints: parts of their own
            if resume:
                print(f"resuming from {resume}")
            start_work_dir(work_dir, fp, resume)  # starting fresh: the stale last.ckpt goes before the new fingerprint
            task_cb = TaskAccuracyCallback(tokenizer, evals, int(p.gen_tokens), times)
            usage_cb = MemoryUsageCallback()
            ckpt_cb = TimedEpochCheckpoint(work_dir / "last.ckpt", fp, times)   # also where the history continues
            callbacks = [EarlyStopping(monitor="val/loss", patience=int(p.early_stopping_patience), mode="min"),
                         ThroughputCallback(), EpochTimeCallback(), CurriculumCallback(ctx.tracker), task_cb, usage_cb,
                         ckpt_cb, TimedValidation(times)]
            trainer = build_trainer(OmegaConf.to_container(cfg.hardware, resolve=True), loggers=ctx.loggers,
                                    callbacks=callbacks, max_epochs=int(p.max_epochs), default_root_dir=ctx.run_dir,
                                    gradient_clip_val=float(p.gradient_clip) or None, enable_checkpointing=False)
            module.run_dir = ctx.run_dir
            trainer.fit(module, datamodule=dm, ckpt_path=resume)
            train_hours = module.fit_seconds() / 3600   # a resumed run: with the time before its checkpoint
            if resume:   # which of the killed run's logged steps count
                print(resumed_note(module.prior_fit_seconds, module.resumed_from_run, ckpt_cb.history_from, ctx.run_dir))
        if not trainer.is_global_zero:
            return {}
        model.eval()
        to_eval_device(cfg.hardware, model)   # Lightning's teardown moved it to the CPU; back to the fit's device
        devices = fit_devices(trainer, model)
        with times("report"):   # its evaluations and the save and publish: parts of their own
            result = finalize(ctx, cfg, model, tokenizer, module, dm, task_cb, usage_cb, train_hours, out_dir, times)
        with times("save"):
            shutil.rmtree(work_dir, ignore_errors=True)  # finished: nothing left to resume
        reported = report_times(ctx, times, label, result.pop("files"), devices)
        print(devices_line(devices, label))
        result["metrics"].update(reported)
    print(closing_line(times, reported, label))
    return result


class MemoryUsageCallback(Callback):
    """Each epoch's share of the memory's reads per slot, for the LTM heatmap. The memory's ``usage`` buffer adds up
    the read mass of every training pass since the model was made (and is saved with it), so an epoch's row is the
    difference from the previous snapshot (the first from the buffer as training starts: a resumed run's count
    before it is not this epoch's); a snapshot of the buffer itself made every row the share since training began."""

    def __init__(self):
        self.snapshots: list[list[float]] = []
        self._last: torch.Tensor | None = None

    def on_train_start(self, trainer, pl_module):
        mem = getattr(pl_module.model, "memory", None)
        if mem is not None:
            self._last = mem.usage.detach().float().cpu().clone()

    def on_train_epoch_end(self, trainer, pl_module):
        mem = getattr(pl_module.model, "memory", None)
        if mem is not None:
            u = mem.usage.detach().float().cpu().clone()
            epoch = u - self._last if self._last is not None else u
            self._last = u
            self.snapshots.append((epoch / epoch.sum().clamp(min=1e-9)).tolist())


def finalize(ctx, cfg, model, tokenizer, module, dm, task_cb, usage_cb, train_hours, out_dir: Path,
             times: PartTimes) -> dict:
    """Final metrics, the checkpoint export, the tables, charts and artifacts of the seed's Phase 1; each evaluation
    and the save and publish are parts of ``times``. Returns {checkpoint, run_dir, metrics, files: its metrics.json,
    in the run dir and published}."""
    tr, model_id = ctx.tracker, int(cfg.model.model_id)
    with times("held_out"):   # halting steps, memory usage and FLOPs on the held-out rows, halting on and off
        val_rows = dm.val_rows_tensor()
        halting, compute = held_out_figures(model, val_rows)
    accs = task_cb.last or task_cb.compute(model)   # the last validation's, unless none ran (resumed, no epoch left)
    val_loss = module.history["val_loss"][-1] if module.history["val_loss"] else float("nan")
    ckpt_dir = ctx.run_dir / "checkpoints" / f"model{model_id}"
    meta = {"phase": "cognate", "model_id": model_id, "role": str(cfg.model.role), "params": model.num_params()}
    with times("save"):
        save_model(ckpt_dir, model, tokenizer, meta)
    size_mb = (ckpt_dir / "model.safetensors").stat().st_size / 2**20
    with times("latency"):
        latency_ms = forward_latency_ms(model, int(cfg.data.seq_len), vocab=256)
    final = {
        "final/train_loss": module.history["train_loss"][-1] if module.history["train_loss"] else float("nan"),
        "final/val_loss": val_loss,
        "final/perplexity": math.exp(min(val_loss, 50.0)),
        "final/gsm8k_accuracy": accs.get("gsm8k_accuracy", float("nan")),
        "final/arc_accuracy": accs.get("arc_easy_accuracy", float("nan")),
        "final/piqa_accuracy": accs.get("piqa_accuracy", float("nan")),
        "final/total_training_time_hours": train_hours,
        SHARED_KEY: shared_settings(cfg),
        "final/model_size_mb": size_mb,
        "final/total_params": model.num_params(),
        "diversity/avg_halting_steps": float(halting.mean()),
        **compute,
        "diversity/inference_time_ms": latency_ms,
        # held-out rows, as diversity/avg_halting_steps (act/* are the last training batch's: an audit read act's
        # mean and variance beside this std, which did not square with them)
        "diversity/halting_steps_std": float(halting.std()),
        **{f"diversity/halting_share_step{n}": float((halting == n).float().mean())
           for n in range(1, model.config.max_steps + 1)},
    }
    t_abl = time.perf_counter()
    with times("ablations"):
        final.update(ablations(model, val_rows, seed=int(cfg.seed)))
    with times("halting_check"):   # computed digits vs letters
        rows, hard, easy = computation_rows(int(cfg.phase.get("halting_rows", 64)), int(cfg.data.seq_len),
                                            int(cfg.seed), tokenizer)
        final.update(halting_by_task(token_scores(model, rows)["steps"], hard, easy, seed=int(cfg.seed)))
    # the repeat lies beyond ONE attention window, not beyond the backbone's reach (stacked layers and recursion
    # steps: recall_scope), so the memory-off delta is what the trained model gets from its memory, not a
    # capability only the memory has; a gap past the reach would not fit the default 128-token rows
    gap = model.config.window + 8
    recall_note = None
    if recall_fits(int(cfg.data.seq_len), gap):
        with times("recall_check"):
            rec_rows, rec_mask = recall_rows(int(cfg.phase.get("recall_rows", 64)), int(cfg.data.seq_len),
                                             int(cfg.seed), "val", gap=gap, tokenizer=tokenizer)
            final.update(recall_memory(model, rec_rows, rec_mask, seed=int(cfg.seed)))
            recall_note, scope = recall_scope(model.config, gap)
            final.update(scope)
    else:
        print(f"recall ablation skipped: data.seq_len={cfg.data.seq_len} cannot hold a repeat {gap} characters "
              f"apart (beyond one {model.config.window}-token attention window)")
    final["ablation/seconds"] = time.perf_counter() - t_abl
    if module.rank_weight_spread is not None:  # a DDP fit: the replicas must have ended equal
        final["ddp/rank_weight_spread"] = module.rank_weight_spread
        if module.rank_weight_spread > 0:
            print(f"warning: the DDP ranks ended with different weights (largest spread of a tensor's sum or sum of "
                  f"squares {module.rank_weight_spread:.3g}); the checkpoint is rank 0's")
    tr.summary(final)
    with times("diversity_rows"):   # each held-out row measured alone, for the CI of the Phase 1 diversity
        per_row = per_row_features(model, val_rows)   # (evals.diversity); not a summary key
    with times("save"):
        write_json_atomic(ckpt_dir / "metrics.json", {**final, DIVERSITY_ROWS: per_row})
        publish(ckpt_dir, out_dir)
    # charts
    h = module.history
    loss_png = plots.line_plot(ctx.run_dir / "plots" / "loss_curve.png", [e + 1 for e in h["epoch"]],
                               {"train loss": h["train_loss"], "val loss": h["val_loss"]},
                               f"Cognate model{model_id}: loss", "epoch", "nats/token")
    tr.line_series("charts/loss_curve", [e + 1 for e in h["epoch"]], [h["train_loss"], h["val_loss"]],
                   ["Train Loss", "Val Loss"], "Training vs Validation Loss", "Epoch")
    tr.histogram("charts/act_distribution", halting.tolist())
    if usage_cb.snapshots:
        ltm_png = plots.heatmap(ctx.run_dir / "plots" / "ltm_heatmap.png", usage_cb.snapshots,
                                f"LTM slot usage (model{model_id})", "slot", "epoch", cbar_label="share of reads")
        tr.image("charts/ltm_heatmap", ltm_png)
    diversity_table(tr, out_dir.parent, final[SHARED_KEY])
    tr.table("ablation/table", ABLATION_COLUMNS, ablation_rows(final))
    tr.artifact(f"phase1-model{model_id}-checkpoint", "model", [ckpt_dir],
                f"Phase 1 Model {model_id} final checkpoint",
                {"params": model.num_params(), "size_mb": size_mb, "perplexity": final["final/perplexity"],
                 "gsm8k_acc": final["final/gsm8k_accuracy"], "architecture": ARCHITECTURE})
    tr.artifact(f"phase1-model{model_id}-config", "config", [ctx.run_dir / "config_resolved.yaml"],
                "Training configuration")
    tr.artifact(f"phase1-model{model_id}-curves", "plot", [loss_png], "Training loss curves")
    print(f"published: {out_dir}\nval loss {val_loss:.4f}  perplexity {final['final/perplexity']:.2f}  "
          f"gsm8k {final['final/gsm8k_accuracy']:.3f}  arc {final['final/arc_accuracy']:.3f}  "
          f"piqa {final['final/piqa_accuracy']:.3f} (n={int(cfg.phase.eval_examples)} questions each: "
          f"phase=eval measures more, with CIs)  halting {final['diversity/avg_halting_steps']:.2f}")
    print("ablations of this trained model (a mechanism switched off at inference: what the model relies on, not what "
          "training with it buys; loss delta = variant - reference, paired over rows: exact sign-flip test below 30 rows, "
          "bootstrap above; the CIs cover the rows, not the training seed: scripts/train_ablations.py trains without each "
          "mechanism across seeds):")
    for r in ablation_rows(final):
        print(f"  {r[0]:<20} loss {r[1]:.4f}  acc {r[2]:.3f}  delta {r[3]:+.4f} [{r[4]:+.4f}, {r[5]:+.4f}]  p {r[6]:.3g}")
    if recall_note:
        print(recall_note)
        if "ablation/recall_gate_digits" in final:
            print(gate_line(final))
    if not model.config.memory:
        print("model.memory=false: this model was trained with its memory reads off, so the memory-off rows compare it "
              "with itself (delta 0)")
    print(halting_summary(final, model.config.max_steps))
    return {"checkpoint": str(out_dir), "run_dir": str(ctx.run_dir), "metrics": final,
            "files": [ckpt_dir / "metrics.json", out_dir / "metrics.json"]}


def diversity_table(tr, cognate_root: Path, shared: str) -> list[int]:
    """diversity/model_comparison over the Cognate models trained so far with the same data, optimizer, phase
    settings and seed as this run (``shared_settings``; measured figures only). A model published with other
    settings (an earlier run's model2 while a changed pipeline retrains model1) is left out and named in a printed
    line, not shown beside this run's as if comparable. Returns the model ids in the table."""
    rows, ids, other = [], [], []
    for mid in (1, 2, 3):
        f = cognate_root / f"model{mid}" / "metrics.json"
        if f.is_file():
            d = json.loads(f.read_text())
            if d.get(SHARED_KEY) != shared:
                other.append(f"model{mid}")
                continue
            ids.append(mid)
            rows.append([f"Model {mid}", d["diversity/avg_halting_steps"], d["diversity/ltm_usage"],
                         d["diversity/inference_time_ms"], d["final/gsm8k_accuracy"]])
    if other:
        print(f"diversity/model_comparison leaves out {', '.join(other)}: published by a run with other data, "
              "optimizer or phase settings or another seed")
    if rows:
        tr.table("diversity/model_comparison", ["Model", "Halting Steps", "LTM Usage", "Inference Time (ms)",
                                                "GSM8K Acc"], rows)
    return ids



def held_out_figures(model, rows: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """``held_out_pass`` over the held-out rows, and again with halting off (every token run to ``max_steps``, the
    same rows: one more pass), for what halting saves: (per-token halting steps, the ``diversity/*`` figures)."""
    halting, usage, mflops = held_out_pass(model, rows)
    with model.ablate(halting=False):
        mflops_max = held_out_pass(model, rows)[2]
    return halting, {"diversity/ltm_usage": usage, "diversity/inference_mflops_per_token": mflops,
                     "diversity/inference_mflops_per_token_max_steps": mflops_max}


@torch.no_grad()
def held_out_pass(model, rows: torch.Tensor, batch_size: int = 16) -> tuple[torch.Tensor, float, float]:
    """One eval-mode forward pass over the held-out [N, T+1] rows, giving (per-token ACT halting steps,
    flattened; the mean share of the memory's slots filled at the end of each row (per-sequence banks);
    forward MFLOPs per token, counted by torch.utils.flop_counter (``evals.flops``: attention included) on the steps the model actually runs
    (halting skips rows and stops early: a row only once ALL its tokens have halted), so deterministic, not a
    timing)."""
    device = next(model.parameters()).device
    model.eval()
    steps, filled = [], 0.0
    with counting_flops(model) as fc:
        for i in range(0, len(rows), batch_size):
            batch = rows[i: i + batch_size, :-1].to(device)
            steps.append(model(batch).halting_steps.flatten().cpu())
            filled += model.memory.usage_fraction() * len(batch)
    return torch.cat(steps), filled / len(rows), fc.get_total_flops() / rows[:, :-1].numel() / 1e6


def recall_fits(seq_len: int, gap: int) -> bool:
    """Whether every held-out recall item fits a row of seq_len + 1 tokens: BOS, the fact (at most
    ``RECALL_FACT_CHARS`` bytes), a space, ``gap`` filler characters, a space, the fact again, EOS."""
    return 2 * RECALL_FACT_CHARS + gap + 4 <= seq_len + 1


def halting_compute(final: dict) -> str:
    """What halting saves: forward MFLOPs/token with halting vs every token run to max_steps, on the same rows
    (``held_out_figures``); empty for metrics without the max-steps figure."""
    key = "diversity/inference_mflops_per_token"
    if key + "_max_steps" not in final:
        return ""
    with_halting, at_max = final[key], final[key + "_max_steps"]
    saved = round(1 - with_halting / at_max, 4) + 0.0 if at_max else 0.0
    why = " — a row stops only when all its tokens have halted" if abs(saved) < 0.005 else ""
    return f"; compute {with_halting:.3g} vs {at_max:.3g} MFLOPs/token at max steps: {saved:.0%} saved{why}"


def halting_summary(final: dict, max_steps: int) -> str:
    """The halting histogram, digits vs letters with its CI, the non-inferiority verdict (a loss cost) and next to
    it the compute halting saves (``halting_compute``: a PASS that saves nothing is no win), in words."""
    hist = " ".join(f"{n}:{final[f'diversity/halting_share_step{n}']:.0%}" for n in range(1, max_steps + 1))
    pre = "ablation/halting_digits_minus_letters"
    margin = final["ablation/halting_noninferiority_margin"]
    worse = [-final["ablation/max_steps_loss_delta_ci_high"], -final["ablation/max_steps_loss_delta_ci_low"]]
    paired = (f"{final[pre + '_delta']:+.2f} [{final[pre + '_delta_ci_low']:+.2f}, {final[pre + '_delta_ci_high']:+.2f}]"
              if pre + "_delta" in final else
              f"not measured ({final['ablation/halting_task_n_rows']:.0f} rows hold both: raise data.seq_len or "
              f"phase.halting_rows)")
    return (f"halting: mean {final['diversity/avg_halting_steps']:.2f} steps (std {final['diversity/halting_steps_std']:.2f}), "
            f"histogram {hist}; computed digits {final['ablation/halting_steps_answer_digits']:.2f} vs letters "
            f"{final['ablation/halting_steps_letters']:.2f} steps, paired by row {paired}; loss vs always-max-steps "
            f"{-final['ablation/max_steps_loss_delta']:+.4f} [{worse[0]:+.4f}, {worse[1]:+.4f}] nats: "
            f"{halting_verdict(final)} (non-inferiority margin {margin} nats){halting_compute(final)}; "
            f"ablations took {final['ablation/seconds']:.1f} s")


def ablation_rows(final: dict) -> list[list]:
    """[variant, loss, accuracy, loss delta vs the reference, CI low, CI high, p] for the ablation table."""
    rows = [["trained", final["ablation/trained_val_loss"], final["ablation/trained_accuracy"], 0.0, 0.0, 0.0, 1.0]]
    for name in VARIANTS:
        pre = f"ablation/{name}"
        rows.append([name, final[f"{pre}_val_loss"], final[f"{pre}_accuracy"], *(final[f"{pre}_loss_{k}"]
                     for k in ("delta", "delta_ci_low", "delta_ci_high", "p_value"))])
    pre = "ablation/recall_no_memory"
    if f"{pre}_loss" not in final:
        return rows
    rows.append(["recall: memory on", final["ablation/recall_memory_on_loss"],
                 final["ablation/recall_memory_on_accuracy"], 0.0, 0.0, 0.0, 1.0])
    rows.append(["recall: memory off", final[f"{pre}_loss"], final[f"{pre}_accuracy"],
                 *(final[f"{pre}_loss_{k}"] for k in ("delta", "delta_ci_low", "delta_ci_high", "p_value"))])
    return rows


ABLATION_COLUMNS = ["Variant", "Loss", "Accuracy", "Loss delta", "95% CI low", "95% CI high", "p"]
