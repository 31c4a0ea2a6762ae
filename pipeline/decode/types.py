"""Plain data passed between the decode stage and its callers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:  # probing a file (e.g. at enqueue time) must not import torch
    import torch

BackendName = Literal["dali", "pyav", "pillow"]
BackendRequest = Literal["auto", "dali", "pyav"]


class VideoDecodeError(ValueError):
    """The video cannot be read; the message says why in words a user can act on."""


class VideoInfo(BaseModel):
    """What a cheap probe learns about a file's first video stream."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    width: int = Field(..., gt=0, description="Displayed width, after applying rotation")
    height: int = Field(..., gt=0, description="Displayed height, after applying rotation")
    fps: float = Field(..., gt=0, description="Average frame rate")
    duration_s: float | None = Field(None, description="Stream or container duration; None if unknown")
    num_frames: int | None = Field(None, description="Frame count; see num_frames_exact")
    num_frames_exact: bool = Field(False, description="True when the count comes from the container index")
    codec: str = Field(..., description="FFmpeg codec name, e.g. 'h264', 'vp9', 'mjpeg'")
    rotation: int = Field(0, description="Counter-clockwise display rotation in degrees: 0, 90, 180 or 270")


# Frames above this many pixels are decoded without frame threading (one frame in flight instead of
# one per thread) and handed on scaled down to it: 3840x2160, UHD 4K.
REDUCE_ABOVE_PIXELS = 3840 * 2160


@dataclass
class DecodeStats:
    """Damage a decode got past, for the verdict: filled in by the frame source while it runs.

    rejected_packets: packets the decoder refused (their frames are missing);
    corrupt_frames: frames the decoder delivered with concealed errors (FFmpeg's corrupt flag; H.264
      and HEVC set it, MJPEG/VP8/VP9 conceal without saying so);
    missing_frames: frames the container promises but that never came (within the tolerance that
      still counts as complete; beyond it the video is an error);
    repeated_timestamps: frames whose timestamp did not advance (their time was estimated from the
      frame rate, so sampling by time still spreads over them);
    reduced_to: (width, height) frames were scaled down to, when they were larger than REDUCE_ABOVE_PIXELS;
    skipped_frames: frames left undecoded because the sampling could not keep them (not damage; see
      pipeline.decode.skipping).
    """

    rejected_packets: int = 0
    corrupt_frames: int = 0
    missing_frames: int = 0
    repeated_timestamps: int = 0
    reduced_to: tuple[int, int] | None = None
    skipped_frames: int = 0

    def warnings(self) -> list[str]:
        notes = []
        if self.rejected_packets or self.corrupt_frames or self.missing_frames:
            parts = []
            if self.rejected_packets:
                parts.append(f"{self.rejected_packets} packets could not be decoded")
            if self.corrupt_frames:
                parts.append(f"{self.corrupt_frames} frames decoded with errors")
            if self.missing_frames:
                parts.append(f"{self.missing_frames} frames missing")
            notes.append("damaged video: " + ", ".join(parts) + "; the verdict covers what could be decoded")
        if self.repeated_timestamps:
            notes.append(
                f"{self.repeated_timestamps} frames repeated an earlier timestamp; "
                "their times were estimated from the frame rate"
            )
        if self.reduced_to is not None:
            notes.append(f"frames larger than 4K were scanned scaled down to {self.reduced_to[0]}x{self.reduced_to[1]}")
        return notes


def next_timestamp(previous: float | None, current: float, frame_s: float, stats: DecodeStats) -> float:
    """`current`, or previous + one frame when it does not advance (counted in `stats`)."""
    if previous is not None and current <= previous:
        stats.repeated_timestamps += 1
        return previous + frame_s
    return current


def reduced_size(width: int, height: int, limit: int = REDUCE_ABOVE_PIXELS) -> tuple[int, int]:
    """(width, height) scaled to at most `limit` pixels, aspect kept, even sides; unchanged below it."""
    if width * height <= limit:
        return width, height
    scale = (limit / (width * height)) ** 0.5
    return max(2, int(width * scale) // 2 * 2), max(2, int(height * scale) // 2 * 2)


@dataclass
class FrameBatch:
    """A chunk of sampled frames, in presentation order.

    frames: uint8 RGB (N, H, W, 3), upright, on the device that decoded them (or the requested one).
    indices: index of each frame among all frames of the video (0-based, presentation order).
    timestamps_s: presentation time of each frame in seconds from the stream start (VFR-correct).
    """

    frames: torch.Tensor
    indices: list[int]
    timestamps_s: list[float]

    def __len__(self) -> int:
        return len(self.indices)
