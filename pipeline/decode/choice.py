"""Which decoder reads a given video: a pure decision from codec, device and what is installed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pipeline.decode.dali import supported_codecs
from pipeline.decode.types import BackendName, BackendRequest, VideoDecodeError

# NVDEC is worth it for these; MJPEG on a GPU machine stays on PyAV (cheap intra-only decode).
DALI_GPU_AUTO_CODECS = frozenset({"h264", "hevc", "av1", "vp9", "vp8"})
# Without a GPU, `auto` always takes PyAV. DALI's CPU decoder (VP8, VP9, MJPEG) is slower on CPUs:
# measured on the 2-core development machine, PyAV decodes VP9 at 880 vs 588 frames/s, VP8 1302 vs
# 435 and MJPEG 1406 vs 454, and DALI's CPU MJPEG path crashed the process (SIGSEGV) on 6 of 300
# damaged AVI files in benchmarks/fuzz.py. `decoder dali` still uses it.


@dataclass(frozen=True)
class BackendPlan:
    backend: BackendName
    dali_device: Literal["cpu", "mixed"] | None
    reason: str


def choose_backend(requested: BackendRequest, *, codec: str, cuda: bool, dali_installed: bool) -> BackendPlan:
    """Pick the decoder.

    ``cuda``: frames are wanted on a CUDA device that is present. ``auto`` takes DALI with
    NVDEC on a GPU for H.264/HEVC/AV1/VP9/VP8 and PyAV otherwise (always on CPUs, where it
    decodes faster than DALI's CPU backend). An explicit ``dali`` that cannot work raises
    instead of switching.
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
    if not cuda:
        return BackendPlan("pyav", None, "PyAV decodes faster than DALI's CPU backend")
    if codec not in DALI_GPU_AUTO_CODECS:
        return BackendPlan("pyav", None, f"{codec} on GPU is decoded by PyAV")
    if not dali_installed:
        return BackendPlan("pyav", None, "NVIDIA DALI is not installed")
    return BackendPlan("dali", dali_device, f"{codec} on GPU (NVDEC)")
