"""Whether a pipeline step will continue its interrupted run, asked before the step runs: ``rundirs.start_attempt``
keeps the step's run dir, and the metrics history in it, only then; otherwise the dir moves to
``runs/<key>.previous`` as for any rerun.

Only Cognate and Quiet-STaR continue a run: they resume the epoch checkpoint in their ``.work`` dir when it carries
this config's (and, for Quiet-STaR, this input's) fingerprint (``training.resume``). The other phases always start
over, so keeping their dir appended a new model's rows to the last one's (an eval step's ``run_summary.json``
averaged two models' perplexities); and a Cognate step killed after it published, whose ``.work`` dir was already
gone, trained from scratch into its kept dir (every step logged twice, two sets of ``final/*``).
"""
from __future__ import annotations

from pathlib import Path

from agentforge.training.resume import will_resume


def will_continue(phase: str, child) -> bool:
    """True when the phase run that ``child`` (a step's composed config) describes would resume a checkpoint."""
    if phase == "cognate":
        from agentforge.phases.cognate import fingerprint, model_dir

        out = model_dir(Path(child.paths.artifacts).absolute(), int(child.model.model_id))
        return will_resume(child.get("ckpt_path"), out.with_name(out.name + ".work"), fingerprint(child))
    if phase == "quietstar":
        from agentforge.phases.quietstar_fit import resumes

        return resumes(child)
    return False
