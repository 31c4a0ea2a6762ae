"""ROC curve PNGs, one drawing for `ralf-cli calibrate --roc` and `ralf-cli evaluate --roc` (matplotlib,
no display needed). Fake is the positive class: x is real called fake, y is fake detected."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class RocCurve:
    fpr: NDArray[np.float64]
    tpr: NDArray[np.float64]
    label: str
    style: str = "-"


@dataclass(frozen=True)
class RocPoint:
    """An operating point to mark (a chosen threshold)."""

    fpr: float
    tpr: float
    label: str


@dataclass(frozen=True)
class RocFigure:
    title: str
    curves: Sequence[RocCurve]
    points: Sequence[RocPoint] = field(default_factory=tuple)
    target_fpr: float | None = None  # a dashed vertical line


def plot_roc(figure_spec: RocFigure, path: Path) -> Path:
    """Draw `figure_spec` into the PNG at `path` (its folder is created); returns the path."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(5.5, 5.0), dpi=120)
    try:
        for curve in figure_spec.curves:
            axes.plot(curve.fpr, curve.tpr, curve.style, label=curve.label)
        axes.plot([0, 1], [0, 1], linestyle=":", color="grey", linewidth=0.8)
        for point in figure_spec.points:
            axes.scatter([point.fpr], [point.tpr], color="red", zorder=3, label=point.label)
        if figure_spec.target_fpr is not None:
            axes.axvline(figure_spec.target_fpr, color="red", linestyle="--", linewidth=0.8, label="target FPR")
        axes.set_xlabel("false-positive rate (real called fake)")
        axes.set_ylabel("true-positive rate (fake detected)")
        axes.set_title(figure_spec.title)
        axes.set_xlim(-0.01, 1.01)
        axes.set_ylim(-0.01, 1.01)
        axes.legend(loc="lower right", fontsize=8)
        figure.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path)
    finally:
        plt.close(figure)
    return path
