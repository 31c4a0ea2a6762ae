"""Cheap checks and stream facts with PyAV, shared by both decode backends.

Every failure is turned into a :class:`VideoDecodeError` whose message says what is wrong
with the file (missing, empty, not a video, no video stream, truncated, ...).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import av.container
import av.video.stream

from pipeline.decode.types import DecodeStats, VideoDecodeError, VideoInfo, next_timestamp

# FFmpeg demuxers that read one still image (or a pipe of them), not a video.
_IMAGE_DEMUXERS = ("image2",)
_IMAGE_PIPE_SUFFIX = "_pipe"


def check_file(path: str | Path) -> Path:
    """The path as a Path if it names a non-empty regular file; else a clear error."""
    path = Path(path)
    if not path.exists():
        raise VideoDecodeError(f"file not found: {path}")
    if not path.is_file():
        raise VideoDecodeError(f"not a regular file: {path}")
    if path.stat().st_size == 0:
        raise VideoDecodeError(f"empty file (0 bytes): {path}")
    return path


def open_container(path: Path) -> av.container.InputContainer:
    """Open the local file for reading. Metadata (titles, handler names, ...) is text of any encoding in the wild;
    PyAV decodes it strictly as UTF-8 while opening, so a Latin-1 title would make a valid video
    unreadable: undecodable bytes become U+FFFD instead (nothing here reads the metadata)."""
    try:
        # Absolute: FFmpeg reads a name such as `concat:a.mp4` or `http:host` as a protocol, never one
        # that starts with '/' (no list of protocols to keep up to date).
        return av.open(str(Path(path).absolute()), mode="r", metadata_errors="replace")
    except av.error.InvalidDataError:
        raise VideoDecodeError(
            f"not a readable video file (unrecognised format, or truncated/corrupt container): {path.name}"
        ) from None
    except av.error.FFmpegError as exc:
        raise VideoDecodeError(f"cannot open {path.name}: {exc.strerror or exc}") from None


def first_video_stream(container: av.container.InputContainer, path: Path) -> av.video.stream.VideoStream:
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        raise VideoDecodeError(f"no video stream in {path.name} (streams: {', '.join(kinds)})")
    stream = container.streams.video[0]
    if stream.codec_context is None:
        raise VideoDecodeError(f"unsupported video codec in {path.name}: no decoder available")
    return stream


def codec_name(stream: av.video.stream.VideoStream) -> str:
    """Canonical codec name ('av1' rather than the decoder's 'libdav1d')."""
    return stream.codec_context.codec.canonical_name


def normalize_rotation(degrees: float) -> int:
    """Snap a display-matrix angle to 0/90/180/270 (counter-clockwise)."""
    if math.isnan(degrees):
        return 0
    return int(round(degrees / 90.0)) * 90 % 360


def frame_rate(stream: av.video.stream.VideoStream) -> Fraction:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and rate > 0:
            return Fraction(rate)
    raise VideoDecodeError("cannot determine the video's frame rate")


def stream_start_pts(stream: av.video.stream.VideoStream, first_pts: int | None) -> int:
    """Origin for timestamps: the stream's start time, else its first frame's pts."""
    if stream.start_time is not None:
        return stream.start_time
    return first_pts or 0


@dataclass(frozen=True)
class Completeness:
    """What a complete file must contain, for telling a truncated file from a short one."""

    frames: int | None  # frame count from the container index, when it has one
    end_s: float | None  # when video content must end; None if only other streams set the duration


def expected_completeness(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> Completeness:
    frames = stream.frames or None
    if stream.duration is not None and stream.time_base is not None:
        end_s: float | None = float(stream.duration * stream.time_base)
    elif container.duration is not None and len(container.streams) == 1:
        end_s = container.duration / av.time_base
    else:
        end_s = None
    return Completeness(frames=frames, end_s=end_s)


def check_complete(
    expected: Completeness, *, frames_decoded: int, end_s: float, name: str, stats: DecodeStats | None = None
) -> None:
    """Raise if decoding stopped clearly short of what the container promises.

    ``end_s`` is the end of the last decoded frame (its timestamp plus one frame duration).
    A couple of frames of slack absorbs containers whose headers round their counts; a shortfall
    within the slack is recorded in ``stats.missing_frames``.
    """
    if stats is not None and expected.frames is not None and 0 < frames_decoded < expected.frames:
        stats.missing_frames = expected.frames - frames_decoded
    if frames_decoded == 0:
        raise VideoDecodeError(f"no decodable video frames in {name} (truncated or corrupt)")
    if expected.frames is not None and frames_decoded < expected.frames - max(2, expected.frames // 50):
        raise VideoDecodeError(
            f"truncated or corrupt video {name}: decoded {frames_decoded} of {expected.frames} frames"
        )
    if expected.frames is None and expected.end_s is not None and end_s < 0.98 * expected.end_s - 0.1:
        raise VideoDecodeError(
            f"truncated or corrupt video {name}: video ends at {end_s:.2f} s of {expected.end_s:.2f} s"
        )


def check_frame_size(width: int, height: int, max_frame_pixels: int | None, name: str) -> None:
    if max_frame_pixels is not None and width * height > max_frame_pixels:
        raise VideoDecodeError(
            f"frames too large in {name}: {width}x{height} ({width * height / 1e6:.1f} MP) exceeds the limit of "
            f"{max_frame_pixels / 1e6:.1f} MP per frame (max_frame_pixels, RALF_MAX_FRAME_PIXELS)"
        )


def still_image_kind(container: av.container.InputContainer) -> str | None:
    """The image format when FFmpeg opened the file as a still image ('png', 'jpeg', ...), else None."""
    name = container.format.name
    if name in _IMAGE_DEMUXERS or name.endswith(_IMAGE_PIPE_SUFFIX):
        return name.removesuffix(_IMAGE_PIPE_SUFFIX)
    return None


def animated_image_kind(path: Path) -> str | None:
    """'webp' for an animated WebP (read with Pillow: FFmpeg's WebP decoder takes stills only), else None."""
    with open(path, "rb") as handle:
        head = handle.read(64 * 1024)
    if len(head) < 21 or head[:4] != b"RIFF" or head[8:12] != b"WEBP":
        return None
    # Extended format (VP8X) with the animation flag, or an ANIM chunk.
    if head[12:16] == b"VP8X" and head[20] & 0x02:
        return "webp"
    return "webp" if b"ANIM" in head[12:] else None


def probe_video(path: str | Path, max_frame_pixels: int | None = None) -> VideoInfo:
    """Read container headers and decode the first frame (for rotation and to prove it decodes).

    Refused here: still images (a PNG named .mp4 is not a video), and frames over `max_frame_pixels`
    (judged from the stream header, before a frame is decoded). Animated WebP is probed with Pillow."""
    path = check_file(path)
    if animated_image_kind(path) is not None:
        from pipeline.decode.pillow import probe_animated

        info = probe_animated(path)
        check_frame_size(info.width, info.height, max_frame_pixels, path.name)
        return info
    with open_container(path) as container:
        still = still_image_kind(container)
        if still is not None:
            raise VideoDecodeError(f"a still image ({still}), not a video: {path.name}")
        stream = first_video_stream(container, path)
        check_frame_size(stream.codec_context.width, stream.codec_context.height, max_frame_pixels, path.name)
        fps = frame_rate(stream)
        stream.thread_type = "SLICE"  # one frame: no frame-threading buffers
        first = _first_frame(container, stream, path)
        check_frame_size(first.width, first.height, max_frame_pixels, path.name)
        rotation = normalize_rotation(first.rotation)
        width, height = first.width, first.height
        if rotation in (90, 270):
            width, height = height, width
        duration_s: float | None = None
        if stream.duration is not None and stream.time_base is not None:
            duration_s = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration_s = container.duration / av.time_base
        num_frames_exact = bool(stream.frames)
        num_frames = stream.frames or (round(duration_s * fps) if duration_s is not None else None)
        return VideoInfo(
            width=width,
            height=height,
            fps=float(fps),
            duration_s=duration_s,
            num_frames=num_frames,
            num_frames_exact=num_frames_exact,
            codec=codec_name(stream),
            rotation=rotation,
        )


def _first_frame(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, path: Path
) -> av.VideoFrame:
    try:
        for frame in container.decode(stream):
            return frame
    except av.error.FFmpegError as exc:
        raise VideoDecodeError(f"corrupt video data in {path.name}: {exc.strerror or exc}") from None
    raise VideoDecodeError(f"no decodable video frames in {path.name} (truncated or corrupt)")


def presentation_times(path: Path, stats: DecodeStats | None = None) -> tuple[list[float], Completeness]:
    """Presentation time (s from stream start) of every video frame, from packets only (no decoding).

    Packets arrive in decode order; sorting their pts gives display order, which is VFR-correct.
    """
    with open_container(path) as container:
        stream = first_video_stream(container, path)
        expected = expected_completeness(container, stream)
        fps = frame_rate(stream)
        pts_values: list[int] = []
        missing_pts = 0
        try:
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue  # flush marker, not a frame
                pts = packet.pts if packet.pts is not None else packet.dts
                if pts is None:
                    missing_pts += 1
                else:
                    pts_values.append(pts)
        except av.error.FFmpegError as exc:
            raise VideoDecodeError(f"corrupt container data in {path.name}: {exc.strerror or exc}") from None
        if missing_pts:
            # No usable timing: fall back to a constant rate for every frame.
            count = len(pts_values) + missing_pts
            return [i / float(fps) for i in range(count)], expected
        pts_values.sort()
        origin = stream_start_pts(stream, pts_values[0] if pts_values else None)
        time_base = stream.time_base
        times = [float((p - origin) * time_base) for p in pts_values]
        # Frames sharing a timestamp would all fall into one sampling slot: space them by the frame rate.
        fixed: list[float] = []
        for value in times:
            fixed.append(next_timestamp(fixed[-1] if fixed else None, value, 1.0 / float(fps), stats or DecodeStats()))
        return fixed, expected
