"""Face detection: one `FaceDetector` protocol, three backends (MTCNN and RetinaFace in PyTorch, ultralytics YOLO)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

from pipeline.faces.types import Detections, FaceDetector, FaceDetectorError
from ralf.core.options import MIN_FACE_SCORE, MIN_FACE_SIZE, DetectorPrecision

__all__ = ["Detections", "FaceDetector", "FaceDetectorError", "build_detector"]


def build_detector(
    name: Literal["mtcnn", "retinaface", "yolo"],
    device: torch.device | str = "cpu",
    yolo_weights: Path | None = None,
    min_face_size: int = MIN_FACE_SIZE,
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.8),
    yolo_conf: float = MIN_FACE_SCORE,
    max_side: int | None = None,
    precision: DetectorPrecision = "auto",
) -> FaceDetector:
    """The detector called `name` on `device`; the defaults are `ScanOptions`' (one place for both).

    `min_face_size` (frame pixels) applies to MTCNN and RetinaFace, the three stage `thresholds`
    (P-, R-, O-Net) to MTCNN; `max_side` (None or 0: full resolution) makes MTCNN and RetinaFace
    detect on a copy of each frame with that long side (`pipeline.faces.working`), boxes in frame pixels.
    `precision` is RetinaFace's network precision (`retinaface.network_precision`: auto is fp32, bf16
    only when asked for); MTCNN and YOLO always run fp32.
    YOLO needs `yolo_weights`, a local face-detection `.pt` file, keeps boxes scoring >= `yolo_conf`
    and resizes frames itself. Backends are imported here so that choosing MTCNN never loads ultralytics.
    """
    if name == "mtcnn":
        from pipeline.faces.mtcnn import MtcnnDetector

        return MtcnnDetector(device=device, min_face_size=min_face_size, thresholds=thresholds, max_side=max_side)
    if name == "retinaface":
        from pipeline.faces.retinaface import RetinaFaceDetector

        return RetinaFaceDetector(device=device, min_face_size=min_face_size, max_side=max_side, precision=precision)
    if name == "yolo":
        if yolo_weights is None:
            raise FaceDetectorError("the yolo detector needs a local face weights file (.pt); none was given")
        from pipeline.faces.yolo import YoloFaceDetector

        return YoloFaceDetector(weights=yolo_weights, device=device, conf=yolo_conf)
    raise FaceDetectorError(f"unknown face detector {name!r}; choose 'mtcnn', 'retinaface' or 'yolo'")
