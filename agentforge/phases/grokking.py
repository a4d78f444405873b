"""The grokking benchmark task: ``a ∘ b mod p`` on a small transformer, to compare optimizers by the
number of steps they need to *generalize* (Power et al. 2022; Grokfast, Lee et al. 2024).

    python -m agentforge phase=grokking optimizer=muon_grokfast
    python -m agentforge phase=grokking optimizer=adamw phase.max_steps=5000

The run trains on ``train_fraction`` of all pairs, evaluates train and validation accuracy every
``eval_every`` steps, and stops once validation accuracy reaches ``target_accuracy`` (or at max_steps).
``phase.optimizer_overrides`` are applied on top of the chosen optimizer preset (the task's weight
decay, betas, lr, Grokfast filter), so the four optimizer configs are compared on the same footing.
The loop (``models.grokking.train_grokking``) is a plain one rather than Lightning: thousands of tiny
steps on an in-memory dataset, where Lightning's per-step machinery would cost as much as the model.

Outputs in the run dir: ``grokking_results.json`` and ``plots/grokking_accuracy.png``.
"""
from __future__ import annotations

import torch
from omegaconf import OmegaConf

from agentforge.config import integer, number, one_of, rule
from agentforge.models.grokking import OPERATIONS, grokking_optimizer_cfg, train_grokking
from agentforge.phases.context import run_context
from agentforge.tracking import plots

RULES = [
    rule("phase.modulus", integer(3)),
    rule("phase.operation", one_of(*OPERATIONS)),
    rule("phase.train_fraction", number(0, 1, lo_open=True)),
    rule("phase.d_model", integer(8)),
    rule("phase.n_layers", integer(1)),
    rule("phase.n_heads", integer(1)),
    rule("phase.ffn_hidden", integer(1)),
    rule("phase.batch_size", integer(0)),
    rule("phase.max_steps", integer(1)),
    rule("phase.eval_every", integer(1)),
    rule("phase.target_accuracy", number(0, 1, lo_open=True)),
]


def run(cfg) -> dict:
    task = OmegaConf.to_container(cfg.phase, resolve=True)
    opt_cfg = grokking_optimizer_cfg(OmegaConf.to_container(cfg.optimizer, resolve=True),
                                     task.get("optimizer_overrides"))
    name = opt_cfg["name"]
    pct = round(100 * float(task["target_accuracy"]))
    with run_context(cfg, run_name=f"grokking-{task['operation']}-mod{task['modulus']}-{name}", group="grokking",
                     tags=["grokking", name, task["operation"]], job_type="grokking") as ctx:
        if cfg.hardware.get("threads"):
            torch.set_num_threads(int(cfg.hardware.threads))
        print(f"grokking: a {task['operation']} b mod {task['modulus']}, {name}, run dir {ctx.run_dir}")

        def on_eval(step, m):
            ctx.tracker.log(m, step=step)
            print(f"step {step:6d}  train acc {m['grokking/train_accuracy']:.3f}  val acc {m['grokking/val_accuracy']:.3f}")

        res = train_grokking(task, opt_cfg, int(cfg.seed), on_eval=on_eval)
        c = res["curve"]
        png = plots.line_plot(ctx.run_dir / "plots" / "grokking_accuracy.png", c["step"],
                              {"train accuracy": c["train_accuracy"], "val accuracy": c["val_accuracy"]},
                              f"a {task['operation']} b mod {task['modulus']}: {name}", "step", "accuracy")
        ctx.tracker.image("charts/grokking_accuracy", png)
        ctx.tracker.line_series("charts/grokking_accuracy", c["step"], [c["train_accuracy"], c["val_accuracy"]],
                                ["Train Accuracy", "Val Accuracy"], "Grokking: accuracy", "Step")
        final = {f"grokking/steps_to_{pct}_val": res["steps_to_target_val"],
                 f"grokking/steps_to_{pct}_train": res["steps_to_target_train"],
                 "grokking/reached_target": res["steps_to_target_val"] is not None,
                 "grokking/final_val_accuracy": res["final_val_accuracy"],
                 "grokking/final_train_accuracy": res["final_train_accuracy"],
                 "grokking/steps_run": res["steps_run"], "grokking/seconds": res["seconds"]}
        ctx.tracker.summary({k: v for k, v in final.items() if v is not None})
        ctx.tracker.write_json("grokking_results.json", {"task": task, "optimizer": opt_cfg, **final, "curve": c})
        got = res["steps_to_target_val"]
        print(f"{name}: " + (f"{pct}% val accuracy at step {got}" if got else
                              f"did not reach {pct}% val accuracy in {res['steps_run']} steps "
                              f"(final {res['final_val_accuracy']:.3f})"))
        return {"run_dir": str(ctx.run_dir), "metrics": final}
