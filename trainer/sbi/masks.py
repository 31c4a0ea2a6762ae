"""Soft, randomly deformed face masks from the detector's 5 landmarks (`blend_mask`)."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw
from scipy import ndimage
from scipy.special import ndtr

from trainer.sbi.config import SelfBlendConfig
from trainer.sbi.images import Mask, uniform

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


def landmarks_or_default(landmarks: NDArray | None, height: int, width: int) -> NDArray[np.float64]:
    """(5, 2) float64 landmarks; None or non-finite values give `default_landmarks`."""
    if landmarks is None:
        return default_landmarks(height, width)
    points = np.asarray(landmarks, dtype=np.float64)
    if points.shape != (5, 2):
        raise ValueError(f"landmarks must be (5, 2) xy points, got {points.shape}")
    if not np.isfinite(points).all():
        return default_landmarks(height, width)
    return points


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
    points = landmarks_or_default(landmarks, height, width)
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
    delta = uniform(rng, config.morph_range) * side
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
    points = landmarks_or_default(landmarks, height, width)
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
    sigma = uniform(rng, config.blur_range) * min(work_h, work_w)
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
