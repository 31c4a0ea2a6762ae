"""DeeperForensics-1.0 level-2 distortions for the robustness evaluation (paper Table 3).

Level-2 parameters from the DeeperForensics-1.0 perturbation code (`get_distortion_parameter`,
index 1 of each 5-level list), applied per face crop (uint8 RGB (H, W, 3)):

- contrast: CC level 2, every pixel value multiplied by 0.725 and truncated to uint8.
- blur: GB level 2, Gaussian kernel 9x9 with sigma = 9 / 6 = 1.5, reflect-101 borders (OpenCV default).
- pixelation: DeeperForensics' function named `jpeg_compression` is in fact a down-then-up resize;
  level 2 divides each side by 3 (integer), bilinear both ways. That is the pixelation of Table 3.
- jpeg: DeeperForensics' level-2 compression is H.264 video at CRF 32 and has no per-image form.
  We use real JPEG encoding at quality 40 (our choice, not from DeeperForensics) so the
  "Compression" column can be measured on crops.
"""

from __future__ import annotations

import io
from typing import Callable, Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from PIL import Image

DistortionName = Literal["contrast", "blur", "jpeg", "pixelation"]
DISTORTIONS: tuple[str, ...] = get_args(DistortionName)

CONTRAST_FACTOR = 0.725
BLUR_KERNEL = 9
BLUR_SIGMA = BLUR_KERNEL / 6.0
PIXELATION_FACTOR = 3
JPEG_QUALITY = 40

Image8 = NDArray[np.uint8]


def _check_image(image: Image8) -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 RGB image (H, W, 3), got {image.dtype} {image.shape}")


def contrast(image: Image8, factor: float = CONTRAST_FACTOR) -> Image8:
    _check_image(image)
    return (image.astype(np.float32) * factor).astype(np.uint8)


def gaussian_blur(image: Image8, kernel: int = BLUR_KERNEL, sigma: float = BLUR_SIGMA) -> Image8:
    _check_image(image)
    half = kernel // 2
    offsets = np.arange(-half, half + 1, dtype=np.float64)
    weights = np.exp(-(offsets**2) / (2.0 * sigma**2))
    weights /= weights.sum()
    # numpy's "reflect" mode is OpenCV's BORDER_REFLECT_101 (edge pixel not repeated).
    padded = np.pad(image.astype(np.float64), ((half, half), (half, half), (0, 0)), mode="reflect")
    rows = sum(w * padded[i : i + image.shape[0]] for i, w in enumerate(weights))
    blurred = sum(w * rows[:, i : i + image.shape[1]] for i, w in enumerate(weights))
    return np.clip(np.rint(blurred), 0, 255).astype(np.uint8)


def pixelation(image: Image8, factor: int = PIXELATION_FACTOR) -> Image8:
    _check_image(image)
    height, width = image.shape[:2]
    small = (max(1, height // factor), max(1, width // factor))
    tensor = torch.from_numpy(image).permute(2, 0, 1)[None].to(torch.float32)
    # Bilinear without antialiasing, half-pixel centres: what cv2.resize(INTER_LINEAR) does.
    down = F.interpolate(tensor, size=small, mode="bilinear", align_corners=False)
    up = F.interpolate(down, size=(height, width), mode="bilinear", align_corners=False)
    return up[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def jpeg(image: Image8, quality: int = JPEG_QUALITY) -> Image8:
    _check_image(image)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB")).copy()


_FUNCTIONS: dict[str, Callable[[Image8], Image8]] = {
    "contrast": contrast,
    "blur": gaussian_blur,
    "jpeg": jpeg,
    "pixelation": pixelation,
}


def get_distortion(name: str) -> Callable[[Image8], Image8]:
    """The level-2 distortion called `name`, as a uint8 RGB -> uint8 RGB function."""
    if name not in _FUNCTIONS:
        raise ValueError(f"unknown distortion {name!r}; choose one of {list(DISTORTIONS)}")
    return _FUNCTIONS[name]
