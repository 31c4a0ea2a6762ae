"""Choosing a decision threshold and a temperature on scored validation data (numpy, no model).

Beside `trainer.metrics` (same ROC definitions, scikit-learn's): the threshold at a target
false-positive rate is the ROC point with the largest TPR whose FPR on the real samples is <= the
target (the highest threshold among equals); at the EER point, the one where |FNR - FPR| is smallest.
A sample is called fake when its score >= the threshold, as in the pipeline. The temperature T
minimises the NLL of the labels under sigmoid(logit / T).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from trainer.metrics import roc_curve

CalibrationMethod = Literal["target_fpr", "eer"]
# Temperature search range; a fit on the bound means the classes are separable on this set.
TEMPERATURE_BOUNDS = (0.01, 100.0)


class CalibrationError(ValueError):
    """The validation data cannot give a trustworthy threshold; the message says why."""


@dataclass(frozen=True)
class ThresholdChoice:
    """One ROC point: `index` into the curve, its threshold (on the curve's score scale), TPR and FPR."""

    index: int
    threshold: float
    tpr: float
    fpr: float


def threshold_at_fpr(
    fpr: NDArray[np.float64], tpr: NDArray[np.float64], thresholds: NDArray[np.float64], target_fpr: float
) -> ThresholdChoice:
    """The ROC point with the largest TPR among those with FPR <= target (the first, i.e. highest threshold)."""
    feasible = np.flatnonzero(fpr <= target_fpr)  # never empty: the curve starts at (0, 0)
    best = feasible[np.argmax(tpr[feasible])]  # argmax returns the first of equals
    return ThresholdChoice(int(best), float(thresholds[best]), float(tpr[best]), float(fpr[best]))


def threshold_at_eer(
    fpr: NDArray[np.float64], tpr: NDArray[np.float64], thresholds: NDArray[np.float64]
) -> ThresholdChoice:
    """The ROC point where the miss rate and the false-positive rate are closest (the first of equals)."""
    best = int(np.argmin(np.abs((1.0 - tpr) - fpr)))
    return ThresholdChoice(best, float(thresholds[best]), float(tpr[best]), float(fpr[best]))


def choose_threshold(
    is_fake: NDArray[np.bool_], scores: NDArray[np.float64], method: CalibrationMethod, target_fpr: float | None
) -> tuple[ThresholdChoice, NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """(choice, fpr, tpr, thresholds) on the full ROC curve (no point dropped, so none can be missed)."""
    fpr, tpr, thresholds = roc_curve(is_fake, scores, drop_intermediate=False)
    if method == "eer":
        choice = threshold_at_eer(fpr, tpr, thresholds)
    else:
        if target_fpr is None or not 0.0 <= target_fpr < 1.0:
            raise CalibrationError(f"target FPR must be in [0, 1), got {target_fpr}")
        choice = threshold_at_fpr(fpr, tpr, thresholds, target_fpr)
    if not math.isfinite(choice.threshold):
        raise CalibrationError(
            f"no threshold reaches FPR <= {target_fpr:g} while detecting any fake: every fake scores below "
            f"the highest real; raise the target or add validation data"
        )
    return choice, fpr, tpr, thresholds


def _sigmoid(x: NDArray[np.float64]) -> NDArray[np.float64]:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def fit_temperature(logits: ArrayLike, is_fake: ArrayLike) -> float:
    """T > 0 minimising the mean NLL of `is_fake` under sigmoid(logit / T), within TEMPERATURE_BOUNDS.

    The NLL is convex in a = 1/T, so its derivative mean((sigmoid(a z) - y) z) increases with a and
    bisection (in log a) finds its root.
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(is_fake, dtype=np.float64)
    if z.size == 0 or z.shape != y.shape:
        raise CalibrationError("temperature scaling needs logits and labels of equal, non-zero length")

    def slope(a: float) -> float:
        return float(np.mean((_sigmoid(a * z) - y) * z))

    low, high = math.log(1.0 / TEMPERATURE_BOUNDS[1]), math.log(1.0 / TEMPERATURE_BOUNDS[0])
    if slope(math.exp(low)) >= 0.0:
        return TEMPERATURE_BOUNDS[1]
    if slope(math.exp(high)) <= 0.0:
        return TEMPERATURE_BOUNDS[0]
    for _ in range(100):
        middle = 0.5 * (low + high)
        if slope(math.exp(middle)) < 0.0:
            low = middle
        else:
            high = middle
    return 1.0 / math.exp(0.5 * (low + high))
