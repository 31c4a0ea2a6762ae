"""`SourceSpec`: what a backend's frame source decodes, which frames it keeps and how it delivers them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from pipeline.decode.chunks import ChunkAssembler
from pipeline.decode.sampling import FrameSelector
from pipeline.decode.types import DecodeStats, VideoInfo
from ralf.core.options import Sampling


@dataclass(frozen=True)
class SourceSpec:
    """One backend's decode of one probed file.

    ``start_index`` skips (decodes but does not emit) earlier frames: used to resume after
    another backend failed part-way. Selection still sees every frame, so the sampled set
    is the same as a run from the start.
    """

    path: Path
    info: VideoInfo
    sampling: Sampling
    device: torch.device
    chunk_size: int
    start_index: int = 0
    stats: DecodeStats = field(default_factory=DecodeStats)  # damage found, filled in while decoding
    max_frame_pixels: int | None = None  # frames larger than this anywhere in the stream are an error
    skip_unneeded: bool = True  # PyAV: leave frames the sampling cannot keep undecoded where that is safe

    def selector(self) -> FrameSelector:
        """A fresh keep/skip decision for one pass over the frames."""
        return FrameSelector(self.sampling, duration_s=self.info.duration_s, num_frames=self.info.num_frames)

    def assembler(self) -> ChunkAssembler:
        """A fresh buffer that groups the kept frames into chunks on the target device."""
        return ChunkAssembler(self.chunk_size, self.device)
