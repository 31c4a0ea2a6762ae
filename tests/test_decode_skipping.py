"""Decoding only what the sampling needs (pipeline/decode/skipping.py): the same sampled frames, bit
for bit, with the same indices and timestamps, as decoding every frame; fewer frames decoded."""

from __future__ import annotations

from pathlib import Path

import av
import pytest
import torch

import pipeline.decode.pyav as pyav_source
from pipeline import synthetic
from pipeline.decode import open_video
from pipeline.decode.sampling import FrameSelector
from pipeline.decode.skipping import DecodePlan, plan_decode
from ralf.core.options import Sampling

# B-frames (non-reference in x264's pyramid leaves) and a keyframe every 10 frames.
BFRAMES_SHORT_GOP = {"preset": "veryfast", "x264-params": "keyint=10:min-keyint=10:bframes=3:b-pyramid=normal:scenecut=0"}
SAMPLINGS = [Sampling(target_fps=2.0), Sampling(max_frames=3), Sampling(every_n=7)]


@pytest.fixture(scope="module")
def bframe_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("skip")
    return synthetic.write_face_clip(
        folder / "bframes.mp4", codec="h264", num_frames=60, fps=30.0, encoder_options=BFRAMES_SHORT_GOP
    )


def _decode(path: Path, sampling: Sampling, skip: bool) -> tuple[list[int], list[float], torch.Tensor, int]:
    with open_video(path, backend="pyav", sampling=sampling, skip_unneeded=skip, chunk_size=4) as stream:
        batches = list(stream)
        skipped = stream.stats.skipped_frames
    indices = [i for b in batches for i in b.indices]
    times = [t for b in batches for t in b.timestamps_s]
    return indices, times, torch.cat([b.frames for b in batches]), skipped


def _assert_same(path: Path, sampling: Sampling) -> int:
    full = _decode(path, sampling, skip=False)
    needed = _decode(path, sampling, skip=True)
    assert needed[0] == full[0] and needed[1] == full[1]
    assert torch.equal(needed[2], full[2])
    assert full[3] == 0
    return needed[3]


@pytest.mark.parametrize("sampling", SAMPLINGS, ids=["fps2", "max3", "every7"])
def test_h264_with_bframes_skips_frames_and_samples_the_same(bframe_clip: Path, sampling: Sampling) -> None:
    assert _assert_same(bframe_clip, sampling) > 0


def test_gops_without_a_sampled_frame_are_not_sent(bframe_clip: Path) -> None:
    with av.open(str(bframe_clip)) as container:
        stream = container.streams.video[0]
        selector = FrameSelector(Sampling(max_frames=2), duration_s=2.0, num_frames=60)
        plan = plan_decode(container, stream, selector, stream.start_time, stream.time_base)
    assert isinstance(plan, DecodePlan) and plan.frames == 60 and len(plan.sampled) == 2
    dropped, _ = plan.counts()
    assert dropped >= 30 and plan.restarts  # whole GOPs left out, decoding restarts at a keyframe
    assert not plan.sampled & plan.dropped


def test_mjpeg_decodes_only_the_sampled_frames(make_clip) -> None:  # noqa: ANN001
    clip = make_clip("mjpeg")  # 24 frames at 12 fps: 2 frames/s keeps 4
    assert _assert_same(clip, Sampling(target_fps=2.0)) == 20


@pytest.mark.parametrize("codec", ["vp9", "vp8"])
def test_codecs_without_verified_skipping_decode_everything(make_clip, codec: str) -> None:  # noqa: ANN001
    assert _assert_same(make_clip(codec), Sampling(target_fps=2.0)) == 0


def test_every_frame_sampled_needs_no_plan(bframe_clip: Path) -> None:
    assert _assert_same(bframe_clip, Sampling()) == 0


def test_a_plan_the_decoder_contradicts_falls_back_to_decoding_everything(
    bframe_clip: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = pyav_source.plan_decode

    def wrong(*args: object, **kwargs: object) -> DecodePlan | None:
        plan = real(*args, **kwargs)  # type: ignore[arg-type]
        assert plan is not None
        plan.position = {pts + 1: where for pts, where in plan.position.items()}  # no frame has these pts
        return plan

    monkeypatch.setattr(pyav_source, "plan_decode", wrong)
    assert _assert_same(bframe_clip, Sampling(target_fps=2.0)) == 0


def test_damage_seen_while_skipping_turns_skipping_off(bframe_clip: Path, tmp_path: Path) -> None:
    """Damage turns skipping off: the video is decoded again in full and every frame is counted. The
    sampled frames the skipping pass emitted before the damage surfaced keep its pixels: FFmpeg's error
    concealment depends on which frames were decoded before (and on frame-thread timing), so on damaged
    data they may differ from a full decode (seen in CI); frames after the damage come from the full decode."""
    damaged = synthetic.write_corrupted_copy(bframe_clip, tmp_path / "damaged.mp4", seed=0, fraction=0.002)
    with open_video(damaged, backend="pyav", sampling=Sampling(target_fps=2.0), skip_unneeded=False, chunk_size=4) as stream:
        full = [b for b in stream]
        full_stats = stream.stats
    assert full_stats.corrupt_frames > 0
    with open_video(damaged, backend="pyav", sampling=Sampling(target_fps=2.0), skip_unneeded=True, chunk_size=4) as stream:
        needed = [b for b in stream]
        needed_stats = stream.stats
    assert [i for b in needed for i in b.indices] == [i for b in full for i in b.indices]
    assert [t for b in needed for t in b.timestamps_s] == [t for b in full for t in b.timestamps_s]
    assert needed_stats.skipped_frames == 0 and needed_stats.corrupt_frames == full_stats.corrupt_frames
    assert torch.equal(needed[-1].frames[-1], full[-1].frames[-1])


def test_hevc_open_gop_with_leading_pictures(tmp_path: Path) -> None:
    """x265 with open GOPs: frames shown before a keyframe refer to the GOP before it, so that GOP
    stays; non-reference frames are still skipped, the sampled frames stay identical."""
    if "libx265" not in av.codecs_available:
        pytest.skip("this FFmpeg has no libx265")
    path = tmp_path / "open_gop.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx265", rate=30)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        stream.options = {
            "preset": "veryfast",
            "x265-params": "keyint=10:min-keyint=10:bframes=3:b-pyramid=1:open-gop=1:log-level=error",
        }
        for frame in synthetic.iter_frames(60, (320, 240), face=True, seed=0):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with av.open(str(path)) as container:
        packets = [(p.pts, p.is_keyframe) for p in container.demux(container.streams.video[0]) if p.size]
    keys = [i for i, (_, key) in enumerate(packets) if key]
    assert any(packets[k + 1][0] < packets[k][0] for k in keys[1:] if k + 1 < len(packets))  # leading pictures
    for sampling in SAMPLINGS:
        assert _assert_same(path, sampling) > 0
