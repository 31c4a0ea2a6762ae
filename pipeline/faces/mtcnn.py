"""MTCNN face detection in PyTorch, batched over frames, on CPU or GPU.

A port of the cascade in the PyPI package `mtcnn` 1.0.0 (its weights, its constants):
  1. P-Net on an image pyramid (scale factor 0.709, first scale 12 / min_face_size); every pyramid
     level runs on the whole batch of frames at once. Proposals above threshold 1 are regressed,
     suppressed per frame and level (NMS IoU 0.5), then across levels (0.7), and made square.
  2. R-Net on 24×24 patches of all proposals of all frames: rescored, regressed, threshold 2,
     NMS 0.7, squared.
  3. O-Net on 48×48 patches: rescored, regressed, 5 landmarks, threshold 3, and a final suppression
     by intersection over the *smaller* box (0.7), which drops boxes nested in a larger face.
Pixels are normalised as (x - 127.5) / 128 and the image keeps its (H, W) orientation. The pyramid
uses antialiased bilinear resizing where the package uses TF's area resize (see `downscale`).

With `max_side`, the cascade runs on a copy of each frame whose long side is at most `max_side`
(see `pipeline.faces.working`): `min_face_size` stays in original pixels, boxes and landmarks come
back in original pixels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms, box_area, roi_align

from pipeline.faces.mtcnn_nets import ONet, PNet, RNet, load_keras_arrays
from pipeline.faces.mtcnn_weights import load_net_arrays
from pipeline.faces.types import Detections, FaceDetectorError, detect_in_passes, split_by_frame
from pipeline.faces.working import WORKING_MIN_FACE, downscale_frames, to_frame_pixels, working_scale, working_size

SCALE_FACTOR = 0.709
PNET_CELL = 12  # P-Net's receptive field, and the smallest pyramid level it can run on
PNET_STRIDE = 2
NMS_PNET_LEVEL = 0.5
NMS_PNET_ALL = 0.7
NMS_RNET = 0.7
NMS_ONET_MIN = 0.7


def pyramid_scales(height: int, width: int, min_face_size: float, factor: float = SCALE_FACTOR) -> list[float]:
    """Scales at which a face of `min_face_size` pixels (and every larger one) fills P-Net's 12×12 cell."""
    scale = PNET_CELL / min_face_size
    scales = []
    while min(height, width) * scale >= PNET_CELL:
        scales.append(scale)
        scale *= factor
    return scales


def normalize(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels to the networks' input range, (x - 127.5) / 128."""
    return (pixels.float() - 127.5) * (1.0 / 128.0)


def downscale(pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """One pyramid level: antialiased bilinear resize, close to the package's area resize.

    On CPU the resize runs on the uint8 channels_last frames (a vectorised path several times faster
    than area or float resizing); CUDA has no uint8 antialiased kernel, so it resizes floats there.
    """
    source = pixels if pixels.device.type == "cpu" else pixels.float()
    return F.interpolate(source, size=size, mode="bilinear", antialias=True, align_corners=False)


def square(boxes: torch.Tensor) -> torch.Tensor:
    """Boxes grown to squares of their longer side, centre kept."""
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    side = torch.maximum(widths, heights)
    x1 = boxes[:, 0] + widths / 2 - side / 2
    y1 = boxes[:, 1] + heights / 2 - side / 2
    return torch.stack([x1, y1, x1 + side, y1 + side], dim=1)


def regress(boxes: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Apply R-/O-Net box offsets, given as fractions of the box's (width + 1, height + 1)."""
    widths = boxes[:, 2] - boxes[:, 0] + 1
    heights = boxes[:, 3] - boxes[:, 1] + 1
    return boxes + offsets * torch.stack([widths, heights, widths, heights], dim=1)


def nms_min_overlap(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, threshold: float) -> torch.Tensor:
    """Indices kept (by decreasing score) when a box is dropped if its intersection covers more than
    `threshold` of the smaller of it and any better-scored box of the same group."""
    order = torch.argsort(scores, descending=True)
    boxes, groups = boxes[order], groups[order]
    top_left = torch.maximum(boxes[:, None, :2], boxes[None, :, :2])
    bottom_right = torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    intersection = (bottom_right - top_left).clamp(min=0).prod(dim=2)
    areas = box_area(boxes)
    overlap = intersection / torch.minimum(areas[:, None], areas[None, :]).clamp(min=1e-6)
    better_overlapping = (overlap > threshold) & (groups[:, None] == groups[None, :])
    better_overlapping = torch.triu(better_overlapping, diagonal=1)
    return order[~better_overlapping.any(dim=0)]


def crop_patches(images: torch.Tensor, frame_ids: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear `size`×`size` patches spanning each box corner to corner, as TF's crop_and_resize does
    for the box coordinates the Keras package passes it (pixel / image size). Samples beyond the image
    are zeros (roi_align repeats the edge pixel within one pixel of the border, crop_and_resize does not).

    roi_align with one sample per bin places sample i at start + (i + 0.5) * bin - 0.5 (aligned=True),
    so the box is shifted and stretched to put the samples on crop_and_resize's grid.
    """
    height, width = images.shape[-2:]
    x1 = boxes[:, 0] * (width - 1) / width
    y1 = boxes[:, 1] * (height - 1) / height
    x_step = (boxes[:, 2] - boxes[:, 0]) * (width - 1) / width / (size - 1)
    y_step = (boxes[:, 3] - boxes[:, 1]) * (height - 1) / height / (size - 1)
    start_x = x1 + 0.5 - 0.5 * x_step
    start_y = y1 + 0.5 - 0.5 * y_step
    rois = torch.stack(
        [frame_ids.to(boxes.dtype), start_x, start_y, start_x + size * x_step, start_y + size * y_step], dim=1
    )
    patches = roi_align(images, rois, output_size=size, spatial_scale=1.0, sampling_ratio=1, aligned=True)
    return patches.contiguous(memory_format=torch.channels_last)


def _in_chunks(fn: Callable[[torch.Tensor], tuple[torch.Tensor, ...]], x: torch.Tensor, chunk: int) -> tuple[torch.Tensor, ...]:
    """fn over x in slices of `chunk` rows, outputs concatenated (bounds R-/O-Net memory)."""
    parts = [fn(x[i : i + chunk]) for i in range(0, x.shape[0], chunk)]
    return tuple(torch.cat(outputs) for outputs in zip(*parts))


class MtcnnDetector(nn.Module):
    """MTCNN on batches of uint8 RGB frames (N, H, W, 3); see the module docstring for the cascade.

    `thresholds` are the face-probability cut-offs of P-, R- and O-Net (package defaults 0.6, 0.7, 0.8).
    `frames_per_pass` bounds how many frames go through the cascade together (memory), and
    `patches_per_pass` how many patches R-/O-Net see at once. `max_side` (None: full resolution)
    is the long side of the working copy frames are detected on; `min_face_size` is in frame pixels.
    """

    def __init__(
        self,
        device: torch.device | str = "cpu",
        min_face_size: int = 20,
        thresholds: Sequence[float] = (0.6, 0.7, 0.8),
        frames_per_pass: int = 16,
        patches_per_pass: int = 4096,
        max_side: int | None = None,
    ) -> None:
        super().__init__()
        if min_face_size < PNET_CELL:
            raise FaceDetectorError(f"min_face_size must be at least {PNET_CELL} pixels, got {min_face_size}")
        if len(thresholds) != 3 or not all(0.0 <= t <= 1.0 for t in thresholds):
            raise FaceDetectorError(f"thresholds must be three probabilities, got {thresholds}")
        self.min_face_size = min_face_size
        self.thresholds = tuple(float(t) for t in thresholds)
        self.frames_per_pass = frames_per_pass
        self.patches_per_pass = patches_per_pass
        if max_side is not None and max_side < 0:
            raise FaceDetectorError(f"max_side must be >= 0 (0: full resolution), got {max_side}")
        self.max_side = max_side or None
        # Built on the meta device: random initialisation would be overwritten anyway, and must not
        # consume the global RNG (callers rely on seeding it themselves).
        with torch.device("meta"):
            self.pnet, self.rnet, self.onet = PNet(), RNet(), ONet()
        self.to_empty(device=device)
        for net, name in ((self.pnet, "pnet"), (self.rnet, "rnet"), (self.onet, "onet")):
            load_keras_arrays(net, load_net_arrays(name))
        self.eval().requires_grad_(False)

    @property
    def name(self) -> str:
        return "mtcnn"

    @property
    def device(self) -> torch.device:
        return self.pnet.conv1.weight.device

    @torch.inference_mode()
    def detect(self, frames: torch.Tensor) -> list[Detections]:
        """One `Detections` (with landmarks) per frame, on this detector's device."""
        return detect_in_passes(frames, self.frames_per_pass, self._detect_pass)

    def _detect_pass(self, frames: torch.Tensor) -> list[Detections]:
        height, width = frames.shape[1:3]
        scale = working_scale(height, width, self.max_side, self.min_face_size, WORKING_MIN_FACE)
        if scale >= 1.0:
            return self._cascade(frames, self.min_face_size)
        small_h, small_w = working_size(height, width, scale)
        small = downscale_frames(frames.to(self.device), (small_h, small_w))
        min_face = max(float(PNET_CELL), self.min_face_size * min(small_h / height, small_w / width))
        found = self._cascade(small, min_face)
        return [to_frame_pixels(f, width / small_w, height / small_h, height, width) for f in found]

    def _cascade(self, frames: torch.Tensor, min_face_size: float) -> list[Detections]:
        """The three stages on `frames` as given, looking for faces of at least `min_face_size` pixels."""
        count, height, width = frames.shape[:3]
        # NHWC frames viewed as NCHW are channels_last, which CPU convolutions and pooling run fastest on.
        pixels = frames.to(self.device).permute(0, 3, 1, 2)
        images = normalize(pixels)

        boxes, scores, frame_ids = self._propose(pixels, min_face_size)
        if boxes.shape[0]:
            boxes, scores, frame_ids = self._refine(images, boxes, frame_ids)
        landmarks = torch.zeros((0, 5, 2), device=self.device)
        if boxes.shape[0]:
            boxes, scores, frame_ids, landmarks = self._output(images, boxes, frame_ids)

        return split_by_frame(boxes, scores, landmarks, frame_ids, count, (width, height))

    def _propose(
        self, pixels: torch.Tensor, min_face_size: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Stage 1: square P-Net proposals (boxes, scores, frame ids) over the whole pyramid of uint8 `pixels`."""
        height, width = pixels.shape[-2:]
        threshold = self.thresholds[0]
        level_boxes, level_scores, level_ids = [], [], []
        for scale in pyramid_scales(height, width, min_face_size):
            size = (math.ceil(height * scale), math.ceil(width * scale))
            offsets, probability = self.pnet(normalize(downscale(pixels, size)))
            frame_ids, rows, cols = torch.nonzero(probability > threshold, as_tuple=True)
            if frame_ids.numel() == 0:
                continue
            # Each output cell sees the 12×12 window at (stride * index + 1) of the scaled image;
            # the window and its regression (fractions of the 11-pixel span) scale back by 1 / scale.
            cells = torch.stack([cols, rows, cols, rows], dim=1).float() * PNET_STRIDE
            cells += torch.tensor([1.0, 1.0, PNET_CELL, PNET_CELL], device=cells.device)
            regression = offsets[frame_ids, :, rows, cols] * (PNET_CELL - 1)
            boxes = (cells + regression) / scale
            scores = probability[frame_ids, rows, cols]
            keep = batched_nms(boxes, scores, frame_ids, NMS_PNET_LEVEL)
            level_boxes.append(boxes[keep])
            level_scores.append(scores[keep])
            level_ids.append(frame_ids[keep])
        if not level_boxes:
            empty = torch.zeros((0, 4), device=pixels.device)
            return empty, empty[:, 0], empty[:, 0].long()
        boxes, scores, frame_ids = torch.cat(level_boxes), torch.cat(level_scores), torch.cat(level_ids)
        keep = batched_nms(boxes, scores, frame_ids, NMS_PNET_ALL)
        return square(boxes[keep]), scores[keep], frame_ids[keep]

    def _refine(
        self, images: torch.Tensor, boxes: torch.Tensor, frame_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Stage 2: R-Net rescoring and regression of the proposals, squared again."""
        patches = crop_patches(images, frame_ids, boxes, 24)
        offsets, scores = _in_chunks(self.rnet, patches, self.patches_per_pass)
        boxes = regress(boxes, offsets)
        passed = scores > self.thresholds[1]
        boxes, scores, frame_ids = boxes[passed], scores[passed], frame_ids[passed]
        keep = batched_nms(boxes, scores, frame_ids, NMS_RNET)
        return square(boxes[keep]), scores[keep], frame_ids[keep]

    def _output(
        self, images: torch.Tensor, boxes: torch.Tensor, frame_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Stage 3: O-Net rescoring, regression and landmarks; nested boxes suppressed."""
        patches = crop_patches(images, frame_ids, boxes, 48)
        offsets, points, scores = _in_chunks(self.onet, patches, self.patches_per_pass)
        # Landmarks are fractions of the O-Net input box (before its own regression), as in the package.
        widths = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
        heights = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
        xs = points[:, :5] * widths + boxes[:, 0:1] - 1
        ys = points[:, 5:] * heights + boxes[:, 1:2] - 1
        landmarks = torch.stack([xs, ys], dim=2)
        boxes = regress(boxes, offsets)
        passed = scores > self.thresholds[2]
        boxes, scores, frame_ids, landmarks = boxes[passed], scores[passed], frame_ids[passed], landmarks[passed]
        keep = nms_min_overlap(boxes, scores, frame_ids, NMS_ONET_MIN)
        return boxes[keep], scores[keep], frame_ids[keep], landmarks[keep]
