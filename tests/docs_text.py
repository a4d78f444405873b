"""The project's documentation as the claim tests read it: ``README.md`` (the overview: install, run, test, the
latest run's verdicts) and ``docs/*.md`` (one file a topic, linked from the README's table)."""
from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def all_docs() -> str:
    """Every documentation file's text, the README first."""
    return "\n".join(f.read_text() for f in DOC_FILES)
