"""The phase registry: ``phase=NAME`` runs ``agentforge.phases.NAME.run(cfg)``.

This is the only place phases are wired. A phase module exposes ``run(cfg) -> dict`` (its outputs and
headline figures) and exposes its config checks as ``RULES`` = ``rules.PHASE_RULES[NAME]`` (checked by
``main.run`` before the module loads).
"""
from __future__ import annotations

import importlib
from types import ModuleType

from agentforge.errors import ConfigError

PHASES = ("cognate", "evomerge", "quietstar", "bitnet", "eval", "compare", "scaling", "grokking", "pipeline",
          "codegen")


def get_phase(name: str) -> ModuleType:
    if name not in PHASES:
        raise ConfigError(f"phase.name={name!r} is not a phase; choose from {list(PHASES)}")
    try:
        return importlib.import_module(f"agentforge.phases.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"agentforge.phases.{name}":
            raise ConfigError(f"phase={name} is not built yet in this version of Agent Forge") from None
        raise
