"""The recipe's data side: the reals layout (person groups, fixed held-back share), stills padded to
the scanner's framing, landmarks recorded in crop pixels, and train/serve crop parity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline import synthetic
from pipeline.crops import crop_faces, landmarks_in_crops, stretched_regions
from pipeline.faces import build_detector
from pipeline.scan import Scanner
from ralf.config import RALFConfig
from ralf.core.metadata import WeightsMetadata
from ralf.core.options import ScanOptions
from ralf.model import RALF
from ralf.weights import save_weights
from trainer import data
from trainer.layouts import held_out, person_group, read_layout
from trainer.prepare import OPTIONS_FILE, PrepareOptions, padded_still, prepare, read_prepare_options
from trainer.run_data import crop_geometry


@pytest.fixture(scope="module")
def detector():
    return build_detector("mtcnn", "cpu", min_face_size=40)


def test_reals_layout_groups_people_and_holds_back_a_fixed_share(tmp_path: Path) -> None:
    root = tmp_path / "reals"
    (root / "mead").mkdir(parents=True)
    for name in ("M030_front_angry_001.mp4", "M030_front_sad_001.mp4", "W009_front_sad_001.mp4"):
        (root / "mead" / name).write_bytes(b"")
    (root / "stills").mkdir()
    for i in range(200):
        (root / "stills" / f"{i}_0_1_2017.jpg").write_bytes(b"")
    (root / "notes.txt").write_text("not media")
    entries = read_layout("reals", root, holdout=0.25)
    assert len(entries) == 203 and not any(e.is_fake for e in entries)
    groups = {e.video_id: e.group_id for e in entries}
    assert groups["mead/M030_front_angry_001.mp4"] == groups["mead/M030_front_sad_001.mp4"] == "mead/M030"
    assert groups["mead/W009_front_sad_001.mp4"] == "mead/W009"
    splits = {e.group_id: e.split for e in entries}
    assert all(splits[e.group_id] == e.split for e in entries)  # a person is on one side only
    share = sum(s == "test" for s in splits.values()) / len(splits)
    assert 0.15 < share < 0.35
    assert person_group(Path("a/b/12_1_0.jpg")) == "a/b/12_1_0"
    assert held_out("x", 0.0) is False and held_out("x", 0.999999) is True
    # Deterministic: the same files give the same split in another run.
    assert [e.split for e in read_layout("reals", root, holdout=0.25)] == [e.split for e in entries]
    sample = read_layout("reals", root, holdout=0.25, subset=50)
    assert len(sample) == 50 and {e.video_id for e in sample} == {e.video_id for e in read_layout("reals", root, subset=50)}


def test_padded_still_keeps_the_image_and_softens_the_border() -> None:
    image = (np.random.default_rng(0).random((40, 30, 3)) * 255).astype(np.uint8)
    padded = padded_still(image, 0.25)
    assert padded.shape == (60, 50, 3)
    assert np.array_equal(padded[10:50, 10:40], image)
    border = padded[:10].astype(float)
    assert border.std() < image.astype(float).std() / 2  # blurred, not a sharp mirror image
    assert np.array_equal(padded_still(image, 0.0), image)


def test_landmarks_follow_the_crop_transform() -> None:
    boxes = torch.tensor([[10.0, 20.0, 50.0, 60.0]])
    points = torch.tensor([[[10.0, 20.0], [30.0, 40.0], [50.0, 60.0], [10.0, 60.0], [50.0, 20.0]]])
    # Square with margin 0: the box itself maps onto the whole crop.
    mapped = landmarks_in_crops(points, boxes, size=80, margin=0.0)[0]
    assert torch.allclose(mapped[0], torch.tensor([0.0, 0.0])) and torch.allclose(mapped[2], torch.tensor([80.0, 80.0]))
    # A stretched box maps its corners onto the crop's corners in both axes.
    wide = torch.tensor([[0.0, 0.0, 40.0, 20.0]])
    corner = landmarks_in_crops(torch.tensor([[[40.0, 20.0]] * 5]), wide, size=64, margin=0.0, square=False)[0, 0]
    assert torch.allclose(corner, torch.tensor([64.0, 64.0]))
    assert stretched_regions(wide, 0.5).tolist() == [[-10, -5, 50, 25]]
    # The pixel a landmark points at in the frame is the pixel it points at in the crop.
    frame = torch.zeros((1, 100, 100, 3), dtype=torch.uint8)
    frame[0, 37, 23] = 255
    crop = crop_faces(frame, torch.tensor([0]), torch.tensor([[10.0, 20.0, 50.0, 60.0]]), size=40, margin=0.0)[0]
    where = landmarks_in_crops(torch.tensor([[[23.5, 37.5]] * 5]), boxes, size=40, margin=0.0)[0, 0]
    assert crop[0, int(where[1]), int(where[0])] == 1.0


def test_prepare_records_landmarks_and_geometry(tmp_path: Path, detector) -> None:
    from skimage import data as skdata

    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(skdata.astronaut()[0:300, 100:400]).save(src / "astro.png")
    out = tmp_path / "out"
    options = PrepareOptions(size=96, detector="mtcnn")
    summary = prepare(src, out, "reals", options, {"holdout": 0.0}, detector=detector, progress=False)
    assert summary.crops == 1
    row = json.loads((out / data.INDEX_FILE).read_text().splitlines()[0])
    left_eye, right_eye, nose, mouth_left, mouth_right = row["landmarks"]
    assert left_eye[0] < right_eye[0] and left_eye[1] < mouth_left[1] and 20 < nose[0] < 76
    record = data.load_crop_records(out)[0]
    assert record.landmarks is not None and len(record.landmarks) == 5
    assert json.loads((out / OPTIONS_FILE).read_text())["margin"] == 0.3
    with pytest.raises(ValueError, match="another output folder"):
        other = PrepareOptions(size=96, margin=0.5, detector="mtcnn")
        prepare(src, out, "reals", other, {"holdout": 0.0}, detector=detector, progress=False)


def test_prepare_and_scan_cut_the_same_crop_of_the_same_frame(tmp_path: Path) -> None:
    # Default prepare (RetinaFace) -> weights carrying the prepared folder's geometry -> a default scan,
    # whose "auto" detector follows the weights: the model sees the crops it was trained on.
    (tmp_path / "src").mkdir()
    clip = synthetic.write_face_clip(tmp_path / "src" / "clip.mp4", codec="h264", num_frames=6)
    out = tmp_path / "prepared"
    prepare(clip.parent, out, "reals", PrepareOptions(size=64, frames=6, decoder="pyav"), {"holdout": 0.0}, progress=False)
    rows = [json.loads(line) for line in (out / data.INDEX_FILE).read_text().splitlines()]
    assert [r["frame_index"] for r in rows] == list(range(6))
    geometry = crop_geometry([out])
    assert geometry.detector == "retinaface"
    model = RALF(RALFConfig.from_preset("tiny"))
    weights = tmp_path / "retinaface-crops.safetensors"
    save_weights(weights, model, WeightsMetadata(config=model.config, crop=geometry))

    scanner = Scanner(ScanOptions(device="cpu", decoder="pyav", every_n=1), weights)
    assert scanner.detector.name == "retinaface" and not scanner.warnings
    seen: list[torch.Tensor] = []
    engine = scanner.engine

    class Recording:
        name, max_batch = engine.name, engine.max_batch

        def logits(self, crops: torch.Tensor) -> torch.Tensor:
            seen.append(crops.clone())
            return engine.logits(crops)

    scanner.engine = Recording()  # type: ignore[assignment]
    verdict = scanner.scan(clip)
    assert verdict.counts.faces == 6 and scanner.image_size == 64 and verdict.detector == "retinaface"
    served = torch.cat(seen)
    for row, crop in zip(rows, served):
        saved = torch.from_numpy(np.asarray(Image.open(out / row["path"]))).permute(2, 0, 1).float() / 255
        assert (saved - crop).abs().max() <= 0.5 / 255 + 1e-6, row["path"]  # PNG rounding only


def test_prepare_records_its_detector_and_older_folders_read_as_mtcnn(tmp_path: Path, detector) -> None:
    with pytest.raises(ValueError, match="the detector given is mtcnn but the options say retinaface"):
        prepare(tmp_path, tmp_path / "out", "reals", PrepareOptions(), detector=detector, progress=False)
    older = tmp_path / "older"
    older.mkdir()
    recorded = json.loads(PrepareOptions().model_dump_json())
    del recorded["detector"], recorded["detect_max_side"]  # what prepare wrote before it recorded them
    (older / OPTIONS_FILE).write_text(json.dumps(recorded))
    options = read_prepare_options(older)
    assert options is not None and (options.detector, options.detect_max_side) == ("mtcnn", 0)
    assert crop_geometry([older]).detector == "mtcnn"
