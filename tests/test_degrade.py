"""Real-footage degradations on both classes (trainer/degrade.py) and their place in the training data."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipeline.synthetic import astronaut_face
from trainer.data import CropRecord, FaceCropDataset
from trainer.degrade import DegradeConfig, degrade, down_up, h264_round_trip, jitter

NOTHING = DegradeConfig(jitter_prob=0, resize_prob=0, h264_prob=0, blur_prob=0, noise_prob=0, colour_prob=0)


def _face(size: int = 64) -> np.ndarray:
    return np.asarray(Image.fromarray(astronaut_face()).resize((size, size)))


def test_jitter_without_movement_is_the_identity_and_a_shift_moves_content() -> None:
    face = _face()
    rng = np.random.default_rng(0)
    assert np.array_equal(jitter(face, rng, 0.0, 0.0), face)
    moved = jitter(face, np.random.default_rng(1), 4.0, 0.0)
    assert moved.shape == face.shape and moved.dtype == np.uint8 and not np.array_equal(moved, face)


def test_down_up_loses_detail_but_keeps_the_size() -> None:
    face = _face()
    small = down_up(face, 16)
    assert small.shape == face.shape
    high = np.abs(np.diff(face.astype(int), axis=1)).mean()
    assert np.abs(np.diff(small.astype(int), axis=1)).mean() < 0.8 * high
    assert np.array_equal(down_up(face, 128), face)  # never upscales first


def test_h264_round_trip_is_lossy_and_worse_at_higher_crf() -> None:
    face = _face(63)  # odd sides are padded for 4:2:0 and cut back
    good, bad = h264_round_trip(face, 18), h264_round_trip(face, 45)
    assert good.shape == bad.shape == face.shape
    assert 0 < np.abs(good.astype(int) - face).mean() < np.abs(bad.astype(int) - face).mean()


def test_degrade_is_seeded_and_off_when_every_probability_is_zero() -> None:
    face = _face()
    config = DegradeConfig(jitter_prob=1, resize_prob=1, h264_prob=1, blur_prob=1, noise_prob=1, colour_prob=1)
    first = degrade(face, np.random.default_rng(5), config)
    assert np.array_equal(first, degrade(face, np.random.default_rng(5), config))
    assert not np.array_equal(first, face)
    assert np.array_equal(degrade(face, np.random.default_rng(5), NOTHING), face)


def test_training_crops_of_both_classes_are_degraded_alike(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "face.png"
    Image.fromarray(_face()).save(path)
    records = [CropRecord(path, "v0", "g0", 0, False, "train"), CropRecord(path, "v1", "g1", 0, True, "train")]
    always = DegradeConfig(jitter_prob=1, resize_prob=0, h264_prob=1, blur_prob=0, noise_prob=0, colour_prob=0)
    plain = FaceCropDataset(records, 64)
    degraded = FaceCropDataset(records, 64, degrade=always, seed=3)
    for index in (0, 1):
        image, _, _ = degraded[(index, False, 7)]
        assert not np.allclose(image.numpy(), plain[index][0].numpy())
        assert np.array_equal(image.numpy(), degraded[(index, False, 7)][0].numpy())  # same step, same image
    assert not np.array_equal(degraded[(0, False, 7)][0].numpy(), degraded[(0, False, 8)][0].numpy())


def test_config_rejects_out_of_range_values() -> None:
    with pytest.raises(ValueError):
        DegradeConfig(h264_prob=1.5)
