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
