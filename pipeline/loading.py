"""What a `Scanner` loads once and shares with every scanner `with_options` derives: the model (a
weights file, or a seeded random one), the face detector and the inference engine."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.engine import InferenceEngine
from pipeline.engine_choice import load_engine
from pipeline.faces import FaceDetector, build_detector
from ralf.config import RALFConfig
from ralf.core.decision import Decision
from ralf.core.metadata import CropGeometry
from ralf.core.options import RANDOM_WEIGHTS_SEED, DetectorName, ScanOptions, random_model_version
from ralf.model import RALF
from ralf.weights import load_weights


@dataclass(frozen=True)
class LoadedModel:
    """The weights a scanner was built from: loaded once, shared by every `with_options` scanner."""

    model: RALF
    weights_path: Path | None
    preset_if_random: str
    model_version: str
    weights_random: bool
    decision: Decision
    crop: CropGeometry

    @classmethod
    def load(cls, weights: Path | None, preset_if_random: str, device: torch.device) -> LoadedModel:
        if weights is None:
            version = random_model_version(preset_if_random)
            decision = Decision.from_calibration(None)
            model = _random_model(preset_if_random)
            return cls(model, None, preset_if_random, version, True, decision, CropGeometry())
        model, metadata = load_weights(weights, device)
        decision = Decision.from_calibration(metadata.calibration)
        return cls(model, weights, preset_if_random, metadata.model_version, False, decision, metadata.crop)


@dataclass(frozen=True)
class LoadedEngine:
    """An engine with the options it was built for and the warnings its loading produced."""

    engine: InferenceEngine
    kind: str
    built_batch_size: int
    warnings: list[str]

    @classmethod
    def load(cls, loaded: LoadedModel, options: ScanOptions) -> LoadedEngine:
        engine, warnings = load_engine(loaded.model, options, loaded.weights_path)
        return cls(engine, f"{options.engine}/{options.precision}", engine.max_batch, warnings)

    def serves(self, options: ScanOptions, batch_size: int) -> bool:
        """True when `options` can use this engine as is: same kind and precision request, batches
        (`batch_size`, resolved) no larger than it was built for (the scanner hands it at most that
        many crops per call)."""
        return f"{options.engine}/{options.precision}" == self.kind and batch_size <= self.built_batch_size


def resolve_detector(options: ScanOptions, crop: CropGeometry) -> DetectorName:
    """The detector a scan runs: the one asked for, or for "auto" the one the weights' crops were cut with."""
    return crop.trained_detector if options.detector == "auto" else options.detector


def detector_settings(options: ScanOptions, crop: CropGeometry) -> tuple[object, ...]:
    """The options the face detector is built from; a change in any of them needs a new detector."""
    name = resolve_detector(options, crop)
    score = options.min_face_score if name == "yolo" else None
    precision = options.detector_precision if name == "retinaface" else None
    return (name, options.yolo_weights, options.min_face_size, score, options.detect_max_side, precision)


def load_detector(options: ScanOptions, crop: CropGeometry, device: torch.device) -> FaceDetector:
    return build_detector(
        resolve_detector(options, crop),
        device,
        yolo_weights=options.yolo_weights,
        min_face_size=options.min_face_size,
        yolo_conf=options.min_face_score,
        max_side=options.detect_max_side,
        precision=options.detector_precision,
    )


def _random_model(preset: str) -> RALF:
    """A RALF with seeded random weights: meaningless, but the same in every process and run."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_WEIGHTS_SEED)
        return RALF(RALFConfig.from_preset(preset)).eval()
