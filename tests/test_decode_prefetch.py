"""Bounded prefetch: same chunks in the same order, errors re-raised, the thread stops on close."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline import synthetic
from pipeline.decode import VideoDecodeError, open_video
from pipeline.decode.prefetch import Prefetcher, prefetch
from pipeline.scan import Scanner
from ralf.core.options import Sampling, ScanOptions


def test_items_in_order_and_at_most_depth_ahead() -> None:
    produced: list[int] = []

    def source() -> Iterator[int]:
        for i in range(6):
            produced.append(i)
            yield i

    with Prefetcher(source(), depth=1) as ahead:
        assert next(ahead) == 0
        time.sleep(0.2)
        # One item waits in the queue and one is held by the blocked thread: never more.
        assert len(produced) <= 3
        assert list(ahead) == [1, 2, 3, 4, 5]


def test_errors_are_raised_in_the_consumer() -> None:
    def source() -> Iterator[int]:
        yield 1
        raise VideoDecodeError("corrupt video data")

    ahead = Prefetcher(source(), depth=2)
    assert next(ahead) == 1
    with pytest.raises(VideoDecodeError, match="corrupt"):
        next(ahead)
    ahead.close()


def test_close_stops_the_thread_and_closes_the_source_in_it() -> None:
    closed_in: list[str] = []

    def source() -> Iterator[int]:
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed_in.append(threading.current_thread().name)

    ahead = Prefetcher(source(), depth=1, name="decode-test")
    assert next(ahead) == 0
    ahead.close()
    assert closed_in == ["decode-test"]
    assert not any(t.name == "decode-test" for t in threading.enumerate())
    with pytest.raises(StopIteration):
        next(ahead)


def test_depth_zero_is_the_source_itself() -> None:
    source = iter([1, 2])
    assert prefetch(source, 0) is source


def test_prefetched_stream_gives_the_same_batches(tmp_path: Path) -> None:
    clip = synthetic.write_face_clip(tmp_path / "c.mp4", codec="h264", num_frames=20, fps=10.0)
    with open_video(clip, sampling=Sampling(every_n=3), chunk_size=2) as stream:
        plain = [(b.indices, b.frames.clone()) for b in stream]
    with open_video(clip, sampling=Sampling(every_n=3), chunk_size=2) as stream, Prefetcher(iter(stream), 1) as ahead:
        fetched = [(b.indices, b.frames.clone()) for b in ahead]
    assert [i for i, _ in plain] == [i for i, _ in fetched]
    assert all(bool((a == b).all()) for (_, a), (_, b) in zip(plain, fetched, strict=True))


def test_scan_with_and_without_prefetch_agree(tmp_path: Path) -> None:
    clip = synthetic.write_face_clip(tmp_path / "c.mp4", codec="h264", num_frames=24, fps=12.0)
    base = Scanner(ScanOptions(device="cpu", every_n=2, chunk_size=3, prefetch=0), preset_if_random="tiny")
    without = base.scan(clip)
    with_prefetch = base.with_options(base.options.model_copy(update={"prefetch": 2})).scan(clip)
    assert without.label in ("real", "fake") and without.counts == with_prefetch.counts
    assert with_prefetch.score == pytest.approx(without.score, abs=1e-6)
    # A truncated file is still an error verdict through the prefetch thread.
    broken = synthetic.write_truncated_copy(clip, tmp_path / "cut.mp4", 0.5)
    assert base.with_options(base.options.model_copy(update={"prefetch": 1})).scan(broken).label == "error"
