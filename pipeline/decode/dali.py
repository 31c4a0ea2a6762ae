"""NVIDIA DALI decoding: NVDEC on a GPU (``device="mixed"``) or DALI's CPU decoder.

Frames are streamed with ``fn.experimental.inputs.video``: the encoded file is handed to
DALI as a read-only memory map and decoded ``sequence_length`` frames per pipeline run,
so decoded memory is bounded by one sequence whatever the video's length. On a GPU the
frames stay in device memory: DALI's buffer is copied device-to-device into a torch tensor.

DALI gives no timestamps, so presentation times come from a packet-only pass with PyAV
(sorted pts, VFR-correct); frame k of DALI's output is the k-th presentation time.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
import torch

from pipeline.decode.probe import check_complete, presentation_times
from pipeline.decode.rotation import to_upright
from pipeline.decode.source import SourceSpec
from pipeline.decode.types import FrameBatch, VideoDecodeError

DaliDevice = Literal["cpu", "mixed"]

# Codecs each DALI video backend decodes (DALI 2.x operator documentation).
DALI_CPU_CODECS = frozenset({"vp8", "vp9", "mjpeg"})
DALI_MIXED_CODECS = frozenset({"h264", "hevc", "av1", "vp8", "vp9", "mjpeg", "mpeg4"})

_INPUT_NAME = "encoded_video"


class DaliDecodeError(VideoDecodeError):
    """DALI could not set up or finish decoding; another backend may still read the file."""


def dali_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("nvidia.dali") is not None


def supported_codecs(dali_device: DaliDevice) -> frozenset[str]:
    return DALI_MIXED_CODECS if dali_device == "mixed" else DALI_CPU_CODECS


class DaliFrameSource:
    """Decodes every frame with DALI in sequences, keeps the sampled ones."""

    name = "dali"

    def __init__(self, spec: SourceSpec):
        self._dali_device: DaliDevice = "mixed" if spec.device.type == "cuda" else "cpu"
        if spec.info.codec not in supported_codecs(self._dali_device):
            raise DaliDecodeError(
                f"DALI {self._dali_device} backend cannot decode {spec.info.codec} "
                f"(supported: {', '.join(sorted(supported_codecs(self._dali_device)))})"
            )
        self._spec = spec
        self._timestamps, expected = presentation_times(spec.path, spec.stats)
        frame_s = 1.0 / spec.info.fps
        end_s = self._timestamps[-1] + frame_s if self._timestamps else 0.0
        # Packet-level check: a cut-off file is an input error, not a DALI limitation.
        check_complete(expected, frames_decoded=len(self._timestamps), end_s=end_s, name=spec.path.name, stats=spec.stats)
        self._pipe = _build_pipeline(self._dali_device, spec.device, sequence_length=spec.chunk_size)

    def batches(self) -> Iterator[FrameBatch]:
        spec = self._spec
        timestamps = self._timestamps
        total = len(timestamps)
        selector = spec.selector()
        assembler = spec.assembler()
        encoded = np.memmap(spec.path, dtype=np.uint8, mode="r")
        try:
            self._pipe.feed_input(_INPUT_NAME, [encoded])
            decoded = 0
            while decoded < total:
                sequence = self._run_once(decoded)
                count = sequence.shape()[0]
                if count == 0:
                    break
                local = [
                    j
                    for j in range(min(count, total - decoded))
                    if selector.keep(decoded + j, timestamps[decoded + j]) and decoded + j >= spec.start_index
                ]
                if local:
                    frames = to_upright(self._to_torch(sequence, local), spec.info.rotation)
                    indices = [decoded + j for j in local]
                    yield from assembler.add(frames, indices, [timestamps[i] for i in indices])
                decoded += count
            if decoded < total:
                raise DaliDecodeError(f"DALI stopped after {decoded} of {total} frames of {spec.path.name}")
        finally:
            self.close()
            del encoded
        yield from assembler.flush()

    def close(self) -> None:
        # Dropping the pipeline frees its decoder, threads and buffers.
        self._pipe = None

    def _run_once(self, decoded: int) -> Any:
        if self._pipe is None:
            raise DaliDecodeError("DALI pipeline already closed")
        try:
            (output,) = self._pipe.run()
        except RuntimeError as exc:
            raise DaliDecodeError(
                f"DALI failed on {self._spec.path.name} after {decoded} frames: {dali_error_reason(exc)}"
            ) from None
        return output[0]

    def _to_torch(self, sequence: Any, keep: list[int]) -> torch.Tensor:
        """Copy the kept frames of one DALI sequence (F, H, W, 3) into a torch tensor."""
        if self._dali_device == "cpu":
            return torch.from_numpy(np.asarray(sequence)[keep])  # fancy indexing copies
        from nvidia.dali.plugin.pytorch import feed_ndarray

        device = self._spec.device
        full = torch.empty(tuple(sequence.shape()), dtype=torch.uint8, device=device)
        feed_ndarray(sequence, full, cuda_stream=torch.cuda.current_stream(device))
        return full if len(keep) == full.shape[0] else full[torch.tensor(keep, device=device)]


def _build_pipeline(dali_device: DaliDevice, device: torch.device, *, sequence_length: int) -> Any:
    try:
        from nvidia.dali import fn, pipeline_def
    except ImportError as exc:
        raise DaliDecodeError(f"NVIDIA DALI is not installed ({exc})") from None

    device_id = None
    if dali_device == "mixed":
        device_id = device.index if device.index is not None else torch.cuda.current_device()

    # One video per pipeline, no prefetch: running ahead of the end of the video is an error.
    @pipeline_def(
        batch_size=1,
        num_threads=max(1, min(4, os.cpu_count() or 1)),
        device_id=device_id,
        prefetch_queue_depth=1,
        exec_async=False,
        exec_pipelined=False,
    )
    def video_pipeline() -> Any:
        return fn.experimental.inputs.video(
            name=_INPUT_NAME,
            sequence_length=sequence_length,
            device=dali_device,
            no_copy=True,  # DALI reads the memory-mapped file in place
            affine=False,  # NVDEC threads float: pinning would pile every worker onto the same cores
            last_sequence_policy="partial",
        )

    try:
        pipe = video_pipeline()
        pipe.build()
    except RuntimeError as exc:
        raise DaliDecodeError(f"DALI pipeline could not start: {dali_error_reason(exc)}") from None
    return pipe


def dali_error_reason(exc: BaseException) -> str:
    """The operator's own message from a DALI pipeline error, without tracebacks and C++ context."""
    text = str(exc)
    match = re.search(r"encountered:\s*(.+?)(?:\nC\+\+ context|\nCurrent pipeline object|\Z)", text, re.S)
    reason = match.group(1) if match else text
    lines = [line.strip() for line in reason.splitlines() if line.strip()]
    return " ".join(lines)[:300] or type(exc).__name__
