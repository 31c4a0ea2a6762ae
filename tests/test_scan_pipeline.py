"""Scanner end to end on generated clips: faces, tracks, decoders, batching, thresholds, limits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline import loading as loading_module
from pipeline.decode import DaliDecodeError, VideoInfo
from pipeline.decode.dali import DaliFrameSource
from pipeline.decode.sampling import expected_samples
from pipeline.engine import InferenceOutOfMemory
from pipeline.precision import precision_supported
from pipeline.scan import RANDOM_WEIGHTS_WARNING, Scanner
from ralf.config import RALFConfig
from ralf.core.decision import UNCALIBRATED_THRESHOLD_SOURCE
from ralf.core.metadata import Calibration, CropGeometry, WeightsMetadata
from ralf.core.options import Sampling, ScanOptions
from ralf.model import RALF
from ralf.weights import save_weights

# 24 frames at 160x120: the face moves ~1/24 of its path between frames, so every sampled
# frame overlaps the previous one and one track is expected.
SMALL_CLIP = {"num_frames": 24, "fps": 12.0, "size": (160, 120)}


def _scanner(**options: object) -> Scanner:
    return Scanner(ScanOptions(**{"device": "cpu", "every_n": 1, **options}), preset_if_random="tiny")


@pytest.fixture(scope="module")
def scanner() -> Scanner:
    return _scanner()


@pytest.fixture(scope="module")
def small_h264(make_clip) -> Path:  # type: ignore[no-untyped-def]
    return make_clip("h264", **SMALL_CLIP)


@pytest.fixture(scope="module")
def small_vp9(make_clip) -> Path:  # type: ignore[no-untyped-def]
    return make_clip("vp9", **SMALL_CLIP)


@pytest.fixture(scope="module")
def h264_verdict(scanner: Scanner, small_h264: Path):  # type: ignore[no-untyped-def]
    return scanner.scan(small_h264)


@pytest.mark.parametrize("codec_fixture", ["h264_verdict", "vp9_verdict"])
def test_face_in_every_sampled_frame_gives_one_track(codec_fixture: str, request: pytest.FixtureRequest) -> None:
    verdict = request.getfixturevalue(codec_fixture)
    assert verdict.label in ("real", "fake"), verdict.error
    assert verdict.counts.frames_decoded == SMALL_CLIP["num_frames"]
    assert verdict.counts.faces == SMALL_CLIP["num_frames"]
    assert verdict.counts.tracks == 1 and len(verdict.tracks) == 1
    track = verdict.tracks[0]
    assert track.num_faces == SMALL_CLIP["num_frames"]
    assert track.first_time_s == pytest.approx(0.0)
    assert track.last_time_s == pytest.approx((SMALL_CLIP["num_frames"] - 1) / SMALL_CLIP["fps"], abs=1e-3)
    assert verdict.score == pytest.approx(track.score)
    assert 0.0 < verdict.score < 1.0
    assert verdict.label == ("fake" if verdict.score >= verdict.threshold else "real")
    assert len(track.suspicious_times_s) == 3


@pytest.mark.parametrize("clip_fixture", ["face_clip_h264", "face_clip_vp9"])
def test_default_sampling_keeps_a_fast_face_on_one_track(clip_fixture: str, request: pytest.FixtureRequest) -> None:
    # At the default 2 fps the face moves about one face width between sampled frames, so the
    # boxes do not overlap: the tracker must associate them by nearness.
    verdict = Scanner(ScanOptions(device="cpu"), preset_if_random="tiny").scan(request.getfixturevalue(clip_fixture))
    assert verdict.label in ("real", "fake"), verdict.error
    assert verdict.counts.frames_decoded == 4 and verdict.counts.faces == 4
    assert verdict.counts.tracks == 1
    assert [t.num_faces for t in verdict.tracks] == [4]


@pytest.fixture(scope="module")
def vp9_verdict(small_vp9: Path):  # type: ignore[no-untyped-def]
    return _scanner(decoder="dali").scan(small_vp9)


def test_dali_cpu_and_pyav_give_the_same_verdict(vp9_verdict, small_vp9: Path) -> None:  # type: ignore[no-untyped-def]
    pyav = _scanner(decoder="pyav").scan(small_vp9)
    assert (vp9_verdict.decoder, pyav.decoder) == ("dali", "pyav")
    assert pyav.label == vp9_verdict.label
    assert pyav.counts == vp9_verdict.counts
    assert pyav.score == pytest.approx(vp9_verdict.score, abs=0.01)
    for dali_track, pyav_track in zip(vp9_verdict.tracks, pyav.tracks, strict=True):
        assert pyav_track.score == pytest.approx(dali_track.score, abs=0.01)


def test_batched_scan_equals_per_crop_scan(small_h264: Path) -> None:
    # Batch 4 over 6 faces also exercises the remainder that waits for the final flush.
    batched = _scanner(max_frames=6, every_n=None, batch_size=4).scan(small_h264)
    one_at_a_time = _scanner(max_frames=6, every_n=None, batch_size=1).scan(small_h264)
    assert batched.counts.faces == 6
    assert one_at_a_time.counts == batched.counts
    for batched_track, single_track in zip(batched.tracks, one_at_a_time.tracks, strict=True):
        assert single_track.score == pytest.approx(batched_track.score, rel=1e-5, abs=1e-6)


def test_verdict_reports_model_stages_and_random_weights(h264_verdict, scanner: Scanner) -> None:  # type: ignore[no-untyped-def]
    assert h264_verdict.weights_random is True
    assert RANDOM_WEIGHTS_WARNING in h264_verdict.warnings
    assert h264_verdict.threshold == 0.5
    assert h264_verdict.threshold_source == UNCALIBRATED_THRESHOLD_SOURCE
    assert h264_verdict.model_version == scanner.model_version == "random-tiny-seed0"
    assert (h264_verdict.engine, h264_verdict.decoder, h264_verdict.detector) == ("eager", "pyav", "mtcnn")
    timings = h264_verdict.timings
    assert timings.detect_s > 0 and timings.infer_s > 0
    stages = timings.decode_s + timings.detect_s + timings.crop_s + timings.infer_s + timings.aggregate_s
    assert stages <= timings.total_s


def test_random_weights_are_the_same_in_every_scanner(scanner: Scanner) -> None:
    torch.manual_seed(123)  # the global seed must not matter, and must not be changed
    state_before = torch.random.get_rng_state()
    again = _scanner()
    assert torch.equal(torch.random.get_rng_state(), state_before)
    first, second = scanner.engine.model.state_dict(), again.engine.model.state_dict()  # type: ignore[attr-defined]
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_progress_reports_sampled_frames(small_h264: Path) -> None:
    calls: list[tuple[int, int]] = []
    scanner_small_chunks = _scanner(chunk_size=5, every_n=2)
    verdict = scanner_small_chunks.scan(small_h264, progress=lambda done, total: calls.append((done, total)))
    assert [done for done, _ in calls] == [5, 10, 12]
    assert all(total == 12 for _, total in calls)
    assert verdict.counts.frames_decoded == 12


def test_faceless_video_is_no_face(scanner: Scanner, faceless_clip: Path) -> None:
    verdict = scanner.scan(faceless_clip)
    assert verdict.label == "no_face"
    assert verdict.score is None and verdict.tracks == [] and verdict.error is None
    assert verdict.counts.frames_decoded > 0 and verdict.counts.faces == 0


def test_calibrated_threshold_comes_from_the_weights(tmp_path: Path, small_h264: Path) -> None:
    torch.manual_seed(3)
    model = RALF(RALFConfig.tiny())
    calibration = Calibration(
        threshold=-20.0,  # on the logit: every face is fake
        method="target_fpr",
        target_fpr=0.01,
        achieved_tpr=0.9,
        achieved_fpr=0.01,
        level="video",
        dataset_fingerprint="test",
        date="2025-01-01",
        num_real=10,
        num_fake=10,
    )
    weights = tmp_path / "calibrated.safetensors"
    metadata = save_weights(weights, model, WeightsMetadata(config=model.config, calibration=calibration))
    calibrated = Scanner(ScanOptions(device="cpu", max_frames=4), weights)
    assert calibrated.weights_random is False
    verdict = calibrated.scan(small_h264)
    assert verdict.model_version == metadata.model_version
    assert verdict.threshold == pytest.approx(torch.sigmoid(torch.tensor(-20.0)).item())
    assert verdict.threshold_source.startswith("calibrated (target_fpr")
    assert verdict.label == "fake"
    assert verdict.warnings == []


def test_too_large_and_too_long_inputs_are_refused(small_h264: Path) -> None:
    large = Scanner(ScanOptions(device="cpu", max_file_bytes=100), preset_if_random="tiny").scan(small_h264)
    assert large.label == "error" and large.error.startswith("file too large")
    long = Scanner(ScanOptions(device="cpu", max_duration_s=0.5), preset_if_random="tiny").scan(small_h264)
    assert long.label == "error" and long.error.startswith("video too long")


def test_out_of_memory_is_raised_for_a_retry(small_h264: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scanner = _scanner(every_n=None, max_frames=2)

    def exhausted(crops: torch.Tensor) -> torch.Tensor:
        raise InferenceOutOfMemory(scanner.engine.max_batch, torch.device("cuda"), "CUDA out of memory")

    monkeypatch.setattr(scanner.engine, "logits", exhausted)
    with pytest.raises(InferenceOutOfMemory):
        scanner.scan(small_h264)


def test_internal_failure_raises_and_has_its_own_verdict(small_h264: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scanner = _scanner()

    def broken(frames: torch.Tensor) -> list:
        raise RuntimeError("detector exploded")

    monkeypatch.setattr(scanner.detector, "detect", broken)
    with pytest.raises(RuntimeError, match="detector exploded"):
        scanner.scan(small_h264)
    verdict = scanner.internal_error_verdict(small_h264, RuntimeError("detector exploded"))
    assert verdict.label == "error"
    assert verdict.error == "internal: RuntimeError: detector exploded"


def test_warm_up_runs_two_forwards_at_the_batch_size(scanner: Scanner, monkeypatch: pytest.MonkeyPatch) -> None:
    small_batches = scanner.with_options(scanner.options.model_copy(update={"batch_size": 4}))
    forwards: list[tuple[int, ...]] = []
    frames: list[tuple[int, ...]] = []
    real_logits, real_detect = scanner.engine.logits, scanner.detector.detect

    def logits(crops: torch.Tensor) -> torch.Tensor:
        forwards.append(tuple(crops.shape))
        return real_logits(crops)

    def detect(batch: torch.Tensor) -> list:
        frames.append(tuple(batch.shape))
        return real_detect(batch)

    monkeypatch.setattr(scanner.engine, "logits", logits)
    monkeypatch.setattr(scanner.detector, "detect", detect)
    small_batches.warm_up()
    size = scanner.image_size
    # oneDNN settles over the first forwards of a shape: more than one, each at the batch size
    assert len(forwards) >= 2 and set(forwards) == {(4, 3, size, size)}
    assert len(frames) == 1 and frames[0][0] == 1 and frames[0][-1] == 3  # one blank RGB frame


@pytest.mark.parametrize(
    ("sampling", "expected"),
    [
        (Sampling(), 240),
        (Sampling(every_n=7), 35),
        (Sampling(target_fps=2.0), 20),
        (Sampling(max_frames=16), 16),
        (Sampling(max_frames=1000), 240),
    ],
)
def test_expected_samples(sampling: Sampling, expected: int) -> None:
    info = VideoInfo(width=320, height=240, fps=24.0, duration_s=10.0, num_frames=240, codec="h264")
    assert expected_samples(info, sampling) == expected


def test_expected_samples_unknown_length_is_zero() -> None:
    info = VideoInfo(width=320, height=240, fps=24.0, codec="h264")
    assert expected_samples(info, Sampling(target_fps=2.0)) == 0


def test_large_frames_get_smaller_chunks(scanner: Scanner) -> None:
    uhd = VideoInfo(width=3840, height=2160, fps=30.0, codec="hevc")
    small = VideoInfo(width=320, height=240, fps=30.0, codec="h264")
    options, pixels = scanner.options, 3840 * 2160
    assert scanner.chunk_frames(small) == options.chunk_size  # small frames fill whole chunks
    frames = scanner.chunk_frames(uhd)
    assert 1 < frames < options.chunk_size
    assert frames * pixels <= options.chunk_pixels < (frames + 1) * pixels  # the most that fit the budget
    assert _scanner(chunk_pixels=1).chunk_frames(uhd) == 1  # never less than one frame


def test_decoder_fallback_part_way_is_reported(small_vp9: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_run_once = DaliFrameSource._run_once
    calls = {"n": 0}

    def fail_on_second_run(self: DaliFrameSource, decoded: int) -> object:
        calls["n"] += 1
        if calls["n"] == 2:
            raise DaliDecodeError("simulated decoder failure")
        return real_run_once(self, decoded)

    monkeypatch.setattr(DaliFrameSource, "_run_once", fail_on_second_run)
    # `auto` takes DALI only on GPUs (NVDEC); its CPU decoder stands in for it here.
    import pipeline.decode.stream as stream_module
    from pipeline.decode.choice import BackendPlan

    monkeypatch.setattr(stream_module, "choose_backend", lambda *a, **k: BackendPlan("dali", "cpu", "test"))
    verdict = _scanner(decoder="auto", chunk_size=8, every_n=3).scan(small_vp9)
    assert verdict.label in ("real", "fake")
    assert verdict.decoder == "pyav"
    assert verdict.counts.frames_decoded == 8
    assert "dali failed part-way; the rest was decoded by pyav" in verdict.warnings


def _forbid_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every way of loading weights, detector or engine fail loudly."""

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("with_options loaded something it should have shared")

    for name in ("load_weights", "_random_model", "build_detector", "load_engine"):
        monkeypatch.setattr(loading_module, name, forbidden)


def test_with_options_shares_the_model_and_matches_a_fresh_scanner(
    scanner: Scanner, small_h264: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = ScanOptions(device="cpu", max_frames=6, batch_size=4, aggregation="median", margin=0.2, top_k=2)
    fresh = Scanner(options, preset_if_random="tiny").scan(small_h264)
    calls: list[int] = []
    real_logits = scanner.engine.logits

    def counting(crops: torch.Tensor) -> torch.Tensor:
        calls.append(crops.shape[0])
        return real_logits(crops)

    monkeypatch.setattr(scanner.engine, "logits", counting)
    _forbid_loading(monkeypatch)
    derived = scanner.with_options(options)
    assert derived.model is scanner.model
    assert derived.engine is scanner.engine and derived.detector is scanner.detector
    assert (derived.options, derived.batch_size, derived.sampling.max_frames) == (options, 4, 6)
    verdict = derived.scan(small_h264)
    assert calls == [4, 2]  # the shared engine (built for 8, tiny's CPU default) gets this scanner's batch size
    assert verdict.counts == fresh.counts and verdict.label == fresh.label
    for derived_track, fresh_track in zip(verdict.tracks, fresh.tracks, strict=True):
        assert derived_track.score == pytest.approx(fresh_track.score, rel=1e-5, abs=1e-6)
    # The original is unchanged: no batch size asked for, so the tiny preset's CPU default.
    assert scanner.options.batch_size is None and scanner.batch_size == 8 and scanner.sampling.every_n == 1


def test_with_options_rebuilds_only_what_must_change(scanner: Scanner) -> None:
    other_detector = scanner.with_options(scanner.options.model_copy(update={"min_face_size": 60}))
    assert other_detector.detector is not scanner.detector
    assert other_detector.engine is scanner.engine and other_detector.model is scanner.model
    larger_batch = scanner.with_options(scanner.options.model_copy(update={"batch_size": 64}))
    assert larger_batch.engine is not scanner.engine and larger_batch.engine.max_batch == 64
    assert larger_batch.model is scanner.model and larger_batch.detector is scanner.detector
    eager = scanner.with_options(scanner.options.model_copy(update={"engine": "eager"}))
    assert eager.engine is not scanner.engine and eager.model is scanner.model


def test_out_of_memory_names_the_smaller_batch_of_a_derived_scanner(
    small_h264: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scanner = _scanner(every_n=None, max_frames=6)
    smaller = scanner.with_options(scanner.options.model_copy(update={"batch_size": 2}))

    def exhausted(crops: torch.Tensor) -> torch.Tensor:
        error = InferenceOutOfMemory(scanner.engine.max_batch, torch.device("cuda"), "CUDA out of memory")
        raise error from torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(scanner.engine, "logits", exhausted)
    with pytest.raises(InferenceOutOfMemory, match="at batch size 2") as raised:
        smaller.scan(small_h264)
    assert raised.value.batch_size == 2


def test_error_verdict_carries_the_scanner_facts(scanner: Scanner) -> None:
    verdict = scanner.error_verdict("https://example.com/a//b.mp4", "download refused: too large")
    assert verdict.path == "https://example.com/a//b.mp4"  # kept as given, not normalised as a path
    assert (verdict.label, verdict.error, verdict.score) == ("error", "download refused: too large", None)
    assert verdict.model_version == scanner.model_version and verdict.threshold == scanner.threshold
    assert (verdict.engine, verdict.detector) == (scanner.engine.name, scanner.detector.name)
    assert verdict.weights_random and verdict.warnings == scanner.warnings


def test_auto_detector_follows_the_weights_and_a_different_one_is_warned_about(tmp_path: Path) -> None:
    model = RALF(RALFConfig.from_preset("tiny"))
    unrecorded, retinaface = tmp_path / "unrecorded.safetensors", tmp_path / "retinaface.safetensors"
    save_weights(unrecorded, model, WeightsMetadata(config=model.config))
    save_weights(retinaface, model, WeightsMetadata(config=model.config, crop=CropGeometry(detector="retinaface")))
    options = ScanOptions(device="cpu")

    older = Scanner(options, unrecorded)  # weights from before the record: prepare cut them with MTCNN
    assert older.detector.name == "mtcnn" and not older.warnings
    assert Scanner(options, retinaface).detector.name == "retinaface"
    swapped = older.with_options(options.model_copy(update={"detector": "retinaface"}))
    assert swapped.detector.name == "retinaface"
    assert any("trained on crops around mtcnn face boxes" in w for w in swapped.warnings)
    assert Scanner(options.model_copy(update={"detector": "retinaface"}), preset_if_random="tiny").warnings == [
        RANDOM_WEIGHTS_WARNING
    ]


def test_detector_precision_is_an_option_and_the_verdict_says_which_ran(face_clip_h264: Path) -> None:
    fp32 = Scanner(ScanOptions(device="cpu", detector="retinaface", max_frames=6), preset_if_random="tiny")
    verdict = fp32.scan(face_clip_h264)
    assert fp32.detector.precision == "fp32" and verdict.detector_precision == "fp32"
    if not precision_supported("bf16", "cpu")[0]:
        pytest.skip("this CPU has no native bfloat16")
    bf16 = fp32.with_options(fp32.options.model_copy(update={"detector_precision": "bf16"}))
    assert bf16.detector is not fp32.detector and bf16.engine is fp32.engine
    low = bf16.scan(face_clip_h264)
    assert low.detector_precision == "bf16" and low.label == verdict.label
    assert low.counts.faces == verdict.counts.faces and len(low.tracks) == len(verdict.tracks) == 1
