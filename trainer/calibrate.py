"""Decision thresholds chosen on labelled validation data and written into the weights' metadata.

Validation layout: `DATA/real/` and `DATA/fake/`, each holding video files, face crop images, or
one sub-folder of face crops per video. Fake is the positive class.

Levels:
- frame: every face crop image is one sample, scored by the model (logits).
- video: every video is one sample with the pipeline's own score: a video file goes through the
  `Scanner` (decode, detect, track, aggregate); a crop folder is one track aggregated with the same
  `track_score` the scanner uses.

Threshold: at the target false-positive rate, the ROC point with the largest TPR whose FPR on the
real samples is <= the target (the highest threshold among equals); or at the EER point, where
|FNR - FPR| is smallest. A sample is called fake when its score >= the threshold, as in the pipeline.

Scales. `Calibration.threshold` is stored on the logit scale (the weights' contract). The verdict
compares calibrated probabilities: P(fake) = sigmoid(logit / T) and threshold sigmoid(threshold / T),
with T = 1 without temperature scaling. At frame level that is exactly `logit >= threshold`, so
fitting T never changes a frame's label. At video level the pipeline applies T to each face before
averaging, which can reorder videos; so after fitting T the videos are scored again with T applied
(as the pipeline will) and the threshold is chosen on those calibrated scores.
Temperature T minimises the NLL of the labels under sigmoid(logit / T), on the frames' logits at frame
level and on the logits of the videos' uncalibrated scores at video level.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray
from tqdm import tqdm

from pipeline.aggregate import fake_probabilities, track_score
from pipeline.engine import InferenceEngine, load_engine
from pipeline.options import ScanOptions
from pipeline.scan import Decision, Scanner
from ralf.pretrained import file_sha256
from ralf.weights import Calibration, load_weights, read_metadata, write_metadata
from trainer.data import read_rgb, to_model_input
from trainer.layouts import IMAGE_SUFFIXES, VIDEO_SUFFIXES
from trainer.metrics import auc, eer, roc_curve

CalibrationLevel = Literal["frame", "video"]
CalibrationMethod = Literal["target_fpr", "eer"]
ItemKind = Literal["video", "image", "crops"]

MIN_PER_CLASS = 5
# Temperature search range; a fit on the bound means the classes are separable on this set.
TEMPERATURE_BOUNDS = (0.01, 100.0)
# |logit| cap so sigmoid(threshold / T) stays finite in the pipeline's float arithmetic.
_MAX_ABS_LOGIT = 700.0


class CalibrationError(ValueError):
    """The validation data cannot give a trustworthy threshold; the message says why."""


@dataclass(frozen=True)
class ValidationItem:
    path: Path
    is_fake: bool
    kind: ItemKind

    def files(self) -> list[Path]:
        """The files this item's score is computed from."""
        return _crop_images(self.path) if self.kind == "crops" else [self.path]


@dataclass(frozen=True)
class ThresholdChoice:
    """One ROC point: `index` into the curve, its threshold (on the curve's score scale), TPR and FPR."""

    index: int
    threshold: float
    tpr: float
    fpr: float


@dataclass
class ScoredSet:
    """Scores of the usable samples (aligned arrays) and why the others were left out."""

    names: list[str]
    is_fake: NDArray[np.bool_]
    scores: NDArray[np.float64]
    excluded: list[tuple[str, str]] = field(default_factory=list)


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


# -- the data ---------------------------------------------------------------------------------------


def _crop_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def collect_items(data: Path) -> list[ValidationItem]:
    """Items of `data/real` and `data/fake` (videos, crop images, crop folders), sorted by path."""
    data = Path(data)
    if not data.is_dir():
        raise CalibrationError(f"validation folder not found: {data}")
    missing = [name for name in ("real", "fake") if not (data / name).is_dir()]
    if missing:
        raise CalibrationError(
            f"{data} needs both real/ and fake/ sub-folders (missing: {', '.join(missing)}); "
            "calibration needs labelled samples of both classes"
        )
    items = []
    for label in ("real", "fake"):
        for path in sorted((data / label).iterdir()):
            if path.name.startswith("."):
                continue
            suffix = path.suffix.lower()
            if path.is_dir():
                if _crop_images(path):
                    items.append(ValidationItem(path, label == "fake", "crops"))
            elif suffix in VIDEO_SUFFIXES:
                items.append(ValidationItem(path, label == "fake", "video"))
            elif suffix in IMAGE_SUFFIXES:
                items.append(ValidationItem(path, label == "fake", "image"))
    return items


def resolve_level(items: Sequence[ValidationItem], level: CalibrationLevel | None) -> CalibrationLevel:
    """The requested level, or the one the data implies (videos or crop folders -> video; images -> frame)."""
    kinds = {item.kind for item in items}
    if level is None:
        level = "video" if kinds & {"video", "crops"} else "frame"
    if level == "frame" and "video" in kinds:
        raise CalibrationError(
            "frame level scores face crop images, but the data holds video files; use --level video "
            "or give folders of face crops"
        )
    if level == "video" and "image" in kinds:
        raise CalibrationError(
            "video level needs videos: the data holds loose crop images in real/ or fake/; use --level frame "
            "or put each video's crops in its own sub-folder"
        )
    return level


def dataset_fingerprint(root: Path, items: Iterable[ValidationItem]) -> str:
    """sha256 over the sorted (relative path, size, content sha256) of every file the items use."""
    lines = []
    for item in items:
        for file in item.files():
            lines.append(f"{file.relative_to(root).as_posix()}\t{file.stat().st_size}\t{file_sha256(file)}")
    digest = hashlib.sha256()
    for line in sorted(lines):
        digest.update(line.encode() + b"\n")
    return digest.hexdigest()


# -- threshold and temperature ------------------------------------------------------------------


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


def _probability_logit(probability: float) -> float:
    clipped = min(max(probability, 1e-300), 1.0 - 1e-16)
    return max(-_MAX_ABS_LOGIT, min(_MAX_ABS_LOGIT, math.log(clipped) - math.log1p(-clipped)))


def logit_threshold_for(probability: float, below: float, temperature: float) -> float:
    """A logit t with below < sigmoid(t / T) <= probability, as the scanner's `Decision` computes it.

    The pipeline compares probabilities to sigmoid(threshold / T); a plain logit can round to a value
    just above `probability` and flip the boundary sample, so t is nudged down until it cannot.
    """
    threshold = temperature * _probability_logit(probability)

    def verdict_threshold(t: float) -> float:
        return Decision.from_calibration(_placeholder_calibration(t, temperature)).threshold

    for _ in range(64):
        if verdict_threshold(threshold) <= probability:
            break
        threshold = math.nextafter(threshold, -math.inf)
    if not below < verdict_threshold(threshold) <= probability:
        raise CalibrationError(f"cannot represent the threshold {probability!r} on the logit scale")
    return threshold


def _placeholder_calibration(threshold: float, temperature: float) -> Calibration:
    return Calibration(
        threshold=threshold,
        method="eer",
        achieved_tpr=0.0,
        achieved_fpr=0.0,
        level="video",
        temperature=temperature,
        dataset_fingerprint="",
        date="",
        num_real=0,
        num_fake=0,
    )


# -- scoring --------------------------------------------------------------------------------------


def _batch_logits(engine: InferenceEngine, files: Sequence[Path], size: int) -> NDArray[np.float64]:
    crops = torch.stack([to_model_input(read_rgb(f), size) for f in files])
    return engine.logits(crops).detach().to("cpu", torch.float64).numpy()


def _crop_logits(engine: InferenceEngine, files: Sequence[Path], size: int) -> NDArray[np.float64]:
    batch = max(1, engine.max_batch)
    parts = [_batch_logits(engine, files[start : start + batch], size) for start in range(0, len(files), batch)]
    return np.concatenate(parts) if parts else np.zeros(0)


def score_frames(
    items: Sequence[ValidationItem], engine: InferenceEngine, image_size: int, root: Path, show_progress: bool
) -> ScoredSet:
    """One logit per crop image (loose images and every crop of every crop folder)."""
    files = [(file, item.is_fake) for item in items for file in item.files()]
    batch = max(1, engine.max_batch)
    logits = []
    with tqdm(total=len(files), desc="scoring crops", unit="crop", disable=not show_progress) as bar:
        for start in range(0, len(files), batch):
            chunk = [f for f, _ in files[start : start + batch]]
            logits.append(_batch_logits(engine, chunk, image_size))
            bar.update(len(chunk))
    return ScoredSet(
        names=[f.relative_to(root).as_posix() for f, _ in files],
        is_fake=np.array([fake for _, fake in files], dtype=bool),
        scores=np.concatenate(logits) if logits else np.zeros(0),
    )


VideoScorer = Callable[[ValidationItem, float], "float | str"]


def score_videos(
    items: Sequence[ValidationItem], score_one: VideoScorer, temperature: float, root: Path, show_progress: bool
) -> ScoredSet:
    """One P(fake) per video from `score_one(item, T)`, which returns a score or the reason there is none."""
    names, labels, scores, excluded = [], [], [], []
    for item in tqdm(items, desc="scoring videos", unit="video", disable=not show_progress):
        name = item.path.relative_to(root).as_posix()
        result = score_one(item, temperature)
        if isinstance(result, str):
            excluded.append((name, result))
            continue
        names.append(name)
        labels.append(item.is_fake)
        scores.append(result)
    return ScoredSet(names, np.array(labels, dtype=bool), np.array(scores, dtype=np.float64), excluded)


class PipelineVideoScorer:
    """Scores video files with the `Scanner` and crop folders with the scanner's engine and aggregation."""

    def __init__(self, options: ScanOptions, weights_path: Path) -> None:
        self.options = options
        self.scanner = Scanner(options, weights_path)

    def __call__(self, item: ValidationItem, temperature: float) -> float | str:
        if item.kind == "crops":
            logits = _crop_logits(self.scanner.engine, item.files(), self.scanner.image_size)
            probabilities = fake_probabilities(torch.from_numpy(logits), temperature)
            return track_score(probabilities, self.options.aggregation, self.options.top_k)
        self.scanner.decision = dataclasses.replace(self.scanner.decision, temperature=temperature)
        verdict = self.scanner.scan(item.path)
        if verdict.label == "error":
            return f"error: {verdict.error}"
        if verdict.score is None:
            return "no face found"
        return verdict.score


# -- calibration ----------------------------------------------------------------------------------


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
        threshold = logit_threshold_for(choice.threshold, float(below.max()) if below.size else -1.0, scale)
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
) -> CalibrationResult:
    """Score `data` with the weights and the pipeline, and choose the threshold (nothing is written).

    `video_scorer` replaces the scanner-based video scoring (tests, custom pipelines).
    """
    weights_path, data = Path(weights_path), Path(data)
    read_metadata(weights_path)  # a clear WeightsError before any scoring
    items = collect_items(data)
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
            raw_logits = np.array([_probability_logit(p) for p in scored.scores])
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


def plot_roc(result: CalibrationResult, path: Path) -> Path:
    """ROC curve PNG with the chosen operating point marked (matplotlib, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    calibration = result.calibration
    figure, axes = plt.subplots(figsize=(5.5, 5.0), dpi=120)
    try:
        axes.plot(result.fpr, result.tpr, drawstyle="default", label=f"ROC (AUC {result.auc:.3f})")
        axes.plot([0, 1], [0, 1], linestyle=":", color="grey", linewidth=0.8)
        label = (
            f"{calibration.method}: TPR {calibration.achieved_tpr:.3f} at FPR {calibration.achieved_fpr:.3f}\n"
            f"threshold P(fake) {result.threshold_probability:.4f}"
        )
        axes.scatter([result.chosen.fpr], [result.chosen.tpr], color="red", zorder=3, label=label)
        if calibration.target_fpr is not None:
            axes.axvline(calibration.target_fpr, color="red", linestyle="--", linewidth=0.8, label="target FPR")
        axes.set_xlabel("false-positive rate (real called fake)")
        axes.set_ylabel("true-positive rate (fake detected)")
        axes.set_title(
            f"{calibration.level} level: {calibration.num_real} real / {calibration.num_fake} fake, "
            f"EER {result.eer:.3f}"
        )
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


__all__ = [
    "MIN_PER_CLASS",
    "CalibrationError",
    "CalibrationResult",
    "PipelineVideoScorer",
    "ScoredSet",
    "ThresholdChoice",
    "ValidationItem",
    "calibrate",
    "calibration_from_scores",
    "choose_threshold",
    "collect_items",
    "dataset_fingerprint",
    "fit_temperature",
    "logit_threshold_for",
    "plot_roc",
    "resolve_level",
    "save_calibration",
    "score_frames",
    "score_videos",
    "threshold_at_eer",
    "threshold_at_fpr",
]
