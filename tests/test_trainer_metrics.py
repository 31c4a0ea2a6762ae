"""trainer.metrics against scikit-learn (a dev dependency) and hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from trainer import metrics

sklearn_metrics = pytest.importorskip("sklearn.metrics")


def _cases() -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    cases = []
    for n in (2, 7, 50, 400):
        labels = rng.integers(0, 2, n)
        labels[0], labels[-1] = 0, 1
        cases.append((labels, rng.normal(size=n) + labels * 0.8))
        # Heavy ties: scores rounded to a few levels.
        cases.append((labels, np.round(rng.uniform(size=n) + labels * 0.3, 1)))
    cases.append((np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])))
    return cases


@pytest.mark.parametrize("labels,scores", _cases())
def test_curves_match_sklearn(labels: np.ndarray, scores: np.ndarray) -> None:
    fpr, tpr, thresholds = metrics.roc_curve(labels, scores)
    ref_fpr, ref_tpr, ref_thr = sklearn_metrics.roc_curve(labels, scores)
    np.testing.assert_allclose(fpr, ref_fpr, atol=1e-12)
    np.testing.assert_allclose(tpr, ref_tpr, atol=1e-12)
    np.testing.assert_array_equal(thresholds[1:], ref_thr[1:])
    assert metrics.auc(labels, scores) == pytest.approx(sklearn_metrics.roc_auc_score(labels, scores), abs=1e-9)
    assert metrics.average_precision(labels, scores) == pytest.approx(
        sklearn_metrics.average_precision_score(labels, scores), abs=1e-9
    )
    probabilities = 1.0 / (1.0 + np.exp(-scores))
    assert metrics.accuracy(labels, probabilities) == pytest.approx(
        sklearn_metrics.accuracy_score(labels, probabilities >= 0.5), abs=1e-12
    )


def test_eer_hand_cases() -> None:
    # Perfect separation: no error at the right threshold.
    assert metrics.eer([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 0.0
    # Perfectly inverted scores: every threshold errs on one class completely.
    assert metrics.eer([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == pytest.approx(1.0)
    # Constant score: the ROC is the diagonal, EER = 0.5.
    assert metrics.eer([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == pytest.approx(0.5)
    # One real above one fake out of 2+2: FPR = FNR = 0.5 at the threshold between them.
    assert metrics.eer([0, 0, 1, 1], [0.1, 0.6, 0.5, 0.9]) == pytest.approx(0.5)


def test_eer_lies_where_fnr_equals_fpr() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 2000)
    scores = rng.normal(size=2000) + labels * 1.5
    value = metrics.eer(labels, scores)
    # Empirical check: the threshold whose FPR and FNR are closest gives both near `value`.
    fpr, tpr, _ = sklearn_metrics.roc_curve(labels, scores, drop_intermediate=False)
    closest = np.argmin(np.abs((1 - tpr) - fpr))
    assert value == pytest.approx(fpr[closest], abs=2e-3)
    assert value == pytest.approx(1 - tpr[closest], abs=2e-3)


def test_detection_metrics_bundle_and_errors() -> None:
    result = metrics.detection_metrics([0, 1, 0, 1], [0.2, 0.7, 0.4, 0.9])
    assert result.auc == 1.0 and result.accuracy == 1.0 and result.num_real == 2 and result.num_fake == 2
    with pytest.raises(ValueError, match="both real and fake"):
        metrics.detection_metrics([1, 1, 1], [0.2, 0.3, 0.4])
    with pytest.raises(ValueError, match="NaN"):
        metrics.auc([0, 1], [0.1, float("nan")])
    with pytest.raises(ValueError, match="0 \\(real\\) or 1"):
        metrics.auc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="no samples"):
        metrics.auc([], [])
