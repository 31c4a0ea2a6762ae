"""What every face detector returns and promises, independent of the backend."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch


class FaceDetectorError(ValueError):
    """A detector cannot be built or cannot read its input (missing weights, wrong frame layout, ...)."""


@dataclass(frozen=True)
class Detections:
    """Faces found in one frame.

    `boxes` are float32 `(K, 4)` xyxy in pixel coordinates of that frame (x right, y down),
    `scores` are `(K,)` detector confidences in [0, 1], sorted from most to least confident,
    `landmarks` (when the backend predicts them) are `(K, 5, 2)` xy points: left eye, right eye,
    nose, mouth left, mouth right.
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    landmarks: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.boxes.ndim != 2 or self.boxes.shape[1] != 4:
            raise ValueError(f"boxes must be (K, 4), got {tuple(self.boxes.shape)}")
        count = self.boxes.shape[0]
        if self.scores.shape != (count,):
            raise ValueError(f"scores must be ({count},), got {tuple(self.scores.shape)}")
        if self.landmarks is not None and self.landmarks.shape != (count, 5, 2):
            raise ValueError(f"landmarks must be ({count}, 5, 2), got {tuple(self.landmarks.shape)}")

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    @classmethod
    def empty(cls, device: torch.device | str = "cpu", with_landmarks: bool = False) -> Detections:
        return cls(
            boxes=torch.zeros((0, 4), dtype=torch.float32, device=device),
            scores=torch.zeros((0,), dtype=torch.float32, device=device),
            landmarks=torch.zeros((0, 5, 2), dtype=torch.float32, device=device) if with_landmarks else None,
        )

    def to(self, device: torch.device | str) -> Detections:
        return Detections(
            boxes=self.boxes.to(device),
            scores=self.scores.to(device),
            landmarks=None if self.landmarks is None else self.landmarks.to(device),
        )

    def filter(self, keep: torch.Tensor) -> Detections:
        """The detections selected by a boolean mask or an index tensor."""
        return Detections(
            boxes=self.boxes[keep],
            scores=self.scores[keep],
            landmarks=None if self.landmarks is None else self.landmarks[keep],
        )


def split_by_frame(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    landmarks: torch.Tensor,
    frame_ids: torch.Tensor,
    count: int,
    size: tuple[int, int],
) -> list[Detections]:
    """Detections of a whole batch (each tagged with its frame) -> one `Detections` per frame, boxes
    clamped to the frame's `size` (width, height), most confident first."""
    width, height = size
    limits = torch.tensor([width, height, width, height], dtype=boxes.dtype, device=boxes.device)
    boxes = torch.minimum(boxes.clamp(min=0), limits)
    results = []
    for frame in range(count):
        mine = torch.nonzero(frame_ids == frame).flatten()
        mine = mine[torch.argsort(scores[mine], descending=True)]
        results.append(Detections(boxes[mine], scores[mine], landmarks[mine]))
    return results


@runtime_checkable
class FaceDetector(Protocol):
    """Finds faces in a batch of decoded frames.

    `frames` is the decode stage's `FrameBatch.frames`: uint8 `(N, H, W, 3)` RGB on cpu or cuda.
    The result has one `Detections` per frame, on the detector's `device`.
    """

    @property
    def name(self) -> str: ...

    @property
    def device(self) -> torch.device: ...

    def detect(self, frames: torch.Tensor) -> list[Detections]: ...


def check_frames(frames: torch.Tensor) -> None:
    """Raise FaceDetectorError unless `frames` is a uint8 (N, H, W, 3) tensor."""
    if not isinstance(frames, torch.Tensor):
        raise FaceDetectorError(f"frames must be a torch.Tensor, got {type(frames).__name__}")
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise FaceDetectorError(
            f"frames must be uint8 (N, H, W, 3) RGB, got {frames.dtype} {tuple(frames.shape)}"
        )
    if frames.shape[1] == 0 or frames.shape[2] == 0:
        raise FaceDetectorError(f"frames have no pixels: {tuple(frames.shape)}")


def detect_in_passes(
    frames: torch.Tensor, frames_per_pass: int, detect_pass: Callable[[torch.Tensor], list[Detections]]
) -> list[Detections]:
    """Check `frames`, then run `detect_pass` on at most `frames_per_pass` of them at a time (bounds
    the detector's memory); one `Detections` per frame, in order."""
    check_frames(frames)
    results: list[Detections] = []
    for start in range(0, frames.shape[0], frames_per_pass):
        results.extend(detect_pass(frames[start : start + frames_per_pass]))
    return results
