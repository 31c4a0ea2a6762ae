"""Frame scores → track scores → video label."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.aggregate import (
    FaceScore,
    aggregate_tracks,
    suspicious_times,
    track_score,
    video_label,
    video_score,
)
from pipeline.verdict import TrackVerdict
from ralf.core.decision import fake_probabilities


def test_probabilities_are_sigmoid_of_fake_logit() -> None:
    probabilities = fake_probabilities(torch.tensor([0.0, 2.0, -2.0]))
    assert probabilities[0] == pytest.approx(0.5)
    assert probabilities[1] == pytest.approx(1 / (1 + math.exp(-2.0)))
    assert probabilities[1] > 0.5 > probabilities[2]


@pytest.mark.parametrize(
    ("method", "expected"),
    [("mean", (0.1 + 0.2 + 0.9 + 0.8 + 0.3) / 5), ("topk", (0.9 + 0.8) / 2), ("median", 0.3)],
)
def test_track_score_methods(method: str, expected: float) -> None:
    assert track_score([0.1, 0.2, 0.9, 0.8, 0.3], method, top_k=2) == pytest.approx(expected)


def test_topk_longer_than_track_uses_all_faces() -> None:
    assert track_score([0.2, 0.4], "topk", top_k=10) == pytest.approx(0.3)


def test_track_score_rejects_empty_and_unknown() -> None:
    with pytest.raises(ValueError):
        track_score([], "mean")
    with pytest.raises(ValueError):
        track_score([0.5], "max")  # type: ignore[arg-type]


def _faces() -> list[FaceScore]:
    # Track 0 looks real; track 1 has one suspicious stretch.
    return [
        FaceScore(track_id=0, frame_index=0, timestamp_s=0.0, probability=0.1),
        FaceScore(track_id=1, frame_index=0, timestamp_s=0.0, probability=0.2),
        FaceScore(track_id=0, frame_index=6, timestamp_s=0.5, probability=0.2),
        FaceScore(track_id=1, frame_index=6, timestamp_s=0.5, probability=0.95),
        FaceScore(track_id=1, frame_index=12, timestamp_s=1.0, probability=0.9),
    ]


def test_aggregate_tracks_reports_each_person() -> None:
    tracks = aggregate_tracks(_faces(), "mean", suspicious_count=2)
    assert [t.track_id for t in tracks] == [0, 1]
    real, suspicious = tracks
    assert real.num_faces == 2 and real.first_time_s == 0.0 and real.last_time_s == 0.5
    assert real.score == pytest.approx(0.15)
    assert suspicious.score == pytest.approx((0.2 + 0.95 + 0.9) / 3)
    assert suspicious.suspicious_times_s == [0.5, 1.0]


def test_video_is_as_suspicious_as_its_worst_track() -> None:
    tracks = aggregate_tracks(_faces(), "topk", top_k=1)
    assert video_score(tracks) == pytest.approx(0.95)
    assert video_label(video_score(tracks), threshold=0.5) == "fake"
    assert video_label(0.5, threshold=0.5) == "fake"  # the threshold itself counts as fake
    assert video_label(0.49, threshold=0.5) == "real"


def test_video_score_is_the_most_suspicious_deciding_track() -> None:
    person = TrackVerdict(track_id=0, score=0.2, num_faces=8, first_time_s=0.0, last_time_s=4.0, decides=True)
    glimpse = TrackVerdict(track_id=1, score=0.9, num_faces=1, first_time_s=1.0, last_time_s=1.0, decides=False)
    assert video_score([person, glimpse]) == pytest.approx(0.2)
    # Verdicts stored before `decides` was recorded: every track decides.
    assert video_score([glimpse.model_copy(update={"decides": None}), person]) == pytest.approx(0.9)


def test_aggregate_tracks_marks_thin_tracks_with_their_reason() -> None:
    faces = [FaceScore(0, i, i * 0.5, 0.2, face_px=80.0) for i in range(6)] + [FaceScore(1, 2, 1.0, 0.99, face_px=60.0)]
    person, glimpse = aggregate_tracks(faces)
    assert (person.decides, person.thin_evidence, person.face_px) == (True, None, 80.0)
    assert glimpse.decides is False and glimpse.thin_evidence == "1 face over 0.0 s"
    assert video_score([person, glimpse]) == pytest.approx(0.2)


def test_no_faces_is_no_face() -> None:
    assert aggregate_tracks([]) == []
    assert video_score([]) is None
    assert video_label(None, threshold=0.5) == "no_face"


def test_suspicious_times_tie_break_is_earliest() -> None:
    faces = [FaceScore(0, i, float(i), 0.7) for i in (3, 1, 2)]
    assert suspicious_times(faces, 2) == [1.0, 2.0]
    assert suspicious_times(faces, 0) == []


def test_temperature_softens_probabilities() -> None:
    sharp, soft = fake_probabilities(torch.tensor([2.0]))[0], fake_probabilities(torch.tensor([2.0]), 2.0)[0]
    assert soft == pytest.approx(1 / (1 + math.exp(-1.0)))
    assert 0.5 < soft < sharp
    with pytest.raises(ValueError):
        fake_probabilities(torch.tensor([1.0]), 0.0)
