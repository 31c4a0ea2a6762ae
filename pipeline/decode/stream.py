"""`open_video`: probe, pick a backend, stream sampled frames in bounded chunks."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Protocol

import torch

from pipeline.decode.choice import choose_backend
from pipeline.decode.dali import DaliDecodeError, DaliFrameSource, dali_installed
from pipeline.decode.probe import check_file, probe_video
from pipeline.decode.pyav import PyAVFrameSource
from pipeline.decode.source import SourceSpec
from pipeline.decode.types import REDUCE_ABOVE_PIXELS, BackendName, BackendRequest, DecodeStats, FrameBatch, VideoInfo
from ralf.core.device import resolve_device
from ralf.core.options import Sampling

logger = logging.getLogger(__name__)


class FrameSource(Protocol):
    name: str

    def batches(self) -> Iterator[FrameBatch]: ...


class VideoStream:
    """Iterate once for FrameBatch chunks; use as a context manager to release the decoder early.

    With ``backend="auto"``, a DALI failure (at start or part-way) is logged as a warning
    and decoding continues with PyAV from the first frame not yet delivered.
    """

    def __init__(
        self,
        path: Path,
        *,
        backend: BackendRequest,
        sampling: Sampling,
        device: torch.device,
        chunk_size: int,
        max_frame_pixels: int | None = None,
        skip_unneeded: bool = True,
    ):
        self.path = path
        self._skip_unneeded = skip_unneeded
        self.info: VideoInfo = probe_video(path, max_frame_pixels)
        self.stats = DecodeStats()  # damage the decode got past (see DecodeStats)
        self._max_frame_pixels = max_frame_pixels
        self._requested = backend
        self._sampling = sampling
        self._device = device
        self._chunk_size = chunk_size
        self._source: FrameSource
        self._iterator: Iterator[FrameBatch] | None = None
        if self.info.codec == "webp":  # animated WebP: FFmpeg cannot, Pillow can (see probe.animated_image_kind)
            self.backend: BackendName = "pillow"
            self._source = self._make_source("pillow", start_index=0)
            return
        if self.info.width * self.info.height > REDUCE_ABOVE_PIXELS and backend == "auto":
            backend = "pyav"  # only PyAV decodes large frames at a reduced size with bounded memory
        plan = choose_backend(
            backend, codec=self.info.codec, cuda=device.type == "cuda", dali_installed=dali_installed()
        )
        self.backend = plan.backend
        if plan.backend == "dali":
            try:
                self._source = self._make_source("dali", start_index=0)
            except DaliDecodeError as exc:
                self._fall_back(exc, start_index=0)
        else:
            self._source = self._make_source("pyav", start_index=0)
        logger.debug("decoding %s with %s (%s)", path.name, self.backend, plan.reason)

    def __iter__(self) -> Iterator[FrameBatch]:
        if self._iterator is not None:
            raise RuntimeError("a VideoStream can be iterated only once; open the video again")
        self._iterator = self._batches()
        return self._iterator

    def close(self) -> None:
        if self._iterator is not None:
            self._iterator.close()  # runs the sources' cleanup (containers, DALI pipeline)

    def __enter__(self) -> VideoStream:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _batches(self) -> Iterator[FrameBatch]:
        next_index = 0
        try:
            for batch in self._source.batches():
                next_index = batch.indices[-1] + 1
                yield batch
        except DaliDecodeError as exc:
            if self._requested != "auto":
                raise
            self._fall_back(exc, start_index=next_index)
            yield from self._source.batches()

    def _fall_back(self, exc: DaliDecodeError, *, start_index: int) -> None:
        logger.warning(
            "DALI could not decode %s (%s); falling back to PyAV from frame %d", self.path.name, exc, start_index
        )
        self.backend = "pyav"
        self.stats = DecodeStats()  # PyAV reads the file from its start again
        self._source = self._make_source("pyav", start_index=start_index)

    def _make_source(self, name: BackendName, *, start_index: int) -> FrameSource:
        if name == "pillow":
            from pipeline.decode.pillow import PillowFrameSource

            source_type: type = PillowFrameSource
        else:
            source_type = DaliFrameSource if name == "dali" else PyAVFrameSource
        return source_type(
            SourceSpec(
                self.path,
                info=self.info,
                sampling=self._sampling,
                device=self._device,
                chunk_size=self._chunk_size,
                start_index=start_index,
                stats=self.stats,
                max_frame_pixels=self._max_frame_pixels,
                skip_unneeded=self._skip_unneeded,
            )
        )


def open_video(
    path: str | Path,
    *,
    backend: BackendRequest = "auto",
    sampling: Sampling | None = None,
    device: str | torch.device = "cpu",
    chunk_size: int = 32,
    max_frame_pixels: int | None = None,
    skip_unneeded: bool = True,
) -> VideoStream:
    """Open a video for streaming decode; raises VideoDecodeError for unreadable input.

    Frames are delivered on ``device``: DALI on a GPU decodes there directly; PyAV and
    DALI-CPU decode on the CPU and move each chunk there. Errors found only while
    decoding (truncated or corrupt data) are raised from the iteration; damage decoded past
    is counted in the stream's ``stats``. ``max_frame_pixels``: larger frames are an error.
    ``skip_unneeded``: PyAV leaves frames the sampling cannot keep undecoded where the sampled frames
    stay identical (``pipeline.decode.skipping``); False decodes every frame.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    target = torch.device(resolve_device(device))
    return VideoStream(
        check_file(path),
        backend=backend,
        sampling=sampling if sampling is not None else Sampling(),
        device=target,
        chunk_size=chunk_size,
        max_frame_pixels=max_frame_pixels,
        skip_unneeded=skip_unneeded,
    )
