"""Array helpers shared by the self-blending steps: image checks, draws from a range, rounding."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

Image8 = NDArray[np.uint8]
Mask = NDArray[np.float32]
Range = tuple[float, float]


def check_image(image: Image8) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        raise ValueError(f"expected a uint8 RGB image (H, W, 3), got {getattr(image, 'dtype', type(image))} {shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"empty image {image.shape}")


def uniform(rng: np.random.Generator, bounds: Range) -> float:
    return float(rng.uniform(bounds[0], bounds[1])) if bounds[1] > bounds[0] else float(bounds[0])


def to_uint8(values: NDArray) -> Image8:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)
