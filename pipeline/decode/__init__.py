"""Decode stage: video file -> chunks of sampled, upright RGB frames with timestamps.

Two backends behind `open_video`: NVIDIA DALI (NVDEC on GPU, CPU decoder for VP8/VP9/MJPEG
on request) and PyAV (every codec FFmpeg knows; `auto`'s choice on CPUs). Memory stays bounded by the chunk size.

The names below are imported on first use: `pipeline.decode.probe` (what `ralf-cli enqueue`
needs to read a video's duration) then loads without torch and the decoders.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.decode.choice import BackendPlan, choose_backend
    from pipeline.decode.dali import DaliDecodeError
    from pipeline.decode.probe import probe_video
    from pipeline.decode.rotation import to_upright
    from pipeline.decode.sampling import FrameSelector, select_frames
    from pipeline.decode.stream import VideoStream, open_video
    from pipeline.decode.types import BackendName, BackendRequest, FrameBatch, VideoDecodeError, VideoInfo

_SOURCES = {
    "BackendName": "types",
    "BackendPlan": "choice",
    "BackendRequest": "types",
    "DaliDecodeError": "dali",
    "FrameBatch": "types",
    "FrameSelector": "sampling",
    "VideoDecodeError": "types",
    "VideoInfo": "types",
    "VideoStream": "stream",
    "choose_backend": "choice",
    "open_video": "stream",
    "probe_video": "probe",
    "select_frames": "sampling",
    "to_upright": "rotation",
}

__all__ = sorted(_SOURCES)


def __getattr__(name: str) -> Any:
    if name not in _SOURCES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{_SOURCES[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_SOURCES])
