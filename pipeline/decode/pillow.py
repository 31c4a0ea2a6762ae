"""Animated WebP with Pillow: FFmpeg's WebP decoder reads still images only, so an animated WebP (a
common upload from phones and messengers) would otherwise be reported as corrupt.

Pillow decodes one frame at a time (memory bounded like the video decoders); frame times come from
the per-frame durations in the file, which Pillow's WebP reader gives only for decoded frames, so
probing decodes the animation once. Anything Pillow cannot read is a `VideoDecodeError`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pipeline.decode.source import SourceSpec
from pipeline.decode.types import FrameBatch, VideoDecodeError, VideoInfo, reduced_size

_DEFAULT_FRAME_MS = 100.0  # a frame without a duration is shown this long (browsers do the same)
_PILLOW_ERRORS = (OSError, ValueError, SyntaxError, EOFError, MemoryError)


def _open(path: Path):  # type: ignore[no-untyped-def]
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(path)
    except (*_PILLOW_ERRORS, Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise VideoDecodeError(f"not a readable animated image {path.name}: {exc}") from None


def _seek(image, index: int) -> float:  # type: ignore[no-untyped-def]
    """Go to frame `index` and return how long it is shown (ms). Pillow's WebP reader learns a frame's
    duration only by decoding it (frames depend on the previous ones anyway)."""
    image.seek(index)
    if "duration" not in image.info:
        image.load()
    duration = float(image.info.get("duration") or 0.0)
    return duration if duration > 0 else _DEFAULT_FRAME_MS


def _durations_ms(image) -> list[float]:  # type: ignore[no-untyped-def]
    durations = [_seek(image, index) for index in range(getattr(image, "n_frames", 1))]
    image.seek(0)
    return durations


def probe_animated(path: Path) -> VideoInfo:
    """Size, frame count and timing of an animated image, from its headers (no pixels decoded)."""
    with _open(path) as image:
        try:
            durations = _durations_ms(image)
            width, height = image.size
        except _PILLOW_ERRORS as exc:
            raise VideoDecodeError(f"corrupt animated image {path.name}: {exc}") from None
        codec = (image.format or "image").lower()
    if len(durations) < 2:
        raise VideoDecodeError(f"a still image ({codec}), not a video: {path.name}")
    total_s = sum(durations) / 1000.0
    return VideoInfo(
        width=width,
        height=height,
        fps=len(durations) / total_s,
        duration_s=total_s,
        num_frames=len(durations),
        num_frames_exact=True,
        codec=codec,
        rotation=0,
    )


class PillowFrameSource:
    """Frames of an animated image in order, RGB, sampled by their display times."""

    name = "pillow"

    def __init__(self, spec: SourceSpec):
        self._spec = spec

    def batches(self) -> Iterator[FrameBatch]:
        import torch

        spec = self._spec
        selector = spec.selector()
        assembler = spec.assembler()
        out_w, out_h = reduced_size(spec.info.width, spec.info.height)
        if (out_w, out_h) != (spec.info.width, spec.info.height):
            spec.stats.reduced_to = (out_w, out_h)
        with _open(spec.path) as image:
            timestamp_ms = 0.0
            for index in range(spec.info.num_frames or 0):
                try:
                    duration = _seek(image, index)
                    keep = selector.keep(index, timestamp_ms / 1000.0) and index >= spec.start_index
                    if keep:
                        frame = image.convert("RGB")
                        if frame.size != (out_w, out_h):
                            frame = frame.resize((out_w, out_h))
                        rgb = np.asarray(frame, dtype=np.uint8)
                except _PILLOW_ERRORS as exc:
                    raise VideoDecodeError(
                        f"corrupt animated image {spec.path.name} at frame {index}: {exc}"
                    ) from None
                if keep:
                    yield from assembler.add(torch.from_numpy(rgb.copy()).unsqueeze(0), [index], [timestamp_ms / 1000.0])
                timestamp_ms += duration
        yield from assembler.flush()
