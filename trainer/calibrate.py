"""Decision thresholds chosen on labelled validation data and written into the weights' metadata.

The samples and their scores come from `trainer.scoring` (frame level: logits of crop images; video
level: the pipeline's own P(fake) per video), the threshold and temperature from `trainer.thresholds`.

Scales. `Calibration.threshold` is stored on the logit scale (the weights' contract); verdicts compare
calibrated probabilities, and `ralf.core.decision.Decision` maps between the two: P(fake) =
sigmoid(logit / T) and threshold sigmoid(threshold / T), with T = 1 without temperature scaling. At
frame level that is exactly `logit >= threshold`, so fitting T never changes a frame's label. At video
level the pipeline applies T to each face before averaging, which can reorder videos; so after fitting T
the videos are scored again with T applied (as the pipeline will) and the threshold is chosen on those
calibrated scores. T is fitted on the frames' logits at frame level and on the logits of the videos'
uncalibrated scores at video level.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from pipeline.engine_choice import load_engine
from ralf.core.decision import Decision
from ralf.core.metadata import Calibration, read_metadata, write_metadata
from ralf.core.options import ScanOptions
from ralf.weights import load_weights
from trainer.metrics import auc, eer
from trainer.roc_plot import RocCurve, RocFigure, RocPoint
from trainer.scoring import (
    CalibrationLevel,
    PipelineVideoScorer,
    ScoredSet,
    VideoScorer,
    collect_items,
    dataset_fingerprint,
    resolve_level,
    score_frames,
    score_videos,
)
from trainer.thresholds import (
    TEMPERATURE_BOUNDS,
    CalibrationError,
    CalibrationMethod,
    ThresholdChoice,
    choose_threshold,
    fit_temperature,
)

MIN_PER_CLASS = 5


@dataclass
class CalibrationResult:
    calibration: Calibration
    threshold_probability: float  # the verdict's threshold: sigmoid(threshold / T)
    score_scale: Literal["logit", "probability"]  # scale of `roc_thresholds` and the scores
    auc: float
    eer: float
    fpr: NDArray[np.float64]
    tpr: NDArray[np.float64]
    roc_thresholds: NDArray[np.float64]
    chosen: ThresholdChoice
    excluded: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def roc(self) -> RocFigure:
        """The ROC curve with the chosen operating point marked (for `trainer.roc_plot.plot_roc`)."""
        calibration = self.calibration
        point = RocPoint(
            self.chosen.fpr,
            self.chosen.tpr,
            f"{calibration.method}: TPR {calibration.achieved_tpr:.3f} at FPR {calibration.achieved_fpr:.3f}\n"
            f"threshold P(fake) {self.threshold_probability:.4f}",
        )
        return RocFigure(
            title=f"{calibration.level} level: {calibration.num_real} real / {calibration.num_fake} fake, "
            f"EER {self.eer:.3f}",
            curves=[RocCurve(self.fpr, self.tpr, f"ROC (AUC {self.auc:.3f})")],
            points=[point],
            target_fpr=calibration.target_fpr,
        )


def _check_counts(scored: ScoredSet, min_per_class: int) -> tuple[int, int]:
    num_fake = int(scored.is_fake.sum())
    num_real = int(scored.is_fake.size - num_fake)
    if num_real == 0 or num_fake == 0:
        only = "real" if num_fake == 0 else "fake"
        raise CalibrationError(
            f"the validation data has only {only} samples ({scored.is_fake.size} usable); a threshold needs both"
        )
    if min(num_real, num_fake) < min_per_class:
        raise CalibrationError(
            f"too little validation data: {num_real} real and {num_fake} fake usable samples; "
            f"at least {min_per_class} of each are needed"
        )
    return num_real, num_fake


def calibration_from_scores(
    scored: ScoredSet,
    *,
    level: CalibrationLevel,
    method: CalibrationMethod,
    target_fpr: float | None,
    temperature: float | None,
    fingerprint: str,
    min_per_class: int = MIN_PER_CLASS,
) -> CalibrationResult:
    """Pick the threshold on already computed scores: logits at frame level, P(fake) at video level.

    Video scores must already include `temperature` (see the module docstring).
    """
    num_real, num_fake = _check_counts(scored, min_per_class)
    warnings = []
    if method == "target_fpr" and target_fpr is not None and 0 < target_fpr < 1.0 / num_real:
        warnings.append(
            f"with {num_real} real samples the FPR moves in steps of {1.0 / num_real:.3g}: the target "
            f"{target_fpr:g} can only be met with no false positive at all; add real samples"
        )
    choice, fpr, tpr, thresholds = choose_threshold(scored.is_fake, scored.scores, method, target_fpr)
    scale = 1.0 if temperature is None else temperature
    if level == "frame":
        threshold = choice.threshold
        score_scale: Literal["logit", "probability"] = "logit"
    else:
        below = scored.scores[scored.scores < choice.threshold]
        try:
            threshold = Decision.logit_threshold(choice.threshold, float(below.max()) if below.size else -1.0, scale)
        except ValueError as error:
            raise CalibrationError(str(error)) from None
        score_scale = "probability"
    calibration = Calibration(
        threshold=threshold,
        method=method,
        target_fpr=target_fpr if method == "target_fpr" else None,
        achieved_tpr=choice.tpr,
        achieved_fpr=choice.fpr,
        level=level,
        temperature=temperature,
        dataset_fingerprint=fingerprint,
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        num_real=num_real,
        num_fake=num_fake,
    )
    return CalibrationResult(
        calibration=calibration,
        threshold_probability=Decision.from_calibration(calibration).threshold,
        score_scale=score_scale,
        auc=auc(scored.is_fake, scored.scores),
        eer=eer(scored.is_fake, scored.scores),
        fpr=fpr,
        tpr=tpr,
        roc_thresholds=thresholds,
        chosen=choice,
        excluded=list(scored.excluded),
        warnings=warnings,
    )


def _temperature_warning(temperature: float) -> list[str]:
    if temperature in TEMPERATURE_BOUNDS:
        return [f"temperature stopped at its bound {temperature:g}: the classes are separable on this set"]
    return []


def calibrate(
    weights_path: Path,
    data: Path,
    *,
    options: ScanOptions,
    level: CalibrationLevel | None = None,
    method: CalibrationMethod = "target_fpr",
    target_fpr: float | None = 0.01,
    fit_temp: bool = False,
    min_per_class: int = MIN_PER_CLASS,
    show_progress: bool = False,
    video_scorer: VideoScorer | None = None,
    split: str | None = None,
) -> CalibrationResult:
    """Score `data` with the weights and the pipeline, and choose the threshold (nothing is written).

    `data`: a folder with real/ and fake/, or a manifest of labelled videos (`split`: only its rows of
    that split). `video_scorer` replaces the scanner-based video scoring (tests, custom pipelines).
    """
    weights_path, data = Path(weights_path), Path(data)
    read_metadata(weights_path)  # a clear WeightsError before any scoring
    items = collect_items(data, split)
    for label in (False, True):
        if not any(item.is_fake == label for item in items):
            kind = "fake" if label else "real"
            raise CalibrationError(f"no usable {kind} samples under {data / kind} (videos, crop images or crop folders)")
    level = resolve_level(items, level)
    fingerprint = dataset_fingerprint(data, items)
    temperature: float | None = None
    extra_warnings: list[str] = []

    if level == "frame":
        model, _ = load_weights(weights_path, options.resolved_device())
        engine, engine_warnings = load_engine(model, options, weights_path)
        extra_warnings += engine_warnings
        scored = score_frames(items, engine, model.config.image_size, data, show_progress)
        _check_counts(scored, min_per_class)
        if fit_temp:
            temperature = fit_temperature(scored.scores, scored.is_fake)
    else:
        scorer = video_scorer or PipelineVideoScorer(options, weights_path)
        if isinstance(scorer, PipelineVideoScorer):
            extra_warnings += scorer.scanner.warnings
        scored = score_videos(items, scorer, 1.0, data, show_progress)
        _check_counts(scored, min_per_class)
        if fit_temp:
            raw_logits = np.array([Decision.logit_of(p) for p in scored.scores])
            temperature = fit_temperature(raw_logits, scored.is_fake)
            # Scored again the way the pipeline will: T applied to every face before aggregation.
            scored = score_videos(items, scorer, temperature, data, show_progress)
    if temperature is not None:
        extra_warnings += _temperature_warning(temperature)

    result = calibration_from_scores(
        scored,
        level=level,
        method=method,
        target_fpr=target_fpr,
        temperature=temperature,
        fingerprint=fingerprint,
        min_per_class=min_per_class,
    )
    result.warnings = extra_warnings + result.warnings
    if scored.excluded:
        result.warnings.append(f"{len(scored.excluded)} videos left out (no face or unreadable); see the table")
    return result


def save_calibration(weights_path: Path, calibration: Calibration) -> None:
    """Store `calibration` in the weights' metadata; the tensors are copied unchanged."""
    metadata = read_metadata(weights_path)
    write_metadata(weights_path, metadata.model_copy(update={"calibration": calibration}))


__all__ = [
    "MIN_PER_CLASS",
    "CalibrationResult",
    "calibrate",
    "calibration_from_scores",
    "save_calibration",
]
