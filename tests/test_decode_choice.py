"""Backend choice as a pure function of (request, codec, CUDA, DALI installed)."""

from __future__ import annotations

import pytest

from pipeline.decode import VideoDecodeError, choose_backend

AUTO_CASES = [
    # codec, cuda, expected backend, expected DALI device
    ("h264", True, "dali", "mixed"),
    ("hevc", True, "dali", "mixed"),
    ("av1", True, "dali", "mixed"),
    ("vp9", True, "dali", "mixed"),
    ("vp8", True, "dali", "mixed"),
    ("mjpeg", True, "pyav", None),
    ("mpeg2video", True, "pyav", None),
    ("h264", False, "pyav", None),
    ("hevc", False, "pyav", None),
    # Without a GPU, PyAV for everything: faster than DALI's CPU backend (VP9 880 vs 588 frames/s,
    # VP8 1302 vs 435, MJPEG 1406 vs 454 on the 2-core development CPU), and DALI's CPU MJPEG path
    # crashes on damaged files (benchmarks/fuzz.py).
    ("vp9", False, "pyav", None),
    ("vp8", False, "pyav", None),
    ("mjpeg", False, "pyav", None),
    ("prores", False, "pyav", None),
]


@pytest.mark.parametrize(("codec", "cuda", "backend", "dali_device"), AUTO_CASES)
def test_auto_choice(codec: str, cuda: bool, backend: str, dali_device: str | None) -> None:
    plan = choose_backend("auto", codec=codec, cuda=cuda, dali_installed=True)
    assert (plan.backend, plan.dali_device) == (backend, dali_device)


@pytest.mark.parametrize("cuda", [True, False])
def test_auto_without_dali_uses_pyav(cuda: bool) -> None:
    plan = choose_backend("auto", codec="vp9", cuda=cuda, dali_installed=False)
    assert plan.backend == "pyav"
    assert ("not installed" if cuda else "faster") in plan.reason


def test_explicit_pyav_is_always_honoured() -> None:
    assert choose_backend("pyav", codec="vp9", cuda=True, dali_installed=True).backend == "pyav"


def test_explicit_dali_uses_device_matching_backend() -> None:
    assert choose_backend("dali", codec="h264", cuda=True, dali_installed=True).dali_device == "mixed"
    assert choose_backend("dali", codec="mjpeg", cuda=True, dali_installed=True).dali_device == "mixed"
    assert choose_backend("dali", codec="vp9", cuda=False, dali_installed=True).dali_device == "cpu"


def test_explicit_dali_raises_for_codec_it_cannot_decode() -> None:
    with pytest.raises(VideoDecodeError, match="cannot decode h264"):
        choose_backend("dali", codec="h264", cuda=False, dali_installed=True)
    with pytest.raises(VideoDecodeError, match="cannot decode prores"):
        choose_backend("dali", codec="prores", cuda=True, dali_installed=True)


def test_explicit_dali_raises_when_not_installed() -> None:
    with pytest.raises(VideoDecodeError, match="not installed"):
        choose_backend("dali", codec="vp9", cuda=False, dali_installed=False)
