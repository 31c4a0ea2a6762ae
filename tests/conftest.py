"""Shared test fixtures: small generated clips (a real face moving over a background), bad inputs,
and `one_thread` for CPU training tests.

Every clip is 24 frames, 320x240, 12 fps (2.0 s) unless its fixture says otherwise; all are
written once per session under a temporary directory.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pipeline import synthetic

# Tests of the pipeline and the workers scan with the seeded random model unless they ask for the
# shipped weights (tests/test_shipped_weights.py unsets this). Worker processes inherit it.
os.environ.setdefault("RALF_RANDOM_WEIGHTS", "1")

ClipFactory = Callable[..., Path]


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("clips")


@pytest.fixture(scope="session")
def make_clip(clip_dir: Path) -> ClipFactory:
    """``make_clip(codec, suffix=None, **write_face_clip_kwargs) -> Path``, cached per argument set."""
    cache: dict[tuple, Path] = {}

    def make(codec: synthetic.ClipCodec = "h264", suffix: str | None = None, **kwargs: object) -> Path:
        suffix = suffix or synthetic.container_suffix(codec)
        key = (codec, suffix, tuple(sorted(kwargs.items())))
        if key not in cache:
            name = f"clip{len(cache)}_{codec}{suffix}"
            cache[key] = synthetic.write_face_clip(clip_dir / name, codec=codec, **kwargs)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def face_clip_h264(make_clip: ClipFactory) -> Path:
    """H.264 in MP4, astronaut face moving over a textured background."""
    return make_clip("h264")


@pytest.fixture(scope="session")
def face_clip_vp9(make_clip: ClipFactory) -> Path:
    """VP9 in WebM, same content as face_clip_h264 (DALI's CPU decoder reads it)."""
    return make_clip("vp9")


@pytest.fixture(scope="session")
def face_clip_vp8(make_clip: ClipFactory) -> Path:
    return make_clip("vp8")


@pytest.fixture(scope="session")
def face_clip_mjpeg(make_clip: ClipFactory) -> Path:
    """MJPEG in AVI."""
    return make_clip("mjpeg")


@pytest.fixture(scope="session")
def faceless_clip(make_clip: ClipFactory) -> Path:
    """H.264 MP4 with only the (slowly panning) background: no face anywhere."""
    return make_clip("h264", face=False)


@pytest.fixture(scope="session")
def rotated_face_clip(make_clip: ClipFactory) -> Path:
    """H.264 MP4 whose pixels are stored turned, with 90-degree display rotation metadata;
    decoded correctly it shows the same upright frames as face_clip_h264."""
    return make_clip("h264", rotation=90)


@pytest.fixture(scope="session")
def vfr_clip(clip_dir: Path) -> tuple[Path, list[float]]:
    """(path, presentation times) of a 160x120 H.264 MP4 with variable frame rate."""
    times = [0.0, 0.1, 0.15, 0.4, 0.45, 0.5, 1.0, 1.2]
    return synthetic.write_vfr_clip(clip_dir / "vfr.mp4", times), times


@pytest.fixture(scope="session")
def empty_file(clip_dir: Path) -> Path:
    return synthetic.write_empty_file(clip_dir / "empty.mp4")


@pytest.fixture(scope="session")
def text_as_video(clip_dir: Path) -> Path:
    """A text file named '.mp4'."""
    return synthetic.write_text_as_video(clip_dir / "notes.mp4")


@pytest.fixture(scope="session")
def audio_only_file(clip_dir: Path) -> Path:
    """An M4A (MP4 container) with one AAC audio stream and no video."""
    return synthetic.write_audio_only(clip_dir / "voice.m4a")


@pytest.fixture(scope="session")
def truncated_clip(face_clip_vp9: Path, clip_dir: Path) -> Path:
    """First 60% of face_clip_vp9's bytes: the container opens, the video stops early."""
    return synthetic.write_truncated_copy(face_clip_vp9, clip_dir / "truncated.webm", 0.6)


@pytest.fixture(scope="session")
def truncated_mp4(face_clip_h264: Path, clip_dir: Path) -> Path:
    """First half of face_clip_h264 (its index is at the end, so the container cannot open)."""
    return synthetic.write_truncated_copy(face_clip_h264, clip_dir / "truncated.mp4", 0.5)


@pytest.fixture(scope="session")
def missing_path(clip_dir: Path) -> Path:
    return clip_dir / "does_not_exist.mp4"


@pytest.fixture
def one_thread() -> Iterator[None]:
    """torch on one OpenMP thread during the test: two threads on a busy 2-core machine stall each
    other; one thread is steady."""
    import torch  # here: tests that never use torch do not pay its import

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
