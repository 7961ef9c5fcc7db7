"""Training curves: the tutorial's two plots, drawn from a run's history."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

_SPLITS = (("train", "train"), ("valid", "validation"), ("test", "test"))


def plot_curve(
    history: Sequence[dict[str, float]], metric: str, path: Path, *, title: str | None = None
) -> Path:
    """Plot ``train_<metric>``, ``valid_<metric>`` and ``test_<metric>`` per epoch."""
    epochs = [int(row["epoch"]) for row in history]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=100)
    for key, label in _SPLITS:
        column = f"{key}_{metric}"
        if history and column in history[0]:
            ax.plot(epochs, [row[column] for row in history], marker="o", ms=3, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric.upper() if metric != "loss" else "loss (MSE of rating - mu)")
    ax.set_title(title or f"{metric} per epoch")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_history(history: Sequence[dict[str, float]], out_dir: Path) -> list[Path]:
    """Write ``loss.png`` and ``mse.png`` into ``out_dir``."""
    return [
        plot_curve(history, "loss", out_dir / "loss.png", title="loss per epoch"),
        plot_curve(history, "mse", out_dir / "mse.png", title="mean squared error per epoch"),
    ]
