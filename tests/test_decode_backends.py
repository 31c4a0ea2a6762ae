"""Both decoders on generated clips: pixels, indices, timestamps, sampling, rotation, fallback."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import synthetic
from pipeline.decode import DaliDecodeError, FrameBatch, VideoDecodeError, open_video, probe_video
from pipeline.decode.choice import BackendPlan
from pipeline.decode.dali import DaliFrameSource
from pipeline.decode.rotation import to_upright
from ralf.core.options import Sampling

# The clips' source pixels, as rendered before encoding (24 frames, 320x240).
REFERENCE = np.stack(synthetic.render_frames(24, (320, 240)))


def decode_all(path: Path, backend: str, **kwargs: object) -> tuple[np.ndarray, list[int], list[float], str]:
    with open_video(path, backend=backend, **kwargs) as stream:  # type: ignore[arg-type]
        batches: list[FrameBatch] = list(stream)
        used = stream.backend
    frames = np.concatenate([b.frames.numpy() for b in batches])
    indices = [i for b in batches for i in b.indices]
    times = [t for b in batches for t in b.timestamps_s]
    return frames, indices, times, used


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-frame mean absolute difference on the 0..255 scale."""
    return np.abs(a.astype(np.int16) - b.astype(np.int16)).mean(axis=(1, 2, 3))


@pytest.mark.parametrize(
    ("fixture", "codec", "exact"),
    [("face_clip_h264", "h264", True), ("face_clip_vp9", "vp9", False), ("face_clip_mjpeg", "mjpeg", True)],
)
def test_probe_reports_stream_facts(fixture: str, codec: str, exact: bool, request: pytest.FixtureRequest) -> None:
    info = probe_video(request.getfixturevalue(fixture))
    assert (info.width, info.height, info.codec, info.rotation) == (320, 240, codec, 0)
    assert info.fps == pytest.approx(12.0)
    assert info.duration_s == pytest.approx(2.0, abs=0.01)
    assert info.num_frames == 24 and info.num_frames_exact is exact


def test_vp9_dali_cpu_and_pyav_agree_frame_by_frame(face_clip_vp9: Path) -> None:
    dali_frames, dali_idx, dali_t, dali_used = decode_all(face_clip_vp9, "dali")
    av_frames, av_idx, av_t, av_used = decode_all(face_clip_vp9, "pyav")
    assert (dali_used, av_used) == ("dali", "pyav")
    assert dali_idx == av_idx == list(range(24))
    assert dali_t == av_t and av_t == pytest.approx([i / 12 for i in range(24)], abs=1e-3)
    assert dali_frames.shape == av_frames.shape == (24, 240, 320, 3)
    assert dali_frames.dtype == av_frames.dtype == np.uint8
    # Backends differ only in YUV->RGB rounding/chroma upsampling (measured ~1.5).
    assert mean_abs_diff(dali_frames, av_frames).max() < 2.0
    # And both show the picture that was encoded (lossy codec, measured ~1.2 / ~1.9).
    assert mean_abs_diff(dali_frames, REFERENCE).max() < 3.0
    assert mean_abs_diff(av_frames, REFERENCE).max() < 3.0


@pytest.mark.parametrize(
    ("fixture", "backend"),
    [("face_clip_h264", "pyav"), ("face_clip_vp9", "pyav"), ("face_clip_vp9", "dali"), ("face_clip_mjpeg", "auto")],
)
@pytest.mark.parametrize(
    ("sampling", "expected"),
    [
        (Sampling(every_n=5), [0, 5, 10, 15, 20]),
        (Sampling(target_fps=4.0), [0, 3, 6, 9, 12, 15, 18, 21]),
        (Sampling(max_frames=4), [0, 6, 12, 18]),
    ],
)
def test_sampling_modes_give_expected_frames(
    fixture: str, backend: str, sampling: Sampling, expected: list[int], request: pytest.FixtureRequest
) -> None:
    frames, indices, times, _ = decode_all(request.getfixturevalue(fixture), backend, sampling=sampling)
    assert indices == expected
    assert times == pytest.approx([i / 12 for i in expected], abs=1e-3)  # WebM stores ms
    # The kept frames are the right ones, not merely the right labels.
    assert mean_abs_diff(frames, REFERENCE[expected]).max() < 5.0


@pytest.mark.parametrize("backend", ["pyav", "dali"])
def test_chunks_are_bounded_and_contiguous(face_clip_vp9: Path, backend: str) -> None:
    with open_video(face_clip_vp9, backend=backend, chunk_size=5) as stream:  # type: ignore[arg-type]
        sizes = [len(b) for b in stream]
    assert sizes == [5, 5, 5, 5, 4]


def test_rotation_metadata_gives_upright_frames(rotated_face_clip: Path, face_clip_h264: Path) -> None:
    info = probe_video(rotated_face_clip)
    assert (info.rotation, info.width, info.height) == (90, 320, 240)
    rotated, _, _, _ = decode_all(rotated_face_clip, "pyav")
    upright, _, _, _ = decode_all(face_clip_h264, "pyav")
    assert rotated.shape == upright.shape == (24, 240, 320, 3)
    assert mean_abs_diff(rotated, REFERENCE).max() < 3.0


def test_dali_applies_rotation_too(make_clip) -> None:  # type: ignore[no-untyped-def]
    clip = make_clip("vp9", suffix=".mp4", rotation=270)  # MP4 keeps the display matrix; DALI-CPU reads VP9
    frames, _, _, used = decode_all(clip, "dali")
    assert used == "dali"
    assert mean_abs_diff(frames, REFERENCE).max() < 3.0


def test_to_upright_turns_counter_clockwise() -> None:
    frame = torch.arange(6, dtype=torch.uint8).reshape(1, 2, 3, 1)  # [[0,1,2],[3,4,5]]
    turned = to_upright(frame, 90)[0, :, :, 0]
    assert turned.tolist() == [[2, 5], [1, 4], [0, 3]]
    assert to_upright(frame, 360).data_ptr() == frame.data_ptr()
    assert to_upright(to_upright(frame, 90), 270).equal(frame)


def test_variable_frame_rate_timestamps(vfr_clip: tuple[Path, list[float]]) -> None:
    path, written_times = vfr_clip
    _, indices, times, _ = decode_all(path, "pyav")
    assert indices == list(range(len(written_times)))
    assert times == pytest.approx(written_times, abs=1e-3)
    _, kept, kept_times, _ = decode_all(path, "pyav", sampling=Sampling(target_fps=2.0))
    assert kept == [0, 5, 6]  # first frames at/after 0.0, 0.5 and 1.0 s
    assert kept_times == pytest.approx([0.0, 0.5, 1.0], abs=1e-3)


def test_auto_falls_back_to_pyav_part_way_with_a_warning(
    face_clip_vp9: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real_run_once = DaliFrameSource._run_once
    calls = {"n": 0}

    def fail_on_second_run(self: DaliFrameSource, decoded: int) -> object:
        calls["n"] += 1
        if calls["n"] == 2:
            raise DaliDecodeError("simulated NVDEC failure")
        return real_run_once(self, decoded)

    monkeypatch.setattr(DaliFrameSource, "_run_once", fail_on_second_run)
    # `auto` takes DALI only on GPUs (NVDEC); its CPU decoder stands in for it here.
    import pipeline.decode.stream as stream_module

    monkeypatch.setattr(stream_module, "choose_backend", lambda *a, **k: BackendPlan("dali", "cpu", "test"))
    with caplog.at_level(logging.WARNING), open_video(face_clip_vp9, backend="auto", chunk_size=8) as stream:
        assert stream.backend == "dali"
        batches = list(stream)
        assert stream.backend == "pyav"
    assert [i for b in batches for i in b.indices] == list(range(24))
    assert "simulated NVDEC failure" in caplog.text and "falling back to PyAV from frame 8" in caplog.text
    frames = np.concatenate([b.frames.numpy() for b in batches])
    assert mean_abs_diff(frames, REFERENCE).max() < 3.0

    calls["n"] = 0
    with pytest.raises(VideoDecodeError, match="simulated NVDEC failure"):
        with open_video(face_clip_vp9, backend="dali", chunk_size=8) as stream:
            list(stream)


def test_stream_is_single_pass_and_closes_early(face_clip_h264: Path) -> None:
    with open_video(face_clip_h264, chunk_size=4) as stream:
        first = next(iter(stream))
        assert first.frames.shape == (4, 240, 320, 3) and first.frames.device.type == "cpu"
        with pytest.raises(RuntimeError, match="only once"):
            iter(stream)
    stream.close()  # closing twice is harmless


def test_open_video_rejects_unavailable_cuda(face_clip_h264: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is present")
    with pytest.raises(ValueError, match="CUDA is not available"):
        open_video(face_clip_h264, device="cuda")
