"""What one scan accumulates while its chunks stream through the `Scanner`: scored faces, crops waiting
for a full batch, counts, stage times and warnings. Only one `FaceScore` (a few numbers) is kept per
face, so memory stays bounded for any video length."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from pipeline.aggregate import FaceScore
from pipeline.decode.types import DecodeStats
from pipeline.evidence import EvidenceCollector, FaceView
from pipeline.verdict import Counts, StageTimings


@dataclass
class FaceMeta:
    """Where a detected face is, while its crop waits to be scored."""

    track_id: int
    frame_index: int
    timestamp_s: float
    face_px: float = 0.0  # longer side of the face box, frame pixels
    view: FaceView | None = None  # frame context, only while collecting evidence


@dataclass
class ScanState:
    """What one scan accumulates: scored faces, pending crops, counts and stage times."""

    faces: list[FaceScore] = field(default_factory=list)
    pending_crops: list[torch.Tensor] = field(default_factory=list)
    pending_meta: list[FaceMeta] = field(default_factory=list)
    counts: Counts = field(default_factory=Counts)
    timings: StageTimings = field(default_factory=StageTimings)
    decoder: str = ""
    warnings: list[str] = field(default_factory=list)
    evidence: EvidenceCollector | None = None

    @property
    def pending(self) -> int:
        return len(self.pending_meta)

    def note_damage(self, stats: DecodeStats) -> None:
        """What the decoder got past (rejected packets, corrupt or missing frames, repeated timestamps,
        reduced size) goes into the verdict's counts and warnings."""
        self.counts.rejected_packets = stats.rejected_packets
        self.counts.corrupt_frames = stats.corrupt_frames
        self.counts.missing_frames = stats.missing_frames
        self.counts.repeated_timestamps = stats.repeated_timestamps
        self.warnings.extend(stats.warnings())
