"""What the pipeline runs, in order, and how it knows a step's outputs are complete and valid.

Steps: cognate m1, m2, m3 -> evomerge -> quietstar -> bitnet -> eval of every phase's output. Each
step is one ordinary phase run with a few overrides; it is *complete* when every output it publishes
exists and reads back (checkpoint config + safetensors header, or a parseable results JSON). A rerun
skips a complete step only when its settings are the ones its outputs were made with (``step_fingerprint``
of its composed config, the sha256 of every data file that config names and the package version, recorded in
``pipeline_state.json``) and no step it reads from (``Step.needs``: Cognate ->
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

from agentforge import __version__
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


def made_with(child, artifacts: Path | None = None) -> dict:
    """What a step's outputs depend on, in three parts a rerun can name: ``settings``, a hash of its composed config
    less ``NOT_FINGERPRINTED`` (paths under ``artifacts``, an eval step's ``phase.checkpoint``, count relative to it,
    so a moved outputs directory is not a change of settings); ``data_files``, the sha256 of the content of every
    file the config names as data (``data_file_digests``: the config holds only their paths, and a data file
    replaced under the same path once reran nothing and reported the old models as made from the new data); and
    ``version``, the package's (a new release may train differently with the same settings)."""
    conf = OmegaConf.to_container(child, resolve=True)
    conf = {k: v for k, v in conf.items() if k not in NOT_FINGERPRINTED}
    text = json.dumps(conf, sort_keys=True, default=str)
    if artifacts is not None:
        text = text.replace(str(artifacts), "<artifacts>")
    return {"settings": hashlib.sha256(text.encode()).hexdigest()[:16],
            "data_files": {**data_file_digests(conf.get("data") or {}), **phase_file_digests(conf.get("phase") or {})},
            "version": __version__}


def fingerprint_of(made: dict) -> str:
    """The one hash of ``made_with``'s parts that a step's record keeps as its ``fingerprint``."""
    return hashlib.sha256(json.dumps(made, sort_keys=True).encode()).hexdigest()[:16]


def step_fingerprint(child, artifacts: Path | None = None) -> str:
    """``fingerprint_of(made_with(child, artifacts))``: two runs of a step with the same fingerprint are made with
    the same settings, the same data file contents and the same package version."""
    return fingerprint_of(made_with(child, artifacts))


def data_file_digests(data: dict) -> dict[str, str | None]:
    """The sha256 of each data input a ``data`` config names, by its key: ``data.path``, every ``data.eval_paths``
    entry, every ``data.benchmark_paths`` entry, and for ``data.source=python_code`` the corpus directory
    ``data.root`` (its Python files, as the corpus reads them; null: this interpreter's standard library). Paths
    resolve as the phases open them (relative to the working directory). A file that cannot be read is None: the
    phase's own ``error:`` line names it when the step runs, not a traceback here."""
    files = {"data.path": data.get("path")}
    for group in ("eval_paths", "benchmark_paths"):
        entries = data.get(group)
        files.update({f"data.{group}.{k}": v for k, v in entries.items()} if isinstance(entries, dict) else {})
    out = {k: _file_sha256(Path(str(v))) for k, v in files.items() if v}
    if data.get("source") == "python_code":
        from agentforge.codegen.corpus import DEFAULT_EXCLUDE, corpus_root, source_files

        root = corpus_root(data.get("root"))
        h = hashlib.sha256()
        for f in source_files(root, data.get("exclude_dirs") or DEFAULT_EXCLUDE) if root.is_dir() else []:
            h.update(str(f.relative_to(root)).encode() + b"\0" + (_file_sha256(f) or "unreadable").encode())
        out["data.root"] = h.hexdigest() if root.is_dir() else None
    return out


PHASE_DATA_FILES = ("baking.examples_path", "benchmark_path")   # data files a phase's own config names


def phase_file_digests(phase: dict) -> dict[str, str | None]:
    """The sha256 of each data file a phase's own config names (``PHASE_DATA_FILES``: Quiet-STaR's
    ``phase.baking.examples_path``, codegen's ``phase.benchmark_path``), by its key, as ``data_file_digests`` does for
    ``data``'s (an audit: rewriting the baking examples under the same path reran nothing)."""
    out = {}
    for dotted in PHASE_DATA_FILES:
        node = phase
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node:
            out[f"phase.{dotted}"] = _file_sha256(Path(str(node)))
    return out


_SHA_CACHE: dict[tuple, str] = {}   # (path, inode, size, mtime) -> sha256: the planner asks for each file many times


def forget_file_digests() -> None:
    """Empty the cache of file digests: each pipeline run hashes the data files afresh (a file rewritten within the
    file system's timestamp granularity keeps its size and mtime)."""
    _SHA_CACHE.clear()


def _file_sha256(path: Path) -> str | None:
    try:
        st = path.stat()
        key = (str(path.absolute()), st.st_ino, st.st_size, st.st_mtime_ns)
        if key not in _SHA_CACHE:
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            _SHA_CACHE[key] = h.hexdigest()
        return _SHA_CACHE[key]
    except OSError:   # missing, a directory, no permission
        return None


def outputs_digest(step: Step) -> str:
    """A hash of the contents of everything a step publishes: the pipeline records it with the step, and with each
    later step the digests of the outputs it was made from, so a step is reused only while its own outputs and its
    inputs are the ones recorded (not replaced by an interrupted rerun, a standalone phase, or a hand edit)."""
    h = hashlib.sha256()
    for d in step.checkpoints:
        _hash_tree(h, Path(d))
    for f in step.files:
        if f.is_file():
            h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def _hash_tree(h, d: Path) -> None:
    for f in sorted(x for x in d.rglob("*") if x.is_file()):
        h.update(str(f.relative_to(d)).encode() + b"\0" + f.read_bytes())


def given_inputs(child) -> list[str]:
    """The inputs a step's override names (``phase.input`` / ``phase.inputs``) in place of its default ones."""
    given = child.phase.get("input") or child.phase.get("inputs")
    return [given] if isinstance(given, str) else [str(x) for x in given or []]


def given_input_digests(child) -> dict[str, str]:
    """{"input:<path>": a hash of its contents} for each input a step's override names (``phase.input`` /
    ``phase.inputs``): a step recorded with these is reused only while what is there is what it was made from. The
    step's fingerprint holds only the path string, so a checkpoint rewritten outside the pipeline was reused (the
    pipeline audit: a Quiet-STaR step on an external checkpoint said "same settings, inputs and data files, skipped"
    after its weights changed)."""
    out = {}
    for p in (Path(x).absolute() for x in given_inputs(child)):
        h = hashlib.sha256()
        if p.is_dir():
            _hash_tree(h, p)
        elif p.is_file():
            h.update(p.read_bytes())
        out[f"input:{p}"] = h.hexdigest()[:16] if p.exists() else "missing"
    return out


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
