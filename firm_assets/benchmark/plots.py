"""Small, deterministic PNG plots of critic scores against human scores.

Figures are drawn with matplotlib's object API on the Agg canvas (no pyplot global state, safe in
a Dagster worker) and saved without the version metadata, so equal inputs give equal bytes.
Unparsed predictions (None or NaN) are skipped and counted in the caption.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # matplotlib is imported when a plot is drawn, not when the code location loads
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

SCORES = (1, 2, 3, 4, 5)
_SIZE_IN, _DPI = 4.0, 100


def scatter_png(predicted: Sequence[float | None], human: Sequence[float], title: str, path: Path) -> Path:
    """Critic score against human score; overlapping points are merged into one marker sized by count."""
    pred, truth, skipped = _scored(predicted, human)
    figure, axes = _figure()
    low = min([SCORES[0], *pred, *truth]) - 0.5
    high = max([SCORES[-1], *pred, *truth]) + 0.5
    axes.plot([low, high], [low, high], linestyle="--", color="grey", linewidth=1)
    if len(pred):
        points, counts = np.unique(np.column_stack([truth, pred]), axis=0, return_counts=True)
        axes.scatter(points[:, 0], points[:, 1], s=18 + 24 * counts, alpha=0.6, color="tab:blue")
    axes.set(xlim=(low, high), ylim=(low, high), xlabel="human score", ylabel="critic score", aspect="equal")
    axes.set_title(f"{title}\n{_caption(len(pred), skipped)}", fontsize=9)
    return _save(figure, path)


def confusion_png(predicted: Sequence[float | None], human: Sequence[float], title: str, path: Path) -> Path:
    """Counts of (human, critic) scores rounded half up to 1-5, with each count written in its cell."""
    pred, truth, skipped = _scored(predicted, human)
    counts = np.zeros((len(SCORES), len(SCORES)), dtype=int)
    np.add.at(counts, (_score_index(truth), _score_index(pred)), 1)
    figure, axes = _figure()
    axes.imshow(counts, cmap="Blues", origin="lower", vmin=0, vmax=max(1, counts.max()))
    for row, col in np.ndindex(counts.shape):
        dark = counts[row, col] > counts.max() / 2
        axes.text(
            col, row, str(counts[row, col]), ha="center", va="center", color="white" if dark else "black"
        )
    ticks = range(len(SCORES))
    axes.set(xticks=ticks, yticks=ticks, xticklabels=SCORES, yticklabels=SCORES)
    axes.set(xlabel="critic score (rounded)", ylabel="human score (rounded)")
    axes.set_title(f"{title}\n{_caption(len(pred), skipped)}", fontsize=9)
    return _save(figure, path)


def _scored(predicted: Sequence[float | None], human: Sequence[float]) -> tuple[np.ndarray, np.ndarray, int]:
    """(predictions, human scores) of the parsed items, and how many were skipped."""
    if len(predicted) != len(human):
        raise ValueError(f"lengths differ: {len(predicted)} predicted, {len(human)} human")
    keep = [p is not None and math.isfinite(p) for p in predicted]
    pred = np.array([p for p, ok in zip(predicted, keep, strict=True) if ok], dtype=float)
    truth = np.array([h for h, ok in zip(human, keep, strict=True) if ok], dtype=float)
    return pred, truth, keep.count(False)


def _score_index(values: np.ndarray) -> np.ndarray:
    """Round half up (3.5 -> 4, unlike numpy's half-to-even), clip to 1-5, and shift to 0-4."""
    return (np.clip(np.floor(values + 0.5), SCORES[0], SCORES[-1]) - SCORES[0]).astype(int)


def _caption(n_scored: int, skipped: int) -> str:
    return f"n = {n_scored}" + (f", {skipped} unparsed skipped" if skipped else "")


def _figure() -> tuple[Figure, Axes]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(_SIZE_IN, _SIZE_IN), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def _save(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", metadata={"Software": None})
    return path
