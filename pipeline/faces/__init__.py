"""Face detection: one `FaceDetector` protocol, two backends (MTCNN in PyTorch, ultralytics YOLO)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

from pipeline.faces.types import Detections, FaceDetector, FaceDetectorError

__all__ = ["Detections", "FaceDetector", "FaceDetectorError", "build_detector"]


def build_detector(
    name: Literal["mtcnn", "yolo"],
    device: torch.device | str = "cpu",
    yolo_weights: Path | None = None,
    min_face_size: int = 20,
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.8),
    yolo_conf: float = 0.5,
) -> FaceDetector:
    """The detector called `name` on `device`.

    `min_face_size` (pixels) and the three stage `thresholds` (P-, R-, O-Net) apply to MTCNN;
    YOLO needs `yolo_weights`, a local face-detection `.pt` file, and keeps boxes scoring >= `yolo_conf`.
    Backends are imported here so that choosing MTCNN never loads ultralytics.
    """
    if name == "mtcnn":
        from pipeline.faces.mtcnn import MtcnnDetector

        return MtcnnDetector(device=device, min_face_size=min_face_size, thresholds=thresholds)
    if name == "yolo":
        if yolo_weights is None:
            raise FaceDetectorError("the yolo detector needs a local face weights file (.pt); none was given")
        from pipeline.faces.yolo import YoloFaceDetector

        return YoloFaceDetector(weights=yolo_weights, device=device, conf=yolo_conf)
    raise FaceDetectorError(f"unknown face detector {name!r}; choose 'mtcnn' or 'yolo'")
