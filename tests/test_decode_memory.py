"""Decoding streams in bounded chunks: a 10x longer clip does not grow memory with its length."""

from __future__ import annotations

import gc
from pathlib import Path

import psutil
import pytest

from pipeline.decode import open_video
from ralf.core.options import Sampling

FRAME_BYTES = 320 * 240 * 3


def peak_rss_growth(path: Path, backend: str, chunk_size: int) -> tuple[int, list[int]]:
    """(peak RSS growth in bytes sampled after every chunk, chunk sizes) while decoding ``path``."""
    process = psutil.Process()
    gc.collect()
    before = process.memory_info().rss
    peak, sizes = before, []
    with open_video(path, backend=backend, chunk_size=chunk_size, sampling=Sampling()) as stream:  # type: ignore[arg-type]
        for batch in stream:
            sizes.append(len(batch))
            peak = max(peak, process.memory_info().rss)
    return peak - before, sizes


@pytest.mark.parametrize(("codec", "backend"), [("h264", "pyav"), ("vp9", "dali")])
def test_long_clip_decodes_in_bounded_chunks(make_clip, codec: str, backend: str) -> None:  # type: ignore[no-untyped-def]
    short, long = make_clip(codec), make_clip(codec, num_frames=240)
    peak_rss_growth(short, backend, chunk_size=8)  # warm up decoder libraries and allocator pools
    short_growth, short_sizes = peak_rss_growth(short, backend, chunk_size=8)
    long_growth, long_sizes = peak_rss_growth(long, backend, chunk_size=8)
    assert sum(short_sizes) == 24 and sum(long_sizes) == 240
    assert max(long_sizes) == 8
    # All 240 decoded frames would be 55 MB; streaming keeps the growth to a few chunks.
    total = 240 * FRAME_BYTES
    assert long_growth < total / 4, f"RSS grew {long_growth / 2**20:.1f} MiB for {total / 2**20:.0f} MiB of frames"
    assert long_growth < short_growth + 16 * 2**20
