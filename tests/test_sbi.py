"""Self-blended pseudo-fakes (trainer.sbi): blend support, ranges, determinism, odd landmarks, JPEG."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError
from scipy import ndimage

from trainer import sbi

# The astronaut's 5 landmarks (x, y) in the 512x512 skimage image, read off the picture.
ASTRONAUT_LANDMARKS = np.array([[201, 100], [245, 104], [225.5, 126], [203, 141], [250, 141]], dtype=np.float64)
CROP_ROWS, CROP_COLS = slice(20, 260), slice(115, 355)  # 240x240 around the face (rows 30..250, cols 140..330)


@pytest.fixture(scope="module")
def face() -> tuple[np.ndarray, np.ndarray]:
    """A 120x120 crop of the astronaut's face and its landmarks in crop pixels."""
    from PIL import Image
    from skimage import data

    crop = data.astronaut()[CROP_ROWS, CROP_COLS]
    small = np.asarray(Image.fromarray(crop).resize((120, 120), Image.Resampling.BILINEAR))
    landmarks = (ASTRONAUT_LANDMARKS - [CROP_COLS.start, CROP_ROWS.start] + 0.5) * 0.5 - 0.5
    return small, landmarks


def random_image(seed: int, height: int = 96, width: int = 80) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def check_pair(out: sbi.SelfBlended, shape: tuple[int, int], config: sbi.SelfBlendConfig) -> None:
    assert out.real.shape == out.fake.shape == (*shape, 3)
    assert out.real.dtype == out.fake.dtype == np.uint8
    assert out.mask.shape == shape and out.mask.dtype == np.float32
    assert out.mask.min() >= 0.0 and out.mask.max() <= 1.0
    low, high = config.ratio_range
    assert low <= out.ratio <= high
    # The face mask is normalised to max 1, so the effective mask peaks at the ratio.
    assert out.mask.max() == pytest.approx(out.ratio, rel=1e-5)


def test_fake_differs_only_inside_the_mask(face: tuple[np.ndarray, np.ndarray]) -> None:
    image, landmarks = face
    cases = [(image, landmarks)] * 6 + [(random_image(seed), None) for seed in range(4)]
    for seed, (picture, points) in enumerate(cases):
        out = sbi.self_blend(picture, points, np.random.default_rng(seed))
        support = out.mask > 0
        changed = np.any(out.fake != out.real, axis=2)
        # Bit-exact target wherever r*m == 0, and a fortiori outside the support dilated by 2 px.
        assert not changed[~support].any(), seed
        assert not changed[~ndimage.binary_dilation(support, iterations=2)].any(), seed
        # Inside, the source shows through: many pixels differ, most where the mask is strong.
        assert changed[support].mean() > 0.3, seed
        assert changed[out.mask > 0.5 * out.ratio].mean() > 0.5, seed
        # The support is a face, not the whole image nor a speck.
        assert 0.05 < support.mean() < 0.95, seed


def test_ratio_and_mask_stay_in_range(face: tuple[np.ndarray, np.ndarray]) -> None:
    image, landmarks = face
    config = sbi.SelfBlendConfig()
    ratios = []
    for seed in range(16):
        out = sbi.self_blend(image, landmarks, np.random.default_rng(seed), config)
        check_pair(out, image.shape[:2], config)
        ratios.append(out.ratio)
    assert any(r == 1.0 for r in ratios) and any(r < 1.0 for r in ratios)

    narrow = sbi.SelfBlendConfig(ratio_range=(0.4, 0.5), ratio_one_prob=0.0)
    for seed in range(8):
        out = sbi.self_blend(image, landmarks, np.random.default_rng(seed), narrow)
        check_pair(out, image.shape[:2], narrow)
        assert 0.4 <= out.ratio <= 0.5

    for seed in range(8):
        mask = sbi.blend_mask(landmarks, 120, 120, np.random.default_rng(seed))
        assert mask.dtype == np.float32 and mask.shape == (120, 120)
        assert mask.min() >= 0.0 and mask.max() == pytest.approx(1.0)


def test_same_seed_same_fake_other_seed_other_fake(face: tuple[np.ndarray, np.ndarray]) -> None:
    image, landmarks = face
    first = sbi.self_blend(image, landmarks, np.random.default_rng(7))
    again = sbi.self_blend(image, landmarks, np.random.default_rng(7))
    other = sbi.self_blend(image, landmarks, np.random.default_rng(8))
    np.testing.assert_array_equal(first.fake, again.fake)
    np.testing.assert_array_equal(first.real, again.real)
    np.testing.assert_array_equal(first.mask, again.mask)
    assert first.ratio == again.ratio
    assert not np.array_equal(first.fake, other.fake)
    # The input is never modified, and the outputs are fresh writable arrays.
    before = image.copy()
    out = sbi.self_blend(image.copy(), landmarks, np.random.default_rng(9))
    np.testing.assert_array_equal(image, before)
    assert out.real.flags.writeable and out.fake.flags.writeable and out.mask.flags.writeable


@pytest.mark.parametrize(
    "landmarks",
    [
        np.full((5, 2), -1000.0),  # far outside, all coincident
        np.full((5, 2), 40.0),  # all identical inside the image
        np.array([[1e4, 50], [1e4 + 30, 50], [1e4 + 15, 70], [1e4 + 5, 90], [1e4 + 25, 90]]),  # off to the right
        np.array([[-1e6, -1e6], [1e6, -1e6], [0, 0], [-1e6, 1e6], [1e6, 1e6]]),  # absurdly large face
        np.array([[10, 80], [50, 80], [30, 60], [15, 40], [45, 40]]),  # upside down
        np.array([[-20, 30], [10, 30], [-5, 50], [-15, 70], [5, 70]]),  # half outside the left edge
        np.array([[30, 30], [np.nan, 30], [40, 50], [30, 70], [50, 70]]),  # not finite -> default layout
        None,  # missing -> default layout
    ],
    ids=["far-coincident", "identical", "off-right", "huge", "upside-down", "half-out", "nan", "none"],
)
def test_odd_landmarks_give_a_valid_mask(landmarks: np.ndarray | None) -> None:
    image = random_image(3, 100, 90)
    config = sbi.SelfBlendConfig()
    for seed in range(3):
        out = sbi.self_blend(image, landmarks, np.random.default_rng(seed), config)
        check_pair(out, (100, 90), config)
        assert (out.mask > 0).mean() > 0.01
    for make in (sbi.face_hull, sbi.face_ellipse):
        mask = make(landmarks, 100, 90)
        assert mask.dtype == np.float32 and mask.shape == (100, 90)
        assert set(np.unique(mask)) <= {0.0, 1.0} and mask.mean() >= 0.01


def test_tiny_and_non_square_images() -> None:
    for height, width in ((1, 1), (3, 7), (17, 5), (64, 200)):
        image = random_image(height * width, height, width)
        out = sbi.self_blend(image, None, np.random.default_rng(0))
        check_pair(out, (height, width), sbi.SelfBlendConfig())


def test_jpeg_compress(face: tuple[np.ndarray, np.ndarray]) -> None:
    image, _ = face
    always = sbi.SelfBlendConfig(jpeg_prob=1.0, jpeg_quality=(40, 60))
    out = sbi.jpeg_compress(image, np.random.default_rng(0), always)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert not np.array_equal(out, image)
    assert np.abs(out.astype(int) - image.astype(int)).mean() < 10  # compressed, not destroyed
    never = sbi.SelfBlendConfig(jpeg_prob=0.0)
    same = sbi.jpeg_compress(image, np.random.default_rng(0), never)
    np.testing.assert_array_equal(same, image)
    assert same is not image
    np.testing.assert_array_equal(
        sbi.jpeg_compress(image, np.random.default_rng(5)), sbi.jpeg_compress(image, np.random.default_rng(5))
    )


def test_hull_covers_eyes_nose_and_mouth(face: tuple[np.ndarray, np.ndarray]) -> None:
    image, landmarks = face
    height, width = image.shape[:2]
    centre = landmarks.mean(axis=0)
    angle = np.deg2rad(30)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    layouts = [
        landmarks,
        (landmarks - centre) @ rotation.T + centre,  # rolled head
        (landmarks - centre) * [0.6, 1.0] + centre,  # turned head (foreshortened)
        sbi.default_landmarks(height, width).astype(np.float64),
    ]
    for points in layouts:
        for make in (sbi.face_hull, sbi.face_ellipse):
            mask = make(points, height, width)
            rows, cols = np.rint(points[:, 1]).astype(int), np.rint(points[:, 0]).astype(int)
            assert (mask[rows, cols] == 1.0).all(), make.__name__
            # A face, not the frame: well under the whole image.
            assert 0.03 < mask.mean() < 0.8, make.__name__
    # On the astronaut the hull stays on the face: the top-left and bottom corners are outside.
    hull = sbi.face_hull(landmarks, height, width)
    assert hull[:10, :10].sum() == 0 and hull[-5:, :].sum() == 0


def test_default_landmarks_sit_in_the_central_face_box() -> None:
    points = sbi.default_landmarks(260, 260)
    assert points.shape == (5, 2) and points.dtype == np.float32
    box = 260 / 1.3
    low, high = (260 - box) / 2, (260 + box) / 2
    assert ((points > low) & (points < high)).all()
    left_eye, right_eye, nose, mouth_left, mouth_right = points
    assert left_eye[0] < nose[0] < right_eye[0] and mouth_left[0] < mouth_right[0]
    assert left_eye[1] < nose[1] < mouth_left[1]


def test_augmentations_keep_shape_and_are_seeded(face: tuple[np.ndarray, np.ndarray]) -> None:
    image, _ = face
    config = sbi.SelfBlendConfig(colour_op_prob=1.0, sharpen_blur_prob=1.0, resize_prob=1.0)
    for augment in (sbi.augment_colour, sbi.augment_frequency, sbi.shift_scale):
        out = augment(image, np.random.default_rng(1), config)
        assert out.shape == image.shape and out.dtype == np.uint8, augment.__name__
        assert not np.array_equal(out, image), augment.__name__
        np.testing.assert_array_equal(out, augment(image, np.random.default_rng(1), config))
    # Without shift and scale the affine is the identity.
    still = sbi.SelfBlendConfig(max_shift=0.0, scale_range=(1.0, 1.0))
    np.testing.assert_array_equal(sbi.shift_scale(image, np.random.default_rng(0), still), image)


def test_config_is_frozen_and_checked() -> None:
    config = sbi.SelfBlendConfig()
    with pytest.raises(ValidationError):
        config.hull_prob = 0.1  # type: ignore[misc]
    with pytest.raises(ValidationError):
        sbi.SelfBlendConfig(unknown=1)  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="lower bound"):
        sbi.SelfBlendConfig(ratio_range=(0.9, 0.5))
    with pytest.raises(ValidationError, match="out of range"):
        sbi.SelfBlendConfig(jpeg_quality=(0, 50))
    with pytest.raises(ValueError, match="uint8 RGB"):
        sbi.self_blend(np.zeros((8, 8), np.uint8), None, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"\(5, 2\)"):
        sbi.self_blend(np.zeros((8, 8, 3), np.uint8), np.zeros((4, 2)), np.random.default_rng(0))
