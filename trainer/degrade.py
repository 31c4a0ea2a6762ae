"""Real-footage degradations applied to BOTH classes during training, so image quality is never a
class cue and the model sees faces as moderators' videos deliver them.

Each step fires with its own probability, drawn from the `numpy.random.Generator` passed in (the
dataset seeds it from (seed, step, index), so a resumed run sees the same images):

1. geometry jitter: a shift of up to `max_shift_px` pixels and a scale change of up to `max_scale`
   (the scanner's crops move by a pixel or two between frames and detectors; a model whose score
   jumps under a one-pixel shift cannot be trusted), edges reflected;
2. down-and-up resizing to a side in `small_side` pixels (small, distant faces upscaled);
3. H.264 re-encoding (PyAV, libx264, one intra frame) at a CRF in `h264_crf` (broadcast, phone and
   platform compression);
4. Gaussian blur (motion and focus blur);
5. Gaussian noise (sensor noise);
6. colour: brightness, contrast and saturation changes.
"""

from __future__ import annotations

import av
import numpy as np
from PIL import Image, ImageEnhance, ImageFilter
from pydantic import BaseModel, ConfigDict, Field
from scipy import ndimage

Image8 = np.ndarray  # uint8 RGB (H, W, 3)


class DegradeConfig(BaseModel):
    """Probabilities and ranges of the degradations (see the module docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    jitter_prob: float = Field(0.8, ge=0, le=1)
    max_shift_px: float = Field(4.0, ge=0, le=32, description="Largest shift per axis, pixels of the stored crop")
    max_scale: float = Field(0.06, ge=0, le=0.3, description="Largest relative scale change")
    resize_prob: float = Field(0.35, ge=0, le=1)
    small_side: tuple[int, int] = Field((28, 96), description="Side the face is shrunk to before upscaling")
    h264_prob: float = Field(0.3, ge=0, le=1)
    h264_crf: tuple[int, int] = Field((20, 40), description="libx264 constant rate factor range (higher: worse)")
    blur_prob: float = Field(0.15, ge=0, le=1)
    blur_sigma: tuple[float, float] = Field((0.4, 1.5))
    noise_prob: float = Field(0.15, ge=0, le=1)
    noise_sigma: tuple[float, float] = Field((2.0, 8.0), description="Standard deviation in 0..255 levels")
    colour_prob: float = Field(0.3, ge=0, le=1)
    colour_strength: float = Field(0.15, ge=0, le=0.5, description="Largest brightness/contrast/saturation change")


def jitter(image: Image8, rng: np.random.Generator, max_shift_px: float, max_scale: float) -> Image8:
    """Shift and scale about the centre, reflecting at the edges (bilinear)."""
    height, width = image.shape[:2]
    scale = 1.0 + rng.uniform(-max_scale, max_scale)
    shift = rng.uniform(-max_shift_px, max_shift_px, size=2)
    centre = np.array([(height - 1) / 2, (width - 1) / 2])
    # output pixel o samples input at centre + (o - centre) / scale - shift
    offset = centre - centre / scale - shift
    channels = [
        ndimage.affine_transform(image[..., c].astype(np.float32), [1 / scale, 1 / scale], offset=offset,
                                 order=1, mode="reflect")  # fmt: skip
        for c in range(image.shape[2])
    ]
    return np.clip(np.rint(np.stack(channels, axis=-1)), 0, 255).astype(np.uint8)


def down_up(image: Image8, side: int) -> Image8:
    """Shrink to `side` pixels (longer side; antialiased) and scale back up (bilinear)."""
    height, width = image.shape[:2]
    factor = side / max(height, width)
    if factor >= 1:
        return image.copy()
    small = Image.fromarray(image).resize((max(1, round(width * factor)), max(1, round(height * factor))),
                                          Image.Resampling.BOX)  # fmt: skip
    return np.asarray(small.resize((width, height), Image.Resampling.BILINEAR)).copy()


def h264_round_trip(image: Image8, crf: int) -> Image8:
    """Encode as one H.264 frame (libx264, yuv420p, even-padded) and decode it again."""
    height, width = image.shape[:2]
    padded = np.pad(image, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
    codec = av.CodecContext.create("libx264", "w")
    codec.width, codec.height = padded.shape[1], padded.shape[0]
    codec.pix_fmt = "yuv420p"
    codec.options = {"crf": str(crf), "preset": "ultrafast", "tune": "zerolatency"}
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(padded), format="rgb24")
    packets = list(codec.encode(frame)) + list(codec.encode(None))
    decoder = av.CodecContext.create("h264", "r")
    decoded = [f for p in packets for f in decoder.decode(p)] + list(decoder.decode(None))
    if not decoded:
        return image.copy()
    return decoded[-1].to_ndarray(format="rgb24")[:height, :width].copy()


def colour(image: Image8, rng: np.random.Generator, strength: float) -> Image8:
    picture = Image.fromarray(image)
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        picture = enhancer(picture).enhance(1.0 + rng.uniform(-strength, strength))
    return np.asarray(picture).copy()


def degrade(image: Image8, rng: np.random.Generator, config: DegradeConfig) -> Image8:
    """`image` after the degradations that fire for this draw (see the module docstring)."""
    # Every draw is taken whether or not its step fires, so one step's choice never shifts another's.
    draws = rng.random(6)
    if draws[0] < config.jitter_prob:
        image = jitter(image, rng, config.max_shift_px, config.max_scale)
    side = int(rng.integers(config.small_side[0], config.small_side[1] + 1))
    if draws[1] < config.resize_prob:
        image = down_up(image, side)
    crf = int(rng.integers(config.h264_crf[0], config.h264_crf[1] + 1))
    if draws[2] < config.h264_prob:
        image = h264_round_trip(image, crf)
    sigma = rng.uniform(*config.blur_sigma)
    if draws[3] < config.blur_prob:
        image = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(sigma))).copy()
    noise = rng.uniform(*config.noise_sigma)
    if draws[4] < config.noise_prob:
        image = np.clip(image + rng.normal(0, noise, image.shape), 0, 255).astype(np.uint8)
    if draws[5] < config.colour_prob:
        image = colour(image, rng, config.colour_strength)
    return image
