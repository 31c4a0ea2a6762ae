"""Face crops around detector boxes, resized to the model's input size, on the frames' device.

One geometry serves training (`ralf-cli prepare`) and serving (`scan`): a square around the box's
longer side plus a margin (the default), or the box itself plus a margin stretched to a square
(how the authors' reference code cut its training faces). The weights' metadata says which.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def square_regions(boxes: torch.Tensor, margin: float) -> torch.Tensor:
    """Integer squares `(K, 4)` xyxy (end exclusive) centred on each box.

    The side is the box's longer side times `1 + margin` (margin 0.3 adds 15% on each side),
    rounded to whole pixels and at least one pixel.
    """
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    boxes = boxes.to(torch.float64)
    center_x = (boxes[:, 0] + boxes[:, 2]) / 2
    center_y = (boxes[:, 1] + boxes[:, 3]) / 2
    longer = torch.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    side = torch.round(longer * (1.0 + margin)).clamp(min=1.0)
    x0 = torch.round(center_x - side / 2)
    y0 = torch.round(center_y - side / 2)
    return torch.stack([x0, y0, x0 + side, y0 + side], dim=1).to(torch.int64)


def stretched_regions(boxes: torch.Tensor, margin: float) -> torch.Tensor:
    """Integer rectangles `(K, 4)` xyxy (end exclusive): each box grown by `margin` of its own width
    and height (half on each side), at least one pixel; resized to a square they stretch the face."""
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    boxes = boxes.to(torch.float64)
    width = ((boxes[:, 2] - boxes[:, 0]) * (1.0 + margin)).round().clamp(min=1.0)
    height = ((boxes[:, 3] - boxes[:, 1]) * (1.0 + margin)).round().clamp(min=1.0)
    x0 = torch.round((boxes[:, 0] + boxes[:, 2]) / 2 - width / 2)
    y0 = torch.round((boxes[:, 1] + boxes[:, 3]) / 2 - height / 2)
    return torch.stack([x0, y0, x0 + width, y0 + height], dim=1).to(torch.int64)


def crop_regions(boxes: torch.Tensor, margin: float, square: bool = True) -> torch.Tensor:
    """The frame rectangle each crop is cut from (see `square_regions`, `stretched_regions`)."""
    return square_regions(boxes, margin) if square else stretched_regions(boxes, margin)


def landmarks_in_crops(
    landmarks: torch.Tensor, boxes: torch.Tensor, size: int, margin: float = 0.3, square: bool = True
) -> torch.Tensor:
    """Frame-pixel landmarks `(K, P, 2)` of each box mapped into its `size` x `size` crop's pixels."""
    regions = crop_regions(boxes.detach().cpu(), margin, square).to(torch.float64)
    origin = regions[:, None, :2]
    scale = size / (regions[:, None, 2:] - regions[:, None, :2])
    return ((landmarks.detach().cpu().to(torch.float64) - origin) * scale).to(torch.float32)


def crop_faces(
    frames: torch.Tensor,
    frame_indices: torch.Tensor,
    boxes: torch.Tensor,
    size: int,
    margin: float = 0.3,
    square: bool = True,
) -> torch.Tensor:
    """Cut one crop per box (`crop_regions`) and resize it to `size` × `size`.

    frames: uint8 `(N, H, W, 3)` RGB; frame_indices: `(K,)` which frame each box belongs to
    (positions in `frames`, not video frame numbers); boxes: `(K, 4)` xyxy pixels.
    Returns float32 `(K, 3, size, size)` RGB in [0, 1] on `frames.device`.

    Parts of a region that fall outside the frame are black (zeros), so a face at the border
    keeps its position and scale inside the crop instead of being stretched.
    The resize is bilinear with antialiasing, so downscaling a large face does not alias.
    """
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (N, H, W, 3), got {frames.dtype} {tuple(frames.shape)}")
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be (K, 4), got {tuple(boxes.shape)}")
    if frame_indices.shape != (boxes.shape[0],):
        raise ValueError(f"frame_indices must be ({boxes.shape[0]},), got {tuple(frame_indices.shape)}")
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    device = frames.device
    count = boxes.shape[0]
    if count == 0:
        return torch.zeros((0, 3, size, size), dtype=torch.float32, device=device)

    height, width = frames.shape[1], frames.shape[2]
    # Crop geometry is a handful of integers per box: compute it on the CPU once.
    regions = crop_regions(boxes.detach().cpu(), margin, square).tolist()
    indices = frame_indices.detach().cpu().tolist()
    if min(indices) < 0 or max(indices) >= frames.shape[0]:
        raise ValueError(f"frame_indices must lie in [0, {frames.shape[0]}), got {min(indices)}..{max(indices)}")

    crops = torch.empty((count, 3, size, size), dtype=torch.float32, device=device)
    for k, ((x0, y0, x1, y1), frame) in enumerate(zip(regions, indices)):
        region = torch.zeros((1, 3, y1 - y0, x1 - x0), dtype=torch.float32, device=device)
        inside_x0, inside_y0 = max(x0, 0), max(y0, 0)
        inside_x1, inside_y1 = min(x1, width), min(y1, height)
        if inside_x1 > inside_x0 and inside_y1 > inside_y0:
            patch = frames[frame, inside_y0:inside_y1, inside_x0:inside_x1].permute(2, 0, 1)
            region[
                0, :, inside_y0 - y0 : inside_y1 - y0, inside_x0 - x0 : inside_x1 - x0
            ] = patch.to(torch.float32) / 255.0
        if region.shape[-2:] == (size, size):
            crops[k] = region[0]
        else:
            resized = F.interpolate(region, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
            crops[k] = resized[0].clamp_(0.0, 1.0)
    return crops
