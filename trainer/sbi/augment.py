"""Appearance (colour, frequency), geometry (shift/scale) and JPEG changes of one uint8 RGB image."""

from __future__ import annotations

import io

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageFilter

from trainer.sbi.config import SelfBlendConfig
from trainer.sbi.images import Image8, check_image, to_uint8, uniform

# RGB <-> YIQ (NTSC): hue rotation and saturation scaling act on the (I, Q) plane.
_RGB_TO_YIQ = np.array(
    [[0.299, 0.587, 0.114], [0.595716, -0.274453, -0.321263], [0.211456, -0.522591, 0.311135]],
    dtype=np.float64,
)
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)


def augment_colour(image: Image8, rng: np.random.Generator, config: SelfBlendConfig | None = None) -> Image8:
    """Random RGB shift, brightness/contrast and hue/saturation, each with `colour_op_prob`.

    All three are one affine map of the RGB values: hue rotates and saturation scales the chroma
    plane of YIQ; contrast scales around the image mean, brightness and the RGB shift add offsets.
    """
    check_image(image)
    config = config or SelfBlendConfig()
    do_shift, do_bc, do_hs = rng.random(3) < config.colour_op_prob
    shift = rng.uniform(-config.rgb_shift, config.rgb_shift, size=3)
    gain = 1.0 + rng.uniform(-config.contrast, config.contrast)
    offset = rng.uniform(-config.brightness, config.brightness) * 255.0
    hue = np.deg2rad(rng.uniform(-config.hue_degrees, config.hue_degrees))
    saturation = 1.0 + rng.uniform(-config.saturation, config.saturation)
    if not (do_shift or do_bc or do_hs):
        return image.copy()
    matrix = np.eye(3)
    if do_hs:
        cos, sin = np.cos(hue), np.sin(hue)
        chroma = np.array([[1.0, 0.0, 0.0], [0.0, cos, -sin], [0.0, sin, cos]]) * np.array([1.0, saturation, saturation])[:, None]
        matrix = _YIQ_TO_RGB @ chroma @ _RGB_TO_YIQ
    bias = np.zeros(3)
    if do_bc:
        mean = image.reshape(-1, 3).mean(axis=0) @ matrix.T
        matrix = gain * matrix
        bias += (1.0 - gain) * mean + offset
    if do_shift:
        bias += shift
    pixels = image.reshape(-1, 3).astype(np.float32) @ matrix.T.astype(np.float32) + bias.astype(np.float32)
    return to_uint8(pixels).reshape(image.shape)


def _resize(image: Image8, width: int, height: int) -> Image8:
    return np.array(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))


def augment_frequency(image: Image8, rng: np.random.Generator, config: SelfBlendConfig | None = None) -> Image8:
    """Sharpen or blur (`sharpen_blur_prob`, half each), then a down-and-up resize (`resize_prob`).

    Pillow filters: unsharp mask of radius 1 px with amount `sharpen_range`, or Gaussian blur of
    sigma `blur_sigma_range` (Pillow's box approximation); the resize is bilinear both ways.
    """
    check_image(image)
    config = config or SelfBlendConfig()
    filtered, resized = rng.random(2)
    sharpen = rng.random() < 0.5
    sigma = uniform(rng, config.blur_sigma_range)
    amount = uniform(rng, config.sharpen_range)
    factor = uniform(rng, config.resize_range)
    out = image
    if filtered < config.sharpen_blur_prob:
        picture = Image.fromarray(image)
        if sharpen:
            picture = picture.filter(ImageFilter.UnsharpMask(radius=1.0, percent=round(amount * 100), threshold=0))
        else:
            picture = picture.filter(ImageFilter.GaussianBlur(radius=sigma))
        out = np.array(picture)
    if resized < config.resize_prob:
        height, width = image.shape[:2]
        small_w, small_h = max(1, round(width * factor)), max(1, round(height * factor))
        if (small_w, small_h) != (width, height):
            out = _resize(_resize(out, small_w, small_h), width, height)
    return out.copy() if out is image else out


def shift_scale(image: Image8, rng: np.random.Generator, config: SelfBlendConfig | None = None) -> Image8:
    """Small random affine about the centre: shift <= `max_shift` of the side per axis, independent
    x/y scale in `scale_range`; bilinear, edge pixels repeated where the image is uncovered."""
    check_image(image)
    config = config or SelfBlendConfig()
    height, width = image.shape[:2]
    side = min(height, width)
    scale_y, scale_x = (uniform(rng, config.scale_range) for _ in range(2))
    shift_y, shift_x = rng.uniform(-config.max_shift, config.max_shift, size=2) * side
    # Output pixel o samples the input at (o - centre - shift) / scale + centre. No rotation, so
    # the bilinear warp separates into one pass per axis; clipped indices repeat the edge pixels.
    values = image.astype(np.float32)
    values = _resample_axis(values, 0, scale_y, shift_y)
    values = _resample_axis(values, 1, scale_x, shift_x)
    return to_uint8(values)


def _resample_axis(values: NDArray[np.float32], axis: int, scale: float, shift: float) -> NDArray[np.float32]:
    size = values.shape[axis]
    centre = (size - 1) / 2.0
    source = (np.arange(size, dtype=np.float64) - centre - shift) / scale + centre
    source = np.clip(source, 0.0, size - 1.0)
    low = np.floor(source).astype(np.intp)
    high = np.minimum(low + 1, size - 1)
    weight = (source - low).astype(np.float32)
    shape = [1, 1, 1]
    shape[axis] = size
    weight = weight.reshape(shape)
    return np.take(values, low, axis=axis) * (1.0 - weight) + np.take(values, high, axis=axis) * weight


def jpeg_compress(image: Image8, rng: np.random.Generator, config: SelfBlendConfig | None = None) -> Image8:
    """JPEG round trip (Pillow, 4:2:0) at a random quality in `jpeg_quality`, with `jpeg_prob`;
    otherwise an unchanged copy. Meant for both classes after blending."""
    check_image(image)
    config = config or SelfBlendConfig()
    apply = rng.random() < config.jpeg_prob
    quality = int(rng.integers(config.jpeg_quality[0], config.jpeg_quality[1] + 1))
    if not apply:
        return image.copy()
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB")).copy()
