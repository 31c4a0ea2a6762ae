"""`ralf-cli evaluate`: Acc, AUC, EER and AP at frame and video level, optionally under a
DeeperForensics level-2 distortion with the AUC drop against the clean run, and an ROC curve PNG.

Scores and threshold are the scanner's: the weights' calibration becomes a `ralf.core.decision.Decision`
(temperature included), so a video evaluated here is called what a scan would call it."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from pipeline.aggregate import track_score
from ralf.core.decision import Decision
from ralf.core.device import resolve_device
from ralf.core.options import AggregationName
from ralf.model import RALF
from ralf.weights import load_weights
from trainer.data import (
    CropRecord,
    FaceCropDataset,
    collate_crops,
    ensure_validation,
    load_crop_records,
    require_both_classes,
    unwrap_batch,
    with_fake_source,
)
from trainer.distortions import get_distortion
from trainer.groups import GroupRate, group_labels, rates_by_group
from trainer.metrics import DetectionMetrics, detection_metrics, roc_curve
from trainer.roc_plot import RocCurve, RocFigure
from trainer.sbi import SelfBlendConfig

SplitChoice = Literal["auto", "train", "val", "test", "all"]


def predict_probabilities(
    model: RALF,
    dataset: FaceCropDataset,
    device: torch.device,
    batch_size: int,
    num_workers: int = 0,
    autocast: Callable[[], Any] = nullcontext,
    progress: bool = False,
    description: str = "score",
    decision: Decision = Decision.from_calibration(None),
) -> np.ndarray:
    """P(fake) for every crop of `dataset` as `decision` maps logits (uncalibrated: sigmoid), in order
    (the model must be in eval mode)."""
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_crops,
        generator=torch.Generator().manual_seed(0),  # never draw from the global RNG
    )
    scores = np.empty(len(dataset), dtype=np.float64)
    with torch.no_grad():
        for raw in tqdm(loader, desc=description, unit="batch", disable=not progress, leave=False):
            batch = unwrap_batch(raw)
            with autocast():
                logits = model(batch.images.to(device))
            scores[batch.indices.numpy()] = decision.probabilities(logits.float())
    return scores


def video_level(
    records: Sequence[CropRecord], probabilities: np.ndarray, method: AggregationName = "mean", top_k: int = 5
) -> tuple[np.ndarray, np.ndarray]:
    """(is_fake, P(fake)) per video: its crops' scores aggregated like the scan pipeline's tracks."""
    by_video: dict[str, list[float]] = defaultdict(list)
    label: dict[str, bool] = {}
    for record, probability in zip(records, probabilities):
        by_video[record.video_id].append(float(probability))
        label[record.video_id] = record.is_fake
    videos = sorted(by_video)
    scores = np.array([track_score(by_video[v], method, top_k) for v in videos])
    return np.array([label[v] for v in videos], dtype=bool), scores


@dataclass(frozen=True)
class LevelResult:
    """Metrics of one pass at one level, with what the ROC plot needs."""

    metrics: DetectionMetrics | None  # None when this level has a single class (e.g. one video per class missing)
    labels: np.ndarray
    scores: np.ndarray


@dataclass(frozen=True)
class EvaluationPass:
    distortion: str | None
    frame: LevelResult
    video: LevelResult

    def as_dict(self) -> dict[str, Any]:
        return {
            "distortion": self.distortion,
            "frame": self.frame.metrics.as_dict() if self.frame.metrics else None,
            "video": self.video.metrics.as_dict() if self.video.metrics else None,
        }


@dataclass(frozen=True)
class EvaluationReport:
    weights: Path
    model_version: str
    data: Path
    split: str
    threshold: float  # on P(fake), for accuracy
    aggregation: str
    clean: EvaluationPass
    distorted: EvaluationPass | None
    groups: list[GroupRate] | None = None  # error rates per group of people (clean pass)

    def auc_drop(self) -> dict[str, float | None] | None:
        """Distorted minus clean AUC per level (negative = worse), as the paper's Table 3 reports."""
        if self.distorted is None:
            return None
        drop: dict[str, float | None] = {}
        for level in ("frame", "video"):
            clean, bad = getattr(self.clean, level).metrics, getattr(self.distorted, level).metrics
            drop[level] = bad.auc - clean.auc if clean and bad else None
        return drop

    def roc(self) -> RocFigure:
        """ROC curves, frame and video level, clean and distorted (for `trainer.roc_plot.plot_roc`)."""
        curves = []
        for run in (self.clean, self.distorted):
            if run is None:
                continue
            for level_name, style in (("frame", "-"), ("video", "--")):
                level: LevelResult = getattr(run, level_name)
                if level.metrics is None:
                    continue
                fpr, tpr, _ = roc_curve(level.labels, level.scores)
                label = f"{level_name} {run.distortion or 'clean'} (AUC {level.metrics.auc:.3f})"
                curves.append(RocCurve(fpr, tpr, label, style))
        return RocFigure(title=f"ROC, {self.model_version}", curves=curves)

    def as_dict(self) -> dict[str, Any]:
        return {
            "weights": str(self.weights),
            "model_version": self.model_version,
            "data": str(self.data),
            "split": self.split,
            "threshold": self.threshold,
            "aggregation": self.aggregation,
            "clean": self.clean.as_dict(),
            "distorted": self.distorted.as_dict() if self.distorted else None,
            "auc_drop": self.auc_drop(),
            "groups": [g.as_dict() for g in self.groups] if self.groups is not None else None,
        }


def choose_split(
    records: list[CropRecord], split: SplitChoice, training: dict[str, Any] | None = None
) -> tuple[list[CropRecord], str]:
    """'auto': the test split when the data has one, otherwise every crop.

    'train' / 'val' on data without splits repeat the training run's group-wise split, using the
    seed and validation fraction recorded in the weights' metadata (`training`).
    """
    if split == "all":
        return records, "all"
    if split in ("train", "val") and not any(r.split == "val" for r in records):
        settings = (training or {}).get("train_config") or {}
        if "seed" not in settings or "val_fraction" not in settings:
            raise ValueError(f"the data has no '{split}' split and the weights do not record how training split it")
        records = ensure_validation(records, settings["val_fraction"], settings["seed"])
    if split == "auto":
        if any(r.split == "test" for r in records):
            return [r for r in records if r.split == "test"], "test"
        return records, "all"
    return [r for r in records if r.split == split], split


def _level(labels: np.ndarray, scores: np.ndarray, threshold: float) -> LevelResult:
    both = 0 < int(labels.sum()) < labels.size
    return LevelResult(detection_metrics(labels, scores, threshold) if both else None, labels, scores)


def evaluate(
    weights: Path,
    data: Path,
    *,
    split: SplitChoice = "auto",
    distortion: str | None = None,
    aggregation: AggregationName = "mean",
    top_k: int = 5,
    device: str = "auto",
    batch_size: int = 32,
    num_workers: int = 0,
    threshold: float | None = None,
    progress: bool = True,
    fakes: str = "data",
    groups: str | None = None,
    seed: int = 0,
) -> EvaluationReport:
    """Score every crop of `data` (a prepared folder or a crop folder layout) with `weights`.

    `fakes` as in training ("sbi": every real crop also gets a self-blended twin, fixed by `seed`),
    so held-back real faces alone can be evaluated; `groups` ("utkface" or a CSV file) adds error
    rates per group of people at the threshold.
    """
    distort = get_distortion(distortion) if distortion is not None else None  # bad name fails before loading
    target = torch.device(resolve_device(device))
    model, metadata = load_weights(weights, target)
    labels_of = group_labels(groups) if groups is not None else None  # a bad --groups fails before scoring
    records, split_name = choose_split(load_crop_records(data), split, metadata.training)
    records = with_fake_source(records, fakes)
    blend = SelfBlendConfig.model_validate((metadata.training.get("train_config") or {}).get("sbi") or {})
    require_both_classes(records, f"evaluation ({split_name})")
    decision = Decision.from_calibration(metadata.calibration)
    if threshold is not None:  # given on P(fake); the calibration's temperature still applies
        decision = replace(decision, threshold=threshold, source="--threshold")
    labels = np.array([r.is_fake for r in records], dtype=bool)

    def run(transform: Callable[[np.ndarray], np.ndarray] | None, name: str | None) -> EvaluationPass:
        dataset = FaceCropDataset(
            records, model.config.image_size, distortion=transform, self_blend=blend if fakes != "data" else None, seed=seed
        )
        frame_scores = predict_probabilities(
            model, dataset, target, batch_size, num_workers, progress=progress, description=name or "clean",
            decision=decision,
        )
        video_labels, video_scores = video_level(records, frame_scores, aggregation, top_k)
        cut = decision.threshold
        return EvaluationPass(name, _level(labels, frame_scores, cut), _level(video_labels, video_scores, cut))

    clean = run(None, None)
    distorted = run(distort, distortion) if distort is not None else None
    rates = rates_by_group(records, clean.frame.scores, decision.threshold, labels_of) if labels_of is not None else None
    return EvaluationReport(
        weights=Path(weights),
        model_version=metadata.model_version,
        data=Path(data),
        split=split_name,
        threshold=decision.threshold,
        aggregation=aggregation,
        clean=clean,
        distorted=distorted,
        groups=rates,
    )
