"""The grokking benchmark task: ``a ∘ b mod p`` on a small transformer, to compare optimizers by the
number of steps they need to *generalize* (Power et al. 2022; Grokfast, Lee et al. 2024).

    python -m agentforge phase=grokking optimizer=grokfast_adamw                # the paper's task
    python -m agentforge phase=grokking phase.task=strong_wd optimizer=adamw    # strong decoupled decay

``phase.task`` picks one of ``phase.tasks`` (``paper``: the Grokfast reference code's setting;
``strong_wd``: the earlier weight-decay-1.0 task); non-null top-level keys (``phase.max_steps=...``)
override the task's. The run trains on ``train_fraction`` of all pairs, evaluates train and validation
accuracy every ``eval_every`` steps, and stops once validation accuracy reaches ``target_accuracy`` (or
at max_steps). The task's own settings for the chosen optimizer (``tasks.<task>.optimizers.<name>``) are
laid over the optimizer preset unless ``phase.task_optimizer_settings=false``.
The loop (``models.grokking.train_grokking``) is a plain one rather than Lightning: thousands of tiny
steps on an in-memory dataset, where Lightning's per-step machinery would cost as much as the model.

Outputs in the run dir: ``grokking_results.json`` and ``plots/grokking_accuracy.png``.
"""
from __future__ import annotations

from omegaconf import OmegaConf

from agentforge.config import check
from agentforge.errors import ConfigError
from agentforge.models.grokking import modular_dataset, resolve_task, task_optimizer_cfg, train_grokking
from agentforge.optim import check_config
from agentforge.phases.context import run_context
from agentforge.phases.rules import GROKKING_TASK, PHASE_RULES
from agentforge.tracking import plots
from agentforge.training.trainer import loop_device, set_threads

TASK_RULES = GROKKING_TASK  # the resolved task is checked in run()
RULES = PHASE_RULES["grokking"]


def command_line_optimizer_keys() -> set[str]:
    """The ``optimizer.<key>`` names the user set on the command line (``optimizer.lr=3e-3``, ``+optimizer.x=..``), from
    Hydra's record of this run's overrides; empty outside a Hydra run."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return set()
    keys = (o.split("=", 1)[0].lstrip("+~") for o in HydraConfig.get().overrides.task)
    return {k.split(".", 1)[1] for k in keys if k.startswith("optimizer.") and "." not in k.split(".", 1)[1]}


def resolve(cfg, explicit: set[str] | None = None) -> tuple[dict, dict]:
    """(task, optimizer config) for this run, checked: a bad value is one ConfigError naming the key.

    With ``phase.task_optimizer_settings`` (the default) the task's settings for the optimizer lie over the preset,
    but an ``optimizer.<key>`` the user set on the command line (``explicit``; None: ``command_line_optimizer_keys``)
    wins over them: the task's values silently replaced it (an audit: ``optimizer=muon optimizer.lr=3e-3``, the
    presets' own usage line, trained at lr 1e-3)."""
    phase = OmegaConf.to_container(cfg.phase, resolve=True)
    try:
        task = resolve_task(phase)
    except KeyError as exc:
        raise ConfigError(exc.args[0]) from None
    check(OmegaConf.create({"phase": task}), TASK_RULES)
    d, h = task["d_model"], task["n_heads"]
    if d % h or (task["model"] == "project" and (d // h) % 2):
        raise ConfigError(f"phase.d_model ({d}) must split into phase.n_heads ({h}) heads"
                          + (" of even size" if task["model"] == "project" else ""))
    (xt, _), (xv, _) = modular_dataset(int(task["modulus"]), task["operation"], float(task["train_fraction"]),
                                       int(cfg.seed))
    if len(xt) == 0 or len(xv) == 0:   # before the run dir: no training pairs cannot train, none held out cannot decide
        raise ConfigError(f"phase.train_fraction={task['train_fraction']} leaves {len(xt)} training and {len(xv)} "
                          f"validation pairs of {len(xt) + len(xv)} (a {task['operation']} b mod {task['modulus']}); "
                          "both need at least one")
    preset = OmegaConf.to_container(cfg.optimizer, resolve=True)
    opt_cfg = task_optimizer_cfg(task, preset, bool(phase.get("task_optimizer_settings", True)))
    for key in sorted(command_line_optimizer_keys() if explicit is None else explicit):
        if key in preset and opt_cfg.get(key) != preset[key]:
            print(f"optimizer.{key}={preset[key]} (command line) is used over the task's {opt_cfg.get(key)} "
                  f"(phase.task_optimizer_settings)")
            opt_cfg[key] = preset[key]
    check_config(opt_cfg)
    return task, opt_cfg


def run(cfg) -> dict:
    task, opt_cfg = resolve(cfg)
    name = opt_cfg["name"]
    pct = round(100 * float(task["target_accuracy"]))
    with run_context(cfg, run_name=f"grokking-{task['task']}-{name}", group="grokking",
                     tags=["grokking", name, task["task"], task["operation"]], job_type="grokking") as ctx:
        set_threads(cfg.hardware)
        print(f"grokking: task {task['task']} (a {task['operation']} b mod {task['modulus']}, {task['model']} model), "
              f"{name}, run dir {ctx.run_dir}")

        def on_eval(step, m):
            ctx.tracker.log(m, step=step)
            print(f"step {step:6d}  train acc {m['grokking/train_accuracy']:.3f}  val acc {m['grokking/val_accuracy']:.3f}")

        res = train_grokking(task, opt_cfg, int(cfg.seed), device=loop_device(cfg.hardware).type, on_eval=on_eval)
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
                 "grokking/steps_run": res["steps_run"], "grokking/seconds": res["seconds"],
                 "grokking/steps_per_second": res["steps_per_second"]}
        ctx.tracker.summary({k: v for k, v in final.items() if v is not None})
        ctx.tracker.write_json("grokking_results.json", {"task": task, "optimizer": opt_cfg, **final, "curve": c})
        got = res["steps_to_target_val"]
        print(f"{name}: " + (f"{pct}% val accuracy at step {got}" if got else
                              f"did not reach {pct}% val accuracy in {res['steps_run']} steps: steps to {pct}% >= {res['steps_run']} "
                              f"(final {res['final_val_accuracy']:.3f})"))
        return {"run_dir": str(ctx.run_dir), "metrics": final}
