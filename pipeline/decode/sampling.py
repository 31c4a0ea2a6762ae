"""Which decoded frames to keep (`ralf.core.options.Sampling`): every N-th, a target rate, or at most K
spread over the video.

The decision is made frame by frame from (index, timestamp) alone, so it streams with
constant memory and is identical for every backend.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ralf.core.options import Sampling

if TYPE_CHECKING:
    from pipeline.decode.types import VideoInfo

logger = logging.getLogger(__name__)

# Timestamps come from rational pts; this absorbs float rounding at slot boundaries.
_TIME_EPS = 1e-6


class FrameSelector:
    """Stateful keep/skip decision; feed frames in presentation order.

    ``max_frames`` divides the video's duration into K equal slots and keeps the first frame
    in each (time-based, so it is VFR-safe and needs no exact frame count). Without a
    duration it falls back to the frame count, and without either it keeps the first K
    frames with a warning.
    """

    def __init__(self, sampling: Sampling, *, duration_s: float | None = None, num_frames: int | None = None):
        self._sampling = sampling
        self._kept = 0
        self._next_slot = 0.0  # next time (s) or index a sampled frame may start at
        self._slot_len: float | None = None
        self._by_index = False
        if sampling.target_fps is not None:
            self._slot_len = 1.0 / sampling.target_fps
        elif sampling.max_frames is not None:
            if duration_s is not None and duration_s > 0:
                self._slot_len = duration_s / sampling.max_frames
            elif num_frames is not None and num_frames > 0:
                self._slot_len, self._by_index = num_frames / sampling.max_frames, True
            else:
                logger.warning(
                    "video length unknown: max_frames=%d keeps the first %d frames",
                    sampling.max_frames,
                    sampling.max_frames,
                )

    def keep(self, index: int, timestamp_s: float) -> bool:
        sampling = self._sampling
        if sampling.every_n is not None:
            return index % sampling.every_n == 0
        if sampling.max_frames is not None and self._kept >= sampling.max_frames:
            return False
        if self._slot_len is None:
            # Every frame (no mode), or max_frames without a known length.
            self._kept += 1
            return True
        position = float(index) if self._by_index else timestamp_s
        if position + _TIME_EPS < self._next_slot:
            return False
        self._next_slot = (math.floor((position + _TIME_EPS) / self._slot_len) + 1) * self._slot_len
        self._kept += 1
        return True


def select_frames(
    sampling: Sampling,
    timestamps_s: Iterable[float],
    *,
    duration_s: float | None = None,
    num_frames: int | None = None,
) -> list[int]:
    """Indices kept out of frames with these presentation times (for planning and tests)."""
    selector = FrameSelector(sampling, duration_s=duration_s, num_frames=num_frames)
    return [i for i, t in enumerate(timestamps_s) if selector.keep(i, t)]


def expected_samples(info: VideoInfo, sampling: Sampling) -> int:
    """How many frames `sampling` keeps from a video like `info` (an estimate; 0 when unknown)."""
    frames = info.num_frames
    if frames is None and info.duration_s is not None:
        frames = round(info.duration_s * info.fps)
    if not frames:
        return 0
    if sampling.every_n is not None:
        return math.ceil(frames / sampling.every_n)
    if sampling.target_fps is not None:
        duration = info.duration_s if info.duration_s is not None else frames / info.fps
        return min(frames, max(1, math.ceil(duration * sampling.target_fps)))
    if sampling.max_frames is not None:
        return min(frames, sampling.max_frames)
    return frames
