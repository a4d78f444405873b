"""The scaling plot: measured loss per size against parameters (log axis) with the fitted line."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from agentforge.scaling.fit import ScalingFit
from agentforge.tracking.plots import _save, plt


def scaling_plot(path: str | Path, params: list[float], losses: list[float], names: list[str], fit: ScalingFit,
                 title: str, test_losses: list[float] | None = None) -> Path:
    """Selection-set losses, the line fitted to them and, when given, the test-set losses of the same models."""
    fig, ax = plt.subplots(figsize=(6, 3.8))
    ax.scatter(params, losses, zorder=3, label="selection set (chooses)")
    if test_losses is not None:
        ax.scatter(params, test_losses, zorder=3, marker="x", color="C2", label="test set (the report)")
    for n, y, name in zip(params, losses, names):
        ax.annotate(name, (n, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    grid = np.geomspace(min(params) / 1.15, max(params) * 1.15, 50)
    ax.plot(grid, fit.predict(grid), color="C1",
            label=f"loss = {fit.intercept:.3f} {'-' if fit.slope < 0 else '+'} {abs(fit.slope):.4f}·ln N  "
                  f"(R² {fit.r2:.3f})")
    ax.set_xscale("log")
    ax.set_title(title)
    ax.set_xlabel("parameters N")
    ax.set_ylabel("held-out loss (nats/token)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, path)
