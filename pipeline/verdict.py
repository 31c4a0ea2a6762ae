"""What a scan returns: one pydantic `Verdict` per video, JSON all the way to the client."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

VerdictLabel = Literal["fake", "real", "no_face", "error"]


class TrackVerdict(BaseModel):
    """One person followed across sampled frames."""

    track_id: int
    score: float = Field(description="Aggregated P(fake) of this track's faces")
    num_faces: int
    first_time_s: float
    last_time_s: float
    suspicious_times_s: list[float] = Field(
        default_factory=list, description="Timestamps of the most suspicious frames, most suspicious first"
    )


class Counts(BaseModel):
    frames_decoded: int = 0
    faces: int = 0
    tracks: int = 0
    rejected_packets: int = Field(0, description="Packets the decoder could not decode (their frames are missing)")
    corrupt_frames: int = Field(0, description="Frames decoded with concealed errors (reported by H.264/HEVC)")
    missing_frames: int = Field(0, description="Frames the container announced that never came")
    repeated_timestamps: int = Field(0, description="Frames whose timestamp did not advance (time estimated)")


class StageTimings(BaseModel):
    """Wall-clock seconds spent per stage."""

    decode_s: float = 0.0
    detect_s: float = 0.0
    crop_s: float = 0.0
    infer_s: float = 0.0
    aggregate_s: float = 0.0
    total_s: float = 0.0


class Verdict(BaseModel):
    path: str
    label: VerdictLabel
    score: float | None = Field(None, description="P(fake) of the most suspicious track; None without faces")
    threshold: float
    threshold_source: str = Field(description="'uncalibrated default' or how the calibration was made")
    model_version: str
    engine: str = ""
    decoder: str = Field("", description="Decode backend that read the video ('dali' or 'pyav'); empty if none did")
    detector: str = ""
    weights_random: bool = False
    tracks: list[TrackVerdict] = Field(default_factory=list)
    counts: Counts = Field(default_factory=Counts)
    timings: StageTimings = Field(default_factory=StageTimings)
    error: str | None = Field(
        None,
        description="Why the video was not scanned. Input problems read plainly ('file not found: ...'); "
        "'internal: ...' marks a failure of the scanner itself (a bug or exhausted resources), not of the input",
    )
    warnings: list[str] = Field(default_factory=list)


def verdict_json_schema() -> dict[str, Any]:
    return Verdict.model_json_schema()
