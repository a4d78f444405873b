"""What the pipeline runs, in order, and how it knows a step's outputs are complete and valid.

Steps: cognate m1, m2, m3 -> evomerge -> quietstar -> bitnet -> eval of every phase's output. Each
step is one ordinary phase run with a few overrides; it is *complete* when every output it publishes
exists and reads back (checkpoint config + safetensors header, or a parseable results JSON). A rerun
skips a complete step only when its settings are the ones its outputs were made with (``step_fingerprint``
of its composed config, recorded in ``pipeline_state.json``) and no step it reads from (``Step.needs``: Cognate ->
EvoMerge -> Quiet-STaR -> BitNet, each eval step -> the step that made what it evaluates) ran again: once a step
runs again, the outputs downstream of it are stale and are rebuilt, and the others are not (a BitNet change
re-evaluates the compressed model only). (Without the settings check a rerun with, say, more Cognate steps per
epoch skipped every step and reported the old models as the new ones.)
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf
from safetensors import safe_open

from agentforge.io import WEIGHTS_FILE, is_complete_checkpoint

MODEL_IDS = {"m1": 1, "m2": 2, "m3": 3}


@dataclass
class Step:
    key: str                       # unique name, e.g. "cognate-m1", "eval-phase2_champion"
    phase: str                     # the phase it runs
    overrides: list[str]           # config overrides of this step
    checkpoints: list[Path] = field(default_factory=list)   # checkpoint dirs it publishes
    files: list[Path] = field(default_factory=list)         # JSON files it publishes
    needs: list[str] = field(default_factory=list)          # the steps whose outputs it reads (by default)


def valid_checkpoint(d: Path) -> bool:
    if not is_complete_checkpoint(d):
        return False
    try:
        with safe_open(str(d / WEIGHTS_FILE), framework="pt") as f:
            return len(list(f.keys())) > 0
    except Exception:  # a truncated or corrupt file is simply not complete
        return False


def valid_json(f: Path) -> bool:
    try:
        json.loads(f.read_text())
        return True
    except (OSError, ValueError):
        return False


# what a step's outputs do not depend on: where it writes, how it logs, what its W&B run is called, resume mode
NOT_FINGERPRINTED = ("paths", "logger", "run_name", "ckpt_path", "optimized_metric")


def step_fingerprint(child, artifacts: Path | None = None) -> str:
    """A hash of a step's composed config, less ``NOT_FINGERPRINTED``: two runs of a step with the same
    fingerprint are made with the same settings. Paths under ``artifacts`` (an eval step's ``phase.checkpoint``)
    count relative to it, so a moved outputs directory is not a change of settings."""
    conf = OmegaConf.to_container(child, resolve=True)
    conf = {k: v for k, v in conf.items() if k not in NOT_FINGERPRINTED}
    text = json.dumps(conf, sort_keys=True, default=str)
    if artifacts is not None:
        text = text.replace(str(artifacts), "<artifacts>")
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def outputs_digest(step: Step) -> str:
    """A hash of the contents of everything a step publishes: the pipeline records it with the step, and with each
    later step the digests of the outputs it was made from, so a step is reused only while its own outputs and its
    inputs are the ones recorded (not replaced by an interrupted rerun, a standalone phase, or a hand edit)."""
    h = hashlib.sha256()
    for d in step.checkpoints:
        for f in sorted(x for x in Path(d).rglob("*") if x.is_file()):
            h.update(str(f.relative_to(d)).encode() + b"\0" + f.read_bytes())
    for f in step.files:
        if f.is_file():
            h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def is_complete(step: Step) -> bool:
    return all(valid_checkpoint(d) for d in step.checkpoints) and all(valid_json(f) for f in step.files)


def build_plan(phases: list[str], models: list[str], artifacts: Path, overrides: dict[str, list[str]]) -> list[Step]:
    """The ordered steps for the selected phases (``eval`` evaluates the outputs of the selected ones)."""
    extra = {k: list(v or []) for k, v in overrides.items()}
    steps: list[Step] = []
    evals: list[tuple[str, Path, str]] = []   # (stage, checkpoint, the step that made it)
    if "cognate" in phases:
        for m in models:
            mid = MODEL_IDS[m]
            out = artifacts / "cognate" / f"model{mid}"
            steps.append(Step(f"cognate-{m}", "cognate", [f"model={m}", *extra.get("cognate", [])], [out],
                              [out / "metrics.json"]))
            evals.append((f"phase1_model{mid}", out, f"cognate-{m}"))
    if "evomerge" in phases:   # it merges whichever of model1..3 exist
        out = artifacts / "evomerge" / "champion"
        steps.append(Step("evomerge", "evomerge", extra.get("evomerge", []), [out],
                          needs=[f"cognate-{m}" for m in MODEL_IDS]))
        evals.append(("phase2_champion", out, "evomerge"))
    if "quietstar" in phases:
        baked, out = artifacts / "quietstar" / "baked", artifacts / "quietstar" / "reasoning"
        steps.append(Step("quietstar", "quietstar", extra.get("quietstar", []), [baked, out], needs=["evomerge"]))
        evals.append(("phase3_reasoning", out, "quietstar"))
    if "bitnet" in phases:
        out = artifacts / "bitnet" / "compressed"
        steps.append(Step("bitnet", "bitnet", extra.get("bitnet", []), [out], needs=["quietstar"]))
        evals.append(("phase4_compressed", out, "bitnet"))
    if "eval" in phases:
        for stage, ckpt, maker in evals:
            res = artifacts / "eval_results" / f"{stage}_results.json"
            steps.append(Step(f"eval-{stage}", "eval", [f"phase.checkpoint={ckpt}", f"phase.stage={stage}",
                                                        *extra.get("eval", [])], [], [res], needs=[maker]))
    return steps
