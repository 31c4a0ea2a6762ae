"""Level-2 DeeperForensics distortions: parameters, shapes, and agreement with OpenCV when installed."""

from __future__ import annotations

import numpy as np
import pytest

from trainer import distortions


@pytest.fixture(scope="module")
def face() -> np.ndarray:
    from pipeline.synthetic import astronaut_face

    return astronaut_face()[:120, :100].copy()


def test_contrast_scales_and_truncates(face: np.ndarray) -> None:
    out = distortions.contrast(face)
    np.testing.assert_array_equal(out, (face.astype(np.float32) * 0.725).astype(np.uint8))


def test_blur_keeps_constant_and_smooths(face: np.ndarray) -> None:
    flat = np.full((20, 30, 3), 77, np.uint8)
    np.testing.assert_array_equal(distortions.gaussian_blur(flat), flat)
    out = distortions.gaussian_blur(face)
    assert out.shape == face.shape
    # High-frequency energy (neighbour differences) drops.
    assert np.abs(np.diff(out.astype(int), axis=1)).mean() < 0.7 * np.abs(np.diff(face.astype(int), axis=1)).mean()


def test_pixelation_and_jpeg_degrade(face: np.ndarray) -> None:
    for name in ("pixelation", "jpeg"):
        out = distortions.get_distortion(name)(face)
        assert out.shape == face.shape and out.dtype == np.uint8
        error = np.abs(out.astype(int) - face.astype(int)).mean()
        assert 0.5 < error < 40, name


def test_matches_opencv_reference(face: np.ndarray) -> None:
    cv2 = pytest.importorskip("cv2")
    bgr = face[:, :, ::-1].copy()
    blurred = cv2.GaussianBlur(bgr, (9, 9), 9 / 6)[:, :, ::-1]
    assert np.abs(distortions.gaussian_blur(face).astype(int) - blurred.astype(int)).max() <= 1
    h, w = bgr.shape[:2]
    pixelated = cv2.resize(cv2.resize(bgr, (w // 3, h // 3)), (w, h))[:, :, ::-1]
    assert np.abs(distortions.pixelation(face).astype(int) - pixelated.astype(int)).max() <= 1


def test_unknown_name_and_bad_image() -> None:
    with pytest.raises(ValueError, match="unknown distortion"):
        distortions.get_distortion("noise")
    with pytest.raises(ValueError, match="uint8 RGB"):
        distortions.contrast(np.zeros((4, 4), np.uint8))
