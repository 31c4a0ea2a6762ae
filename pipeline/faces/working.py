"""Detection at a working resolution: find faces on a downscaled copy, report them in frame pixels.

A face detector's cost grows with the pixels it looks at, while the faces worth scoring are far
larger than the detector's smallest one. So each frame is scaled so its long side is at most
`max_side` (640 by default), detected there, and the boxes and landmarks are mapped back; crops are
still cut from the full-resolution frame by the caller.

`min_face_size` keeps its meaning in the original frame's pixels: the scale never drops below
`smallest / min_face_size`, so a face of `min_face_size` original pixels keeps `smallest` pixels in
the working copy. Both detectors use `WORKING_MIN_FACE` (24) for it, not the smallest face they can
find at all (12 for MTCNN's P-Net, 16 for RetinaFace's smallest anchor): at that floor, faces just
above `min_face_size` were lost (on the shared real 1080p clip, of the 44 faces >= 40 px that
full-resolution MTCNN finds, MTCNN at 640 px found 41 and RetinaFace 40; with the 24-pixel floor both
find 44).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.faces.types import Detections

# Pixels a `min_face_size` face keeps in the working copy (MTCNN's R-Net looks at 24x24 crops).
WORKING_MIN_FACE = 24


def working_scale(height: int, width: int, max_side: int | None, min_face_size: float, smallest: float) -> float:
    """The factor (<= 1) frames of `height` x `width` are scaled by before detection.

    `max_side` None or 0: full resolution (1.0). Otherwise the long side goes down to `max_side`,
    but never so far that a face of `min_face_size` original pixels becomes smaller than `smallest`.
    """
    if not max_side:
        return 1.0
    scale = max(max_side / max(height, width), smallest / max(min_face_size, 1e-6))
    return min(1.0, scale)


def working_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """(height, width) of the working copy: rounded, at least one pixel."""
    return max(1, round(height * scale)), max(1, round(width * scale))


def downscale_frames(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 (N, H, W, 3) frames resized to `size` (h, w), antialiased bilinear, uint8 (N, h, w, 3).

    On the CPU the resize runs on the uint8 channels_last view (a vectorised path, no float copy of
    the full frames); CUDA has no uint8 antialiased kernel, so it resizes floats there.
    """
    pixels = frames.permute(0, 3, 1, 2)
    if frames.device.type == "cpu":
        small = F.interpolate(pixels, size=size, mode="bilinear", antialias=True, align_corners=False)
    else:
        small = F.interpolate(pixels.float(), size=size, mode="bilinear", antialias=True, align_corners=False)
        small = small.round_().clamp_(0, 255).to(torch.uint8)
    return small.permute(0, 2, 3, 1).contiguous()


def to_frame_pixels(found: Detections, x_factor: float, y_factor: float, height: int, width: int) -> Detections:
    """Detections of a working copy in the full frame's pixels (x scaled by `x_factor`, y by `y_factor`),
    boxes clamped to the frame."""
    factors = torch.tensor([x_factor, y_factor, x_factor, y_factor], dtype=found.boxes.dtype, device=found.boxes.device)
    limits = torch.tensor([width, height, width, height], dtype=found.boxes.dtype, device=found.boxes.device)
    boxes = torch.minimum((found.boxes * factors).clamp(min=0), limits)
    landmarks = found.landmarks
    if landmarks is not None:
        landmarks = landmarks * torch.tensor([x_factor, y_factor], dtype=landmarks.dtype, device=landmarks.device)
    return Detections(boxes, found.scores, landmarks)
