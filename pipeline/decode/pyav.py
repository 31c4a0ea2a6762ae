"""CPU decoding with PyAV (FFmpeg): every codec FFmpeg knows, threaded, VFR-correct timestamps."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import av
import torch

from pipeline.decode.chunks import ChunkAssembler
from pipeline.decode.probe import (
    check_complete,
    expected_completeness,
    first_video_stream,
    frame_rate,
    open_container,
    stream_start_pts,
)
from pipeline.decode.rotation import to_upright
from pipeline.decode.sampling import FrameSelector, Sampling
from pipeline.decode.types import FrameBatch, VideoDecodeError, VideoInfo


class PyAVFrameSource:
    """Decodes frames in order and converts only the sampled ones to RGB tensors.

    ``start_index`` skips (decodes but does not emit) earlier frames: used to resume after
    another backend failed part-way. Selection still sees every frame, so the sampled set
    is the same as a run from the start.
    """

    name = "pyav"

    def __init__(
        self,
        path: Path,
        *,
        info: VideoInfo,
        sampling: Sampling,
        device: torch.device,
        chunk_size: int,
        start_index: int = 0,
    ):
        self._path = path
        self._info = info
        self._sampling = sampling
        self._device = device
        self._chunk_size = chunk_size
        self._start_index = start_index

    def batches(self) -> Iterator[FrameBatch]:
        info = self._info
        # Stored (coded) size of the first frame; every frame is delivered at this size.
        coded_w, coded_h = (info.height, info.width) if info.rotation in (90, 270) else (info.width, info.height)
        selector = FrameSelector(self._sampling, duration_s=info.duration_s, num_frames=info.num_frames)
        assembler = ChunkAssembler(self._chunk_size, self._device)
        with open_container(self._path) as container:
            stream = first_video_stream(container, self._path)
            stream.thread_type = "AUTO"  # frame + slice threads, count chosen by FFmpeg
            expected = expected_completeness(container, stream)
            frame_s = 1.0 / float(frame_rate(stream))
            time_base = stream.time_base
            origin: int | None = None
            index, timestamp = -1, -frame_s
            for frame in _decode(container, stream, self._path):
                index += 1
                if frame.pts is None:
                    timestamp += frame_s  # no timing on this frame: assume the nominal rate
                else:
                    if origin is None:
                        origin = stream_start_pts(stream, frame.pts)
                    timestamp = float((frame.pts - origin) * time_base)
                if not selector.keep(index, timestamp) or index < self._start_index:
                    continue
                if frame.width == coded_w and frame.height == coded_h:
                    rgb = frame.to_ndarray(format="rgb24")
                else:  # resolution changed mid-stream: scale back so chunks stack
                    rgb = frame.to_ndarray(format="rgb24", width=coded_w, height=coded_h)
                upright = to_upright(torch.from_numpy(rgb).unsqueeze(0), info.rotation)
                yield from assembler.add(upright, [index], [timestamp])
            check_complete(expected, frames_decoded=index + 1, end_s=timestamp + frame_s, name=self._path.name)
        yield from assembler.flush()


def _decode(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, path: Path
) -> Iterator[av.VideoFrame]:
    decoded = 0
    try:
        for frame in container.decode(stream):
            decoded += 1
            yield frame
    except av.error.FFmpegError as exc:
        raise VideoDecodeError(
            f"corrupt video data in {path.name} after {decoded} frames: {exc.strerror or exc}"
        ) from None
