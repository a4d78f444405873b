"""Code generation evaluated by execution: a Cognate model against a GPT-2-architecture baseline, the
success dashboard's test (pass@1 / pass@10, efficiency KPIs, paired statistics, verdict).

    python -m agentforge phase=codegen data=python_code                                   # CPU defaults, HumanEval subset
    python -m agentforge phase=codegen data=python_code phase.num_problems=40 phase.n_samples=20 baseline=gpt2_scratch
    python -m agentforge phase=codegen data=python_code phase.benchmark=mbpp phase.benchmark_path=mbpp.jsonl
    python -m agentforge phase=codegen data=python_code phase.checkpoint=outputs/artifacts/codegen/cognate   # no training

Trains (or loads, ``phase.checkpoint``) a Cognate model and the baseline on ``data=python_code`` with the
same rows, steps and batch, samples ``phase.n_samples`` completions per problem, runs each against the
problem's tests in the sandbox, and writes ``{run_dir}/codegen/``: ``stats.json`` (dashboard shape),
``{model}_results.json`` (per-problem counts, the binary arrays), ``samples.jsonl``, ``corpus.json``,
``report.md`` and ``plots/*.png``; the W&B run (project ``phase.wandb_project``) has the dashboard's panels.
"""
from __future__ import annotations

import dataclasses
import json
import platform
from pathlib import Path

from omegaconf import OmegaConf, open_dict

from agentforge.artifacts import ARCHITECTURE, cognate_config_from, load_model, publish, save_model
from agentforge.codegen import evaluate as ev
from agentforge.codegen import models, problems, report, scoring
from agentforge.codegen.corpus import corpus_from_config
from agentforge.codegen.training import train, train_isolated
from agentforge.data.tokenizer import RESERVED_VOCAB, ByteTokenizer
from agentforge.errors import ConfigError
from agentforge.evals.collect import gate_or_raise
from agentforge.evals.dashboard_verdict import run_labels
from agentforge.io import write_json_atomic, write_text_atomic
from agentforge.models import CognateModel
from agentforge.phases.compare import thresholds_of
from agentforge.phases.context import run_context
from agentforge.phases.rules import PHASE_RULES
from agentforge.sandbox import require_sandbox
from agentforge.training.trainer import trains_in_one_process, trains_on_gpu

RULES = PHASE_RULES["codegen"]


def _container(node) -> dict:
    return OmegaConf.to_container(node, resolve=True) if node is not None else {}


def train_kwargs(cfg, run_dir: Path, ctx: int | None = None) -> dict:
    """The training arguments both models share (``training.train``'s keyword arguments but the optimizer), with
    rows of the evaluated context ``ctx`` (None: ``eval_context(cfg)``)."""
    p = cfg.phase
    return dict(data_cfg=train_rows(_container(cfg.data), ctx or eval_context(cfg)), hw_cfg=_container(cfg.hardware),
                run_dir=run_dir, seed=int(cfg.seed), max_epochs=int(p.max_epochs),
                steps_per_epoch=int(p.steps_per_epoch), val_rows=int(p.val_rows), gradient_clip=float(p.gradient_clip))


def build_models(cfg, corpus, run_dir: Path, artifacts: Path, isolate: bool | None = None,
                 pretrained: models.CodeLM | None = None) -> tuple[list, dict]:
    """[(CodeLM, training result or None)] for the candidate and the baseline, trained as configured, each set to the
    one context both are evaluated with (``eval_context``).

    ``baseline=gpt2`` is loaded first (or handed in, ``pretrained``: ``run`` loads it before the run dir exists), so
    that offline its ``error:`` line comes before any training or publishing, not after a whole Cognate training.

    Each model trains in a fresh process of its own (``training.train_isolated``), so each training's peak memory is
    that process's own high-water mark, comparable between the models (trained one after the other in this process,
    the second would start from what the first left behind); under a multi-process ``hardware`` group (DDP, FSDP,
    several devices: ``trainer.trains_in_one_process`` False) Lightning starts the ranks itself, and the models
    train here (``training.train``), their memory then marked not comparable. ``isolate`` overrides that choice
    (None: decided by the hardware group)."""
    p, b = cfg.phase, _container(cfg.get("baseline"))
    size = _container(cfg.model)
    if b["name"] == "gpt2" and pretrained is None:
        pretrained = models.pretrained_gpt2(b.get("hub_id") or "gpt2")
    loaded = load_model(p.checkpoint)[0] if p.checkpoint else None
    limits = [pretrained.max_seq_len] if pretrained is not None else []   # the models ``model`` does not size
    limits += [loaded.config.max_seq_len] if loaded is not None else []
    ctx = eval_context(cfg, limits)
    train_kw = train_kwargs(cfg, run_dir, ctx)
    if isolate is None:
        isolate = trains_in_one_process(train_kw["hw_cfg"])
    fit = train_isolated if isolate else train
    out, trainings = [], {}
    if loaded is not None:
        cand = models.byte_lm("cognate", f"Cognate checkpoint {p.checkpoint}", loaded, loaded.config.max_seq_len)
    else:
        model = CognateModel(cognate_config_from(size, RESERVED_VOCAB))
        if int(p.max_epochs) > 0:
            trainings["cognate"] = fit("cognate", model, corpus, optim_cfg=_container(cfg.optimizer), **train_kw)
        ckpt = run_dir / "checkpoints" / "cognate"
        save_model(ckpt, model, ByteTokenizer(), {"phase": "codegen", "data": "python_code"})
        publish(ckpt, artifacts / "codegen" / "cognate")
        cand = models.byte_lm("cognate", f"Cognate ({ARCHITECTURE}) trained here", model, model.config.max_seq_len)
    out.append(cand)
    if pretrained is not None:
        base = pretrained
    else:
        gmodel = models.gpt2_scratch(size, b, int(cfg.seed))
        if int(p.max_epochs) > 0:
            trainings["gpt2_scratch"] = fit("gpt2_scratch", gmodel, corpus, optim_cfg=b["optimizer"], **train_kw)
        models.save_gpt2(gmodel, run_dir / "checkpoints" / "gpt2_scratch", {"phase": "codegen", "data": "python_code"})
        base = models.byte_lm("gpt2_scratch", f"GPT-2 architecture {_baseline_training(p, trainings)} (transformers "
                              f"GPT2LMHeadModel, {gmodel.num_params():,} params; not the 124M pretrained GPT-2)",
                              gmodel, gmodel.config.max_seq_len)
    out = [dataclasses.replace(lm, max_seq_len=ctx) for lm in (*out, base)]  # sampling, truncation, latency: one ctx
    device = "cuda" if trains_on_gpu(_container(cfg.hardware)) else "cpu"
    for lm in out:  # Lightning hands the trained model back on the CPU
        lm.model.to(device).eval()
    return out, trainings


def eval_context(cfg, limits: list[int] | tuple = ()) -> int:
    """The one context every model is evaluated with, and the scratch baseline trained on (``train_rows``): the
    smallest of ``model.max_seq_len``, ``phase.context_tokens`` and ``limits``, the max_seq_len of the models not
    sized by ``model`` (a ``phase.checkpoint`` keeps its own; the pretrained GPT-2 has 1024 positions).

    One context for all rather than each model its own: a 256-token checkpoint against the 512-token scratch
    baseline left-truncated 2 of HumanEval/0-1 against the baseline's 1, so pass@k compared the models on different
    prompts. The smaller context rather than a refusal: a checkpoint is evaluated as it was trained, no setting has
    to change, and the larger model only loses positions the other cannot use (``phase.context_tokens`` did this
    already). ``rules.check_codegen_budget`` refuses a ``phase.max_new_tokens`` that does not fit it at start-up."""
    ctx = min([int(cfg.model.max_seq_len), *map(int, limits)])
    return min(ctx, int(cfg.phase.context_tokens)) if cfg.phase.context_tokens else ctx


def train_rows(data: dict, ctx: int) -> dict:
    """``data`` with training rows as long as the evaluated context ``ctx`` and the tokens per step kept
    (batch = max(1, batch * seq_len // ctx)): the GPT-2 baseline learns one position embedding per position, so
    rows shorter than the context would leave the positions it generates at untrained (its initial values)."""
    seq, batch = int(data["seq_len"]), int(data["batch_size"])
    return {**data, "seq_len": ctx, "batch_size": max(1, batch * seq // ctx)}


def optimizers(cfg, trainings: dict) -> dict[str, str]:
    """{model: its optimizer}: they differ (Cognate's configured optimizer, the baseline's own recipe), which the
    report discloses; a model not trained here says so."""
    b = _container(cfg.get("baseline"))
    out = {"cognate": str(cfg.optimizer.name) if "cognate" in trainings else
           ("not trained here (phase.checkpoint)" if cfg.phase.checkpoint else "untrained")}
    out[b["name"]] = (str(b["optimizer"]["name"]) if b["name"] in trainings else
                      "pretrained, not trained here" if b["name"] == "gpt2" else "untrained")
    return out


def _baseline_training(p, trainings: dict) -> str:
    """How the scratch baseline was trained, relative to the candidate: parity is claimed only when both trained here."""
    if int(p.max_epochs) == 0:
        return "untrained (phase.max_epochs=0: neither model was trained)"
    if "cognate" in trainings:
        return "trained from scratch here on the same data, steps and batch as Cognate"
    return (f"trained from scratch here ({int(p.max_epochs)} x {int(p.steps_per_epoch)} steps on this corpus); the "
            f"Cognate checkpoint was trained elsewhere, on its own data and budget")


def run(cfg) -> dict:
    p = cfg.phase
    data_cfg = _container(cfg.data)
    if data_cfg.get("source") != "python_code":
        raise ConfigError(f"phase=codegen trains on code: use data=python_code (got data={data_cfg.get('name')})")
    require_sandbox(str(p.sandbox))
    # before anything is trained, published or written: offline with an empty cache, one error: line at once
    pretrained = models.pretrained_gpt2(cfg.baseline.get("hub_id") or "gpt2") if cfg.baseline.name == "gpt2" else None
    if pretrained is not None and int(p.max_new_tokens) >= pretrained.max_seq_len:   # the start-up check cannot know it
        raise ConfigError(f"phase.max_new_tokens must be below the context the models are evaluated with "
                          f"(baseline.hub_id's {pretrained.max_seq_len} positions), got {p.max_new_tokens}: lower "
                          f"phase.max_new_tokens")
    if p.sandbox == "process":
        print("warning: phase.sandbox=process runs model-written code WITHOUT isolation (no namespaces; only "
              "rlimits and a cleared environment); use the default bwrap mode for untrusted models")
    if int(p.n_samples) < max(p.pass_k):
        print(f"note: n_samples={p.n_samples} < {max(p.pass_k)}: pass@{max(p.pass_k)} is not measured")
    all_problems = problems.load_problems(str(p.benchmark), p.benchmark_path)
    subset = problems.select(all_problems, p.num_problems, list(p.problem_ids) if p.problem_ids else None)
    if p.num_problems and not p.problem_ids and int(p.num_problems) > len(all_problems):
        print(f"note: phase.num_problems={p.num_problems} but {p.benchmark} has {len(all_problems)}: all "
              f"{len(all_problems)} are evaluated")
    corpus = corpus_from_config(data_cfg, all_problems)
    exec_kw = {"timeout_s": float(p.timeout_s), "memory_mb": int(p.memory_mb), "workers": p.workers,
               "mode": str(p.sandbox)}
    if p.wandb_project and cfg.logger.name == "wandb":
        with open_dict(cfg):
            cfg.logger.project = str(p.wandb_project)
    with run_context(cfg, run_name=f"codegen-cognate-vs-{cfg.baseline.name}", group="codegen",
                     tags=["codegen", str(p.benchmark), str(cfg.baseline.name)], job_type="codegen") as ctx:
        out_dir = ctx.run_dir / "codegen"
        write_json_atomic(out_dir / "corpus.json", corpus.stats)
        print(f"corpus: {corpus.stats['train_files']} train / {corpus.stats['val_files']} val files, "
              f"{corpus.stats['contaminated_dropped']} dropped as contaminated, {corpus.stats['duplicates_dropped']} "
              f"duplicates")
        check = ev.self_check(subset, exec_kw) if p.self_check else None
        if check:
            print(f"self-check: canonical solutions pass@1 = {check['pass_at_1']:.3f} on {check['n']} problems")
        lms, trainings = build_models(cfg, corpus, ctx.run_dir, Path(cfg.paths.artifacts).absolute(),
                                      pretrained=pretrained)
        names = [lm.name for lm in lms]
        target = _container(p.thresholds).get("min_pass_at_1")
        if check:
            check["budget_ceiling_pass_at_1"] = ceiling = ev.budget_ceiling(lms, subset, int(p.max_new_tokens), exec_kw)
            print(f"self-check: canonical solutions cut to max_new_tokens={p.max_new_tokens} pass@1 = "
                  + ", ".join(f"{v:.3f} ({n})" for n, v in ceiling.items()))
            for n, v in ceiling.items():
                if target is not None and v < float(target):
                    print(f"warning: {n}: a perfect model scores at most pass@1 {v:.3f} < the target {target} under "
                          f"phase.max_new_tokens={p.max_new_tokens} (the budget, not the model, caps the score)")
        evals, curves = {}, {}
        samples_path = out_dir / "samples.jsonl"
        samples_path.parent.mkdir(parents=True, exist_ok=True)
        samples_path.write_text("")
        for lm in lms:
            print(f"evaluating {lm.name} ({lm.num_params():,} params) on {len(subset)} problems x {p.n_samples} samples")
            res = ev.evaluate(lm, subset, n=int(p.n_samples), temperature=float(p.temperature), top_p=float(p.top_p),
                              max_new_tokens=int(p.max_new_tokens), seed=int(cfg.seed), exec_kw=exec_kw,
                              context_tokens=p.context_tokens)
            evals[lm.name] = res
            curves[lm.name] = scoring.pass_at_k_curve(res["problems"], int(p.n_samples))
            with open(samples_path, "a") as f:
                for s in res["samples"]:
                    f.write(json.dumps({"model": lm.name, **s}) + "\n")
            print(f"  outcomes {res['outcomes']}  pass@1 {curves[lm.name][0]:.4f}")
            warn = ev.truncation_warning(lm.name, res["prompts_truncated"], len(subset), lm.max_seq_len,
                                         int(p.max_new_tokens))
            if warn:
                print(warn)
        print(f"timing {int(p.latency_tokens)}-token greedy generations, {int(p.latency_rounds)} interleaved rounds")
        kpis = ev.efficiency(lms, trainings, int(p.latency_tokens), evals, int(p.latency_rounds))
        for lm in lms:
            res = evals[lm.name]
            write_json_atomic(out_dir / f"{lm.name}_results.json",
                              {"model": lm.name, "description": lm.description, "benchmark": str(p.benchmark),
                               "problems": res["problems"], "kpis": kpis[lm.name],
                               **{k: v for k, v in res.items() if k not in ("problems", "samples")},
                               "training": {k: v for k, v in trainings.get(lm.name, {}).items()
                                            if k not in ("curves", "history")}})
        thresholds = thresholds_of(_container(p.thresholds))
        stats = scoring.compute_stats({n: evals[n]["problems"] for n in names}, kpis, candidate=names[0],
                                      baseline=names[1], ks=list(p.pass_k), thresholds=thresholds,
                                      n_resamples=int(p.n_resamples), seed=int(cfg.seed),
                                      unstable=any(t.get("unstable") for t in trainings.values()),
                                      baseline_description=lms[1].description)
        rows = {n: {"seq_len": t["seq_len"], "batch_size": t["batch_size"]} for n, t in trainings.items()}
        stats.update(optimizers=optimizers(cfg, trainings), train_rows=rows, self_check=check,
                     **scoring.train_run_failures(trainings),
                     budget_ceiling_pass_at_1=(check or {}).get("budget_ceiling_pass_at_1"),
                     completion_chars_mean={n: evals[n]["completion_chars_mean"] for n in names})
        if stats["budget_ceiling_pass_at_1"] and target is not None:
            stats["reasons"] += [f"budget ceiling: the canonical solutions cut to max_new_tokens={p.max_new_tokens} "
                                 f"pass@1 = {v:.3f} for {n}, below the target {target}: the budget caps the score"
                                 for n, v in stats["budget_ceiling_pass_at_1"].items() if v < float(target)]
        stats_path = write_json_atomic(out_dir / "stats.json", stats)
        info = {"benchmark": str(p.benchmark), "n_problems": len(subset),
                "problem_range": f"{subset[0].task_id} .. {subset[-1].task_id}", "n_samples": int(p.n_samples),
                "temperature": float(p.temperature), "top_p": float(p.top_p), "max_new_tokens": int(p.max_new_tokens),
                "context_tokens": lms[0].max_seq_len, "sandbox": str(p.sandbox),
                "baseline_description": lms[1].description, "corpus": corpus.stats, "self_check": check,
                "optimizers": stats["optimizers"], "train_rows": rows, "pass_at_1_target": target,
                "python": platform.python_version()}
        plot_paths = report.plot_all(out_dir / "plots", names, curves, kpis, trainings)
        md = report.markdown(info, names, evals, kpis, stats, trainings, plot_paths)
        report_path = write_text_atomic(out_dir / "report.md", md)
        report.log_dashboard(ctx.tracker, names, evals, kpis, stats, curves, trainings, plot_paths)
        ctx.tracker.label(run_labels(stats, float(thresholds.get("alpha", 0.05))))
        print(md)
        print(f"stats: {stats_path}")   # the report path is printed with the run's other paths
    gate = _container(p.gate) if p.get("gate") else {}
    if gate:
        gate_or_raise(stats, gate, f"{names[0]} vs {names[1]}")
    return {"run_dir": str(ctx.run_dir), "stats": str(stats_path), "report": str(report_path),
            "verdict": stats["verdict"]}
