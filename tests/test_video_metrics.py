"""Video-level metrics with bootstrap intervals (trainer/video_metrics.py)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from trainer.video_metrics import bootstrap, operating_point, tpr_at_fpr, video_set_metrics


def test_operating_point_counts_the_threshold_as_flagged() -> None:
    labels = [False, False, True, True]
    assert operating_point(labels, [0.1, 0.5, 0.5, 0.9], threshold=0.5) == (1.0, 0.5)
    assert operating_point(labels, [0.1, 0.5, 0.5, 0.9], threshold=0.6) == (0.5, 0.0)


def test_tpr_at_fpr_never_exceeds_the_allowed_false_positives() -> None:
    real = np.arange(100) / 100  # 0.00 .. 0.99
    fake = np.array([0.995, 0.985, 0.975, 0.5, 0.2])
    labels = np.r_[np.zeros(100, bool), np.ones(5, bool)]
    scores = np.r_[real, fake]
    assert tpr_at_fpr(labels, scores, 0.0) == pytest.approx(1 / 5)  # only 0.995 is above every real
    assert tpr_at_fpr(labels, scores, 0.01) == pytest.approx(2 / 5)  # one real (0.99) may be flagged: cut above 0.98
    assert tpr_at_fpr(labels, scores, 0.05) == pytest.approx(3 / 5)  # five reals (0.95-0.99): cut above 0.94
    assert tpr_at_fpr(labels, scores, 0.6) == pytest.approx(4 / 5)
    # ties with a real count against the cut
    assert tpr_at_fpr([False, True], [0.7, 0.7], 0.0) == 0.0
    assert tpr_at_fpr([False, True], [0.7, 0.7], 1.0) == 1.0


def test_metrics_match_sklearn_and_intervals_contain_the_value() -> None:
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(30, bool), np.ones(20, bool)]
    scores = np.r_[rng.normal(0, 1, 30), rng.normal(1, 1, 20)]
    metrics = video_set_metrics(labels, scores, threshold=0.5, resamples=300)
    assert metrics.auc.value == pytest.approx(roc_auc_score(labels, scores))
    assert (metrics.num_real, metrics.num_fake) == (30, 20)
    for estimate in (metrics.auc, metrics.average_precision, metrics.tpr, metrics.fpr, metrics.tpr_at_5pct_fpr):
        assert estimate.low is not None and estimate.high is not None
        assert estimate.low <= estimate.value <= estimate.high
    assert 0.05 < metrics.auc.high - metrics.auc.low < 0.6  # 50 videos: a wide interval, not a point
    assert "[" in metrics.auc.text()


def test_bootstrap_is_stratified_and_seeded() -> None:
    labels = np.r_[np.zeros(3, bool), np.ones(2, bool)]
    scores = np.array([0.1, 0.2, 0.3, 0.8, 0.9])
    seen: list[tuple[int, int]] = []

    def counts(y: np.ndarray, s: np.ndarray) -> float:
        seen.append((int((~y).sum()), int(y.sum())))
        return float(s.mean())

    first = bootstrap(counts, labels, scores, resamples=50, seed=1)
    assert set(seen) == {(3, 2)}  # every resample keeps the set's class counts
    assert bootstrap(counts, labels, scores, resamples=50, seed=1) == first
    assert bootstrap(counts, labels, scores, resamples=0, seed=1).low is None


def test_one_class_is_refused() -> None:
    with pytest.raises(ValueError, match="need real and fake"):
        video_set_metrics([True, True], [0.2, 0.3], 0.5)
