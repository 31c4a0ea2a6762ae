"""Self-blended pseudo-fakes (SBI, Shiohara & Yamasaki, CVPR 2022), written from the paper's description.

A real face crop is turned into a training fake by blending it with a slightly altered copy of
itself: two copies of the same image (source and target) are augmented independently, the source
is also shifted/scaled a little, and the source face is pasted onto the target through a soft,
randomly deformed face mask. The result carries the generic traces of face swapping (blending
boundary, colour and frequency mismatch, landmark misalignment) without any identity change, so a
detector trained on it has to learn those traces.

All image operations work on uint8 RGB `(H, W, 3)` arrays with numpy / scipy.ndimage / Pillow /
skimage; every random choice comes from the `numpy.random.Generator` passed in, so the same seed
gives identical outputs.

Procedure of `self_blend` (one call = one fake):

1. `source` and `target` start as copies of the image. One of them (each with probability 1/2,
   `source_augment_prob`) gets the appearance augmentation, `augment_colour` then
   `augment_frequency`; the other is left exactly as it is (no weaker variant, for simplicity).
2. The source always gets `shift_scale` (a small affine: shift <= 3% of the side, independent
   x/y scale in [0.95, 1.05], edge pixels repeated outside).
3. `blend_mask` builds the mask from the 5 landmarks: landmark face hull (probability 0.75) or
   face ellipse, elastically deformed, dilated or eroded, blurred (soft edge), max 1.
4. The ratio r is 1 with probability 0.25, otherwise U[0.25, 1) (see `SelfBlendConfig`);
   fake = target * (1 - r m) + source * (r m), rounded. Where r m == 0 the fake is the target
   bit for bit; the target is returned as `real`.

`jpeg_compress` is a separate step: the trainer applies it to both classes after blending so that
JPEG artefacts are not a class cue.

Landmarks are the detector's 5 points in image pixels (x, y): left eye, right eye, nose,
mouth left, mouth right (`pipeline.faces.types.Detections`). `default_landmarks` gives a plausible
layout for a scanner-style crop when a record has none.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFilter
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy import ndimage
from scipy.special import ndtr

Image8 = NDArray[np.uint8]
Mask = NDArray[np.float32]

# Face geometry in "eye units": origin at the midpoint of the eyes, x to the subject's left-to-right
# in the image, y down, unit = inter-ocular distance. The 5 reference points match an upright
# frontal face; `_face_affine` maps these units onto the detected landmarks (least squares).
_TEMPLATE5 = np.array(
    [[-0.5, 0.0], [0.5, 0.0], [0.0, 0.55], [-0.42, 0.95], [0.42, 0.95]],
    dtype=np.float64,
)
# Convex face outline in the same units, clockwise from the top of the forehead: forehead
# (0.6 above the eyes, about the brows plus a band of forehead), temples and cheeks beside the
# eyes, jaw and chin below the mouth (chin 1.55 below the eye line).
_HULL = np.array(
    [
        [0.0, -0.6], [0.5, -0.55], [0.82, -0.32], [0.92, 0.05], [0.9, 0.6], [0.72, 1.1], [0.4, 1.45],
        [0.0, 1.55], [-0.4, 1.45], [-0.72, 1.1], [-0.9, 0.6], [-0.92, 0.05], [-0.82, -0.32], [-0.5, -0.55],
    ],
    dtype=np.float64,
)
# Face ellipse in eye units: centred between the eyes and the mouth, a little narrower than the
# hull and without the forehead band.
_ELLIPSE_CENTRE = (0.0, 0.55)
_ELLIPSE_AXES = (0.95, 1.05)  # semi-axes along x and y
_ELLIPSE_POINTS = 48

# Landmarks relative to the detector's face box (x, y in [0, 1]), MTCNN-like: eyes at 40% of the
# box height and 40% of its width apart, mouth at 78%.
_BOX_LANDMARKS = np.array(
    [[0.30, 0.40], [0.70, 0.40], [0.50, 0.60], [0.35, 0.78], [0.65, 0.78]],
    dtype=np.float64,
)

# `blend_mask` works at most this many pixels on the shorter side, then resizes.
MASK_WORK_SIDE = 128

# A landmark mask covering less than this fraction of the image is treated as degenerate.
_MIN_MASK_FRACTION = 0.01

# RGB <-> YIQ (NTSC): hue rotation and saturation scaling act on the (I, Q) plane.
_RGB_TO_YIQ = np.array(
    [[0.299, 0.587, 0.114], [0.595716, -0.274453, -0.321263], [0.211456, -0.522591, 0.311135]],
    dtype=np.float64,
)
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)

Range = tuple[float, float]


class SelfBlendConfig(BaseModel):
    """Random ranges of the self-blending. Lengths given as fractions are of the image's shorter side."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Blend ratio. SBI draws r from {0.25, 0.5, 0.75, 1, 1, 1}; we use a continuous version with
    # less weight on 1: r = 1 with probability 0.25, else uniform in [0.25, 1). Mean about 0.72, so
    # most fakes are partial (subtle) blends and a quarter paste the source fully.
    ratio_range: Range = Field((0.25, 1.0), description="Uniform range of the blend ratio r")
    ratio_one_prob: float = Field(0.25, ge=0, le=1, description="Probability that r is exactly 1")

    # Mask.
    hull_prob: float = Field(0.75, ge=0, le=1, description="Probability of the landmark hull (else the face ellipse)")
    elastic_strength: float = Field(
        0.03, ge=0, le=0.2, description="Largest elastic displacement of the mask, fraction of the side"
    )
    elastic_grid: int = Field(
        6, ge=2, le=64, description="Control points per side of the smooth random displacement field"
    )
    morph_range: Range = Field(
        (-0.03, 0.03), description="Dilation (> 0) or erosion (< 0) of the mask edge, fraction of the side"
    )
    blur_range: Range = Field(
        (0.01, 0.04), description="Gaussian sigma of the soft mask edge, fraction of the side"
    )

    # Geometry of the source.
    max_shift: float = Field(0.03, ge=0, le=0.25, description="Largest source shift per axis, fraction of the side")
    scale_range: Range = Field((0.95, 1.05), description="Source scale per axis (independent x and y)")

    # Which copy gets the appearance (colour + frequency) augmentation; the other stays unchanged.
    source_augment_prob: float = Field(
        0.5, ge=0, le=1, description="Probability that the source (else the target) gets colour/frequency changes"
    )

    # Colour: each of the three changes is applied with `colour_op_prob`.
    colour_op_prob: float = Field(0.5, ge=0, le=1, description="Probability of each colour change")
    rgb_shift: float = Field(20.0, ge=0, le=255, description="Largest per-channel offset, in 0..255 levels")
    brightness: float = Field(0.1, ge=0, le=1, description="Largest brightness offset, fraction of 255")
    contrast: float = Field(0.1, ge=0, le=1, description="Largest contrast change (factor 1 ± contrast)")
    hue_degrees: float = Field(10.0, ge=0, le=180, description="Largest hue rotation, degrees")
    saturation: float = Field(0.15, ge=0, le=1, description="Largest saturation change (factor 1 ± saturation)")

    # Frequency.
    sharpen_blur_prob: float = Field(
        0.5, ge=0, le=1, description="Probability of sharpening or blurring (half each)"
    )
    blur_sigma_range: Range = Field((0.5, 1.5), description="Gaussian sigma of the blur, pixels")
    sharpen_range: Range = Field((0.3, 1.0), description="Unsharp-mask amount (radius 1 px)")
    resize_prob: float = Field(0.5, ge=0, le=1, description="Probability of a down-and-up resize")
    resize_range: Range = Field((0.5, 0.9), description="Down-scaling factor of the down-and-up resize")

    # JPEG (both classes, after blending; see `jpeg_compress`).
    jpeg_prob: float = Field(0.7, ge=0, le=1, description="Probability of a JPEG round trip")
    jpeg_quality: tuple[int, int] = Field((40, 95), description="JPEG quality range, inclusive")

    @model_validator(mode="after")
    def _check_ranges(self) -> SelfBlendConfig:
        for name in (
            "ratio_range", "morph_range", "blur_range", "scale_range", "blur_sigma_range",
            "sharpen_range", "resize_range", "jpeg_quality",
        ):
            low, high = getattr(self, name)
            if low > high:
                raise ValueError(f"{name}: lower bound {low} above upper bound {high}")
        checks = {
            "ratio_range": 0 < self.ratio_range[0] and self.ratio_range[1] <= 1,
            "blur_range": 0 <= self.blur_range[0] and self.blur_range[1] <= 0.5,
            "morph_range": -0.2 <= self.morph_range[0] and self.morph_range[1] <= 0.2,
            "scale_range": 0.5 <= self.scale_range[0] and self.scale_range[1] <= 2,
            "blur_sigma_range": 0 <= self.blur_sigma_range[0] and self.blur_sigma_range[1] <= 10,
            "sharpen_range": 0 <= self.sharpen_range[0] and self.sharpen_range[1] <= 5,
            "resize_range": 0.05 <= self.resize_range[0] and self.resize_range[1] <= 1,
            "jpeg_quality": 1 <= self.jpeg_quality[0] and self.jpeg_quality[1] <= 100,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"out of range: {', '.join(bad)}")
        return self


@dataclass(frozen=True)
class SelfBlended:
    """One self-blended pair: `real` (the augmented target), `fake`, effective mask r·m, ratio r."""

    real: Image8
    fake: Image8
    mask: Mask
    ratio: float


# --------------------------------------------------------------------------------------------- checks


def _check_image(image: Image8) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        raise ValueError(f"expected a uint8 RGB image (H, W, 3), got {getattr(image, 'dtype', type(image))} {shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"empty image {image.shape}")


def _landmarks_or_default(landmarks: NDArray | None, height: int, width: int) -> NDArray[np.float64]:
    """(5, 2) float64 landmarks; None or non-finite values give `default_landmarks`."""
    if landmarks is None:
        return default_landmarks(height, width)
    points = np.asarray(landmarks, dtype=np.float64)
    if points.shape != (5, 2):
        raise ValueError(f"landmarks must be (5, 2) xy points, got {points.shape}")
    if not np.isfinite(points).all():
        return default_landmarks(height, width)
    return points


def _uniform(rng: np.random.Generator, bounds: Range) -> float:
    return float(rng.uniform(bounds[0], bounds[1])) if bounds[1] > bounds[0] else float(bounds[0])


def _to_uint8(values: NDArray) -> Image8:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------ landmarks


def default_landmarks(height: int, width: int, margin: float = 0.3) -> NDArray[np.float32]:
    """A plausible 5-point layout for a centred face crop of `height` × `width` pixels.

    Scanner-style crops (`pipeline.crops.square_regions`) are squares whose side is the face box's
    longer side times `1 + margin`, so the face box is the central `1 / (1 + margin)` of the crop
    (1/1.3 for the default 0.3). The points sit inside that box where a frontal face's are
    (MTCNN-like: eyes at 40% of the box height, mouth at 78%).
    """
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    box_w, box_h = width / (1.0 + margin), height / (1.0 + margin)
    x0, y0 = (width - box_w) / 2.0, (height - box_h) / 2.0
    points = _BOX_LANDMARKS * np.array([box_w, box_h]) + np.array([x0, y0])
    return points.astype(np.float32)


def _face_affine(landmarks: NDArray[np.float64]) -> NDArray[np.float64]:
    """2×3 affine from eye units to image pixels, least squares over the 5 points."""
    design = np.hstack([_TEMPLATE5, np.ones((5, 1))])
    solution, *_ = np.linalg.lstsq(design, landmarks, rcond=None)  # (3, 2)
    return solution.T


def _fill(points_xy: NDArray[np.float64], height: int, width: int) -> Mask:
    """Fill a polygon given in pixel coordinates (x, y; pixel centres at integers), {0, 1} float32.

    Pillow's scanline fill (much faster than a per-pixel point-in-polygon test) only visits the
    rows inside the image, so vertices far outside are fine. Pillow's pixel (x, y) has its centre
    at (x + 0.5, y + 0.5), hence the half-pixel shift.
    """
    canvas = Image.new("L", (width, height), 0)
    ImageDraw.Draw(canvas).polygon([(float(x) + 0.5, float(y) + 0.5) for x, y in points_xy], fill=1)
    return np.array(canvas, dtype=np.float32)


def _template_mask(template: NDArray[np.float64], landmarks: NDArray | None, height: int, width: int) -> Mask:
    """Rasterise a template polygon placed on the landmarks; a degenerate result → centred default."""
    points = _landmarks_or_default(landmarks, height, width)
    for attempt in range(2):
        affine = _face_affine(points)
        polygon = template @ affine[:, :2].T + affine[:, 2]
        mask = _fill(polygon, height, width)
        if mask.sum() >= _MIN_MASK_FRACTION * height * width:
            return mask
        points = default_landmarks(height, width).astype(np.float64)
    # Even the default layout gave (almost) nothing: only for images a few pixels across.
    return np.ones((height, width), dtype=np.float32)


def face_hull(landmarks5: NDArray, height: int, width: int) -> Mask:
    """Face-shaped convex polygon from the 5 landmarks, float32 (H, W) in {0, 1}.

    The outline (forehead band above the brows, temples and cheeks beside the eyes, jaw and chin
    below the mouth, all in units of the inter-ocular distance) is placed with the least-squares
    affine that maps a frontal 5-point template onto the landmarks, so it follows the face's
    position, size, roll and (to first order) yaw. Points outside the image are clipped; a mask
    covering under 1% of the image (absurd or coincident landmarks) falls back to the hull of
    `default_landmarks`, a centred face.
    """
    return _template_mask(_HULL, landmarks5, height, width)


def face_ellipse(landmarks5: NDArray, height: int, width: int) -> Mask:
    """Face ellipse from the 5 landmarks (same placement and fallback as `face_hull`), {0, 1}."""
    angles = np.linspace(0.0, 2.0 * np.pi, _ELLIPSE_POINTS, endpoint=False)
    template = np.stack(
        [_ELLIPSE_CENTRE[0] + _ELLIPSE_AXES[0] * np.cos(angles), _ELLIPSE_CENTRE[1] + _ELLIPSE_AXES[1] * np.sin(angles)],
        axis=1,
    )
    return _template_mask(template, landmarks5, height, width)


# ---------------------------------------------------------------------------------------------- masks


def _elastic(mask: Mask, rng: np.random.Generator, config: SelfBlendConfig) -> Mask:
    """Warp by a smooth random displacement field: Gaussian-filtered noise on a coarse
    `elastic_grid` × `elastic_grid` lattice, upsampled (bicubic) to the mask, applied with
    `map_coordinates` (bilinear). The largest displacement is U[0, elastic_strength] × side."""
    height, width = mask.shape
    side = min(height, width)
    amplitude = rng.uniform(0.0, config.elastic_strength) * side
    grid = config.elastic_grid
    noise = rng.standard_normal((2, grid, grid))
    if amplitude < 0.5:
        return mask
    field = ndimage.gaussian_filter(noise, sigma=(0, 1.0, 1.0), mode="wrap")
    field *= amplitude / max(float(np.abs(field).max()), 1e-6)
    dy, dx = (
        np.asarray(Image.fromarray(part.astype(np.float32)).resize((width, height), Image.Resampling.BICUBIC))
        for part in field
    )
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    return ndimage.map_coordinates(mask, [yy + dy, xx + dx], order=1, mode="constant", cval=0.0)


def _dilate_erode(mask: Mask, rng: np.random.Generator, config: SelfBlendConfig) -> Mask:
    """Move the edge by δ pixels (δ > 0 dilates): blur, then threshold at the level the blurred edge
    has at distance δ (Φ(-δ/σ) for a straight edge). Corners are rounded as a side effect."""
    side = min(mask.shape)
    delta = _uniform(rng, config.morph_range) * side
    if abs(delta) < 0.5:
        return (mask > 0.5).astype(np.float32)
    sigma = max(abs(delta), 1.0)
    level = float(ndtr(-delta / sigma))
    moved = (ndimage.gaussian_filter(mask, sigma, mode="constant") > level).astype(np.float32)
    # Erosion must not wipe out the face: keep the undeformed mask if nothing is left.
    return moved if moved.sum() >= 0.25 * mask.sum() else (mask > 0.5).astype(np.float32)


def blend_mask(
    landmarks: NDArray | None, height: int, width: int, rng: np.random.Generator, config: SelfBlendConfig | None = None
) -> Mask:
    """Random soft face mask, float32 (H, W) in [0, 1] with maximum 1.

    Landmark hull (probability `hull_prob`) or face ellipse; elastically deformed (smooth random
    displacement up to `elastic_strength` of the side); dilated or eroded (`morph_range`); blurred
    with a random Gaussian (`blur_range`) for a soft edge; normalised to max 1. `landmarks` None
    uses `default_landmarks`.

    The mask is built at most `MASK_WORK_SIDE` pixels on its shorter side and resized (bilinear)
    to (H, W): it is smooth (the soft edge is >= 1% of the side), and the morphology and warps
    cost a quarter at half resolution. Lengths are fractions of the side, so the result does not
    depend on the working size beyond interpolation.
    """
    config = config or SelfBlendConfig()
    points = _landmarks_or_default(landmarks, height, width)
    factor = min(1.0, MASK_WORK_SIDE / min(height, width))
    work_h, work_w = max(1, round(height * factor)), max(1, round(width * factor))
    # Pixel centres map as (x + 0.5) * work / full - 0.5.
    scaled = (points + 0.5) * np.array([work_w / width, work_h / height]) - 0.5

    use_hull = rng.random() < config.hull_prob
    mask = face_hull(scaled, work_h, work_w) if use_hull else face_ellipse(scaled, work_h, work_w)
    base = mask
    mask = _elastic(mask, rng, config)
    mask = _dilate_erode(mask, rng, config)
    if mask.sum() == 0:  # the warp pushed a small mask out of the image
        mask = base
    sigma = _uniform(rng, config.blur_range) * min(work_h, work_w)
    if sigma > 0.3:
        mask = ndimage.gaussian_filter(mask, sigma, mode="constant")
    if (work_h, work_w) != (height, width):
        mask = np.asarray(
            Image.fromarray(mask.astype(np.float32)).resize((width, height), Image.Resampling.BILINEAR)
        )
    peak = float(mask.max())
    if peak <= 0:
        return np.ones((height, width), dtype=np.float32)
    mask = np.clip(mask / peak, 0.0, 1.0).astype(np.float32)
    mask[mask < 1e-4] = 0.0  # keep the support compact: Gaussian tails below 1/10000 change no pixel
    return mask


# ------------------------------------------------------------------------------------- augmentations


def augment_colour(image: Image8, rng: np.random.Generator, config: SelfBlendConfig | None = None) -> Image8:
    """Random RGB shift, brightness/contrast and hue/saturation, each with `colour_op_prob`.

    All three are one affine map of the RGB values: hue rotates and saturation scales the chroma
    plane of YIQ; contrast scales around the image mean, brightness and the RGB shift add offsets.
    """
    _check_image(image)
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
    return _to_uint8(pixels).reshape(image.shape)


def _resize(image: Image8, width: int, height: int) -> Image8:
    return np.array(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))


def augment_frequency(image: Image8, rng: np.random.Generator, config: SelfBlendConfig | None = None) -> Image8:
    """Sharpen or blur (`sharpen_blur_prob`, half each), then a down-and-up resize (`resize_prob`).

    Pillow filters: unsharp mask of radius 1 px with amount `sharpen_range`, or Gaussian blur of
    sigma `blur_sigma_range` (Pillow's box approximation); the resize is bilinear both ways.
    """
    _check_image(image)
    config = config or SelfBlendConfig()
    filtered, resized = rng.random(2)
    sharpen = rng.random() < 0.5
    sigma = _uniform(rng, config.blur_sigma_range)
    amount = _uniform(rng, config.sharpen_range)
    factor = _uniform(rng, config.resize_range)
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
    _check_image(image)
    config = config or SelfBlendConfig()
    height, width = image.shape[:2]
    side = min(height, width)
    scale_y, scale_x = (_uniform(rng, config.scale_range) for _ in range(2))
    shift_y, shift_x = rng.uniform(-config.max_shift, config.max_shift, size=2) * side
    # Output pixel o samples the input at (o - centre - shift) / scale + centre. No rotation, so
    # the bilinear warp separates into one pass per axis; clipped indices repeat the edge pixels.
    values = image.astype(np.float32)
    values = _resample_axis(values, 0, scale_y, shift_y)
    values = _resample_axis(values, 1, scale_x, shift_x)
    return _to_uint8(values)


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
    _check_image(image)
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


# ------------------------------------------------------------------------------------------ blending


def sample_ratio(rng: np.random.Generator, config: SelfBlendConfig | None = None) -> float:
    """Blend ratio: 1 with probability `ratio_one_prob`, else uniform in `ratio_range`."""
    config = config or SelfBlendConfig()
    one = rng.random() < config.ratio_one_prob
    value = _uniform(rng, config.ratio_range)
    return 1.0 if one else value


def self_blend(
    image: Image8,
    landmarks: NDArray | None,
    rng: np.random.Generator,
    config: SelfBlendConfig | None = None,
) -> SelfBlended:
    """One self-blended fake of `image` (uint8 RGB) with face `landmarks` ((5, 2) xy, or None for
    `default_landmarks`); see the module docstring for the procedure."""
    _check_image(image)
    config = config or SelfBlendConfig()
    height, width = image.shape[:2]
    points = _landmarks_or_default(landmarks, height, width)

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
    fake[inside] = _to_uint8(blended)
    return SelfBlended(real=target, fake=fake, mask=alpha, ratio=float(ratio))
