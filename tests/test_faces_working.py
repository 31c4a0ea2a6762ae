"""Detection at a working resolution: scale rule, mapping back to frame pixels, recall kept."""

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import box_iou

from pipeline import synthetic
from pipeline.faces import Detections, build_detector
from pipeline.faces.mtcnn import MtcnnDetector
from pipeline.faces.working import WORKING_MIN_FACE, downscale_frames, to_frame_pixels, working_scale, working_size
from pipeline.precision import precision_supported

SHARED_DLIB = Path(__file__).resolve().parents[2] / "shared" / "data" / "faces" / "dlib"


def test_working_scale_rule() -> None:
    assert working_scale(1080, 1920, 0, 40, 12) == 1.0  # 0: full resolution
    assert working_scale(1080, 1920, None, 40, 12) == 1.0
    assert working_scale(360, 640, 640, 40, 12) == 1.0  # already small: never upscaled
    assert working_scale(1080, 1920, 640, 100, 12) == pytest.approx(1 / 3)
    # A 40-pixel face must keep WORKING_MIN_FACE (24) pixels: the floor wins over max_side.
    assert working_scale(1080, 1920, 640, 40, WORKING_MIN_FACE) == pytest.approx(0.6)
    assert working_scale(720, 1280, 640, 40, WORKING_MIN_FACE) == pytest.approx(0.6)
    assert working_size(1080, 1920, 1 / 3) == (360, 640)


def test_downscale_and_map_back() -> None:
    frames = torch.zeros((2, 1080, 1920, 3), dtype=torch.uint8)
    frames[:, 300:600, 900:1200] = 255
    small = downscale_frames(frames, (360, 640))
    assert small.shape == (2, 360, 640, 3) and small.dtype == torch.uint8
    assert small[0, 150, 350].tolist() == [255, 255, 255] and small[0, 50, 50].tolist() == [0, 0, 0]
    found = Detections(torch.tensor([[300.0, 100.0, 400.0, 200.0], [600.0, 300.0, 700.0, 400.0]]), torch.tensor([0.99, 0.9]),
                       torch.full((2, 5, 2), 150.0))
    mapped = to_frame_pixels(found, 3.0, 3.0, 1080, 1920)
    assert mapped.boxes[0].tolist() == [900.0, 300.0, 1200.0, 600.0]
    assert mapped.boxes[1].tolist() == [1800.0, 900.0, 1920.0, 1080.0]  # clamped to the frame
    assert mapped.landmarks is not None and mapped.landmarks[0, 0].tolist() == [450.0, 450.0]


@pytest.fixture(scope="module")
def hd_frames() -> torch.Tensor:
    """Two 1920x1080 frames of the generated clip (a face about 600 pixels high)."""
    frames = synthetic.render_frames(6, (1920, 1080))
    return torch.from_numpy(np.stack([frames[0], frames[3]]))


@pytest.mark.parametrize("name", ["mtcnn", "retinaface"])
def test_working_resolution_finds_the_same_faces_in_frame_pixels(name: str, hd_frames: torch.Tensor) -> None:
    full = build_detector(name, min_face_size=40, max_side=0).detect(hd_frames)
    working = build_detector(name, min_face_size=40, max_side=640).detect(hd_frames)
    for at_full, at_working in zip(full, working, strict=True):
        at_full = at_full.filter(at_full.scores >= 0.9)
        at_working = at_working.filter(at_working.scores >= 0.9)
        assert len(at_full) == len(at_working) == 1
        assert box_iou(at_full.boxes, at_working.boxes).item() > 0.85
        # Landmarks come back in frame pixels, inside the face box.
        x0, y0, x1, y1 = at_working.boxes[0].tolist()
        points = at_working.landmarks[0]
        assert bool(((points[:, 0] > x0) & (points[:, 0] < x1) & (points[:, 1] > y0) & (points[:, 1] < y1)).all())


def test_min_face_size_stays_in_frame_pixels() -> None:
    """The astronaut photo scaled to 300 pixels (a face about 57 pixels wide) in a 1920x1080 frame:
    found at the working resolution with min_face_size 40 (the working scale stays >= 16/40 for
    RetinaFace, 12/40 for MTCNN, so the face is >= 23 working pixels), not with min_face_size 200."""
    from skimage import data

    frame = np.asarray(synthetic.textured_background(1920, 1080)).copy()
    photo = torch.from_numpy(data.astronaut()).permute(2, 0, 1)[None].float()
    photo = F.interpolate(photo, size=(300, 300), mode="bilinear", antialias=True).round().byte()[0].permute(1, 2, 0)
    frame[400:700, 900:1200] = photo.numpy()
    frames = torch.from_numpy(frame)[None]
    for name in ("mtcnn", "retinaface"):
        kept = build_detector(name, min_face_size=40, max_side=640).detect(frames)[0]
        widths = (kept.boxes[:, 2] - kept.boxes[:, 0])[kept.scores >= 0.9]
        assert int(((widths > 40) & (widths < 80)).sum()) == 1, name
        dropped = build_detector(name, min_face_size=200, max_side=640).detect(frames)[0]
        widths = (dropped.boxes[:, 2] - dropped.boxes[:, 0])[dropped.scores >= 0.9]
        assert int((widths < 80).sum()) == 0, name


def _dlib_faces() -> list[tuple[np.ndarray, torch.Tensor]]:
    from PIL import Image

    items = []
    for xml_name in ("testing.xml", "training.xml"):
        for image in ET.parse(SHARED_DLIB / xml_name).getroot().iter("image"):
            truth = torch.tensor(
                [[float(b.get("left")), float(b.get("top")),
                  float(b.get("left")) + float(b.get("width")), float(b.get("top")) + float(b.get("height"))]
                 for b in image.iter("box") if b.get("ignore") != "1"]
            )
            items.append((np.array(Image.open(SHARED_DLIB / image.get("file")).convert("RGB")), truth))
    return items


@pytest.mark.shared_data
@pytest.mark.skipif(not SHARED_DLIB.is_dir(), reason="../shared/data/faces/dlib not present")
@pytest.mark.parametrize(
    ("name", "precision", "upscale", "least"),
    [("mtcnn", "fp32", 1, 43), ("mtcnn", "fp32", 3, 41), ("retinaface", "fp32", 1, 43), ("retinaface", "fp32", 3, 43),
     ("retinaface", "bf16", 1, 43), ("retinaface", "bf16", 3, 43)],
)
def test_dlib_faces_found_at_working_resolution(name: str, precision: str, upscale: int, least: int) -> None:
    """All 43 dlib-annotated faces (testing + training sets) at IoU >= 0.5 with the scan's working
    resolution (640). The photos are at most 500 pixels wide, so they are also upscaled 3x (to
    1500 pixels, as a 1080p frame) to make the working copy a real downscale. Measured: RetinaFace 43/43
    both ways; MTCNN 43/43 on the photos and 41/43 on the upscales (it misses the same two faces at
    full resolution on 2x/3x upscales too: its pyramid is sensitive to resampled pixels). RetinaFace's
    bf16 network (the default on CPUs with bf16) finds the same 43."""
    if precision == "bf16" and not precision_supported("bf16", "cpu")[0]:
        pytest.skip("this CPU has no native bfloat16")
    detector = build_detector(name, min_face_size=20 * upscale, max_side=640, precision=precision)
    found = total = 0
    for pixels, truth in _dlib_faces():
        image = torch.from_numpy(pixels)[None]
        if upscale > 1:
            image = F.interpolate(image.permute(0, 3, 1, 2).float(), scale_factor=upscale, mode="bilinear")
            image = image.round().clamp(0, 255).byte().permute(0, 2, 3, 1).contiguous()
        (detections,) = detector.detect(image)
        detections = detections.filter(detections.scores >= 0.9)
        best = box_iou(truth * upscale, detections.boxes).max(dim=1).values if len(detections) else torch.zeros(len(truth))
        total += len(truth)
        found += int((best >= 0.5).sum())
    assert total == 43
    assert found >= least, f"{name} x{upscale}: {found}/{total}"


def test_mtcnn_rejects_negative_max_side() -> None:
    with pytest.raises(ValueError, match="max_side"):
        MtcnnDetector(max_side=-1)
