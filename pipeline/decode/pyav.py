"""CPU decoding with PyAV (FFmpeg): every codec FFmpeg knows, threaded, VFR-correct timestamps."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import av
import torch

from pipeline.decode.probe import (
    check_complete,
    expected_completeness,
    first_video_stream,
    frame_rate,
    open_container,
    stream_start_pts,
)
from pipeline.decode.rotation import to_upright
from pipeline.decode.source import SourceSpec
from pipeline.decode.types import FrameBatch, VideoDecodeError


class PyAVFrameSource:
    """Decodes frames in order and converts only the sampled ones to RGB tensors."""

    name = "pyav"

    def __init__(self, spec: SourceSpec):
        self._spec = spec

    def batches(self) -> Iterator[FrameBatch]:
        spec, info = self._spec, self._spec.info
        # Stored (coded) size of the first frame; every frame is delivered at this size.
        coded_w, coded_h = (info.height, info.width) if info.rotation in (90, 270) else (info.width, info.height)
        selector = spec.selector()
        assembler = spec.assembler()
        with open_container(spec.path) as container:
            stream = first_video_stream(container, spec.path)
            stream.thread_type = "AUTO"  # frame + slice threads, count chosen by FFmpeg
            expected = expected_completeness(container, stream)
            frame_s = 1.0 / float(frame_rate(stream))
            time_base = stream.time_base
            origin: int | None = None
            index, timestamp = -1, -frame_s
            for frame in _decode(container, stream, spec.path):
                index += 1
                if frame.pts is None:
                    timestamp += frame_s  # no timing on this frame: assume the nominal rate
                else:
                    if origin is None:
                        origin = stream_start_pts(stream, frame.pts)
                    timestamp = float((frame.pts - origin) * time_base)
                if not selector.keep(index, timestamp) or index < spec.start_index:
                    continue
                if frame.width == coded_w and frame.height == coded_h:
                    rgb = frame.to_ndarray(format="rgb24")
                else:  # resolution changed mid-stream: scale back so chunks stack
                    rgb = frame.to_ndarray(format="rgb24", width=coded_w, height=coded_h)
                upright = to_upright(torch.from_numpy(rgb).unsqueeze(0), info.rotation)
                yield from assembler.add(upright, [index], [timestamp])
            check_complete(expected, frames_decoded=index + 1, end_s=timestamp + frame_s, name=spec.path.name)
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
