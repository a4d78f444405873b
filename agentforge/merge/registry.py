"""Merge methods by name, with their parameters' defaults in one table (as mergekit's registry).

``METHODS[name]`` is the tensor-level function; ``DEFAULTS[name]`` the keyword defaults the evolution
starts from. FrankenMerge and DFS act on whole state dicts (``layers.py``).
"""
from __future__ import annotations

from agentforge.merge import layers, techniques

METHODS = {
    "linear": techniques.linear,
    "slerp": techniques.slerp_many,
    "ties": techniques.ties,
    "dare": techniques.dare,
    "frankenmerge": layers.frankenmerge,
    "dfs": layers.dfs,
}

DEFAULTS = {
    "linear": {"normalize": True},
    "slerp": {"dot_threshold": 0.9995, "eps": 1e-8},
    "ties": {"density": 1.0, "lam": 1.0, "normalize": True},
    "dare": {"density": 0.5, "lam": 1.0, "normalize": False, "rescale": "l1"},
    "frankenmerge": {},
    "dfs": {},
}


def get(name: str):
    if name not in METHODS:
        raise KeyError(f"unknown merge method {name!r}; known: {sorted(METHODS)}")
    return METHODS[name]
