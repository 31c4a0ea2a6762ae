import pytest
import torch

from pipeline.tracking import IouTracker


def _box(x: float, y: float, side: float = 40.0) -> list[float]:
    return [x, y, x + side, y + side]


def test_moving_face_keeps_one_track() -> None:
    tracker = IouTracker(iou_threshold=0.3)
    ids = [tracker.update(i, i * 0.5, torch.tensor([_box(100 + 5 * i, 50)]))[0] for i in range(10)]
    assert ids == [0] * 10
    (track,) = tracker.tracks
    assert (track.first_frame, track.last_frame, track.detections) == (0, 9, 10)
    assert track.last_timestamp_s == pytest.approx(4.5)


def test_two_faces_keep_their_ids_whatever_the_box_order() -> None:
    tracker = IouTracker()
    left, right = _box(10, 10), _box(200, 10)
    assert tracker.update(0, 0.0, torch.tensor([left, right])) == [0, 1]
    assert tracker.update(1, 0.1, torch.tensor([right, left])) == [1, 0]


def test_greedy_matching_prefers_highest_iou() -> None:
    tracker = IouTracker(iou_threshold=0.1)
    tracker.update(0, 0.0, torch.tensor([_box(0, 0), _box(25, 0)]))
    # Box A (x=10) overlaps track 0 best (IoU 0.6) but box B (x=2) overlaps it more (0.9):
    # B takes track 0 and A falls back to track 1 (IoU 0.45) instead of starting a new track.
    ids = tracker.update(1, 0.1, torch.tensor([_box(10, 0), _box(2, 0)]))
    assert ids == [1, 0]


def test_track_survives_short_gap_and_ends_after_long_gap() -> None:
    tracker = IouTracker(max_gap=2)
    face = torch.tensor([_box(50, 50)])
    none = torch.zeros((0, 4))
    assert tracker.update(0, 0.0, face) == [0]
    tracker.update(1, 0.1, none)
    tracker.update(2, 0.2, none)
    assert tracker.update(3, 0.3, face) == [0]  # missed 2 updates: still alive
    for frame in range(4, 7):
        tracker.update(frame, frame / 10, none)
    assert tracker.update(7, 0.7, face) == [1]  # missed 3 updates: a new track


def test_non_overlapping_box_starts_new_track() -> None:
    tracker = IouTracker()
    tracker.update(0, 0.0, torch.tensor([_box(0, 0)]))
    assert tracker.update(1, 0.1, torch.tensor([_box(300, 300)])) == [1]


def test_frames_must_increase() -> None:
    tracker = IouTracker()
    tracker.update(5, 0.5, torch.zeros((0, 4)))
    with pytest.raises(ValueError, match="increasing"):
        tracker.update(5, 0.5, torch.zeros((0, 4)))
