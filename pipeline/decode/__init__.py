"""Decode stage: video file -> chunks of sampled, upright RGB frames with timestamps.

Two backends behind `open_video`: NVIDIA DALI (NVDEC on GPU, CPU decoder for VP8/VP9/MJPEG)
and PyAV (every codec FFmpeg knows). Memory stays bounded by the chunk size.
"""

from pipeline.decode.choice import BackendPlan, choose_backend
from pipeline.decode.dali import DaliDecodeError
from pipeline.decode.probe import probe_video
from pipeline.decode.rotation import to_upright
from pipeline.decode.sampling import FrameSelector, Sampling, select_frames
from pipeline.decode.stream import VideoStream, open_video
from pipeline.decode.types import BackendName, BackendRequest, FrameBatch, VideoDecodeError, VideoInfo

__all__ = [
    "BackendName",
    "BackendPlan",
    "BackendRequest",
    "DaliDecodeError",
    "FrameBatch",
    "FrameSelector",
    "Sampling",
    "VideoDecodeError",
    "VideoInfo",
    "VideoStream",
    "choose_backend",
    "open_video",
    "probe_video",
    "select_frames",
    "to_upright",
]
