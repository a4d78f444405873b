"""Which model lineage the pipeline's outputs belong to, and when a run would mix two of them.

A step's record in ``pipeline_state.json`` describes what is on disk: the settings, data files and package version
its outputs were made with (``fingerprint``, and its parts in ``made_with``: ``plan.made_with``), their contents (``outputs_digest``) and the outputs of earlier steps they were made from
(``inputs``). A step is *current* for a command when the whole pipeline with that command would skip it
(``skip_reason`` is None) and every step it reads from is current too. The pipeline

* refuses a ``phase.phases`` / ``phase.models`` subset whose steps read outputs of a step outside it that is not
  current (``not_current``): a missing or interrupted record, other settings than this command composes, outputs
  changed since, or made from other inputs (an interrupted run once left new model1 beside old model2/model3, and
  ``phase.phases=[evomerge,...]`` merged them with no warning);
* warns, printed and at the top of the report, about the outputs outside the subset that the report reads (the
  Cognate models' metrics, the evaluations BitNet's rows are recomputed from) and that are not current, and about
  the steps outside the subset that were made from outputs this run replaced (``stale``);
* keeps, when a step fails, the records of the steps it did not reach (they still describe what is on disk), and
  the failed step's own record when its outputs are still the ones it describes (a bad input caught before any work);
* moves the previous ``pipeline_report.md`` aside when a step of a new run first replaces an output it describes
  (``retire_report``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from agentforge.io import write_text_atomic
from agentforge.pipeline.plan import Step, fingerprint_of, given_input_digests, is_complete, outputs_digest

INCOMPLETE = "outputs incomplete"
INTERRUPTED = "its last run was interrupted after it had replaced its outputs"
SETTINGS_DIFFER = "its settings differ from those its outputs were made with"
FINISHED = ("done", "skipped (complete)")
REPORT, PREVIOUS_REPORT = "pipeline_report.md", "pipeline_report.previous.md"


def skip_reason(step: Step, fp: str, prev: dict | None, upstream_ran: list[str], digest: str | None,
                inputs: dict[str, str], made: dict | None = None, interrupted: bool = False) -> str | None:
    """Why a step must run again (None: skip it): its outputs are incomplete; a step it reads from ran
    (``upstream_ran``: their keys); no record of a finished run made them; they were made with other settings, data
    files or package version (``made``: the parts of ``fp`` now, ``plan.made_with``, which name what changed); they
    changed since (a standalone phase wrote there, or, ``interrupted``: the step's last run, which did not finish,
    replaced them; "changed since the pipeline made them" misled there); or the outputs they were made from changed
    since (``inputs``: the digests of the earlier steps' outputs now, against those recorded when this step ran)."""
    if not is_complete(step):
        return INCOMPLETE
    if upstream_ran:
        return f"a step it reads from ran again ({', '.join(upstream_ran)})"
    if not prev or prev.get("status") not in FINISHED:
        return "no record of a finished run that made its outputs"
    if prev.get("fingerprint") != fp:
        return what_changed(prev.get("made_with"), made)
    if prev.get("outputs_digest") != digest:
        return INTERRUPTED if interrupted else "its outputs changed since the pipeline made them"
    if prev.get("inputs") != inputs:
        changed = sorted(k for k in inputs if (prev.get("inputs") or {}).get(k) != inputs[k])
        return f"the outputs it was made from changed since ({', '.join(changed) or 'other steps'})"
    return None


def what_changed(before: dict | None, now: dict | None) -> str:
    """Which parts of a step's fingerprint (``plan.made_with``) differ from those its outputs were made with: its
    settings, the data files by config key (a file rewritten under the same path), the package version. A record
    without the parts (written before they were kept) says its settings differ."""
    if not before or not now:
        return SETTINGS_DIFFER
    old, new = before.get("data_files") or {}, now.get("data_files") or {}
    files = sorted(k for k in {*old, *new} if old.get(k) != new.get(k))
    parts = [SETTINGS_DIFFER] if before.get("settings") != now.get("settings") else []
    if files:
        parts.append(f"its data files changed since its outputs were made ({', '.join(files)})")
    if before.get("version") != now.get("version"):
        parts.append(f"its outputs were made by agentforge {before.get('version')}, this is {now.get('version')}")
    return "; ".join(parts) or SETTINGS_DIFFER


def stale(others: dict[str, dict], digests: dict[str, str], ran: set[str]) -> list[str]:
    """The steps outside this run (``others``: their records; a ``phase.phases`` subset) whose recorded inputs
    include an output this run replaced: their outputs, and the report rows read from them, are of the old lineage."""
    out = []
    for key, rec in others.items():
        changed = sorted(k for k, d in (rec.get("inputs") or {}).items() if k in ran and digests.get(k) != d)
        if changed:
            out.append(f"{key} was made from the earlier outputs of {', '.join(changed)}")
    return out


class Lineage:
    """Decides, for steps outside this run, whether they are current (see the module docstring).

    ``every``: every step of the whole pipeline (all three models), by key, in pipeline order; ``planned``: the keys
    this run runs; ``previous``: the records of the last run; ``compose(step)``: the step's config as this command
    composes it; ``made_with(child)`` (``plan.made_with``) and ``reads(step, child)``: as the run loop computes them."""

    def __init__(self, every: dict[str, Step], planned: set[str], previous: dict[str, dict],
                 compose: Callable, made_with: Callable, reads: Callable):
        self.every, self.planned, self.previous = every, planned, previous
        self._compose, self._made_with, self._reads = compose, made_with, reads
        self._children: dict[str, object] = {}
        self._disk: dict[str, str | None] = {}

    def child(self, key: str):
        if key not in self._children:
            self._children[key] = self._compose(self.every[key])
        return self._children[key]

    def digest(self, key: str, digests: dict[str, str]) -> str | None:
        """The digest of a step's outputs: this run's (``digests``) or, for a step not yet reached, on disk now."""
        if key in digests:
            return digests[key]
        if key not in self._disk:
            step = self.every[key]
            self._disk[key] = outputs_digest(step) if is_complete(step) else None
        return self._disk[key]

    def why_not_current(self, key: str, digests: dict[str, str], ran: set[str], memo: dict | None = None) -> str | None:
        """Why the outputs of ``key`` (outside this run) are not what this command would make (None: they are):
        the reason the whole pipeline would run it again, or an earlier step outside this run that is not current.
        ``digests``/``ran``: this run's outputs so far and the steps it ran."""
        memo = {} if memo is None else memo
        if key in memo:
            return memo[key]
        step, child = self.every[key], self.child(key)
        reads = [k for k in self._reads(step, child) if k in self.every]
        stale = [k for k in reads if k not in ran and k not in self.planned
                 and self.why_not_current(k, digests, ran, memo) is not None]
        if stale:   # not "ran again" (skip_reason's words for ``ran``): nothing ran; they are another lineage's
            memo[key] = f"a step it reads from is not current ({', '.join(stale)})"
            return memo[key]
        inputs = {k: d for k in reads if (d := self.digest(k, digests)) is not None}
        inputs.update(given_input_digests(child))
        own = self.digest(key, digests) if is_complete(step) else None
        made = self._made_with(child)
        memo[key] = skip_reason(step, fingerprint_of(made), self.previous.get(key), [k for k in reads if k in ran],
                                own, inputs, made)
        return memo[key]

    def not_current(self, keys, digests: dict[str, str], ran: set[str]) -> list[str]:
        """'key (why)' for each of ``keys`` outside this run that is not current, in pipeline order."""
        memo: dict = {}
        out = []
        for key in [k for k in self.every if k in set(keys) and k not in self.planned]:
            why = self.why_not_current(key, digests, ran, memo)
            if why is not None:
                out.append(f"{key} ({why})")
        return out

    def outside_reads(self, step: Step, child) -> list[str]:
        """The steps outside this run whose outputs ``step`` reads."""
        return [k for k in self._reads(step, child) if k in self.every and k not in self.planned]

    def report_reads(self) -> list[str]:
        """The steps outside this run whose outputs the report reads: the Cognate models (the Phase 1 section and
        diversity) and, when BitNet runs, the evaluations its accuracy drop and memory are recomputed from; only
        those that left something on disk (a model never trained is simply absent from the report)."""
        keys = [k for k in self.every if k.startswith("cognate-")]
        if "bitnet" in self.planned:
            keys += ["eval-phase3_reasoning", "eval-phase4_compressed"]
        return [k for k in keys if k in self.every and k not in self.planned and _left_something(self.every[k])]


def _left_something(step: Step) -> bool:
    return any(Path(d).exists() for d in step.checkpoints) or any(Path(f).exists() for f in step.files)


def refusal(phases: list[str], models: list[str], lines: list[str]) -> str:
    """The one-line ConfigError of a subset that reads outputs of another lineage."""
    return (f"phase.phases={phases} / phase.models={models} leave out steps whose outputs the selected steps read, "
            f"and those outputs are not what this command would make: {'; '.join(lines)}. Run those phases too, or "
            f"drop phase.phases / phase.models (the whole pipeline reruns only what changed); if only their settings "
            f"differ, give the same phase.overrides they were made with")


def retire_report(pipe_dir: Path, step: str) -> Path | None:
    """Move the last run's report aside (``pipeline_report.previous.md``) when ``step`` of this run replaces an output
    (``artifacts.on_publish``, or the step's end for one that wrote without publishing), so no report describes
    models a run has since replaced, and a run that fails before replacing any (a bad input) leaves it in place."""
    report = Path(pipe_dir) / REPORT
    if not report.is_file():
        return None
    target = report.with_name(PREVIOUS_REPORT)
    text = report.read_text()
    note = (f"> **Superseded:** step {step} of a later run of this pipeline began replacing the outputs this report describes; "
            "it is kept for reference only.\n\n")
    write_text_atomic(target, note + text)
    report.unlink()
    return target


def state_rows(records: list[dict], kept: list[dict], order: list[str]) -> list[dict]:
    """The records to save, one per step (this run's over the kept ones), in pipeline order (unknown keys last)."""
    by_key = {r["key"]: r for r in [*kept, *records]}
    rank = {k: i for i, k in enumerate(order)}
    return sorted(by_key.values(), key=lambda r: rank.get(r["key"], len(rank)))
