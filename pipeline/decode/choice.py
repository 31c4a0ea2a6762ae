"""Which decoder reads a given video: a pure decision from codec, device and what is installed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pipeline.decode.dali import supported_codecs
from pipeline.decode.types import BackendName, BackendRequest, VideoDecodeError

# NVDEC is worth it for these; MJPEG on a GPU machine stays on PyAV (cheap intra-only decode).
DALI_GPU_AUTO_CODECS = frozenset({"h264", "hevc", "av1", "vp9", "vp8"})
# DALI's CPU decoder handles VP8, VP9 and MJPEG; MJPEG stays on PyAV by default: DALI's CPU MJPEG path
# crashed the process (SIGSEGV) on 6 of 300 damaged AVI files in benchmarks/fuzz.py, and intra-only
# MJPEG is cheap for FFmpeg. `decoder dali` still uses DALI for it.
DALI_CPU_AUTO_CODECS = frozenset({"vp8", "vp9"})


@dataclass(frozen=True)
class BackendPlan:
    backend: BackendName
    dali_device: Literal["cpu", "mixed"] | None
    reason: str


def choose_backend(requested: BackendRequest, *, codec: str, cuda: bool, dali_installed: bool) -> BackendPlan:
    """Pick the decoder.

    ``cuda``: frames are wanted on a CUDA device that is present. ``auto`` takes DALI with
    NVDEC on a GPU for H.264/HEVC/AV1/VP9/VP8, DALI's CPU decoder for VP8/VP9 without
    one, PyAV otherwise. An explicit ``dali`` that cannot work raises instead of switching.
    """
    dali_device: Literal["cpu", "mixed"] = "mixed" if cuda else "cpu"
    if requested == "pyav":
        return BackendPlan("pyav", None, "requested")
    if requested == "dali":
        if not dali_installed:
            raise VideoDecodeError("decoder 'dali' requested but NVIDIA DALI is not installed")
        if codec not in supported_codecs(dali_device):
            raise VideoDecodeError(
                f"decoder 'dali' ({dali_device}) cannot decode {codec}; "
                f"it supports {', '.join(sorted(supported_codecs(dali_device)))} (use decoder 'pyav')"
            )
        return BackendPlan("dali", dali_device, "requested")
    auto_codecs = DALI_GPU_AUTO_CODECS if cuda else DALI_CPU_AUTO_CODECS
    if codec not in auto_codecs:
        return BackendPlan("pyav", None, f"{codec} on {'GPU' if cuda else 'CPU'} is decoded by PyAV")
    if not dali_installed:
        return BackendPlan("pyav", None, "NVIDIA DALI is not installed")
    return BackendPlan("dali", dali_device, f"{codec} on {'GPU (NVDEC)' if cuda else 'CPU'}")
