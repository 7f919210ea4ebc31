"""Pictures of a verification benchmark: accuracy against resolution, ROC curves, and sample pairs.

Plain numpy + matplotlib through the object-oriented API (``Figure`` + the Agg canvas), so drawing never
touches pyplot's global state or needs a display. Every function writes one PNG and returns its path; inputs
are plain arrays and mappings, so the functions serve any caller (``fskd demo`` is one).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

MARKERS = ("o", "s", "^", "D", "v", "P")


def _save(figure: Figure, path: str | os.PathLike, dpi: int = 110) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=dpi, format="png")
    return path


def roc_auc(fpr: Sequence[float] | np.ndarray, tpr: Sequence[float] | np.ndarray) -> float:
    """Area under a ROC curve given as points with increasing ``fpr`` (trapezoid rule)."""
    x = np.asarray(fpr, dtype=np.float64)
    y = np.asarray(tpr, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape or x.size < 2:
        raise ValueError(f"fpr and tpr must be 1-D of the same length >= 2, got {x.shape} and {y.shape}")
    if np.any(np.diff(x) < 0):
        raise ValueError("fpr must be non-decreasing")
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


def plot_accuracy_vs_resolution(
    path: str | os.PathLike,
    resolutions: Sequence[int],
    panels: Mapping[str, Mapping[str, tuple[Sequence[float], Sequence[float]]]],
    ncols: int = 3,
    title: str | None = None,
    ylabel: str = "verification accuracy (%)",
) -> Path:
    """One panel per entry of ``panels`` (title -> model label -> (means, spreads) per resolution, fractions).

    Each model is a line with error bars (the spreads, e.g. the std over seeds; NaN draws none) against the
    input resolution in pixels on a log2 axis; a dotted line marks chance (50 %); one legend below the panels
    (the models must be the same in every panel).
    """
    if not panels:
        raise ValueError("plot_accuracy_vs_resolution needs at least one panel")
    xs = np.asarray(resolutions, dtype=np.float64)
    ncols = max(1, min(ncols, len(panels)))
    nrows = math.ceil(len(panels) / ncols)
    figure = Figure(figsize=(4.6 * ncols, 3.8 * nrows + (0.5 if title else 0.0)), layout="constrained")
    axes = figure.subplots(nrows, ncols, squeeze=False)
    for index, (panel, series) in enumerate(panels.items()):
        ax = axes[index // ncols][index % ncols]
        for number, (label, (means, spreads)) in enumerate(series.items()):
            mean = 100.0 * np.asarray(means, dtype=np.float64)
            spread = 100.0 * np.asarray(spreads, dtype=np.float64)
            if mean.shape != xs.shape or spread.shape != xs.shape:
                raise ValueError(f"{panel!r}/{label!r}: {mean.size} means and {spread.size} spreads for "
                                 f"{xs.size} resolutions")
            ax.errorbar(xs, mean, yerr=np.nan_to_num(spread), marker=MARKERS[number % len(MARKERS)],
                        capsize=3, linewidth=1.6, label=label)
        ax.axhline(50.0, color="grey", linestyle=":", linewidth=1)
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(int(r)) for r in xs])
        ax.minorticks_off()
        ax.set_xlabel("input resolution (pixels, shrunk and scaled back to HR)")
        ax.set_ylabel(ylabel)
        ax.set_title(panel, fontsize=10)
        ax.grid(True, alpha=0.3)
    for index in range(len(panels), nrows * ncols):
        axes[index // ncols][index % ncols].set_visible(False)
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncols=len(labels), fontsize=10)
    if title:
        figure.suptitle(title)
    return _save(figure, path)


def plot_roc(
    path: str | os.PathLike,
    curves: Mapping[str, tuple[Sequence[float] | np.ndarray, Sequence[float] | np.ndarray]],
    title: str,
) -> Path:
    """ROC curves (model label -> (fpr, tpr)) on linear axes, with each curve's AUC in the legend."""
    if not curves:
        raise ValueError("plot_roc needs at least one curve")
    figure = Figure(figsize=(5.2, 5.0), layout="constrained")
    ax = figure.subplots()
    for label, (fpr, tpr) in curves.items():
        ax.plot(fpr, tpr, linewidth=1.6, label=f"{label} (AUC {roc_auc(fpr, tpr):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="chance")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false accept rate (different pairs accepted)")
    ax.set_ylabel("true accept rate (same pairs accepted)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _save(figure, path)


@dataclass(frozen=True)
class SamplePair:
    """One row of `plot_samples`: the views of both images (HxWx3 uint8, one per column) and a caption."""

    first: Sequence[np.ndarray]
    second: Sequence[np.ndarray]
    caption: str


def plot_samples(path: str | os.PathLike, pairs: Sequence[SamplePair], view_titles: Sequence[str],
                 title: str | None = None) -> Path:
    """A grid: per pair, the views of its first image, then the views of its second, captioned above.

    Images are drawn pixel for pixel (nearest), so degraded views show their blocks as the model sees them.
    """
    if not pairs:
        raise ValueError("plot_samples needs at least one pair")
    views = len(view_titles)
    for number, pair in enumerate(pairs):
        if len(pair.first) != views or len(pair.second) != views:
            raise ValueError(f"pair {number}: {len(pair.first)} + {len(pair.second)} images for {views} "
                             "views")
    columns = 2 * views
    figure = Figure(figsize=(1.45 * columns + 0.2, 2.0 * len(pairs) + (0.5 if title else 0.1)),
                    layout="constrained")
    grid = figure.add_gridspec(2 * len(pairs), columns, height_ratios=[0.28, 1.0] * len(pairs))
    for row, pair in enumerate(pairs):
        caption = figure.add_subplot(grid[2 * row, :])
        caption.axis("off")
        caption.text(0.5, 0.5, pair.caption, ha="center", va="center", fontsize=9,
                     transform=caption.transAxes)
        for column, image in enumerate([*pair.first, *pair.second]):
            ax = figure.add_subplot(grid[2 * row + 1, column])
            ax.imshow(np.asarray(image), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            side = "A" if column < views else "B"
            ax.set_title(f"{side} {view_titles[column % views]}", fontsize=8)
    if title:
        figure.suptitle(title, fontsize=11)
    return _save(figure, path)
