"""Inputs people upload that are not clean videos: non-UTF-8 metadata, damaged streams, frames that share
a timestamp, still images, animated WebP, huge frames. Each gets a normal verdict that says what was
wrong, or a clear error verdict; none an exception."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import synthetic
from pipeline.decode import VideoDecodeError, open_video, probe_video
from pipeline.scan import Scanner
from ralf.core.options import ScanOptions


@pytest.fixture(scope="module")
def scanner() -> Scanner:
    return Scanner(ScanOptions(device="cpu", decoder="pyav", every_n=1), None, preset_if_random="tiny")


def test_latin1_metadata_scans_normally(face_clip_h264: Path, clip_dir: Path, scanner: Scanner) -> None:
    """`ffmpeg -c copy -metadata title=$'Caf\\xe9'`: PyAV used to refuse the file with UnicodeDecodeError."""
    cafe = synthetic.write_latin1_metadata_copy(face_clip_h264, clip_dir / "cafe.mp4")
    assert probe_video(cafe).num_frames == 24
    verdict = scanner.scan(cafe)
    assert verdict.label in ("real", "fake") and verdict.counts.frames_decoded == 24, verdict.error


@pytest.mark.parametrize(
    ("fraction", "counted", "warning"),
    [
        (0.002, "corrupt_frames", "frames decoded with errors"),  # concealed by the H.264 decoder
        (0.02, "rejected_packets", "packets could not be decoded"),  # a packet refused: its frame is missing
    ],
)
def test_damage_decoded_past_is_counted_and_warned(
    face_clip_h264: Path, clip_dir: Path, scanner: Scanner, fraction: float, counted: str, warning: str
) -> None:
    damaged = synthetic.write_corrupted_copy(face_clip_h264, clip_dir / f"damaged{fraction}.mp4", seed=0, fraction=fraction)
    verdict = scanner.scan(damaged)
    assert verdict.label in ("real", "fake", "no_face"), verdict.error
    assert getattr(verdict.counts, counted) >= 1
    assert any(warning in w and w.startswith("damaged video") for w in verdict.warnings), verdict.warnings


def test_clean_video_has_no_damage_counts(face_clip_h264: Path, scanner: Scanner) -> None:
    counts = scanner.scan(face_clip_h264).counts
    assert (counts.rejected_packets, counts.corrupt_frames, counts.missing_frames, counts.repeated_timestamps) == (0, 0, 0, 0)


def test_frames_sharing_one_timestamp_are_spread_by_frame_rate(clip_dir: Path) -> None:
    """All eight frames stamped 0 s: sampled by time they used to collapse into one slot."""
    same = synthetic.write_vfr_clip(clip_dir / "same_time.mkv", [0.0] * 8)
    sampler = Scanner(ScanOptions(device="cpu", decoder="pyav", target_fps=30.0), None, preset_if_random="tiny")
    verdict = sampler.scan(same)
    assert verdict.counts.frames_decoded == 8 and verdict.counts.repeated_timestamps == 7
    assert any("repeated an earlier timestamp" in w for w in verdict.warnings)
    with open_video(same, backend="pyav") as stream:
        times = [t for batch in stream for t in batch.timestamps_s]
    assert times == sorted(set(times)) and len(times) == 8


def test_still_image_is_an_error_not_a_one_frame_video(clip_dir: Path, scanner: Scanner) -> None:
    still = synthetic.write_still_image(clip_dir / "photo.mp4")
    verdict = scanner.scan(still)
    assert verdict.label == "error" and verdict.error == "a still image (png), not a video: photo.mp4"


def test_animated_webp_is_decoded_with_pillow(clip_dir: Path, scanner: Scanner) -> None:
    animation = synthetic.write_animated_webp(clip_dir / "animation.webp", num_frames=8, fps=8.0)
    info = probe_video(animation)
    assert (info.codec, info.num_frames, info.duration_s) == ("webp", 8, pytest.approx(1.0))
    with open_video(animation, backend="auto") as stream:
        batches = list(stream)
        assert stream.backend == "pillow"
    assert [t for b in batches for t in b.timestamps_s] == pytest.approx([i / 8 for i in range(8)])
    verdict = scanner.scan(animation)
    assert verdict.label in ("real", "fake") and verdict.decoder == "pillow" and verdict.counts.faces >= 6


def test_still_webp_is_an_error(clip_dir: Path) -> None:
    still = synthetic.write_animated_webp(clip_dir / "still.webp", num_frames=1)
    with pytest.raises(VideoDecodeError, match="a still image"):
        probe_video(still)


def test_frame_size_cap_is_checked_before_decoding(face_clip_h264: Path) -> None:
    limited = Scanner(
        ScanOptions(device="cpu", decoder="pyav", max_frame_pixels=320 * 240 - 1), None, preset_if_random="tiny"
    )
    verdict = limited.scan(face_clip_h264)
    assert verdict.label == "error" and "frames too large" in verdict.error and "320x240" in verdict.error
    assert verdict.counts.frames_decoded == 0


def test_frames_above_4k_are_scanned_scaled_down(clip_dir: Path) -> None:
    big = synthetic.write_face_clip(clip_dir / "big.mp4", codec="h264", num_frames=2, size=(4096, 2304), fps=2.0)
    with open_video(big, backend="auto") as stream:  # auto would pick DALI for some codecs: PyAV reduces
        frames = [batch.frames for batch in stream]
        assert stream.backend == "pyav" and stream.stats.reduced_to == (3840, 2160)
    assert [tuple(f.shape) for f in frames] == [(2, 2160, 3840, 3)]
