"""What each Cognate mechanism BUYS: every variant TRAINED from scratch, over several training seeds.

    python scripts/train_ablations.py --model m1 --seeds 1 2 3 --out /tmp/abl_run [extra Hydra overrides]

The phase's own ablations (``models/ablation.py``, and ``scripts/confirm_ablations.py`` on test rows) are knockouts:
the trained weights run with a mechanism switched off, which measures what the trained model RELIES on, with a CI
over rows for one training seed. Here each variant is trained by the real CLI (``python -m agentforge phase=cognate
model=<m> seed=<s> logger=none hardware=cpu <variant> <extra>``, early stopping off so every run takes the same
steps; each seed's variants see the same data stream and start from the same initial weights):

* ``full``       the model as configured (the reference)
* ``steps1``     ``model.max_steps=1``: no recursion
* ``no_memory``  ``model.memory=false``: the long-term memory's reads off in training and inference
* ``gate_stream`` ``model.ltm_gate_norm=false``: the memory's gate reads the stream itself, not RMS-normalized (the
  default until 2026-11-28; a design choice compared, not a mechanism removed; not in the default ``--variants``.
  The comparison that made the normalized gate the default ran it as ``gate_norm`` = ``model.ltm_gate_norm=true``
  against the then-default: ``benchmarks/gate_norm_<model>_2026-11-28.json``)

Every checkpoint is scored on the SAME ``--rows`` test-split rows of the final curriculum stage's mix
(``confirm_ablations.final_mix_rows``) and the same ``--rows`` test-split recall items (the repeated code's digits,
``ablation.masked_row_means``, as ``ablation.recall_memory`` scores them). Reported: per seed, variant - full per-row
loss delta with its paired CI and p (``evals.stats.paired_test``), on the test rows and on the recall digits; across
seeds, the mean of the per-seed deltas with a t-interval over seeds (K - 1 df) and an exact two-sided sign test; a
verdict per mechanism on its target figure (recursion: test loss of ``steps1``; memory: recall-digit loss of
``no_memory``): EARNS ITS PLACE when the t-interval of variant - full lies above 0, HURTS when below, else
INCONCLUSIVE. The comparison is matched in steps and data, not in compute (one recursion step is cheaper to train:
each run's wall time is reported). Everything, per-row losses included, goes to ``<out>/train_ablations.json``.
"""
from __future__ import annotations

import argparse
import datetime
import functools
import importlib.util
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import binomtest
from scipy.stats import t as student_t

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {"full": [], "steps1": ["model.max_steps=1"], "no_memory": ["model.memory=false"],
            "gate_stream": ["model.ltm_gate_norm=false"]}
DEFAULT_VARIANTS = ["full", "steps1", "no_memory"]   # the mechanisms; gate_stream is asked for by name
REFERENCE = "full"
FIGURES = {"loss": "test-row loss", "recall_loss": "recall-digit loss"}
MECHANISMS = {"recursion": ("steps1", "loss"), "memory": ("no_memory", "recall_loss")}  # variant, target figure
NO_EARLY_STOP = "phase.early_stopping_patience=1000000"   # every run takes phase.max_epochs x steps_per_epoch steps
RESERVED = ("phase", "model", "seed", "logger", "hardware", "model.max_steps", "model.memory",  # set by the script
            "model.ltm_gate_norm")
DONE = "train_done.json"
# model keys that neither add weights nor change anything a model with its memory off computes (tested in
# tests/test_memory.py): a no-memory run is the same run whatever they are
MEMORY_ONLY = {"ltm_gate_norm"}


class AblationError(Exception):
    """Bad input or a failed training run: one ``error:`` line."""


def _confirm_module():
    spec = importlib.util.spec_from_file_location("confirm_ablations", ROOT / "scripts" / "confirm_ablations.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# -- training ------------------------------------------------------------------------------------------------------

def check_overrides(extra: list[str]) -> None:
    for o in extra:
        key = o.lstrip("+~").split("=", 1)[0]
        if key in RESERVED:
            raise AblationError(f"override {o!r}: {key} is set by this script (--model, --seeds, --hardware, the "
                                f"variants); drop it")
        if "=" not in o:
            raise AblationError(f"override {o!r} is not a Hydra key=value override")


def train_command(model: str, seed: int, variant: str, extra: list[str], hardware: str = "cpu") -> list[str]:
    if variant not in VARIANTS:
        raise AblationError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
    stop = [] if any(o.split("=", 1)[0].lstrip("+") == "phase.early_stopping_patience" for o in extra) \
        else [NO_EARLY_STOP]
    return [sys.executable, "-m", "agentforge", "phase=cognate", f"model={model}", f"seed={seed}", "logger=none",
            f"hardware={hardware}", *VARIANTS[variant], *stop, *extra]


def run_dir(out: Path, seed: int, variant: str) -> Path:
    return out / f"seed{seed}" / variant


def _checkpoint(outputs: Path) -> Path:
    found = sorted((outputs / "artifacts" / "cognate").glob("model[0-9]*/config.json"))
    if len(found) != 1:
        raise AblationError(f"{outputs}: expected one published Cognate checkpoint, found {len(found)}")
    return found[0].parent


def run_record(outputs: Path, wall_s: float, command: list[str]) -> dict:
    """What one finished training left: its checkpoint, the model config's switches, its times and steps (from the
    checkpoint's metrics.json and the run's metrics.jsonl)."""
    ckpt = _checkpoint(outputs)
    metrics = json.loads((ckpt / "metrics.json").read_text())
    model = json.loads((ckpt / "config.json").read_text())["model"]
    steps = epochs = None
    logs = sorted((outputs / "runs").glob("*/*/metrics.jsonl"), key=lambda p: p.stat().st_mtime)
    if logs:
        rows = [json.loads(line) for line in logs[-1].read_text().splitlines() if line.strip()]
        logged = [r["train/step"] for r in rows if "train/step" in r]
        ep = [r["train/epoch"] for r in rows if "train/epoch" in r]
        steps = int(max(logged)) + 1 if logged else None
        epochs = int(max(ep)) + 1 if ep else None
    return {"checkpoint": str(ckpt), "command": command, "max_steps": model["max_steps"],
            "memory": model.get("memory", True), "wall_s": wall_s, "fit_s": metrics.get("time/fit_s"),
            "phase_total_s": metrics.get("time/total_s"),
            "training_s": metrics.get("final/total_training_time_hours", float("nan")) * 3600,
            "optimizer_steps": steps, "epochs": epochs, "val_loss": metrics.get("final/val_loss")}


def train(out: Path, model: str, seed: int, variant: str, extra: list[str], hardware: str = "cpu",
          label: str = "") -> dict:
    """Train one variant with the real CLI into ``<out>/seed<s>/<variant>`` (its AGENTFORGE_OUTPUTS; log there as
    train.log); a finished run of the same command is reused. AblationError naming the log when it fails."""
    where = run_dir(out, seed, variant).absolute()
    cmd = train_command(model, seed, variant, extra, hardware)
    done = where / DONE
    if done.is_file():
        rec = json.loads(done.read_text())
        if rec.get("command", [None])[1:] == cmd[1:]:
            changed = changed_settings(where, cmd)
            if not changed:
                print(f"{label}seed={seed} {variant}: reusing the finished run in {where}", flush=True)
                return rec
            stale = where.with_name(where.name + ".previous")
            shutil.rmtree(stale, ignore_errors=True)
            where.rename(stale)
            print(f"{label}seed={seed} {variant}: not reusing the finished run (moved to {stale}): the same command "
                  f"now sets {'; '.join(changed[:3])}{' ...' if len(changed) > 3 else ''}", flush=True)
    for other in sorted(where.parent.glob(f"*/{DONE}")):   # another variant's run that is this one today
        if other.parent != where and not other.parent.name.endswith(".previous") \
                and not changed_settings(other.parent, cmd):
            rec = {**json.loads(other.read_text()), "reused_from": str(other.parent), "command_as_run": None}
            rec["command_as_run"], rec["command"] = rec["command"], cmd
            print(f"{label}seed={seed} {variant}: reusing {other.parent}, which ran what this command runs today",
                  flush=True)
            return rec
    where.mkdir(parents=True, exist_ok=True)
    log = where / "train.log"
    print(f"{label}seed={seed} {variant}: training ({' '.join(cmd[2:])}), log {log}", flush=True)
    env = {**os.environ, "AGENTFORGE_OUTPUTS": str(where), "WANDB_MODE": "offline"}
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
    if rc != 0:
        tail = [x for x in log.read_text(errors="replace").splitlines() if x.strip()][-1:] or [""]
        raise AblationError(f"training seed={seed} variant={variant} failed (exit {rc}); its log: {log} "
                            f"(last line: {tail[0][:300]})")
    rec = run_record(where, wall, cmd)
    done.write_text(json.dumps(rec, indent=1))
    print(f"{label}seed={seed} {variant}: done in {wall:.0f} s ({rec['optimizer_steps']} steps, fit "
          f"{rec['fit_s']:.0f} s, val loss {rec['val_loss']:.4f})", flush=True)
    return rec


@functools.lru_cache(maxsize=None)
def _composed(overrides: tuple[str, ...]) -> dict:
    """The config the CLI composes today from these overrides, as plain containers (read, never written: cached, as
    ``train`` asks it once per finished run it considers)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from agentforge.main import CONF_DIR

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            return OmegaConf.to_container(compose(config_name="config", overrides=list(overrides)))
    finally:
        GlobalHydra.instance().clear()


def changed_settings(where: Path, command: list[str]) -> list[str]:
    """What the same command would set otherwise today than when the finished run in ``where`` ran: a default
    changed since (a reused run trained under the old default would be scored as today's model). The run's saved
    ``config_resolved.yaml`` is compared with the config composed now from the command's overrides, every group but
    ``paths`` and ``hydra``; the model's architecture is compared as its checkpoint records it, where a key the
    checkpoint predates takes the default it had when it was added (``CognateConfig``), which is what that run ran,
    and where, with the memory off in both, a ``MEMORY_ONLY`` key does not count. Each entry: ``key: then -> now``.
    ``train`` also reuses another variant's finished run of the same seed when this is empty for its command (a
    ``model.ltm_gate_norm=true`` run became the ``full`` one when that became the default), recording ``reused_from``."""
    from omegaconf import OmegaConf

    from agentforge.artifacts import cognate_config_from
    from agentforge.models.cognate import CognateConfig

    saved_files = sorted((where / "runs").glob("*/*/config_resolved.yaml"), key=lambda f: f.stat().st_mtime)
    if not saved_files:
        return ["(no config_resolved.yaml in its run dir)"]
    saved = OmegaConf.to_container(OmegaConf.load(saved_files[-1]))
    now = _composed(tuple(command[3:]))
    ckpt = json.loads((_checkpoint(where) / "config.json").read_text())["model"]
    then_arch, now_arch = CognateConfig.from_dict(ckpt).to_dict(), cognate_config_from(now["model"]).to_dict()
    inert = MEMORY_ONLY if not now_arch["memory"] and not then_arch["memory"] else set()
    skip = {f"model.{k}" for k in inert}
    changed = []

    def walk(a, b, key):
        if key in skip:
            return
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                if k in b and k in a:
                    walk(a[k], b[k], f"{key}.{k}" if key else k)
                elif k in a:   # a key the run predates (its default then is read from the checkpoint below)
                    if not key.startswith("model"):
                        changed.append(f"{key}.{k}: (absent) -> {a[k]!r}")
                else:
                    changed.append(f"{key}.{k}: {b[k]!r} -> (absent)")
        elif a != b:
            changed.append(f"{key}: {b!r} -> {a!r}")

    for group in sorted(set(now) | set(saved)):
        if group not in ("paths", "hydra"):
            walk(now.get(group), saved.get(group), group)
    changed += [f"model.{k}: {then_arch[k]!r} -> {now_arch[k]!r}" for k in sorted(now_arch)
                if k != "vocab_size" and k not in inert and then_arch.get(k) != now_arch[k]]
    return list(dict.fromkeys(changed))


# -- scoring -------------------------------------------------------------------------------------------------------

def eval_rows(n_rows: int, seq_len: int, seed: int, window: int):
    """(test rows, recall rows, recall mask): the same rows for every model (recall gap = window + 8, the phase's)."""
    from agentforge.data.recall import recall_rows
    from agentforge.data.tokenizer import ByteTokenizer

    tok = ByteTokenizer()
    rows = _confirm_module().final_mix_rows(tok, n_rows, seq_len, seed, "test")
    rec_rows, rec_mask = recall_rows(n_rows, seq_len, seed, "test", gap=window + 8, tokenizer=tok)
    return rows, rec_rows, rec_mask


def score(model, rows, rec_rows, rec_mask) -> dict[str, list[float]]:
    """Per-row figures of one model as configured: mean next-token loss and accuracy on the test rows, and on the
    recall items' repeated digits (``ablation.masked_row_means``); with its memory on, also the memory gate's opening
    and its read's share of the stream on those digits and elsewhere in the recall items (``ablation.gate_rows``)."""
    from agentforge.models.ablation import gate_rows, masked_row_means, token_scores

    s = token_scores(model, rows)
    r_loss, r_acc = masked_row_means(token_scores(model, rec_rows), rec_mask)
    out = {"loss": s["loss"].mean(1).tolist(), "accuracy": s["correct"].mean(1).tolist(),
           "recall_loss": r_loss.tolist(), "recall_accuracy": r_acc.tolist()}
    if model.config.memory:
        out.update({f"recall_{k}": v.tolist() for k, v in gate_rows(model, rec_rows, rec_mask).items()})
    return out


# -- statistics ----------------------------------------------------------------------------------------------------

def compare(variant: list[float], full: list[float], seed: int) -> dict:
    """variant - full over rows, paired (``paired_test``: the bootstrap from 30 rows, the exact sign-flip test below)."""
    from agentforge.evals.stats import paired_test

    pt = paired_test(variant, full, seed=seed, outcomes=False)
    return {"delta": pt["delta"], "ci95": list(pt["ci95"]), "p_value": pt["p_value"], "n": pt["n"], "test": pt["test"]}


def across_seeds(deltas: list[float], confidence: float = 0.95) -> dict:
    """The mean of K per-seed deltas with a t-interval over seeds (K - 1 df) and an exact two-sided sign test
    (binomial, ties dropped); K < 2 gives no interval."""
    d = np.asarray(deltas, dtype=float)
    k = len(d)
    mean = float(d.mean()) if k else float("nan")
    if k >= 2:
        sd = float(d.std(ddof=1))
        t_crit = float(student_t.ppf(0.5 + confidence / 2, k - 1))
        half = t_crit * sd / math.sqrt(k)
        ci = [mean - half, mean + half]
    else:
        sd, t_crit, ci = float("nan"), float("nan"), [float("nan"), float("nan")]
    pos, neg = int((d > 0).sum()), int((d < 0).sum())
    sign_p = float(binomtest(pos, pos + neg, 0.5).pvalue) if pos + neg else 1.0
    return {"deltas": d.tolist(), "K": k, "df": k - 1, "mean": mean, "sd": sd, "t_crit": t_crit, "t_ci95": ci,
            "n_positive": pos, "n_negative": neg, "sign_test_p": sign_p, "sign_test_min_p": min(1.0, 2 * 0.5 ** k)}


def verdict(ci: list[float]) -> str:
    """EARNS ITS PLACE when the interval of variant - full lies above 0 (the variant without the mechanism is
    worse), HURTS when below, INCONCLUSIVE when it holds 0 or is undefined."""
    lo, hi = ci
    if math.isnan(lo) or math.isnan(hi):
        return "INCONCLUSIVE"
    return "EARNS ITS PLACE" if lo > 0 else "HURTS" if hi < 0 else "INCONCLUSIVE"


def analyse(scores: dict[int, dict[str, dict[str, list[float]]]], eval_seed: int) -> dict:
    """Per-seed paired comparisons, across-seed figures and verdicts from per-row scores {seed: {variant: {figure:
    [per row]}}}: everything the report prints follows from the per-row figures."""
    seeds = sorted(scores)
    variants = [v for v in VARIANTS if v != REFERENCE and all(v in scores[s] for s in seeds)]
    per_seed = {str(s): {v: {f: compare(scores[s][v][f], scores[s][REFERENCE][f], eval_seed) for f in FIGURES}
                         for v in variants} for s in seeds}
    across = {v: {f: across_seeds([per_seed[str(s)][v][f]["delta"] for s in seeds]) for f in FIGURES}
              for v in variants}
    verdicts = {}
    for mech, (v, f) in MECHANISMS.items():
        if v in across:
            a = across[v][f]
            verdicts[mech] = {"variant": v, "figure": f, "mean": a["mean"], "t_ci95": a["t_ci95"], "K": a["K"],
                              "sign_test_p": a["sign_test_p"], "verdict": verdict(a["t_ci95"])}
    return {"per_seed": per_seed, "across_seeds": across, "verdicts": verdicts}


def notes(k: int) -> list[str]:
    min_p = min(1.0, 2 * 0.5 ** k)
    out = [f"K = {k} training seeds: the verdict rests on the t-interval over seeds ({max(k - 1, 0)} df); it is "
           "INCONCLUSIVE unless the interval excludes 0."]
    if min_p >= 0.05:
        out.append(f"With K = {k} an exact two-sided sign test cannot reach p < 0.05 (its smallest p is {min_p:.3g}, "
                   "every seed the same sign): it is reported, not used for the verdict.")
    out.append("Matched in training steps and data (same seed, same stream, early stopping off), not in compute: one "
               "recursion step costs less per training step; each run's wall time is reported.")
    out.append("Per-seed CIs cover the choice of test rows with that seed's training fixed; the across-seed interval "
               "covers training seeds (rows fixed).")
    return out


# -- report --------------------------------------------------------------------------------------------------------

def _ci(d: float, ci: list[float], digits: int = 4) -> str:
    return f"{d:+.{digits}f} [{ci[0]:+.{digits}f}, {ci[1]:+.{digits}f}]"


def table(report: dict) -> str:
    a, ev = report["analysis"], report["eval"]
    lines = [f"Trained ablations of {report['model']}, seeds {report['seeds']}: variant - full, nats/token, 95% CI; "
             f"the same {ev['n_rows']} test rows and {ev['recall_rows']} test recall items for every model",
             f"{'seed':<5} {'variant':<10} {'test-row loss':<34} {'recall-digit loss':<34}"]
    for s, per in a["per_seed"].items():
        for v, figs in per.items():
            cells = [f"{_ci(c['delta'], c['ci95'])} p {c['p_value']:.3g}" for c in (figs["loss"], figs["recall_loss"])]
            lines.append(f"{s:<5} {v:<10} {cells[0]:<34} {cells[1]:<34}")
    lines.append("across seeds: mean of the per-seed deltas, t-interval over seeds, exact sign test")
    for v, figs in a["across_seeds"].items():
        for f, x in figs.items():
            lines.append(f"  {v:<10} {FIGURES[f]:<18} {_ci(x['mean'], x['t_ci95'])}  K={x['K']}  "
                         f"signs +{x['n_positive']}/-{x['n_negative']}  sign-test p {x['sign_test_p']:.3g}")
    for mech, vd in a["verdicts"].items():
        lines.append(f"verdict {mech} ({vd['variant']} - full on {FIGURES[vd['figure']]}): "
                     f"{_ci(vd['mean'], vd['t_ci95'])}, K={vd['K']}: {vd['verdict']}")
    lines.append("training wall time (s): seed variant  wall (whole command) / fit / steps")
    for s, per in report["runs"].items():
        for v, r in per.items():
            fit = f"{r['fit_s']:.0f}" if r.get("fit_s") is not None else "?"
            lines.append(f"  {s:<5} {v:<10} {r['wall_s']:.0f} / {fit} / {r['optimizer_steps']}")
    lines.extend(f"note: {n}" for n in report["notes"])
    return "\n".join(lines)


def run(out: Path, model: str = "m1", seeds: list[int] = (1, 2, 3), variants: list[str] | None = None,
        extra: list[str] = (), n_rows: int = 64, seq_len: int = 128, eval_seed: int = 42, hardware: str = "cpu",
        command: list[str] | None = None) -> dict:
    """Train every (seed, variant), score every checkpoint, write and return the report."""
    import torch

    from agentforge.artifacts import load_model

    variants = list(variants or DEFAULT_VARIANTS)
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        raise AblationError(f"unknown variant(s) {', '.join(bad)}; known: {', '.join(VARIANTS)}")
    if REFERENCE not in variants:
        raise AblationError(f"the variants must include {REFERENCE!r}, the reference every delta is taken against")
    if not seeds or len(set(seeds)) != len(seeds):
        raise AblationError(f"--seeds must be distinct and at least one, got {list(seeds)}")
    if not (ROOT / "conf" / "model" / f"{model}.yaml").is_file():
        known = ", ".join(sorted(p.stem for p in (ROOT / "conf" / "model").glob("*.yaml")))
        raise AblationError(f"unknown model {model!r}: conf/model/ has {known}")
    if n_rows < 2:
        raise AblationError(f"--rows must be at least 2, got {n_rows}")
    extra = list(extra)
    check_overrides(extra)
    out = Path(out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    load0 = os.getloadavg()
    runs: dict[str, dict[str, dict]] = {}
    total, i = len(seeds) * len(variants), 0
    for s in seeds:
        for v in variants:
            i += 1
            runs.setdefault(str(s), {})[v] = train(out, model, s, v, extra, hardware, label=f"[{i}/{total}] ")
    torch.manual_seed(0)
    cache, scores = None, {}
    for s in seeds:
        scores[s] = {}
        for v in variants:
            m, _, _ = load_model(runs[str(s)][v]["checkpoint"])
            if cache is None:
                window = m.config.window
                cache = eval_rows(n_rows, seq_len, eval_seed, window)
            elif m.config.window != window:
                raise AblationError(f"seed={s} {v}: window {m.config.window} differs from the first model's {window}; "
                                    "the recall items would differ")
            scores[s][v] = score(m, *cache)
            runs[str(s)][v]["per_row"] = scores[s][v]
            runs[str(s)][v]["means"] = {f: float(np.mean(x)) for f, x in scores[s][v].items()}
    rows, rec_rows, rec_mask = cache
    report = {
        "what": "trained ablations: each variant trained from scratch per seed, scored on the same test rows",
        "date": datetime.date.today().isoformat(),
        "command": command,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_start": load0,
                    "load_end": os.getloadavg(), "hardware": hardware},
        "model": model, "seeds": list(seeds), "variants": {v: VARIANTS[v] for v in variants}, "overrides": extra,
        "eval": {"split": "test", "n_rows": int(rows.shape[0]), "seq_len": seq_len, "row_seed": eval_seed,
                 "recall_rows": int(rec_rows.shape[0]), "recall_gap": window + 8,
                 "recall_digits": int(rec_mask.sum())},
        "runs": runs,
        "analysis": analyse(scores, eval_seed),
        "notes": notes(len(seeds)),
    }
    from agentforge.io import write_json_atomic

    write_json_atomic(out / "train_ablations.json", report)
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for every training run, e.g. "
                                                  "phase.max_epochs=2")
    ap.add_argument("--model", default="m1")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, help=f"of {', '.join(VARIANTS)}")
    ap.add_argument("--out", type=Path, default=Path("outputs/train_ablations"))
    ap.add_argument("--rows", type=int, default=64, help="test rows and test recall items scored")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--eval-seed", type=int, default=42, help="draws the test rows (the same for every model)")
    ap.add_argument("--hardware", default="cpu")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = ap.parse_args(argv)
    try:
        report = run(args.out, args.model, args.seeds, args.variants, args.overrides, args.rows, args.seq_len,
                     args.eval_seed, args.hardware, command=["python", "scripts/train_ablations.py", *argv])
    except AblationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(table(report))
    print(f"written: {Path(args.out).absolute() / 'train_ablations.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
