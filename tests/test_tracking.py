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


# MTCNN boxes of the generated 2-second clip sampled at 2 fps (conftest `face_clip_h264`): the face
# moves ~70 px per sampled frame with boxes ~56x72 px, so consecutive boxes do not overlap at all.
FAST_FACE = [
    [125.0, 82.3, 180.5, 154.2],
    [193.4, 81.3, 249.0, 154.5],
    [125.1, 82.4, 180.7, 154.3],
    [53.7, 80.4, 112.1, 155.1],
]


def test_fast_moving_face_keeps_one_track_by_nearness() -> None:
    tracker = IouTracker()
    ids = [tracker.update(i * 6, i * 0.5, torch.tensor([box]))[0] for i, box in enumerate(FAST_FACE)]
    assert ids == [0, 0, 0, 0]
    assert tracker.tracks[0].detections == 4


def test_nearness_is_relative_to_face_size() -> None:
    tracker = IouTracker(max_center_distance=1.5)
    tracker.update(0, 0.0, torch.tensor([_box(0, 0, side=40)]))
    assert tracker.update(1, 0.1, torch.tensor([_box(55, 0, side=40)])) == [0]  # 1.375 sides away
    assert tracker.update(2, 0.2, torch.tensor([_box(120, 0, side=40)])) == [1]  # 1.625 sides away
    big = IouTracker(max_center_distance=1.5)
    big.update(0, 0.0, torch.tensor([_box(0, 0, side=100)]))
    assert big.update(1, 0.1, torch.tensor([_box(120, 0, side=100)])) == [0]  # same 120 px, 1.2 sides


def test_nearness_needs_a_similar_size() -> None:
    tracker = IouTracker(max_size_ratio=2.0)
    tracker.update(0, 0.0, torch.tensor([_box(0, 0, side=80)]))
    # Centre 30 px away (well within 1.5 sides) but a third of the size: a different face.
    assert tracker.update(1, 0.1, torch.tensor([_box(42, 27, side=26)])) == [1]


def test_overlap_wins_over_nearness_and_each_track_takes_one_box() -> None:
    tracker = IouTracker()
    tracker.update(0, 0.0, torch.tensor([_box(0, 0), _box(200, 0)]))
    # The first box is near track 0 but does not overlap it; the second box overlaps track 0.
    # Track 0 goes to the overlapping box; the near box may not take it too and starts track 2.
    assert tracker.update(1, 0.1, torch.tensor([_box(-50, 0), _box(5, 0)])) == [2, 0]


@pytest.mark.parametrize("reverse", [False, True])
def test_nearest_pair_is_taken_first_whatever_the_box_order(reverse: bool) -> None:
    tracker = IouTracker()
    tracker.update(0, 0.0, torch.tensor([_box(0, 0), _box(80, 0)]))
    # Box at x=50 is 1.25 sides from track 0 and 0.75 from track 1 (IoU 0.14); box at x=125 is
    # 1.125 sides from track 1 only. The nearest pair (x=50, track 1) is taken first, so x=125
    # starts a new track, in whichever order the detector lists the boxes.
    boxes = [_box(50, 0), _box(125, 0)]
    ids = tracker.update(1, 0.1, torch.tensor(boxes[::-1] if reverse else boxes))
    assert (ids[::-1] if reverse else ids) == [1, 2]
