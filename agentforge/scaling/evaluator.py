"""Scoring a candidate attention file: static checks (``static.py``), training in the sandbox, the score here.

``evaluate(program_path, settings, ...) -> dict`` is OpenEvolve's evaluator contract (a program path in,
a dict of metrics out; ``combined_score`` is what OpenEvolve maximizes). The steps:

1. read and parse the file — parsing executes nothing (a syntax error is a ``crash``);
2. find its framework from the header line and compare everything outside the
   ``# EVOLVE-BLOCK-START`` / ``# EVOLVE-BLOCK-END`` markers with that framework's template
   (``outside_block``); refuse a block longer than ``MAX_BLOCK_CHARS``, imports beyond
   math/torch/agentforge.models.layers, eval/exec/open and dunder access inside the block (``forbidden``).
   This is a friendly first filter with a clear reason, not the security boundary: that is the sandbox;
3. look the (code, settings, held-out secret) triple up in the cache;
4. run ``agentforge.scaling.child`` on it in ``agentforge.sandbox`` (bubblewrap, or the weaker process
   mode when chosen): it trains every size and returns weights and held-out logits (``timeout``,
   ``memory``, ``crash``);
5. recompute the logits from the returned weights in an inference-only sandbox without the project's
   code, compare them with the child's and spot-check rows computed alone (``rescore.py``: ``forged``
   when they differ), score those logits on the trusted side (``trust.py``: parameter counts, loss on
   withheld tokens, ``non_causal``, ``non_finite``, ``forged``), fit loss = a + b·ln(params) and combine
   the slope with the baseline guard (``fit.guarded_fitness``). The fit's params are the baseline
   architecture's count at each size (``trust.reference_params``), never the candidate's: its own counts are
   reported (``params_returned_<size>``) and must stay within ``trust.max_param_ratio`` of the reference
   (``params``), so dead tensors cannot squeeze the x-axis and steepen the slope.

The figures come twice, from the same trained models: under the plain keys (``combined_score``,
``fitness``, ``loss_<size>``, ...) from the *selection* set, the only numbers a search may choose on;
under ``test_*`` keys (``test_fitness``, ``test_loss_<size>``, ``test_combined_score``,
``test_improvement`` over the baseline with its 95 % interval ``test_improvement_ci95`` over the
``test_improvement_n`` rows and, with ``seeds`` (K) >= 2, over training seeds: ``uncertainty.py``;
``test_improvement_ci_covers`` says which, ``test_n`` rows) from the *test* set, which played no part in
choosing and is what a winner is reported on. ``selection_only`` removes them for OpenEvolve. The baseline
reference is the mean of K training seeds; the candidate is trained at ``candidate_seeds`` (m, default 1)
of them and its losses averaged.

A failing candidate gets ``valid = 0``, ``combined_score = FAIL_SCORE`` and the reason in ``error_kind``
and ``error``; nothing a candidate does raises out of ``evaluate``. Kinds: ``failures.py``.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np

from agentforge.errors import ConfigError
from agentforge.sandbox import SandboxLimits, run_sandboxed
from agentforge.scaling import childinfo, trust
from agentforge.scaling.bootstrap import bootstrap_replicates, percentile_interval
from agentforge.scaling.cache import ResultCache, cache_key
from agentforge.scaling.failures import CACHEABLE, CandidateFailure
from agentforge.scaling.fit import fit_scaling_law, guarded_fitness
from agentforge.scaling.rescore import rescore
from agentforge.scaling.static import (  # noqa: F401 - the static checks, re-exported for their callers
    ALLOWED_IMPORTS,
    BLOCK_END,
    BLOCK_START,
    FORBIDDEN_CALLS,
    HEADER,
    MAX_BLOCK_CHARS,
    STATE_DICT_HOOKS,
    check_block_code,
    check_outside_block,
    check_static,
    detect_framework,
    split_block,
)
from agentforge.scaling.uncertainty import candidate_seeds, mean_sizes, seed_interval, training_seeds
from agentforge.scaling.variants import variant_path

FAIL_SCORE = -1000.0  # combined_score of a rejected candidate: below any fitness a trained family reaches


# -- evaluation ---------------------------------------------------------------------------------------------
def failed(kind: str, message: str, **extra) -> dict:
    return {"combined_score": FAIL_SCORE, "valid": 0.0, "error_kind": kind, "error": message, **extra}


STATUS_MAX_BYTES = 1 << 20   # the child's status.json; more is refused unparsed (``run_child``)
TEST_PREFIX = "test_"  # result keys from the test set: never shown to a search


def selection_only(result: dict) -> dict:
    """``result`` without any test-set figure (top-level ``test_*`` keys, the sizes' ``test_loss``): what a
    search may see."""
    out = {k: v for k, v in result.items() if not k.startswith(TEST_PREFIX)}
    if isinstance(out.get("sizes"), list):
        out["sizes"] = [{k: v for k, v in s.items() if not k.startswith(TEST_PREFIX)} if isinstance(s, dict) else s
                        for s in out["sizes"]]
    return out


def _law(sizes: list[dict], settings: dict, loss: str, reference: dict | None) -> dict:
    """Fit, fitness and guarded score of the per-size ``loss`` figures against ``reference``."""
    key = "non_embedding_params" if settings.get("fit_params") == "non_embedding" else "params"
    fit = fit_scaling_law([s[key] for s in sizes], [s[loss] for s in sizes])
    largest = max(sizes, key=lambda s: s[key])["name"]
    guard = guarded_fitness(fit, {s["name"]: s[loss] for s in sizes}, largest, reference,
                            float((settings.get("fitness") or {}).get("tolerance", 0.05)))
    out = {**guard, "fitness": fit.fitness, "slope": fit.slope, "intercept": fit.intercept, "r2": fit.r2}
    if reference is not None:  # the baseline's own score is its fitness: the gain over it
        out["improvement"] = guard["combined_score"] - float(reference["fitness"])
    return out


def scored(sizes: list[dict], settings: dict, reference: dict | None) -> dict:
    """The selection figures (plain keys) and, when the sizes carry ``test_loss``, the test ones (``test_*``),
    each against the baseline reference on the same set."""
    key = "non_embedding_params" if settings.get("fit_params") == "non_embedding" else "params"
    out = {**_law(sizes, settings, "loss", reference), "valid": 1.0, "error_kind": "", "error": "",
           "fit_params": "non_embedding" if key == "non_embedding_params" else "total"}  # the fit's x-axis
    if reference is not None and reference.get("seed_fitness"):
        out.update(baseline_seeds=list(reference["seeds"]), baseline_seed_count=float(len(reference["seeds"])),
                   baseline_fitness_by_seed=list(reference["seed_fitness"]))
    for s in sizes:
        out[f"loss_{s['name']}"] = s["loss"]
        out[f"params_{s['name']}"] = float(s[key])  # the reference count the fit used
        if f"{key}_returned" in s:  # the candidate's own count: shown, never fitted
            out[f"params_returned_{s['name']}"] = float(s[f"{key}_returned"])
    if sizes and all("test_loss" in s for s in sizes):
        test_ref = None
        if reference is not None and reference.get("test_losses") is not None:
            test_ref = {"fitness": reference["test_fitness"], "losses": reference["test_losses"]}
        out.update({f"{TEST_PREFIX}{k}": v for k, v in _law(sizes, settings, "test_loss", test_ref).items()})
        out.update({f"{TEST_PREFIX}loss_{s['name']}": s["test_loss"] for s in sizes})
        if test_ref is not None and reference.get("test_seed_fitness"):
            out[f"{TEST_PREFIX}baseline_fitness_by_seed"] = list(reference["test_seed_fitness"])
        if test_ref is not None and reference.get("test_rows") and all("test_row_losses" in s for s in sizes):
            out.update({f"{TEST_PREFIX}{k}": v for k, v in
                        improvement_ci(sizes, settings, reference, out[f"{TEST_PREFIX}improvement"]).items()})
    return out


def improvement_ci(sizes: list[dict], settings: dict, reference: dict, point: float) -> dict:
    """The 95 % interval of the test improvement ``point`` (keys without the ``test_`` prefix).

    Rows: a paired bootstrap over the test rows — each replicate resamples the rows once for every size and
    both models, then recomputes the baseline's fit, the candidate's fit and guard and the improvement exactly
    as ``scored`` does; ``improvement_row_se`` is the replicates' standard deviation. With one baseline seed
    (K = 1) the interval is their percentile interval and covers row sampling only (``improvement_ci_covers``
    = "rows"). With K >= 2 each baseline seed's own test losses, scored against the K-seed mean as a candidate
    is, give the statistic's seed-to-seed spread (``baseline_seed_sd``), and the interval is
    ``uncertainty.seed_interval``'s t-interval (K − 1 df) on both ("rows+seeds"; it assumes the candidate's seed
    variance is the baseline's)."""
    names, base_params = [s["name"] for s in sizes], reference["params"]

    def improvement(cand: dict[str, float], base: dict[str, float]) -> float:
        base_fitness = fit_scaling_law([base_params[k] for k in names], [base[k] for k in names]).fitness
        trial = [{**s, "test_loss": cand[s["name"]]} for s in sizes]
        return _law(trial, settings, "test_loss", {"fitness": base_fitness, "losses": base})["improvement"]

    values, n = bootstrap_replicates({s["name"]: s["test_row_losses"] for s in sizes}, reference["test_rows"],
                                     improvement, reps=int((settings.get("trust") or {}).get("bootstrap") or 1000),
                                     seed=int(settings.get("seed") or 0))
    row_se = float(np.std(values, ddof=1))
    out = {"improvement_n": float(n), "improvement_row_se": row_se,
           "candidate_seed_count": float(len(candidate_seeds(settings)))}
    seed_losses = reference.get("test_seed_losses") or []
    if len(seed_losses) < 2:
        return {**out, "improvement_ci95": list(percentile_interval(values)), "improvement_ci_covers": "rows",
                "baseline_seed_count": float(max(1, len(seed_losses)))}
    test_ref = {"fitness": reference["test_fitness"], "losses": reference["test_losses"]}
    per_seed = [_law([{**s, "test_loss": losses[s["name"]]} for s in sizes], settings, "test_loss",
                     test_ref)["improvement"] for losses in seed_losses]
    iv = seed_interval(point, row_se, per_seed, m=len(candidate_seeds(settings)))
    return {**out, "improvement_ci95": iv["ci"], "improvement_ci_covers": "rows+seeds",
            "improvement_se": iv["se"], "improvement_ci_df": iv["df"], "baseline_seed_sd": iv["seed_sd"],
            "baseline_seed_count": float(len(seed_losses)), "baseline_improvement_by_seed": per_seed}


def limits_for(settings: dict, timeout_s: float, memory_mb: int | None) -> SandboxLimits:
    threads = max(1, int((settings.get("hardware") or {}).get("threads") or 1))
    return SandboxLimits(wall_s=float(timeout_s), cpu_s=int(math.ceil(timeout_s)) * (threads + 1),
                         memory_mb=int(memory_mb or 2**20), max_procs=64 + 4 * threads, max_file_mb=256)


def run_child(code: str, settings: dict, heldout: dict, *, limits: SandboxLimits, mode: str, check_only: bool,
              log_dir: Path | None) -> tuple[dict, dict[str, bytes]]:
    """Train in the sandbox; (the child's own report, the files it returned). Timeouts and memory are the
    sandbox's verdict, not the child's."""
    from safetensors.torch import save

    sizes = [s["name"] for s in settings["sizes"]]
    outputs = ("status.json", *(f"{w}_{n}.safetensors" for n in sizes for w in ("weights", "logits")))
    files = {"candidate.py": code, "request.json": json.dumps({"settings": settings, "check_only": check_only}),
             # no held-out row: the scored logits are recomputed from the weights (rescore.py), so the child gets
             # only the probe rows (it answers their last positions and the probe pairs, compared there) and
             # cannot fit its weights to the text of the rows it is scored on
             "heldout.safetensors": save({"inputs": trust.probe_bases(heldout), "probe": heldout["probe"]})}
    threads = str((settings.get("hardware") or {}).get("threads") or 1)
    res = run_sandboxed(["python", "-m", "agentforge.scaling.child"], files, limits=limits, outputs=outputs,
                        env={"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}, mode=mode)
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        (log_dir / "sandbox.log").write_text(f"[{res.mode}] kind={res.kind} rc={res.returncode} "
                                             f"{res.wall_s:.1f}s\n{res.stdout}\n{res.stderr}")
    tail = " | ".join(res.stderr.strip().splitlines()[-4:])[-600:]
    if res.kind == "timeout":
        raise CandidateFailure("timeout", f"no result within the {limits.wall_s:g} s limit (or the CPU-time "
                                          f"limit): the candidate hangs or is too slow")
    if res.kind == "memory":
        raise CandidateFailure("memory", f"the candidate exceeded the {limits.memory_mb} MiB memory limit: {tail}")
    status = read_status(res.files.get("status.json", b"{}"))
    if status.get("ok") is False:  # the child's own account of a failure: reported, never cached
        kind = status.get("kind") if status.get("kind") in ("memory", "non_causal", "non_finite") else "crash"
        raise CandidateFailure(kind, f"in the sandbox: {str(status.get('error'))[:800]}", trusted=False)
    if res.kind != "ok":
        raise CandidateFailure("crash", f"the sandbox exited with status {res.returncode}: {tail or '(no output)'}")
    return status, res.files


def read_status(raw: bytes) -> dict:
    """The child's status.json as a dict ({} when it is not a JSON object); ``forged`` over ``STATUS_MAX_BYTES``,
    unparsed: parsing costs ~30x the file in memory (a red team's 128 MiB list of ``{}`` took 3.5 GB here)."""
    if len(raw) > STATUS_MAX_BYTES:
        raise CandidateFailure("forged", f"status.json is {len(raw)} bytes, over {STATUS_MAX_BYTES}: the project's "
                                         f"child writes a few KB")
    try:
        status = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return status if isinstance(status, dict) else {}


def evaluate(program_path: str | Path, settings: dict, *, timeout_s: float = 600.0, memory_mb: int | None = 4096,
             cache_dir: str | Path | None = None, work_dir: str | Path | None = None, check_only: bool = False,
             sandbox: str = "bwrap", key_dir: str | Path | None = None) -> dict:
    """Score one candidate file; never raises for anything the candidate does (see the module docstring).
    ``sandbox`` is the isolation mode ("bwrap" or the weaker "process"); a missing bwrap raises ConfigError.
    ``key_dir``: where the held-out salt is kept (default ``cache_dir``): with the cache off it keeps the held-out
    and test rows the same from run to run, so fitness stays comparable; without either, one salt per process."""
    t0 = time.perf_counter()
    settings = {**settings, "trust": {**TRUST_DEFAULTS, **(settings.get("trust") or {})}}
    try:
        code = Path(program_path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        return failed("crash", f"{program_path}: cannot read the program ({exc})")
    try:
        framework = check_static(code)
    except CandidateFailure as exc:
        return failed(exc.kind, str(exc), cached=False, eval_seconds=time.perf_counter() - t0, sandbox=sandbox)
    key_dir = cache_dir if key_dir is None else key_dir
    salt = trust.heldout_salt(key_dir)
    keyed = settings
    if (settings.get("fitness") or {}).get("reference") and code == variant_path("baseline").read_text():
        keyed = {**settings, "fitness": {**settings["fitness"], "reference": None}}   # the baseline has no reference:
        # a plain baseline run and the reference a candidate trains share one entry (`baseline_reference`)
    key = cache_key(code, {**keyed, "heldout": hashlib.sha256(salt.encode()).hexdigest()[:16],
                           "sandbox": sandbox, "check_only": check_only})
    cache = ResultCache(cache_dir)
    hit = cache.get(key)
    if hit is not None:
        return {**hit, "cached": True, "eval_seconds": time.perf_counter() - t0}
    heldout = trust.make_heldout(settings, salt, spot_key=hashlib.sha256(code.encode()).hexdigest())
    limits = limits_for(settings, timeout_s, memory_mb)
    status, sizes, cacheable, rescored, child_checks = {}, [], True, {}, {}
    log_dir = Path(work_dir) if work_dir else None
    seeds = candidate_seeds(settings)  # m training seeds (one unless phase.candidate_seeds), losses averaged
    try:
        runs = []
        for seed in seeds:
            seed_log = log_dir if log_dir is None or len(seeds) == 1 else log_dir / f"seed_{seed}"
            status, files = run_child(code, {**settings, "train_seed": seed}, heldout, limits=limits, mode=sandbox,
                                      check_only=check_only, log_dir=seed_log)
            child_checks = childinfo.checks(status.get("checks"))  # stored: checked first (childinfo.py)
            if check_only:
                break
            # the logits scored are recomputed from the returned weights (rescore.py), not the child's
            infer_limits = limits_for(settings, float(settings["trust"]["infer_timeout_s"]), memory_mb)
            files, checked = rescore(code, settings, heldout, files, limits=infer_limits, sandbox=sandbox,
                                     log_dir=seed_log)
            rescored = rescored or checked
            floor = float(settings["trust"]["loss_floor"])
            ratio = float(settings["trust"]["max_param_ratio"])
            run_sizes = [trust.score_size(s, files, heldout, floor, ratio) for s in settings["sizes"]]
            for s in run_sizes:  # the child's own timing and curve: shown, never scored, checked (childinfo.py)
                s.update(childinfo.size_fields(status, s["name"]))
            runs.append(run_sizes)
        if check_only:
            result = {"combined_score": 0.0, "valid": 1.0, "error_kind": "", "error": ""}
        else:
            sizes = mean_sizes(runs)
            reference = baseline_reference(code, settings, timeout_s, memory_mb, cache_dir, sandbox, key_dir)
            result = scored(sizes, settings, reference)
            result.update(candidate_seeds=seeds, candidate_seed_count=float(len(seeds)))
            if "test_targets" in heldout:
                result.update(test_n=float(len(heldout["test_targets"])),
                              test_dropped=float(heldout["test_dropped"]))
    except CandidateFailure as exc:
        result, cacheable = failed(exc.kind, str(exc)), exc.kind in CACHEABLE and exc.trusted
    except (ValueError, KeyError, TypeError) as exc:
        result, cacheable = failed("crash", f"the scaling fit failed: {exc}"), False
    except ConfigError:  # the setup's fault (no bwrap, a bad mode), not the candidate's: stop the run
        raise
    except Exception as exc:  # noqa: BLE001 - the last net: nothing a candidate does raises out of evaluate
        result, cacheable = failed("crash", f"unexpected {type(exc).__name__} while evaluating: {exc}"), False
    result.update(framework=framework, key=key, sizes=sizes, sandbox=sandbox, rescore=rescored, checks=child_checks)
    if result["valid"] or (result["error_kind"] and cacheable):
        cache.put(key, result)
    return {**result, "cached": False, "eval_seconds": time.perf_counter() - t0}


TRUST_DEFAULTS = {"heldout_rows": 512, "test_rows": 512, "probe_rows": 4, "loss_floor": 0.05, "spot_rows": "all",
                  "logit_tol": 1e-4, "infer_timeout_s": 120.0, "bootstrap": 1000, "max_param_ratio": 2.0}


def baseline_reference(code: str, settings: dict, timeout_s, memory_mb, cache_dir, sandbox,
                       key_dir=None) -> dict | None:
    """The baseline variant's fitness and per-size losses under the same settings, averaged over its K training
    seeds (``uncertainty.training_seeds``; each evaluated once, then cached), for the sabotage guard and the
    improvement; with each seed's own figures (``seed_fitness``, ``test_seed_losses``, ...) for the interval.
    None when ``fitness.reference`` is off or the candidate is the baseline."""
    fit_cfg = settings.get("fitness") or {}
    base_code = variant_path("baseline").read_text()
    if fit_cfg.get("reference") != "baseline" or code == base_code:
        return None
    base_settings = {**settings, "fitness": {**fit_cfg, "reference": None}}
    if "candidate_seeds" in base_settings:  # one seed per evaluation: the same key as a plain baseline run
        base_settings["candidate_seeds"] = 1
    seeds, bases = training_seeds(settings), []
    for seed in seeds:
        one = base_settings if seed == int(settings.get("seed") or 0) else {**base_settings, "train_seed": seed}
        base = evaluate(variant_path("baseline"), one, timeout_s=timeout_s, memory_mb=memory_mb,
                        cache_dir=cache_dir, sandbox=sandbox, key_dir=key_dir)
        if not base["valid"]:
            raise CandidateFailure("crash", f"the baseline reference itself failed at training seed {seed} "
                                            f"({base['error_kind']}): {base['error']}")
        bases.append(base)
    names = [s["name"] for s in bases[0]["sizes"]]

    def mean_of(values) -> float:
        return float(np.mean(values))

    ref = {"fitness": mean_of([b["fitness"] for b in bases]), "seeds": seeds,
           "seed_fitness": [b["fitness"] for b in bases],
           "losses": {k: mean_of([b["sizes"][i]["loss"] for b in bases]) for i, k in enumerate(names)}}
    if all("test_fitness" in b for b in bases):
        key = "non_embedding_params" if settings.get("fit_params") == "non_embedding" else "params"
        seed_losses = [{s["name"]: s["test_loss"] for s in b["sizes"]} for b in bases]
        ref.update(test_fitness=mean_of([b["test_fitness"] for b in bases]),
                   test_seed_fitness=[b["test_fitness"] for b in bases], test_seed_losses=seed_losses,
                   test_losses={k: mean_of([sl[k] for sl in seed_losses]) for k in names},
                   test_rows={k: np.mean([b["sizes"][i]["test_row_losses"] for b in bases], axis=0).tolist()
                              for i, k in enumerate(names)},
                   params={s["name"]: s[key] for s in bases[0]["sizes"]})
    return ref
