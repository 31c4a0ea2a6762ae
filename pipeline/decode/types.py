"""Plain data passed between the decode stage and its callers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:  # probing a file (e.g. at enqueue time) must not import torch
    import torch

BackendName = Literal["dali", "pyav"]
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
