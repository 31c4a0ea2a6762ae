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

import logging
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
from pipeline.decode.skipping import DecodePlan, PlanMismatch, plan_decode
from pipeline.decode.source import SourceSpec
from pipeline.decode.types import (
    REDUCE_ABOVE_PIXELS,
    DecodeStats,
    FrameBatch,
    VideoDecodeError,
    next_timestamp,
    reduced_size,
)

logger = logging.getLogger(__name__)

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
    """Decodes frames in order and converts only the sampled ones to RGB tensors.

    With `SourceSpec.skip_unneeded`, frames the sampling cannot keep are not decoded where that
    provably leaves the sampled frames unchanged (`pipeline.decode.skipping`).
    """

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
        assembler = spec.assembler()
        emitted = -1
        for index, timestamp, frame in self._kept_frames(coded_w * coded_h):
            if index <= emitted or index < spec.start_index:
                continue
            emitted = index
            if frame.width == out_w and frame.height == out_h:
                rgb = frame.to_ndarray(format="rgb24")
            else:  # larger than 4K, or the resolution changed mid-stream: scale so chunks stack
                rgb = frame.to_ndarray(format="rgb24", width=out_w, height=out_h)
            upright = to_upright(torch.from_numpy(rgb).unsqueeze(0), info.rotation)
            yield from assembler.add(upright, [index], [timestamp])
        yield from assembler.flush()

    def _kept_frames(self, coded_pixels: int) -> Iterator[tuple[int, float, av.VideoFrame]]:
        """(index, timestamp, frame) of every sampled frame, in order: by plan when one can be made
        (`skipping.plan_decode`), else (or when the plan fails) by decoding every frame. After a
        failed plan the frames come again from the start; the caller drops those already emitted."""
        spec = self._spec
        if spec.skip_unneeded:
            try:
                yield from self._planned_pass(coded_pixels)
                return
            except PlanMismatch as reason:
                logger.info("decoding every frame of %s: %s", spec.path.name, reason)
                _reset(spec.stats)
            except _NoPlan:
                pass
        yield from self._full_pass(coded_pixels)

    def _full_pass(self, coded_pixels: int) -> Iterator[tuple[int, float, av.VideoFrame]]:
        spec, stats = self._spec, self._spec.stats
        selector = spec.selector()
        with open_container(spec.path) as container:
            stream = first_video_stream(container, spec.path)
            _threading(stream, coded_pixels)
            expected = expected_completeness(container, stream)
            frame_s = 1.0 / float(frame_rate(stream))
            time_base = stream.time_base
            origin: int | None = None
            index, timestamp = -1, -frame_s
            previous: float | None = None
            for frame in _decode(container, stream, spec.path, stats):
                index += 1
                if frame.width * frame.height > coded_pixels:
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
                if selector.keep(index, timestamp):
                    yield index, timestamp, frame
            check_complete(expected, frames_decoded=index + 1, end_s=timestamp + frame_s, name=spec.path.name, stats=stats)

    def _planned_pass(self, coded_pixels: int) -> Iterator[tuple[int, float, av.VideoFrame]]:
        spec, stats = self._spec, self._spec.stats
        with open_container(spec.path) as container:
            stream = first_video_stream(container, spec.path)
            plan = plan_decode(container, stream, spec.selector(), stream.start_time, stream.time_base)
        if plan is None:
            raise _NoPlan
        stats.skipped_frames = 0
        with open_container(spec.path) as container:
            stream = first_video_stream(container, spec.path)
            _threading(stream, coded_pixels)
            expected = expected_completeness(container, stream)
            frame_s = 1.0 / float(frame_rate(stream))
            last, decoded, outstanding = -1, 0, set(plan.sampled)
            for frame in _decode(container, stream, spec.path, stats, plan):
                decoded += 1
                if frame.width * frame.height > coded_pixels:
                    check_frame_size(frame.width, frame.height, spec.max_frame_pixels, spec.path.name)
                if frame.is_corrupt or stats.rejected_packets:
                    raise PlanMismatch("damage seen while skipping frames")
                if frame.pts is None or frame.pts not in plan.position:
                    raise PlanMismatch(f"a frame with pts {frame.pts} the packets did not announce")
                index, timestamp = plan.position[frame.pts]
                if index <= last:
                    raise PlanMismatch("frames out of presentation order")
                last = index
                if frame.pts in plan.sampled:
                    outstanding.discard(frame.pts)
                    yield index, timestamp, frame
            if stats.rejected_packets:
                raise PlanMismatch("damage seen while skipping frames")
            if outstanding:
                raise PlanMismatch(f"{len(outstanding)} sampled frames never came")
            stats.skipped_frames = plan.frames - decoded
            end_s = max(t for _, t in plan.position.values()) + frame_s
            check_complete(expected, frames_decoded=plan.frames, end_s=end_s, name=spec.path.name, stats=stats)


class _NoPlan(Exception):
    """Skipping could change what is sampled here (see `skipping.plan_decode`)."""


def _threading(stream: av.video.stream.VideoStream, coded_pixels: int) -> None:
    # Frame + slice threads, count chosen by FFmpeg; large frames: slice threads only.
    stream.thread_type = "SLICE" if coded_pixels > REDUCE_ABOVE_PIXELS else "AUTO"


def _reset(stats: DecodeStats) -> None:
    """Forget what a pass counted before decoding the video again (`reduced_to` stays)."""
    stats.rejected_packets = stats.corrupt_frames = stats.missing_frames = stats.repeated_timestamps = 0
    stats.skipped_frames = 0


def _decode(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    path: Path,
    stats: DecodeStats,
    plan: DecodePlan | None = None,
) -> Iterator[av.VideoFrame]:
    """Frames in presentation order; packets the decoder rejects are skipped and counted.

    With a `plan`, packets it drops are not sent (the decoder drained and flushed before a restart
    at the next keyframe) and frames it does not sample are sent with skip_frame=NONREF.
    """
    decoded = packets = 0
    context = stream.codec_context
    skipping = False
    try:
        for packet in container.demux(stream):
            if packet.size:
                packets += 1
                if plan is not None:
                    if packet.pts in plan.dropped:
                        continue
                    if packet.pts in plan.restarts and not plan.intra_only:
                        # As after a seek: out with what the decoder holds, then start afresh.
                        for frame in context.decode(None):
                            decoded += 1
                            yield frame
                        context.flush_buffers()
                    wanted = packet.pts in plan.sampled
                    if wanted == skipping:
                        context.skip_frame = "DEFAULT" if wanted else "NONREF"
                        skipping = not wanted
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
