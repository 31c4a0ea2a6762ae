"""Which tracks decide a video (pipeline/track_evidence.py) and the verdict's words (pipeline/explanation.py),
on plain TrackVerdicts."""

from __future__ import annotations

import pytest

from pipeline.aggregate import video_label, video_score
from pipeline.explanation import explanation
from pipeline.track_evidence import EvidenceRule, deciding_tracks
from pipeline.verdict import TrackVerdict, Verdict


def track(track_id: int, score: float, faces: int, seconds: float, face_px: float | None = 100.0) -> TrackVerdict:
    return TrackVerdict(
        track_id=track_id, score=score, num_faces=faces, first_time_s=0.0, last_time_s=seconds, face_px=face_px
    )


def test_a_track_needs_faces_or_seconds_and_large_enough_faces() -> None:
    rule = EvidenceRule(min_faces=3, min_seconds=1.0, min_face_px=40)
    assert rule.thin_reason(track(0, 0.5, faces=3, seconds=0.5)) is None
    assert rule.thin_reason(track(0, 0.5, faces=2, seconds=1.0)) is None  # long enough, though few faces
    assert rule.thin_reason(track(0, 0.5, faces=2, seconds=0.5)) == "2 faces over 0.5 s"
    assert rule.thin_reason(track(0, 0.5, faces=9, seconds=4.0, face_px=30)) == "faces 30 px, under 40 px"
    assert rule.thin_reason(track(0, 0.5, faces=9, seconds=4.0, face_px=None)) is None  # size unknown: not held against it


def test_thin_tracks_do_not_decide_next_to_established_ones() -> None:
    person, glimpse, small = track(0, 0.1, 8, 4.0), track(1, 0.99, 1, 0.0), track(2, 0.98, 8, 4.0, face_px=20)
    rule = EvidenceRule(min_face_px=32)
    assert deciding_tracks([person, glimpse, small], rule) == [person]


def test_without_established_tracks_the_best_evidenced_one_decides_alone() -> None:
    # A short single-face clip is still judged, on its one person.
    only = track(0, 0.95, 2, 0.5)
    assert deciding_tracks([only]) == [only]
    # Several thin tracks: the one with most faces decides, not the most suspicious.
    longer, flash = track(0, 0.3, 2, 0.5), track(1, 0.99, 1, 0.0)
    assert deciding_tracks([flash, longer]) == [longer]
    assert deciding_tracks([]) == []


def test_rule_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        EvidenceRule(min_faces=0)
    with pytest.raises(ValueError):
        EvidenceRule(min_face_px=-1)


def _verdict(tracks: list[TrackVerdict], threshold: float = 0.9) -> Verdict:
    rule = EvidenceRule()
    deciding = {t.track_id for t in deciding_tracks(tracks, rule)}
    tracks = [t.model_copy(update={"decides": t.track_id in deciding, "thin_evidence": rule.thin_reason(t)}) for t in tracks]
    score = video_score(tracks)
    return Verdict(path="v.mp4", label=video_label(score, threshold), score=score, threshold=threshold,
                   threshold_source="test", model_version="m", tracks=tracks)  # fmt: skip


def test_explanation_names_the_deciding_person_and_the_thin_ones() -> None:
    words = explanation(_verdict([track(0, 0.95, 8, 4.0), track(1, 0.99, 1, 0.0)]))
    assert words.startswith("Likely manipulated: person 0")
    assert "0.95" in words and "Too little evidence to decide: person 1 (1 face over 0.0 s, P(fake) 0.99)" in words

    words = explanation(_verdict([track(0, 0.2, 8, 4.0)]))
    assert words.startswith("No manipulation found") and "Too little evidence" not in words


def test_explanation_says_when_the_deciding_evidence_is_thin() -> None:
    words = explanation(_verdict([track(0, 0.95, 2, 0.5)]))
    assert "judged on this person alone" in words and "2 faces over 0.5 s" in words
