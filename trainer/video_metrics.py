"""Video-level detection metrics with bootstrap confidence intervals (numpy only).

A real-world video set is small (tens of videos per class), so every figure comes with a 95%
percentile-bootstrap interval: reals and fakes are resampled separately (stratified), so every
resample has both classes and the class balance of the set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from trainer.metrics import auc, average_precision

DEFAULT_RESAMPLES = 1000
LOW_FPR_TARGETS = (0.01, 0.05)


def operating_point(is_fake: ArrayLike, scores: ArrayLike, threshold: float) -> tuple[float, float]:
    """(TPR, FPR) when videos with score >= threshold are flagged."""
    labels = np.asarray(is_fake, dtype=bool)
    flagged = np.asarray(scores, dtype=np.float64) >= threshold
    tpr = float(flagged[labels].mean()) if labels.any() else float("nan")
    fpr = float(flagged[~labels].mean()) if (~labels).any() else float("nan")
    return tpr, fpr


def tpr_at_fpr(is_fake: ArrayLike, scores: ArrayLike, max_fpr: float) -> float:
    """The highest TPR of any threshold whose FPR is at most `max_fpr` (0 when none but 'flag nothing')."""
    labels = np.asarray(is_fake, dtype=bool)
    values = np.asarray(scores, dtype=np.float64)
    real, fake = np.sort(values[~labels])[::-1], values[labels]
    allowed = int(np.floor(max_fpr * real.size + 1e-9))  # reals that may score at or above the cut
    # The cut sits just above the (allowed+1)-th highest real score: ties with it would add a false positive.
    if allowed >= real.size:
        return 1.0
    ceiling = real[allowed]
    return float((fake > ceiling).mean())


@dataclass(frozen=True)
class Estimate:
    """A figure and its 95% bootstrap interval (None when the set cannot give one)."""

    value: float | None
    low: float | None = None
    high: float | None = None

    def text(self, digits: int = 3) -> str:
        if self.value is None:
            return "-"
        if self.low is None or self.high is None:
            return f"{self.value:.{digits}f}"
        return f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


@dataclass(frozen=True)
class VideoSetMetrics:
    num_real: int
    num_fake: int
    auc: Estimate
    average_precision: Estimate
    tpr: Estimate  # at the decision threshold
    fpr: Estimate  # at the decision threshold
    tpr_at_1pct_fpr: Estimate
    tpr_at_5pct_fpr: Estimate

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


Statistic = Callable[[NDArray[np.bool_], NDArray[np.float64]], float]


def bootstrap(
    statistic: Statistic, is_fake: NDArray[np.bool_], scores: NDArray[np.float64], resamples: int, seed: int
) -> Estimate:
    """`statistic` on the set and its 2.5 / 97.5 percentiles over stratified resamples."""
    value = statistic(is_fake, scores)
    if resamples <= 0:
        return Estimate(value)
    rng = np.random.default_rng(seed)
    real, fake = np.flatnonzero(~is_fake), np.flatnonzero(is_fake)
    draws = np.empty(resamples)
    for i in range(resamples):
        chosen = np.concatenate([rng.choice(real, real.size), rng.choice(fake, fake.size)])
        draws[i] = statistic(is_fake[chosen], scores[chosen])
    low, high = np.nanpercentile(draws, [2.5, 97.5])
    return Estimate(value, float(low), float(high))


def video_set_metrics(
    is_fake: ArrayLike, scores: ArrayLike, threshold: float, resamples: int = DEFAULT_RESAMPLES, seed: int = 0
) -> VideoSetMetrics:
    """AUC, AP, TPR/FPR at `threshold` and TPR at 1% / 5% FPR, each with its bootstrap interval.

    Needs at least one real and one fake video (ValueError otherwise)."""
    labels = np.asarray(is_fake, dtype=bool)
    values = np.asarray(scores, dtype=np.float64)
    num_fake = int(labels.sum())
    num_real = int(labels.size - num_fake)
    if num_fake == 0 or num_real == 0:
        raise ValueError(f"video metrics need real and fake videos; got {num_real} real and {num_fake} fake")

    def at(statistic: Statistic, offset: int) -> Estimate:
        return bootstrap(statistic, labels, values, resamples, seed + offset)

    return VideoSetMetrics(
        num_real=num_real,
        num_fake=num_fake,
        auc=at(auc, 0),
        average_precision=at(average_precision, 1),
        tpr=at(lambda y, s: operating_point(y, s, threshold)[0], 2),
        fpr=at(lambda y, s: operating_point(y, s, threshold)[1], 3),
        tpr_at_1pct_fpr=at(lambda y, s: tpr_at_fpr(y, s, 0.01), 4),
        tpr_at_5pct_fpr=at(lambda y, s: tpr_at_fpr(y, s, 0.05), 5),
    )
