"""The two PNGs of a run: learning curves, and predicted vs true traces of validation trials.

Figures are built with matplotlib's object API (no pyplot), so nothing depends on a display or
on global backend state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _save(figure: Figure, path: str | Path) -> None:
    FigureCanvasAgg(figure)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def plot_learning_curves(history: Sequence[Mapping[str, Any]], emotions: Sequence[str], path: str | Path) -> None:
    """Train loss (left) and validation CCC per emotion (right) against the epoch.

    Dotted vertical lines mark the epochs where a new backbone group was released.

    Args:
        history: rows with keys ``epoch``, ``train_loss``, ``<emotion>_ccc`` and ``n_released``.
        emotions: the emotions whose CCC columns to draw.
        path: the PNG to write.
    """
    epochs = [row["epoch"] for row in history]
    figure = Figure(figsize=(10, 4))
    loss_axes, ccc_axes = figure.subplots(1, 2)
    loss_axes.plot(epochs, [row["train_loss"] for row in history], marker="o", label="train loss (1 - CCC)")
    loss_axes.set_xlabel("epoch")
    loss_axes.set_ylabel("loss")
    loss_axes.legend()
    for emotion in emotions:
        ccc_axes.plot(epochs, [row[f"{emotion}_ccc"] for row in history], marker="o", label=f"validation {emotion}")
    ccc_axes.set_xlabel("epoch")
    ccc_axes.set_ylabel("CCC")
    ccc_axes.legend()
    previous = 0
    for row in history:
        if row["n_released"] != previous:
            for axes in (loss_axes, ccc_axes):
                axes.axvline(row["epoch"], color="grey", linestyle=":", linewidth=1)
            previous = row["n_released"]
    _save(figure, path)


def plot_traces(
    predictions: Mapping[str, np.ndarray],
    labels: Mapping[str, np.ndarray],
    trials: Sequence[str],
    emotions: Sequence[str],
    path: str | Path,
) -> None:
    """One panel per (trial, emotion): the predicted and the true trace over frames.

    Args:
        predictions: trial -> (n_frames, len(emotions)) model output.
        labels: trial -> (n_frames, len(emotions)) ground truth.
        trials: which trials to draw (rows).
        emotions: column names (columns of the grid).
        path: the PNG to write.
    """
    n_rows, n_cols = max(len(trials), 1), len(emotions)
    figure = Figure(figsize=(5 * n_cols, 2.2 * n_rows))
    axes_grid = np.atleast_2d(figure.subplots(n_rows, n_cols, squeeze=False))
    for row, trial in enumerate(trials):
        for column, emotion in enumerate(emotions):
            axes = axes_grid[row, column]
            axes.plot(labels[trial][:, column], label="true", linewidth=1)
            axes.plot(predictions[trial][:, column], label="predicted", linewidth=1)
            axes.set_title(f"{trial} - {emotion}", fontsize=9)
            axes.set_ylim(-1.05, 1.05)
            if row == n_rows - 1:
                axes.set_xlabel("frame")
    axes_grid[0, 0].legend(fontsize=8)
    _save(figure, path)
