"""The ways a candidate can fail, and which of them may be cached.

``timeout`` (wall or CPU limit), ``memory`` (address-space limit or the tree's resident memory),
``forbidden`` and ``outside_block`` (the static checks), ``crash`` (anything else the program did, syntax
errors included), ``non_causal``, ``non_finite`` and ``forged`` (found by the trusted side on what came
back: outputs that move with future tokens, NaN/Inf, or values no honest run can produce), ``params`` (returned weights whose parameter count is more than
``trust.max_param_ratio`` times away from the baseline architecture's at some size). Only the
ones the trusted side decided on reproducible input are cached: a timeout, an out-of-memory or a crash
may pass on another try, and what the candidate's own process reports about itself is never stored.
"""
from __future__ import annotations

KINDS = ("timeout", "memory", "forbidden", "outside_block", "crash", "non_causal", "non_finite", "forged",
         "params")
CACHEABLE = frozenset({"forbidden", "outside_block", "non_causal", "non_finite", "forged", "params"})


class CandidateFailure(Exception):
    """A candidate failed a check; ``kind`` is one of KINDS; ``trusted`` is False when the verdict comes
    from the candidate's own process (its early checks), which may say anything and is never cached."""

    def __init__(self, kind: str, message: str, trusted: bool = True):
        assert kind in KINDS, kind
        super().__init__(message)
        self.kind, self.trusted = kind, trusted


def failure(kind: str, message: str) -> dict:
    """The child's account of a failure; the message cut to 4000 characters (the parent shows 800 and refuses a
    status file over ``evaluator.STATUS_MAX_BYTES``)."""
    return {"ok": False, "kind": kind, "error": message[:4000]}
