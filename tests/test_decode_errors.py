"""Each kind of bad input gives VideoDecodeError with a reason a user can act on."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import synthetic
from pipeline.decode import VideoDecodeError, open_video, probe_video

BAD_AT_OPEN = [
    ("missing_path", "file not found"),
    ("empty_file", r"empty file \(0 bytes\)"),
    ("text_as_video", "not a readable video file"),
    ("audio_only_file", r"no video stream in voice.m4a \(streams: audio\)"),
    ("truncated_mp4", "not a readable video file"),
    ("clip_dir", "not a regular file"),
]


@pytest.mark.parametrize(("fixture", "message"), BAD_AT_OPEN)
def test_probe_rejects_bad_input(fixture: str, message: str, request: pytest.FixtureRequest) -> None:
    with pytest.raises(VideoDecodeError, match=message):
        probe_video(request.getfixturevalue(fixture))


@pytest.mark.parametrize("backend", ["auto", "pyav", "dali"])
@pytest.mark.parametrize(("fixture", "message"), BAD_AT_OPEN)
def test_open_video_rejects_bad_input(fixture: str, message: str, backend: str, request: pytest.FixtureRequest) -> None:
    with pytest.raises(VideoDecodeError, match=message):
        open_video(request.getfixturevalue(fixture), backend=backend)  # type: ignore[arg-type]


def test_wav_audio_only(clip_dir: Path) -> None:
    with pytest.raises(VideoDecodeError, match="no video stream"):
        probe_video(synthetic.write_audio_only(clip_dir / "tone.wav"))


@pytest.mark.parametrize("backend", ["pyav", "dali", "auto"])
def test_truncated_webm_is_reported_not_silently_short(truncated_clip: Path, backend: str) -> None:
    # The container opens and a few frames decode; the stream must not end as if complete.
    with pytest.raises(VideoDecodeError, match=r"truncated or corrupt video truncated.webm: video ends at"):
        with open_video(truncated_clip, backend=backend) as stream:  # type: ignore[arg-type]
            list(stream)


def test_truncated_before_first_frame(face_clip_vp9: Path, clip_dir: Path) -> None:
    cut = synthetic.write_truncated_copy(face_clip_vp9, clip_dir / "cut30.webm", 0.3)
    with pytest.raises(VideoDecodeError, match="no decodable video frames"):
        probe_video(cut)


def test_truncated_avi_counts_missing_frames(face_clip_mjpeg: Path, clip_dir: Path) -> None:
    cut = synthetic.write_truncated_copy(face_clip_mjpeg, clip_dir / "cut60.avi", 0.6)
    with pytest.raises(VideoDecodeError, match=r"decoded \d+ of 24 frames"):
        with open_video(cut, backend="pyav") as stream:
            list(stream)


@pytest.mark.parametrize(("fixture", "suffix"), [("face_clip_h264", ".mp4"), ("face_clip_mjpeg", ".avi")])
@pytest.mark.parametrize("backend", ["pyav", "auto"])
def test_corrupted_middle_gives_decode_error(
    fixture: str, suffix: str, backend: str, clip_dir: Path, request: pytest.FixtureRequest
) -> None:
    bad = synthetic.write_corrupted_copy(request.getfixturevalue(fixture), clip_dir / f"corrupt{suffix}", seed=1)
    with pytest.raises(VideoDecodeError, match="corrupt"):
        with open_video(bad, backend=backend) as stream:  # type: ignore[arg-type]
            list(stream)


def test_explicit_dali_refuses_codec_it_cannot_decode_on_cpu(face_clip_h264: Path) -> None:
    with pytest.raises(VideoDecodeError, match=r"decoder 'dali' \(cpu\) cannot decode h264"):
        open_video(face_clip_h264, backend="dali")
