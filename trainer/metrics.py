"""Binary detection metrics in numpy: ROC, AUC, EER, average precision, accuracy.

Convention: `is_fake` labels (fake = 1 = positive class) and scores that grow with P(fake)
(probabilities or logits; only accuracy needs probabilities). The curves follow scikit-learn's
definitions so numbers are comparable with published results; sklearn itself is only a test dependency.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray


def _validate(is_fake: ArrayLike, scores: ArrayLike) -> tuple[NDArray[np.bool_], NDArray[np.float64]]:
    labels = np.asarray(is_fake)
    values = np.asarray(scores, dtype=np.float64)
    if labels.ndim != 1 or values.ndim != 1 or labels.shape != values.shape:
        raise ValueError(f"labels and scores must be 1-D of equal length, got {labels.shape} and {values.shape}")
    if labels.size == 0:
        raise ValueError("no samples to score")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0 (real) or 1 (fake)")
    if not np.isfinite(values).all():
        raise ValueError("scores contain NaN or infinity")
    return labels.astype(bool), values


def _require_both_classes(labels: NDArray[np.bool_]) -> None:
    positives = int(labels.sum())
    if positives == 0 or positives == labels.size:
        only = "fake" if positives else "real"
        raise ValueError(f"ROC metrics need both real and fake samples; all {labels.size} are {only}")


def _binary_clf_curve(
    labels: NDArray[np.bool_], scores: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """False and true positive counts at each distinct score, thresholds in decreasing order."""
    # Stable sort on descending scores, as sklearn does, so ties are grouped deterministically.
    order = np.argsort(scores, kind="mergesort")[::-1]
    sorted_scores = scores[order]
    sorted_labels = labels[order].astype(np.float64)
    distinct = np.where(np.diff(sorted_scores))[0]
    threshold_idx = np.r_[distinct, sorted_labels.size - 1]
    tps = np.cumsum(sorted_labels)[threshold_idx]
    fps = 1 + threshold_idx - tps
    return fps, tps, sorted_scores[threshold_idx]


def roc_curve(
    is_fake: ArrayLike, scores: ArrayLike, drop_intermediate: bool = True
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """(fpr, tpr, thresholds); thresholds decrease and start at +inf (nothing predicted fake)."""
    labels, values = _validate(is_fake, scores)
    _require_both_classes(labels)
    fps, tps, thresholds = _binary_clf_curve(labels, values)
    if drop_intermediate and fps.size > 2:
        # Points on a straight segment add nothing to the curve or its area.
        keep = np.where(np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True])[0]
        fps, tps, thresholds = fps[keep], tps[keep], thresholds[keep]
    fps = np.r_[0.0, fps]
    tps = np.r_[0.0, tps]
    thresholds = np.r_[np.inf, thresholds]
    return fps / fps[-1], tps / tps[-1], thresholds


def auc(is_fake: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve (trapezoids), fake = positive class."""
    fpr, tpr, _ = roc_curve(is_fake, scores)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1])) / 2.0)


def eer(is_fake: ArrayLike, scores: ArrayLike) -> float:
    """Equal error rate: where the ROC crosses FNR = FPR, linearly interpolated between ROC points.

    The reference code reported the FPR at the ROC point closest to the crossing; interpolation
    gives the same value when a point lies on it and does not depend on how thresholds fall otherwise.
    """
    fpr, tpr, _ = roc_curve(is_fake, scores, drop_intermediate=False)
    fnr = 1.0 - tpr
    gap = fnr - fpr  # starts at 1 (threshold +inf), decreases to -1 (everything fake)
    crossing = int(np.argmax(gap <= 0))
    if gap[crossing] == 0 or crossing == 0:
        return float(fpr[crossing])
    before = crossing - 1
    weight = gap[before] / (gap[before] - gap[crossing])
    return float(fpr[before] + weight * (fpr[crossing] - fpr[before]))


def precision_recall_curve(
    is_fake: ArrayLike, scores: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """(precision, recall, thresholds) with increasing thresholds; last point is (1, 0)."""
    labels, values = _validate(is_fake, scores)
    if not labels.any():
        raise ValueError(f"precision/recall need at least one fake sample; all {labels.size} are real")
    fps, tps, thresholds = _binary_clf_curve(labels, values)
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    reverse = slice(None, None, -1)
    return np.r_[precision[reverse], 1.0], np.r_[recall[reverse], 0.0], thresholds[reverse]


def average_precision(is_fake: ArrayLike, scores: ArrayLike) -> float:
    """AP = sum over thresholds of (R_n - R_{n-1}) * P_n (no interpolation), fake = positive."""
    precision, recall, _ = precision_recall_curve(is_fake, scores)
    return float(-np.sum(np.diff(recall) * precision[:-1]))


def accuracy(is_fake: ArrayLike, probabilities: ArrayLike, threshold: float = 0.5) -> float:
    """Share of samples whose decision `P(fake) >= threshold` matches the label."""
    labels, values = _validate(is_fake, probabilities)
    return float(np.mean((values >= threshold) == labels))


@dataclass(frozen=True)
class DetectionMetrics:
    """The four numbers reported per evaluation level (fractions in [0, 1], not percent)."""

    accuracy: float
    auc: float
    eer: float
    average_precision: float
    num_real: int
    num_fake: int

    def as_dict(self) -> dict[str, float | int]:
        return {
            "accuracy": self.accuracy,
            "auc": self.auc,
            "eer": self.eer,
            "average_precision": self.average_precision,
            "num_real": self.num_real,
            "num_fake": self.num_fake,
        }


def detection_metrics(is_fake: ArrayLike, probabilities: ArrayLike, threshold: float = 0.5) -> DetectionMetrics:
    """All metrics at once from P(fake) scores; raises ValueError when a class is missing."""
    labels, values = _validate(is_fake, probabilities)
    _require_both_classes(labels)
    return DetectionMetrics(
        accuracy=accuracy(labels, values, threshold),
        auc=auc(labels, values),
        eer=eer(labels, values),
        average_precision=average_precision(labels, values),
        num_real=int((~labels).sum()),
        num_fake=int(labels.sum()),
    )
