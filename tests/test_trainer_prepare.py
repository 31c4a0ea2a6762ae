"""`prepare`: face crops of the astronaut from a generated video; no-face videos recorded; resumable."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline import synthetic
from pipeline.crops import crop_faces
from pipeline.faces import build_detector
from trainer import data
from trainer.prepare import VIDEOS_FILE, PrepareOptions, evenly_spaced, prepare, safe_relative


@pytest.fixture(scope="module")
def detector():
    return build_detector("mtcnn", "cpu")


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("prepare_src")
    (root / "real").mkdir()
    (root / "fake").mkdir()
    synthetic.write_face_clip(root / "real" / "astro.mp4", codec="h264", num_frames=20)
    synthetic.write_face_clip(root / "fake" / "empty.mp4", codec="h264", num_frames=12, face=False)
    return root


@pytest.fixture(scope="module")
def reference_crop(detector) -> np.ndarray:
    """The astronaut's face cropped from the original photo the same way (96 px, margin 0.3)."""
    from skimage import data as skdata

    photo = torch.from_numpy(skdata.astronaut().copy())[None]
    (found,) = detector.detect(photo)
    crop = crop_faces(photo, torch.tensor([0]), found.boxes[:1].cpu(), 96, 0.3)[0]
    return (crop.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def _similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised correlation of two RGB images in grey levels at 32x32."""
    x, y = (np.asarray(Image.fromarray(i).convert("L").resize((32, 32)), np.float64) for i in (a, b))
    x, y = x - x.mean(), y - y.mean()
    return float((x * y).sum() / np.sqrt((x * x).sum() * (y * y).sum()))


def test_prepare_crops_the_face_and_records_no_face(
    videos: Path, tmp_path: Path, detector, reference_crop: np.ndarray
) -> None:
    out = tmp_path / "prepared"
    options = PrepareOptions(frames=6, size=96, margin=0.3, detector="mtcnn")
    summary = prepare(videos, out, "folder", options, detector=detector, progress=False)
    assert summary.videos == 2 and summary.status == {"ok": 1, "no_face": 1} and summary.crops == 6

    rows = [json.loads(line) for line in (out / data.INDEX_FILE).read_text().splitlines()]
    indices = [r["frame_index"] for r in rows]
    assert len(set(indices)) == 6 and indices[0] == 0 and indices[-1] >= 15  # spread over all 20 frames
    assert {r["video_id"] for r in rows} == {"real/astro"} and {r["label"] for r in rows} == {"real"}
    for row in rows:
        assert row["score"] > 0.9 and len(row["box"]) == 4
        crop = np.asarray(Image.open(out / row["path"]))
        assert crop.shape == (96, 96, 3)
        assert _similarity(crop, reference_crop) > 0.8, row["path"]  # the astronaut's face, framed alike
        assert _similarity(crop, np.ascontiguousarray(reference_crop[::-1])) < 0.5  # not just any bright blob
        (found,) = detector.detect(torch.from_numpy(crop.copy())[None])
        assert len(found) >= 1  # MTCNN sees a face in the saved crop again
    status = {r["video_id"]: r for r in map(json.loads, (out / VIDEOS_FILE).read_text().splitlines())}
    assert status["fake/empty"]["status"] == "no_face" and status["fake/empty"]["frames"] == 6
    assert status["real/astro"]["status"] == "ok" and status["real/astro"]["crops"] == 6

    # Crops load as training records straight away.
    records = data.load_crop_records(out)
    assert len(records) == 6 and not any(r.is_fake for r in records)

    # A re-run skips finished videos; index rows of an interrupted video are dropped.
    with (out / data.INDEX_FILE).open("a") as handle:
        handle.write(json.dumps({**rows[0], "video_id": "real/interrupted"}) + "\n")
    again = prepare(videos, out, "folder", options, detector=detector, progress=False)
    assert again.videos == 0 and again.skipped == 2
    assert len((out / data.INDEX_FILE).read_text().splitlines()) == 6


def test_prepare_short_video_and_unreadable_video(tmp_path: Path, detector) -> None:
    src = tmp_path / "src"
    (src / "fake").mkdir(parents=True)
    synthetic.write_face_clip(src / "fake" / "short.mp4", codec="h264", num_frames=3)
    synthetic.write_text_as_video(src / "fake" / "broken.mp4")
    summary = prepare(src, tmp_path / "out", "folder", PrepareOptions(frames=32, size=64, detector="mtcnn"), detector=detector, progress=False)
    assert summary.status == {"ok": 1, "error": 1}
    videos = {r["video_id"]: r for r in map(json.loads, (tmp_path / "out" / VIDEOS_FILE).read_text().splitlines())}
    assert videos["fake/short"]["frames"] == 3 and videos["fake/short"]["crops"] == 3  # what it has
    assert videos["fake/broken"]["status"] == "error" and videos["fake/broken"]["error"]


def test_safe_relative_paths_and_even_spacing() -> None:
    assert evenly_spaced(3, 32) == [0, 1, 2]
    assert evenly_spaced(100, 5) == [0, 25, 50, 74, 99]
    assert safe_relative("Deepfakes/000_003") == Path("Deepfakes/000_003")
    assert safe_relative("../../etc/pass wd") == Path("__/__/etc/pass_wd")


def test_main_face_is_the_largest_confident_one() -> None:
    from pipeline.faces import Detections

    from trainer.prepare import main_face

    detections = Detections(
        boxes=torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 50.0, 50.0], [0.0, 0.0, 90.0, 90.0]]),
        scores=torch.tensor([0.99, 0.95, 0.5]),
    )
    box, score, _ = main_face(detections, min_score=0.9)
    assert box.tolist() == [0.0, 0.0, 50.0, 50.0] and score == pytest.approx(0.95)
    assert main_face(detections, min_score=0.999) is None
