"""CPU decoding with PyAV (FFmpeg): every codec FFmpeg knows, threaded, VFR-correct timestamps.

Damage is decoded past where FFmpeg can: a packet the decoder rejects is skipped and counted, frames
flagged corrupt are counted, and frames whose timestamp does not advance get one estimated from the
frame rate (all in the source's `DecodeStats`). Too much damage is an error: more than
`MAX_REJECTED_FRACTION` of the packets rejected, or no frame at all.

Frames over `REDUCE_ABOVE_PIXELS` (4K) are decoded with slice threads only (frame threading keeps a
frame per thread in flight) and converted to RGB scaled down to 4K; frames over the scan's
`max_frame_pixels` anywhere in the stream (a mid-stream size change) end the decode with an error.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import av
import torch

from pipeline.decode.probe import (
    check_complete,
    check_frame_size,
    expected_completeness,
    first_video_stream,
    frame_rate,
    open_container,
    stream_start_pts,
)
from pipeline.decode.rotation import to_upright
from pipeline.decode.source import SourceSpec
from pipeline.decode.types import (
    REDUCE_ABOVE_PIXELS,
    DecodeStats,
    FrameBatch,
    VideoDecodeError,
    next_timestamp,
    reduced_size,
)

MAX_REJECTED_FRACTION = 0.1
# What decoders return for a bad packet (the stream can go on); anything else ends the decode.
_PACKET_ERRORS = (
    av.error.InvalidDataError,
    av.error.UndefinedError,
    av.error.BugError,
    av.error.ArgumentError,
    av.error.PatchWelcomeError,
    av.error.ExternalError,
)


class PyAVFrameSource:
    """Decodes frames in order and converts only the sampled ones to RGB tensors."""

    name = "pyav"

    def __init__(self, spec: SourceSpec):
        self._spec = spec

    def batches(self) -> Iterator[FrameBatch]:
        spec, info, stats = self._spec, self._spec.info, self._spec.stats
        # Stored (coded) size of the first frame; every frame is delivered at this size (or reduced).
        coded_w, coded_h = (info.height, info.width) if info.rotation in (90, 270) else (info.width, info.height)
        out_w, out_h = reduced_size(coded_w, coded_h)
        if (out_w, out_h) != (coded_w, coded_h):
            stats.reduced_to = (out_h, out_w) if info.rotation in (90, 270) else (out_w, out_h)
        selector = spec.selector()
        assembler = spec.assembler()
        with open_container(spec.path) as container:
            stream = first_video_stream(container, spec.path)
            # Frame + slice threads, count chosen by FFmpeg; large frames: slice threads only.
            stream.thread_type = "SLICE" if coded_w * coded_h > REDUCE_ABOVE_PIXELS else "AUTO"
            expected = expected_completeness(container, stream)
            frame_s = 1.0 / float(frame_rate(stream))
            time_base = stream.time_base
            origin: int | None = None
            index, timestamp = -1, -frame_s
            previous: float | None = None
            for frame in _decode(container, stream, spec.path, stats):
                index += 1
                if frame.width * frame.height > coded_w * coded_h:
                    check_frame_size(frame.width, frame.height, spec.max_frame_pixels, spec.path.name)
                stats.corrupt_frames += int(frame.is_corrupt)
                if frame.pts is None:
                    timestamp += frame_s  # no timing on this frame: assume the nominal rate
                else:
                    if origin is None:
                        origin = stream_start_pts(stream, frame.pts)
                    timestamp = float((frame.pts - origin) * time_base)
                timestamp = next_timestamp(previous, timestamp, frame_s, stats)
                previous = timestamp
                if not selector.keep(index, timestamp) or index < spec.start_index:
                    continue
                if frame.width == out_w and frame.height == out_h:
                    rgb = frame.to_ndarray(format="rgb24")
                else:  # larger than 4K, or the resolution changed mid-stream: scale so chunks stack
                    rgb = frame.to_ndarray(format="rgb24", width=out_w, height=out_h)
                upright = to_upright(torch.from_numpy(rgb).unsqueeze(0), info.rotation)
                yield from assembler.add(upright, [index], [timestamp])
            check_complete(expected, frames_decoded=index + 1, end_s=timestamp + frame_s, name=spec.path.name, stats=stats)
        yield from assembler.flush()


def _decode(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, path: Path, stats: DecodeStats
) -> Iterator[av.VideoFrame]:
    """Frames in presentation order; packets the decoder rejects are skipped and counted."""
    decoded = packets = 0
    try:
        for packet in container.demux(stream):
            if packet.size:
                packets += 1
            try:
                frames = packet.decode()
            except _PACKET_ERRORS as exc:
                stats.rejected_packets += 1
                if stats.rejected_packets > max(2, MAX_REJECTED_FRACTION * max(packets, stream.frames or 0)):
                    raise VideoDecodeError(
                        f"corrupt video data in {path.name}: {stats.rejected_packets} of {packets} packets could not "
                        f"be decoded ({exc.strerror or exc})"
                    ) from None
                continue
            for frame in frames:
                decoded += 1
                yield frame
    except av.error.FFmpegError as exc:
        raise VideoDecodeError(
            f"corrupt video data in {path.name} after {decoded} frames: {exc.strerror or exc}"
        ) from None
