"""Which tracks may decide a video. Pure functions over `TrackVerdict`s.

A video is flagged when one deciding track's score crosses the threshold. On real footage with many
people, a track seen in one or two sampled frames, or a face a few pixels wide, carries a score that is
mostly noise (a detector false positive, a tracking split, a blurred passer-by), and one such score
would flag the whole video. So a track decides only with enough evidence (`EvidenceRule`): enough faces
(or seconds) and faces large enough to judge. The thin tracks stay in the verdict with their scores and
are named in the verdict's explanation (pipeline/explanation.py). When no track has enough evidence (a short clip, one face seen briefly),
the best-evidenced track decides alone, so a video with a face is always judged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.verdict import TrackVerdict
from ralf.core.options import MIN_TRACK_FACE_PX, MIN_TRACK_FACES, MIN_TRACK_SECONDS


@dataclass(frozen=True)
class EvidenceRule:
    """What a track needs to decide the video (see the module docstring)."""

    min_faces: int = MIN_TRACK_FACES  # sampled faces; at the default 2 frames/s about 2 s on screen
    min_seconds: float = MIN_TRACK_SECONDS  # ... or this long between its first and last face
    min_face_px: float = MIN_TRACK_FACE_PX  # median longer side of its face boxes, frame pixels

    def __post_init__(self) -> None:
        if self.min_faces < 1:
            raise ValueError(f"min_faces must be >= 1, got {self.min_faces}")
        if self.min_seconds < 0 or self.min_face_px < 0:
            raise ValueError("min_seconds and min_face_px must be >= 0")

    def thin_reason(self, track: TrackVerdict) -> str | None:
        """Why `track` has too little evidence to decide, or None when it has enough."""
        span = track.last_time_s - track.first_time_s
        if track.num_faces < self.min_faces and span < self.min_seconds:
            return f"{track.num_faces} face{'s' if track.num_faces != 1 else ''} over {span:.1f} s"
        if track.face_px is not None and track.face_px < self.min_face_px:
            return f"faces {track.face_px:.0f} px, under {self.min_face_px:.0f} px"
        return None


def _evidence_rank(track: TrackVerdict) -> tuple[int, float, float]:
    return track.num_faces, track.last_time_s - track.first_time_s, track.face_px or 0.0


def deciding_tracks(tracks: Sequence[TrackVerdict], rule: EvidenceRule = EvidenceRule()) -> list[TrackVerdict]:
    """The tracks allowed to set the video score: those with enough evidence, or else the single
    best-evidenced track (most faces, then longest, then largest faces)."""
    established = [t for t in tracks if rule.thin_reason(t) is None]
    if established or not tracks:
        return established
    return [max(tracks, key=_evidence_rank)]
