"""Threshold selection, temperature fit and threshold scales, checked against scikit-learn and brute force."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_curve as sklearn_roc_curve

from pipeline.aggregate import video_label
from ralf.core.decision import Decision
from ralf.config import RALFConfig
from ralf.core.metadata import WeightsMetadata
from ralf.core.options import ScanOptions
from ralf.model import RALF
from ralf.weights import save_weights
from trainer.calibrate import calibrate, calibration_from_scores
from trainer.scoring import ScoredSet, ValidationItem, collect_items
from trainer.thresholds import CalibrationError, choose_threshold, fit_temperature

# Fixed score arrays with ties inside and across classes (scores are what the calibrator sees).
LABELS = np.array([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1], dtype=bool)
SCORES = np.array(
    [-2.0, -1.5, -1.5, -0.3, 0.1, 0.4, 0.4, 0.9, 1.2, 2.5, -0.8, 0.4, 0.7, 0.9, 1.3, 1.3, 2.0, 3.1]
)


def _rng_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.random(200) < 0.4
    # Rounded so that many scores tie, as saturated probabilities do.
    scores = np.round(rng.normal(labels * 1.2, 1.0), 1)
    return labels, scores


CASES = [(LABELS, SCORES), _rng_case(0), _rng_case(1)]


def _sklearn_choice_at_fpr(labels: np.ndarray, scores: np.ndarray, target: float) -> tuple[float, float, float]:
    """Brute force over sklearn's curve: largest TPR with FPR <= target; among equals the highest threshold."""
    fpr, tpr, thresholds = sklearn_roc_curve(labels, scores, drop_intermediate=False)
    best = None
    for f, t, th in zip(fpr, tpr, thresholds, strict=True):
        if f <= target and (best is None or t > best[1] or (t == best[1] and th > best[2])):
            best = (f, t, th)
    assert best is not None
    return best


@pytest.mark.parametrize("case", range(len(CASES)))
def test_roc_points_are_exactly_sklearns(case: int) -> None:
    labels, scores = CASES[case]
    _, fpr, tpr, thresholds = choose_threshold(labels, scores, "eer", None)
    ref_fpr, ref_tpr, ref_thresholds = sklearn_roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_array_equal(fpr, ref_fpr)
    np.testing.assert_array_equal(tpr, ref_tpr)
    np.testing.assert_array_equal(thresholds, ref_thresholds)


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("target", [0.0, 0.01, 0.1, 0.2, 0.25, 0.5, 0.95])
def test_target_fpr_threshold_is_sklearns_point(case: int, target: float) -> None:
    labels, scores = CASES[case]
    ref_fpr, ref_tpr, ref_threshold = _sklearn_choice_at_fpr(labels, scores, target)
    if math.isinf(ref_threshold):
        with pytest.raises(CalibrationError, match="no threshold reaches"):
            choose_threshold(labels, scores, "target_fpr", target)
        return
    choice, *_ = choose_threshold(labels, scores, "target_fpr", target)
    assert (choice.threshold, choice.tpr, choice.fpr) == (ref_threshold, ref_tpr, ref_fpr)
    # The pipeline's rule (fake when score >= threshold) reproduces the reported rates exactly.
    called_fake = scores >= choice.threshold
    assert called_fake[labels].mean() == choice.tpr
    assert called_fake[~labels].mean() == choice.fpr <= target


@pytest.mark.parametrize("case", range(len(CASES)))
def test_eer_threshold_minimises_the_gap_on_sklearns_curve(case: int) -> None:
    labels, scores = CASES[case]
    fpr, tpr, thresholds = sklearn_roc_curve(labels, scores, drop_intermediate=False)
    gaps = np.abs((1 - tpr) - fpr)
    first_best = int(np.flatnonzero(gaps == gaps.min())[0])
    choice, *_ = choose_threshold(labels, scores, "eer", None)
    assert choice.threshold == thresholds[first_best]
    assert (choice.tpr, choice.fpr) == (tpr[first_best], fpr[first_best])


def test_hand_checked_example() -> None:
    # 10 real, 8 fake. At FPR <= 0.1 (one real allowed): the real 2.5 must pass, so the threshold is
    # the next score down whose FPR stays 0.1: 1.3 catches 3.1, 2.0, 1.3, 1.3 -> TPR 4/8.
    choice, *_ = choose_threshold(LABELS, SCORES, "target_fpr", 0.1)
    assert (choice.threshold, choice.tpr, choice.fpr) == (1.3, 0.5, 0.1)


def _nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    z = logits / temperature
    return float(np.mean(np.logaddexp(0.0, z) - labels * z))


def test_temperature_minimises_nll() -> None:
    rng = np.random.default_rng(3)
    labels = rng.random(500) < 0.5
    true_logits = rng.normal(np.where(labels, 1.0, -1.0), 1.0)
    # Labels drawn from sigmoid(true logit); the model is over-confident by a factor 3.
    labels = rng.random(500) < 1 / (1 + np.exp(-true_logits))
    logits = 3.0 * true_logits
    temperature = fit_temperature(logits, labels)
    grid = np.exp(np.linspace(np.log(0.05), np.log(50), 4001))
    best_on_grid = grid[np.argmin([_nll(logits, labels, t) for t in grid])]
    assert temperature == pytest.approx(best_on_grid, rel=2e-3)
    assert 2.0 < temperature < 4.5
    assert _nll(logits, labels, temperature) <= _nll(logits, labels, 1.0)


def test_temperature_on_separable_data_stops_at_its_bound() -> None:
    logits = np.array([-3.0, -2.0, -1.0, 1.0, 2.0, 3.0])
    labels = np.array([0, 0, 0, 1, 1, 1], dtype=bool)
    assert fit_temperature(logits, labels) == pytest.approx(0.01)


@pytest.mark.parametrize("temperature", [1.0, 0.37, 2.5])
@pytest.mark.parametrize("probability", [0.5, 0.73105857863, 1e-9, 1 - 1e-12, 0.999999, 0.123456789, 1.0])
def test_logit_threshold_round_trips_through_the_scanner_decision(probability: float, temperature: float) -> None:
    below = probability - max(1e-15, probability * 1e-9)
    threshold = Decision.logit_threshold(probability, below, temperature)
    decided = _decision_threshold(threshold, temperature)
    assert below < decided <= probability


def _decision_threshold(threshold: float, temperature: float) -> float:
    return Decision.probability_threshold(threshold, temperature)


def _scored(labels: np.ndarray, scores: np.ndarray) -> ScoredSet:
    return ScoredSet([f"s{i}" for i in range(labels.size)], labels, scores)


@pytest.mark.parametrize("temperature", [None, 0.6])
def test_video_level_threshold_labels_videos_as_the_chosen_point(temperature: float | None) -> None:
    labels, logits = _rng_case(7)
    # Video scores are probabilities, many equal (a saturated or repeated score).
    scores = np.round(1 / (1 + np.exp(-logits)), 4)
    result = calibration_from_scores(
        _scored(labels, scores), level="video", method="target_fpr", target_fpr=0.05,
        temperature=temperature, fingerprint="x",
    )
    assert result.calibration.temperature == temperature
    # Nudged down at most to just above the next lower score, never above the chosen one.
    assert scores[scores < result.chosen.threshold].max() < result.threshold_probability <= result.chosen.threshold
    decided = np.array([video_label(float(s), result.threshold_probability) == "fake" for s in scores])
    assert decided[labels].mean() == result.calibration.achieved_tpr
    assert decided[~labels].mean() == result.calibration.achieved_fpr <= 0.05


def test_frame_level_threshold_is_the_logit_and_temperature_keeps_labels() -> None:
    labels, logits = _rng_case(8)
    plain = calibration_from_scores(
        _scored(labels, logits), level="frame", method="eer", target_fpr=None, temperature=None, fingerprint="x"
    )
    scaled = calibration_from_scores(
        _scored(labels, logits), level="frame", method="eer", target_fpr=None, temperature=2.0, fingerprint="x"
    )
    assert plain.calibration.threshold == scaled.calibration.threshold == plain.chosen.threshold
    assert plain.calibration.method == "eer" and plain.calibration.target_fpr is None
    for result, temperature in ((plain, 1.0), (scaled, 2.0)):
        probabilities = 1 / (1 + np.exp(-logits / temperature))
        called_fake = probabilities >= result.threshold_probability
        assert called_fake[labels].mean() == result.calibration.achieved_tpr
        assert called_fake[~labels].mean() == result.calibration.achieved_fpr


def test_one_class_and_too_little_data_are_refused() -> None:
    only_real = _scored(np.zeros(20, dtype=bool), np.linspace(0, 1, 20))
    with pytest.raises(CalibrationError, match="only real samples"):
        calibration_from_scores(only_real, level="frame", method="eer", target_fpr=None, temperature=None, fingerprint="")
    few = _scored(np.array([0, 0, 0, 1, 1, 1, 1, 1, 1], dtype=bool), np.linspace(0, 1, 9))
    with pytest.raises(CalibrationError, match="too little validation data: 3 real and 6 fake"):
        calibration_from_scores(few, level="frame", method="eer", target_fpr=None, temperature=None, fingerprint="")


def test_small_real_set_warns_about_fpr_resolution() -> None:
    labels, logits = _rng_case(9)
    result = calibration_from_scores(
        _scored(labels, logits), level="frame", method="target_fpr", target_fpr=0.001, temperature=None,
        fingerprint="",
    )
    assert result.calibration.achieved_fpr == 0.0
    assert any("steps of" in w for w in result.warnings)


def test_video_items_come_from_nested_folders_or_a_manifest_split(tmp_path: Path) -> None:
    """A folder of real/ and fake/ videos at any depth (a devset-style tree), or a manifest's rows of one split."""
    for name in ("real/studio/a.mp4", "real/b.mp4", "fake/gen/deep/c.webm", "fake/gen/d.txt"):
        (tmp_path / "tree" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "tree" / name).write_bytes(b"")
    items = collect_items(tmp_path / "tree")
    assert [(i.path.relative_to(tmp_path / "tree").as_posix(), i.is_fake, i.kind) for i in items] == [
        ("real/b.mp4", False, "video"), ("real/studio/a.mp4", False, "video"), ("fake/gen/deep/c.webm", True, "video"),
    ]  # fmt: skip
    manifest = tmp_path / "list.csv"
    manifest.write_text(
        "file,label,split\ntree/real/b.mp4,real,train\ntree/fake/gen/deep/c.webm,fake,train\ntree/real/studio/a.mp4,real,val\n",
        encoding="utf-8",
    )
    train = collect_items(manifest, "train")
    assert [(i.name, i.is_fake) for i in train] == [("tree/real/b.mp4", False), ("tree/fake/gen/deep/c.webm", True)]
    with pytest.raises(CalibrationError, match="needs a manifest"):
        collect_items(tmp_path / "tree", "train")


def test_manifest_calibration_never_reads_other_splits(tmp_path: Path) -> None:
    weights = tmp_path / "w.safetensors"
    save_weights(weights, RALF(RALFConfig.tiny()), WeightsMetadata(config=RALFConfig.tiny()))
    rows = ["file,label,split"]
    for i in range(12):
        (tmp_path / f"v{i}.mp4").write_bytes(b"")
        rows.append(f"v{i}.mp4,{'fake' if i % 2 else 'real'},{'train' if i < 10 else 'val'}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    seen: list[str] = []

    def scorer(item: ValidationItem, temperature: float) -> float:
        seen.append(item.name)
        return 0.9 if item.is_fake else 0.1

    result = calibrate(weights, tmp_path / "m.csv", options=ScanOptions(), split="train", video_scorer=scorer,
                       target_fpr=0.2)  # fmt: skip
    assert sorted(seen) == sorted(f"v{i}.mp4" for i in range(10))
    assert (result.calibration.level, result.calibration.num_real, result.calibration.num_fake) == ("video", 5, 5)
    assert result.calibration.achieved_tpr == 1.0 and result.calibration.achieved_fpr == 0.0
