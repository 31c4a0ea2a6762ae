"""Scoring labelled validation data for calibration: which samples there are, and their scores.

Layout: `DATA/real/` and `DATA/fake/`, each holding video files, face crop images, or one sub-folder
of face crops per video. At frame level every crop image is one sample, scored by the model (a
logit). At video level every video is one sample with the pipeline's own score: a video file goes
through the `Scanner` (decode, detect, track, aggregate); a crop folder is one track aggregated with
the same `track_score` and the same `Decision` (temperature included) the scanner uses.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from numpy.typing import NDArray
from tqdm import tqdm

from pipeline.aggregate import track_score
from pipeline.engine import InferenceEngine
from pipeline.scan import Scanner
from ralf.core.files import file_sha256
from ralf.core.options import ScanOptions
from trainer.data import read_rgb, to_model_input
from trainer.layouts import IMAGE_SUFFIXES, VIDEO_SUFFIXES
from trainer.thresholds import CalibrationError
from trainer.video_sets import VIDEO_SET_SUFFIXES, VideoSetError, read_video_set

CalibrationLevel = Literal["frame", "video"]
ItemKind = Literal["video", "image", "crops"]


@dataclass(frozen=True)
class ValidationItem:
    path: Path
    is_fake: bool
    kind: ItemKind
    name: str | None = None  # as a manifest names it; else the path relative to the data folder

    def display_name(self, root: Path) -> str:
        return self.name if self.name is not None else self.path.relative_to(root).as_posix()

    def files(self) -> list[Path]:
        """The files this item's score is computed from."""
        return _crop_images(self.path) if self.kind == "crops" else [self.path]


@dataclass
class ScoredSet:
    """Scores of the usable samples (aligned arrays) and why the others were left out."""

    names: list[str]
    is_fake: NDArray[np.bool_]
    scores: NDArray[np.float64]
    excluded: list[tuple[str, str]] = field(default_factory=list)


def _crop_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def collect_items(data: Path, split: str | None = None) -> list[ValidationItem]:
    """Items of `data/real` and `data/fake` (videos, crop images, crop folders; videos also in sub-folders
    of any depth), sorted by path; or the videos a manifest CSV lists (`trainer/video_sets.py`; a folder
    holding `manifest.csv` too), optionally of one `split`."""
    data = Path(data)
    if data.is_file() or (data / "manifest.csv").is_file():
        try:
            videos = read_video_set(data, split)
        except VideoSetError as error:
            raise CalibrationError(str(error)) from None
        return [ValidationItem(v.path, v.is_fake, "video", v.name) for v in videos]
    if split is not None:
        raise CalibrationError(f"--split needs a manifest (a CSV, or a folder holding manifest.csv); {data} has none")
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
                else:  # a folder of videos (a source, a generator): every video below it
                    videos = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SET_SUFFIXES)
                    items.extend(ValidationItem(video, label == "fake", "video") for video in videos)
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
            name = item.name if item.name is not None else file.relative_to(root).as_posix()
            lines.append(f"{name}\t{file.stat().st_size}\t{file_sha256(file)}")
    digest = hashlib.sha256()
    for line in sorted(lines):
        digest.update(line.encode() + b"\n")
    return digest.hexdigest()


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
        name = item.display_name(root)
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
        # The scanner's decision with this temperature: crop folders and videos are scored alike.
        self.scanner.decision = dataclasses.replace(self.scanner.decision, temperature=temperature)
        if item.kind == "crops":
            logits = _crop_logits(self.scanner.engine, item.files(), self.scanner.image_size)
            probabilities = self.scanner.decision.probabilities(logits)
            return track_score(probabilities, self.options.aggregation, self.options.top_k)
        verdict = self.scanner.scan(item.path)
        if verdict.label == "error":
            return f"error: {verdict.error}"
        if verdict.score is None:
            return "no face found"
        return verdict.score
