"""What a scan returns: one pydantic `Verdict` per video, JSON all the way to the client.

Fields added later have defaults, so verdicts stored by older versions still load."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from ralf.core.files import printable_text

VerdictLabel = Literal["fake", "real", "no_face", "error"]


class FramePoint(BaseModel):
    """One face's P(fake) at its time in the video (a point of a track's score-over-time plot)."""

    time_s: float
    score: float


class TrackVerdict(BaseModel):
    """One person followed across sampled frames."""

    track_id: int
    score: float = Field(description="Aggregated P(fake) of this track's faces")
    num_faces: int
    first_time_s: float
    last_time_s: float
    face_px: float | None = Field(None, description="Median longer side of the track's face boxes, frame pixels")
    suspicious_times_s: list[float] = Field(
        default_factory=list, description="Timestamps of the most suspicious frames, most suspicious first"
    )
    decides: bool | None = Field(
        None,
        description="Whether this track may set the video score: tracks with too little evidence (too few faces "
        "over too short a time, or too small faces; pipeline/track_evidence.py) are reported but do not decide, "
        "unless no track has enough; None in verdicts stored before this was recorded",
    )
    thin_evidence: str | None = Field(
        None, description="Why this track has too little evidence to decide the video on its own ('2 faces over "
        "0.5 s', 'faces 30 px, under 40 px'); None when it has enough"
    )
    frame_scores: list[FramePoint] = Field(
        default_factory=list,
        description="P(fake) of the track's faces over time, in time order; long tracks are thinned to at most "
        "MAX_FRAME_POINTS points, keeping the most suspicious face of each stretch",
    )


MAX_FRAME_POINTS = 600


class EvidenceFrame(BaseModel):
    """Images of one of the most suspicious faces of a track, written by the evidence pass.

    File names are relative to `Verdict.evidence_dir`."""

    track_id: int
    rank: int = Field(description="1 = the most suspicious face of its track, 2 = the next, ...")
    time_s: float
    frame_index: int
    score: float = Field(description="P(fake) of this face, as scored in the scan")
    box: list[float] = Field(description="Face box in the frame's pixels, x1 y1 x2 y2")
    crop: str = Field(description="The face crop the model judged (PNG)")
    residual: str = Field(description="Heat map of |x - x~|, the face minus its authentic-like reconstruction (PNG)")
    attention: str | None = Field(
        None, description="The destruction-guided spatial attention over the crop (PNG); None without guidance"
    )
    frame: str = Field(description="The frame, scaled down, with the face box drawn (PNG)")


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
    evidence_s: float = Field(0.0, description="The evidence pass (only when evidence was asked for)")
    total_s: float = 0.0


class Verdict(BaseModel):
    path: str
    label: VerdictLabel
    score: float | None = Field(None, description="P(fake) of the most suspicious track; None without faces")
    threshold: float
    threshold_source: str = Field(description="'uncalibrated default' or how the calibration was made")
    model_version: str
    engine: str = ""
    engine_choice: str = Field(
        "", description="Why this engine and precision: the rule that chose it and what was passed over"
    )
    decoder: str = Field("", description="Decode backend that read the video ('dali' or 'pyav'); empty if none did")
    detector: str = ""
    detector_precision: str = Field("fp32", description="Precision of the face detector's network ('fp32' or 'bf16')")
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
    explanation: str = Field(
        "", description="In words, why the video was or was not flagged (which track decided, which were too thin)"
    )
    evidence_dir: str | None = Field(None, description="Where the evidence images were written; None: not asked for")
    evidence: list[EvidenceFrame] = Field(
        default_factory=list, description="Evidence images of the most suspicious faces of each track"
    )

    @field_validator("path", "error", "evidence_dir", "warnings")
    @classmethod
    def _printable(cls, value: str | list[str] | None) -> str | list[str] | None:
        """File names that are not UTF-8 reach these fields; every output mode must carry them."""
        if isinstance(value, list):
            return [printable_text(item) for item in value]
        return None if value is None else printable_text(value)


def verdict_json_schema() -> dict[str, Any]:
    return Verdict.model_json_schema()
