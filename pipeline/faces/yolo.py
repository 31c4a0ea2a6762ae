"""Face detection with ultralytics YOLO, for users who supply their own face weights (a local `.pt`).

Nothing is downloaded: the weights path is checked before ultralytics sees it (ultralytics would
otherwise try to fetch a missing file named like one of its release assets), and ultralytics runs
offline (YOLO_OFFLINE, set before its first import, skips its connectivity probe and telemetry).
The checkpoint is a pickle, so it is loaded with ultralytics' restricted loader (`weights_only=True`
plus an allow-list of ultralytics/torch model classes), never with a full unpickle.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

# Must precede the first ultralytics import: ultralytics probes the network once at import unless offline.
os.environ["YOLO_OFFLINE"] = "1"

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402
from ultralytics import YOLO  # noqa: E402
from ultralytics.nn import tasks as ultralytics_tasks  # noqa: E402
from ultralytics.utils import patches as ultralytics_patches  # noqa: E402

# Importing ultralytics replaces PIL.Image.open process-wide with a wrapper that, on a file PIL cannot
# identify, tries to install pi-heif and raises ModuleNotFoundError instead of UnidentifiedImageError.
# Frames reach YOLO as tensors, so undo the patch: PIL keeps its own errors for everyone else.
Image.open = ultralytics_patches._image_open

from pipeline.faces.types import Detections, FaceDetectorError, detect_in_passes  # noqa: E402

STRIDE = 32  # YOLO input sides must be multiples of the largest feature stride
LETTERBOX_FILL = 114 / 255  # ultralytics' padding grey


@contextlib.contextmanager
def _restricted_checkpoint_loading() -> Iterator[None]:
    """Make ultralytics load checkpoints with weights_only=True for the duration.

    ultralytics reads its opt-in flag (ULTRALYTICS_SAFE_LOAD) once at import into `tasks.SAFE_LOAD`, the
    default of the `safe_only` argument its loader is always called without; setting it here makes the
    restriction independent of import order and of the environment.
    """
    previous = ultralytics_tasks.SAFE_LOAD
    ultralytics_tasks.SAFE_LOAD = True
    try:
        yield
    finally:
        ultralytics_tasks.SAFE_LOAD = previous


def _face_class(names: dict[int, str], path: Path) -> int:
    """The class id that means "face": the only class, or the one named face."""
    if len(names) == 1:
        return next(iter(names))
    for class_id, name in names.items():
        if str(name).strip().lower() == "face":
            return class_id
    listed = ", ".join(str(n) for n in list(names.values())[:8])
    raise FaceDetectorError(
        f"{path} detects {len(names)} classes ({listed}, ...) and none is 'face': pass face-detection weights"
    )


class YoloFaceDetector:
    """ultralytics YOLO on batches of uint8 RGB frames (N, H, W, 3).

    Frames are letterboxed on the detector's device to `image_size` (longer side, aspect kept, padded
    to a multiple of 32) and predicted as one batch; boxes are mapped back to frame pixels. Detection
    and pose checkpoints are accepted; a pose model with 5 keypoints also gives landmarks.
    """

    def __init__(
        self,
        weights: Path,
        device: torch.device | str = "cpu",
        conf: float = 0.5,
        iou: float = 0.5,
        image_size: int = 640,
        frames_per_pass: int = 16,
    ) -> None:
        weights = Path(weights)
        if weights.suffix.lower() != ".pt":
            raise FaceDetectorError(f"YOLO face weights must be a local .pt file, got {weights}")
        if not weights.is_file():
            raise FaceDetectorError(f"YOLO face weights not found: {weights} (nothing is downloaded; pass a local .pt)")
        if not 0.0 <= conf <= 1.0:
            raise FaceDetectorError(f"conf must be in [0, 1], got {conf}")
        if image_size < STRIDE or image_size % STRIDE:
            raise FaceDetectorError(f"image_size must be a positive multiple of {STRIDE}, got {image_size}")
        try:
            with _restricted_checkpoint_loading():
                self._yolo = YOLO(str(weights.resolve()))
        except Exception as error:  # a damaged or foreign file fails in many ways (pickle, zip, torch, ultralytics)
            raise FaceDetectorError(f"cannot load YOLO weights {weights}: {type(error).__name__}: {error}") from error
        if self._yolo.task not in ("detect", "pose"):
            raise FaceDetectorError(f"{weights} is a YOLO '{self._yolo.task}' model; a face detection model is needed")
        self._face_class = _face_class(self._yolo.names, weights)
        self._device = torch.device(device)
        self.conf = conf
        self.iou = iou
        self.image_size = image_size
        self.frames_per_pass = frames_per_pass

    @property
    def name(self) -> str:
        return "yolo"

    @property
    def device(self) -> torch.device:
        return self._device

    @torch.inference_mode()
    def detect(self, frames: torch.Tensor) -> list[Detections]:
        """One `Detections` per frame (landmarks only from 5-keypoint pose models), on this detector's device."""
        return detect_in_passes(frames, self.frames_per_pass, self._detect_pass)

    def _letterbox(self, frames: torch.Tensor) -> tuple[torch.Tensor, float, int, int]:
        """Frames as a float RGB BCHW batch in [0, 1] ready for YOLO, plus the scale and the left/top padding."""
        height, width = frames.shape[1:3]
        scale = self.image_size / max(height, width)
        new_height, new_width = max(round(height * scale), 1), max(round(width * scale), 1)
        images = frames.to(self._device).permute(0, 3, 1, 2).float().div_(255)
        if (new_height, new_width) != (height, width):
            images = F.interpolate(images, size=(new_height, new_width), mode="bilinear", antialias=True).clamp_(0, 1)
        padded_height = -(-new_height // STRIDE) * STRIDE
        padded_width = -(-new_width // STRIDE) * STRIDE
        top, left = (padded_height - new_height) // 2, (padded_width - new_width) // 2
        images = F.pad(
            images,
            (left, padded_width - new_width - left, top, padded_height - new_height - top),
            value=LETTERBOX_FILL,
        )
        return images.contiguous(), new_width / width, left, top

    def _detect_pass(self, frames: torch.Tensor) -> list[Detections]:
        height, width = frames.shape[1:3]
        images, scale, left, top = self._letterbox(frames)
        predictions = self._yolo.predict(
            source=images,
            conf=self.conf,
            iou=self.iou,
            classes=[self._face_class],
            imgsz=list(images.shape[-2:]),
            device=str(self._device),
            verbose=False,
        )
        shift = torch.tensor([left, top, left, top], dtype=torch.float32, device=self._device)
        limits = torch.tensor([width, height, width, height], dtype=torch.float32, device=self._device)
        results = []
        for prediction in predictions:
            boxes = (prediction.boxes.xyxy.to(self._device, torch.float32) - shift) / scale
            boxes = torch.minimum(boxes.clamp(min=0), limits)
            scores = prediction.boxes.conf.to(self._device, torch.float32)
            landmarks = None
            keypoints = getattr(prediction, "keypoints", None)
            if keypoints is not None and keypoints.xy.shape[1:] == (5, 2):
                landmarks = (keypoints.xy.to(self._device, torch.float32) - shift[:2]) / scale
            order = torch.argsort(scores, descending=True)
            results.append(
                Detections(boxes[order], scores[order], None if landmarks is None else landmarks[order])
            )
        return results
