"""`ralf-cli calibrate` end to end on generated face crops and clips, and how verdicts use the result."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from cli.main import app
from pipeline import synthetic
from pipeline.aggregate import track_score
from pipeline.scan import Scanner
from ralf.config import RALFConfig
from ralf.core.decision import Decision
from ralf.core.metadata import read_metadata
from ralf.core.options import ScanOptions
from ralf.model import RALF
from ralf.weights import load_weights, save_weights, tensors_digest
from trainer.calibrate import calibrate, calibration_from_scores, save_calibration
from trainer.data import read_rgb, to_model_input
from trainer.evaluate import evaluate
from trainer.scoring import ScoredSet, collect_items, dataset_fingerprint

runner = CliRunner()
SMALL_CLIP = {"num_frames": 12, "fps": 12.0, "size": (160, 120)}


def _invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.output


def _tiny_weights(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    save_weights(path, RALF(RALFConfig.tiny()).eval())
    return path


def _write_crops(folder: Path, count: int, seed: int) -> list[Path]:
    """Face crops of the astronaut with random shifts, zoom and noise (64x64 PNG)."""
    rng = np.random.default_rng(seed)
    face = synthetic.astronaut_face()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        top, left = rng.integers(0, 40, size=2)
        crop = face[top : top + 150, left : left + 140].astype(np.float32)
        crop = crop * rng.uniform(0.6, 1.2) + rng.normal(0, rng.uniform(1, 30), crop.shape)
        image = Image.fromarray(np.clip(crop, 0, 255).astype(np.uint8)).resize((64, 64))
        paths.append(folder / f"crop{i:02d}.png")
        image.save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def crops_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("crops")
    _write_crops(root / "real", 6, seed=1)
    _write_crops(root / "fake", 6, seed=2)
    return root


def _eager_logits(weights: Path, files: list[Path]) -> np.ndarray:
    model, _ = load_weights(weights)
    crops = torch.stack([to_model_input(read_rgb(f), 64) for f in files])
    with torch.inference_mode():
        return model(crops).double().numpy()


def test_frame_level_calibration_is_written_into_the_weights(crops_data: Path, tmp_path: Path) -> None:
    weights = _tiny_weights(tmp_path / "w.safetensors")
    before = load_weights(weights)[0].state_dict()
    roc = tmp_path / "roc.png"
    code, output = _invoke(
        "calibrate", str(weights), "--data", str(crops_data), "--target-fpr", "0.34", "--temperature",
        "--roc", str(roc), "--device", "cpu", "--engine", "eager",
    )
    assert code == 0, output
    calibration = read_metadata(weights).calibration
    assert calibration is not None
    assert (calibration.level, calibration.method, calibration.target_fpr) == ("frame", "target_fpr", 0.34)
    assert (calibration.num_real, calibration.num_fake) == (6, 6)
    assert calibration.temperature is not None and calibration.temperature > 0
    assert calibration.dataset_fingerprint == dataset_fingerprint(crops_data, collect_items(crops_data))
    assert calibration.date
    # The reported rates are what the model's logits give with the stored threshold.
    real = sorted((crops_data / "real").iterdir())
    fake = sorted((crops_data / "fake").iterdir())
    real_fake_called = _eager_logits(weights, real) >= calibration.threshold
    fake_fake_called = _eager_logits(weights, fake) >= calibration.threshold
    assert fake_fake_called.mean() == pytest.approx(calibration.achieved_tpr)
    assert real_fake_called.mean() == pytest.approx(calibration.achieved_fpr)
    assert calibration.achieved_fpr <= 0.34
    # Tensors untouched, so the model version (and any exported engine) stays valid.
    after, metadata = load_weights(weights)
    assert tensors_digest(after.state_dict()) == tensors_digest(before)
    assert metadata.model_version.endswith(tensors_digest(before)[:12])
    assert roc.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "achieved" in output and "written to" in output


def test_eer_dry_run_reports_without_writing(crops_data: Path, tmp_path: Path) -> None:
    weights = _tiny_weights(tmp_path / "w.safetensors")
    code, output = _invoke("calibrate", str(weights), "--data", str(crops_data), "--eer", "--dry-run", "--device", "cpu")
    assert code == 0, output
    assert "eer" in output and "--dry-run" in output
    assert read_metadata(weights).calibration is None


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({"real": 6}, "needs both real/ and fake/"),
        ({"real": 6, "fake": 0}, "no usable fake samples"),
        ({"real": 3, "fake": 3}, "too little validation data: 3 real and 3 fake"),
    ],
)
def test_one_class_or_too_little_data_exits_2(layout: dict[str, int], message: str, tmp_path: Path) -> None:
    weights = _tiny_weights(tmp_path / "w.safetensors")
    for label, count in layout.items():
        (tmp_path / "data" / label).mkdir(parents=True)
        _write_crops(tmp_path / "data" / label, count, seed=count)
    code, output = _invoke("calibrate", str(weights), "--data", str(tmp_path / "data"), "--device", "cpu")
    assert code == 2
    assert message in " ".join(output.split())
    assert read_metadata(weights).calibration is None


def test_conflicting_or_impossible_requests_exit_2(crops_data: Path, tmp_path: Path) -> None:
    weights = _tiny_weights(tmp_path / "w.safetensors")
    code, output = _invoke("calibrate", str(weights), "--data", str(crops_data), "--eer", "--target-fpr", "0.1")
    assert code == 2 and "either --target-fpr or --eer" in output
    code, output = _invoke("calibrate", str(tmp_path / "missing.safetensors"), "--data", str(crops_data))
    assert code == 2 and "not found" in output
    code, output = _invoke("calibrate", str(weights), "--data", str(crops_data), "--level", "video")
    assert code == 2 and "loose crop images" in " ".join(output.split())


def _flipping_scores(score: float) -> ScoredSet:
    """Video scores whose threshold (target FPR 0) lands between 0.5 and `score`, on the far side of it."""
    cut = score + (1 - score) / 2 if score >= 0.5 else score / 2
    reals = [cut * (1 - 0.05 * (i + 1)) for i in range(5)]
    fakes = [cut + (1 - cut) * 0.1 * i for i in range(5)]
    return ScoredSet([f"v{i}" for i in range(10)], np.array([0] * 5 + [1] * 5, dtype=bool), np.array(reals + fakes))


def test_calibrated_threshold_round_trips_and_flips_the_verdict(make_clip, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    weights = _tiny_weights(tmp_path / "w.safetensors")
    clip = make_clip("h264", **SMALL_CLIP)
    options = ScanOptions(device="cpu", every_n=2, engine="eager")
    before = Scanner(options, weights).scan(clip)
    assert before.label in ("real", "fake") and before.score is not None, before.error
    assert before.threshold == 0.5 and before.threshold_source.startswith("uncalibrated")

    result = calibration_from_scores(
        _flipping_scores(before.score), level="video", method="target_fpr", target_fpr=0.0, temperature=None,
        fingerprint="generated",
    )
    save_calibration(weights, result.calibration)
    assert read_metadata(weights).calibration == result.calibration

    after = Scanner(options, weights).scan(clip)
    assert after.score == pytest.approx(before.score, abs=1e-12)
    assert after.threshold == result.threshold_probability
    assert after.label == ("real" if before.label == "fake" else "fake")
    assert after.threshold_source.startswith("calibrated") and "target FPR 0" in after.threshold_source
    assert "video level" in after.threshold_source


def test_video_level_calibration_with_the_scanner(tmp_path: Path) -> None:
    data = tmp_path / "videos"
    for label, seeds in (("real", (1, 2)), ("fake", (3, 4))):
        (data / label).mkdir(parents=True)
        for seed in seeds:
            synthetic.write_face_clip(data / label / f"s{seed}.mp4", codec="h264", seed=seed, **SMALL_CLIP)
    synthetic.write_face_clip(data / "real" / "noface.mp4", codec="h264", face=False, **SMALL_CLIP)
    weights = _tiny_weights(tmp_path / "w.safetensors")
    code, output = _invoke(
        "calibrate", str(weights), "--data", str(data), "--eer", "--temperature", "--min-per-class", "2",
        "--device", "cpu", "--every-n", "3",
    )
    assert code == 0, output
    calibration = read_metadata(weights).calibration
    assert calibration is not None and calibration.level == "video"
    assert (calibration.num_real, calibration.num_fake) == (2, 2)
    assert "noface.mp4" in output and "no face found" in output
    # The calibrated scanner labels the validation videos exactly at the reported operating point.
    scanner = Scanner(ScanOptions(device="cpu", every_n=3), weights)
    called = {
        label: [scanner.scan(data / label / f"s{seed}.mp4").label == "fake" for seed in seeds]
        for label, seeds in (("real", (1, 2)), ("fake", (3, 4)))
    }
    assert np.mean(called["fake"]) == pytest.approx(calibration.achieved_tpr)
    assert np.mean(called["real"]) == pytest.approx(calibration.achieved_fpr)


def test_scan_evaluate_and_calibrate_agree_with_a_fitted_temperature(tmp_path: Path) -> None:
    # Crop folders: a "video" per folder for calibrate's video level and for evaluate's folder layout.
    data = tmp_path / "videos"
    for label, first_seed in (("real", 10), ("fake", 20)):
        for video in range(4):
            _write_crops(data / label / f"v{video}", 4, seed=first_seed + video)
    weights = _tiny_weights(tmp_path / "w.safetensors")
    options = ScanOptions(device="cpu", engine="eager")
    result = calibrate(weights, data, options=options, level="video", method="eer", fit_temp=True, min_per_class=3)
    calibration = result.calibration
    assert calibration.temperature is not None and abs(np.log(calibration.temperature)) > 0.1  # T matters here
    save_calibration(weights, calibration)

    # Scan: the scanner decides with the calibration's temperature, at the threshold calibrate reported,
    # and its scores reproduce calibrate's operating point exactly.
    scanner = Scanner(options, weights)
    assert scanner.decision == Decision.from_calibration(calibration)
    assert scanner.threshold == result.threshold_probability
    videos = sorted(f"{label}/{folder.name}" for label in ("real", "fake") for folder in (data / label).iterdir())
    scanned = {}
    for video in videos:
        crops = torch.stack([to_model_input(read_rgb(f), 64) for f in sorted((data / video).glob("*.png"))])
        scanned[video] = track_score(scanner.decision.probabilities(scanner.engine.logits(crops)))
    called = {video: score >= scanner.threshold for video, score in scanned.items()}
    assert np.mean([called[v] for v in videos if v.startswith("fake/")]) == calibration.achieved_tpr
    assert np.mean([called[v] for v in videos if v.startswith("real/")]) == calibration.achieved_fpr

    # Evaluate: the same threshold and, video by video, the scanner's P(fake).
    report = evaluate(weights, data, split="all", device="cpu", batch_size=8, num_workers=0, progress=False)
    assert report.threshold == scanner.threshold
    assert report.clean.video.scores == pytest.approx([scanned[v] for v in videos], rel=1e-5, abs=1e-6)
    assert list(report.clean.video.labels) == [v.startswith("fake/") for v in videos]


SHARED_CROPS = Path(__file__).resolve().parents[2] / "shared" / "data" / "crops"


@pytest.mark.shared_data
@pytest.mark.skipif(not (SHARED_CROPS / "real").is_dir(), reason="../shared/data/crops not present")
def test_frame_level_calibration_on_real_face_crops(tmp_path: Path) -> None:
    # Celeb-DF / FaceForensics crops of several sizes; random weights, so only the plumbing is checked.
    weights = _tiny_weights(tmp_path / "w.safetensors")
    code, output = _invoke(
        "calibrate", str(weights), "--data", str(SHARED_CROPS), "--eer", "--temperature", "--device", "cpu",
    )
    assert code == 0, output
    calibration = read_metadata(weights).calibration
    assert calibration is not None and calibration.level == "frame"
    assert (calibration.num_real, calibration.num_fake) == (18, 30)
    assert 0.0 <= calibration.achieved_fpr <= 1.0 and calibration.temperature is not None


def test_registering_export_and_calibrate_does_not_load_torch() -> None:
    import subprocess
    import sys

    code = "import sys, cli.engine; print('torch' in sys.modules)"
    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "False"
