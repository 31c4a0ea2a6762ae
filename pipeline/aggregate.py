"""Frame scores → track scores → video score and label. Pure functions over plain numbers.

Every score here is P(fake), as `ralf.core.decision.Decision` maps the model's logits (log-odds of FAKE).
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pipeline.track_evidence import EvidenceRule, deciding_tracks
from pipeline.verdict import MAX_FRAME_POINTS, FramePoint, TrackVerdict, VerdictLabel
from ralf.core.options import AggregationName


@dataclass(frozen=True)
class FaceScore:
    """One scored face crop: which person, where in the video, how suspicious."""

    track_id: int
    frame_index: int
    timestamp_s: float
    probability: float  # P(fake)
    face_px: float | None = None  # longer side of the face box, frame pixels


def track_score(probabilities: Sequence[float], method: AggregationName = "mean", top_k: int = 5) -> float:
    """One track's P(fake) from its faces' P(fake).

    'mean' averages every face; 'topk' averages the `top_k` most suspicious faces (all of them when
    the track is shorter), so a short forged segment inside a long real track still counts;
    'median' ignores isolated outliers.
    """
    if not probabilities:
        raise ValueError("a track needs at least one face score")
    if method == "mean":
        return math.fsum(probabilities) / len(probabilities)
    if method == "topk":
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        highest = sorted(probabilities, reverse=True)[:top_k]
        return math.fsum(highest) / len(highest)
    if method == "median":
        return float(statistics.median(probabilities))
    raise ValueError(f"unknown aggregation {method!r}; choose mean, topk or median")


def suspicious_times(faces: Sequence[FaceScore], count: int) -> list[float]:
    """Timestamps of the `count` most suspicious faces, most suspicious first (earlier first on ties)."""
    ranked = sorted(faces, key=lambda f: (-f.probability, f.timestamp_s))
    return [f.timestamp_s for f in ranked[:count]]


def frame_points(faces: Sequence[FaceScore], limit: int = MAX_FRAME_POINTS) -> list[FramePoint]:
    """The faces' (time, P(fake)) in time order, at most `limit` of them: a longer track is cut into
    `limit` equal stretches of faces and each keeps its most suspicious one, so a short burst of high
    scores stays visible in the plot. Scores rounded to 4 decimals (the plot needs no more)."""
    ordered = sorted(faces, key=lambda f: (f.timestamp_s, f.frame_index))
    if len(ordered) > limit > 0:
        bounds = [round(i * len(ordered) / limit) for i in range(limit + 1)]
        ordered = [max(ordered[a:b], key=lambda f: f.probability) for a, b in zip(bounds, bounds[1:]) if b > a]
    return [FramePoint(time_s=round(f.timestamp_s, 4), score=round(f.probability, 4)) for f in ordered]


def aggregate_tracks(
    faces: Iterable[FaceScore],
    method: AggregationName = "mean",
    top_k: int = 5,
    suspicious_count: int = 3,
    rule: EvidenceRule = EvidenceRule(),
) -> list[TrackVerdict]:
    """One `TrackVerdict` per track id seen in `faces`, in order of track id, each marked with whether
    it decides the video (`pipeline.track_evidence.deciding_tracks` under `rule`) and carrying its scores
    over time."""
    by_track: dict[int, list[FaceScore]] = defaultdict(list)
    for face in faces:
        by_track[face.track_id].append(face)
    verdicts = []
    for track_id in sorted(by_track):
        track_faces = by_track[track_id]
        times = [f.timestamp_s for f in track_faces]
        sizes = [f.face_px for f in track_faces if f.face_px is not None]
        verdicts.append(
            TrackVerdict(
                track_id=track_id,
                score=track_score([f.probability for f in track_faces], method, top_k),
                num_faces=len(track_faces),
                first_time_s=min(times),
                last_time_s=max(times),
                face_px=round(float(statistics.median(sizes)), 1) if sizes else None,
                suspicious_times_s=suspicious_times(track_faces, suspicious_count),
                frame_scores=frame_points(track_faces),
            )
        )
    deciding = {t.track_id for t in deciding_tracks(verdicts, rule)}
    return [
        t.model_copy(update={"decides": t.track_id in deciding, "thin_evidence": rule.thin_reason(t)}) for t in verdicts
    ]


def video_score(tracks: Sequence[TrackVerdict]) -> float | None:
    """The most suspicious deciding track's score (`TrackVerdict.decides`, set by `aggregate_tracks`):
    one forged person makes the video fake. None without tracks. Tracks stored before `decides` was
    recorded (None) all decide."""
    deciding = [t for t in tracks if t.decides is not False]
    if not deciding:
        return None
    return max(t.score for t in deciding)


def video_label(score: float | None, threshold: float) -> VerdictLabel:
    """'fake' when score >= threshold, 'real' below it, 'no_face' when there was nothing to score."""
    if score is None:
        return "no_face"
    return "fake" if score >= threshold else "real"
