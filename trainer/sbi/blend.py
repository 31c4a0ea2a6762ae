"""One self-blended fake: augmented source pasted onto the target through a random face mask."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from trainer.sbi.augment import augment_colour, augment_frequency, shift_scale
from trainer.sbi.config import SelfBlendConfig
from trainer.sbi.images import Image8, Mask, check_image, to_uint8, uniform
from trainer.sbi.masks import landmarks_or_default, blend_mask


@dataclass(frozen=True)
class SelfBlended:
    """One self-blended pair: `real` (the augmented target), `fake`, effective mask r·m, ratio r."""

    real: Image8
    fake: Image8
    mask: Mask
    ratio: float


def sample_ratio(rng: np.random.Generator, config: SelfBlendConfig | None = None) -> float:
    """Blend ratio: 1 with probability `ratio_one_prob`, else uniform in `ratio_range`."""
    config = config or SelfBlendConfig()
    one = rng.random() < config.ratio_one_prob
    value = uniform(rng, config.ratio_range)
    return 1.0 if one else value


def self_blend(
    image: Image8,
    landmarks: NDArray | None,
    rng: np.random.Generator,
    config: SelfBlendConfig | None = None,
) -> SelfBlended:
    """One self-blended fake of `image` (uint8 RGB) with face `landmarks` ((5, 2) xy, or None for
    `default_landmarks`); see the module docstring for the procedure."""
    check_image(image)
    config = config or SelfBlendConfig()
    height, width = image.shape[:2]
    points = landmarks_or_default(landmarks, height, width)

    augment_source = rng.random() < config.source_augment_prob
    appearance = augment_frequency(augment_colour(image, rng, config), rng, config)
    source = appearance if augment_source else image
    target = image.copy() if augment_source else appearance
    source = shift_scale(source, rng, config)

    mask = blend_mask(points, height, width, rng, config)
    ratio = sample_ratio(rng, config)
    alpha = (mask * np.float32(ratio)).astype(np.float32)

    fake = target.copy()
    inside = alpha > 0
    a = alpha[inside][:, None]
    blended = target[inside].astype(np.float32) * (1.0 - a) + source[inside].astype(np.float32) * a
    fake[inside] = to_uint8(blended)
    return SelfBlended(real=target, fake=fake, mask=alpha, ratio=float(ratio))
