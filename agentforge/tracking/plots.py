"""Matplotlib figures saved as PNG (headless Agg backend) for the run directory and W&B."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from agentforge.io import atomic_write


def _save(fig, path: str | Path) -> Path:
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)
    return Path(path)


def points_with_ci(ax, xs, ys, cis, *, proportion: bool = False) -> int:
    """Draw ``ys`` at ``xs`` as a line and each point's 95% CI as an error bar (``cis[i]`` = (lo, hi), or None where
    the figure has none: no bar is drawn, so a missing interval never looks like a tight one). ``proportion``: the
    axis shows all of [0, 1], as an auto-scaled axis stretches a difference of 0.01 over the whole panel. Returns the
    number of bars drawn."""
    ax.plot(xs, ys, marker="o")
    bars = [(x, y, ci) for x, y, ci in zip(xs, ys, cis)
            if ci is not None and isinstance(y, (int, float)) and y == y]
    if bars:
        ax.errorbar([x for x, _, _ in bars], [y for _, y, _ in bars],
                    yerr=[[max(y - ci[0], 0.0) for _, y, ci in bars], [max(ci[1] - y, 0.0) for _, y, ci in bars]],
                    fmt="none", capsize=3, elinewidth=1, ecolor="black")
    if proportion:
        ax.set_ylim(-0.02, 1.02)
    return len(bars)


def line_plot(path, xs, series: dict[str, list], title: str, xlabel: str, ylabel: str = "") -> Path:
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for label, ys in series.items():
        ax.plot(xs[: len(ys)], ys, marker="o", label=label)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def heatmap(path, matrix, title: str, xlabel: str, ylabel: str, xticklabels=None, yticklabels=None,
            cbar_label: str = "") -> Path:
    fig, ax = plt.subplots(figsize=(7, 3.8))
    im = ax.imshow(matrix, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if xticklabels is not None:
        ax.set_xticks(range(len(xticklabels)), xticklabels, rotation=45, ha="right")
    if yticklabels is not None:
        ax.set_yticks(range(len(yticklabels)), yticklabels)
    fig.colorbar(im, ax=ax, label=cbar_label)
    return _save(fig, path)


def bar_plot(path, labels: list[str], values: list[float], title: str, ylabel: str) -> Path:
    fig, ax = plt.subplots(figsize=(max(5, 0.5 * len(labels)), 3.6))
    ax.bar(range(len(values)), values)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)
