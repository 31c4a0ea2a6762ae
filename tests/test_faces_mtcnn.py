import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data
from torchvision.ops import box_iou

from pipeline.faces import FaceDetector, FaceDetectorError, build_detector
from pipeline.faces import mtcnn_weights
from pipeline.faces.mtcnn import MtcnnDetector, nms_min_overlap, pyramid_scales
from pipeline.faces.mtcnn_nets import KerasSameMaxPool2d, _flatten_keras_order

SHARED_FACES = Path(__file__).resolve().parents[2] / "shared" / "data" / "faces"


@pytest.fixture(scope="module")
def detector() -> MtcnnDetector:
    return MtcnnDetector(device="cpu")


@pytest.fixture(scope="module")
def astronaut() -> torch.Tensor:
    return torch.from_numpy(data.astronaut().copy())


def _on_canvas(image: torch.Tensor, x: int, y: int, height: int = 480, width: int = 640) -> torch.Tensor:
    canvas = torch.full((height, width, 3), 90, dtype=torch.uint8)
    part = image[: height - y, : width - x]
    canvas[y : y + part.shape[0], x : x + part.shape[1]] = part
    return canvas


def test_astronaut_face_found_with_landmarks(detector: MtcnnDetector, astronaut: torch.Tensor) -> None:
    (found,) = detector.detect(astronaut[None])
    assert len(found) == 1
    x1, y1, x2, y2 = found.boxes[0].tolist()
    # The face spans about x 180..265, y 65..172 in the 512x512 image.
    assert 150 <= x1 < 200 and 240 < x2 <= 320 and 20 <= y1 < 100 and 150 < y2 <= 230
    assert float(found.scores[0]) > 0.99
    landmarks = found.landmarks[0]
    assert torch.all((landmarks[:, 0] > x1) & (landmarks[:, 0] < x2) & (landmarks[:, 1] > y1) & (landmarks[:, 1] < y2))
    left_eye, right_eye, nose, mouth_left, mouth_right = landmarks.tolist()
    assert left_eye[0] < right_eye[0] and mouth_left[0] < mouth_right[0]
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_left[1], mouth_right[1])


def test_mirrored_image_gives_mirrored_box(detector: MtcnnDetector, astronaut: torch.Tensor) -> None:
    (plain,) = detector.detect(astronaut[None])
    (mirrored,) = detector.detect(astronaut.flip(1)[None])
    assert len(mirrored) == 1
    width = astronaut.shape[1]
    expected = torch.stack([width - plain.boxes[0, 2], plain.boxes[0, 1], width - plain.boxes[0, 0], plain.boxes[0, 3]])
    assert float(box_iou(expected[None], mirrored.boxes)[0, 0]) > 0.8


def test_noise_and_flat_frames_have_no_face(detector: MtcnnDetector) -> None:
    generator = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, (240, 320, 3), dtype=torch.uint8, generator=generator)
    flat = torch.full((240, 320, 3), 128, dtype=torch.uint8)
    assert [len(found) for found in detector.detect(torch.stack([noise, flat]))] == [0, 0]


def test_batched_equals_frame_by_frame(astronaut: torch.Tensor) -> None:
    detector = MtcnnDetector(frames_per_pass=8)
    frames = torch.stack(
        [
            _on_canvas(astronaut, 40, 0),
            torch.full((480, 640, 3), 30, dtype=torch.uint8),
            _on_canvas(astronaut[::2, ::2].contiguous(), 300, 200),
        ]
    )
    batched = detector.detect(frames)
    singles = [detector.detect(frames[i : i + 1])[0] for i in range(frames.shape[0])]
    assert [len(found) for found in batched] == [1, 0, 1]
    for together, alone in zip(batched, singles):
        torch.testing.assert_close(together.boxes, alone.boxes, atol=1e-2, rtol=0)
        torch.testing.assert_close(together.scores, alone.scores, atol=1e-4, rtol=0)
    # The half-size face sits where it was pasted.
    x1, y1, x2, y2 = batched[2].boxes[0].tolist()
    assert 300 + 75 < x1 < x2 < 300 + 160 and 200 + 10 < y1 < y2 < 200 + 115


def test_min_face_size_skips_small_faces(astronaut: torch.Tensor) -> None:
    small = torch.from_numpy(np.ascontiguousarray(data.astronaut()[::4, ::4]))  # face about 22 px
    frame = _on_canvas(small, 100, 100, 320, 320)[None]
    assert len(MtcnnDetector(min_face_size=20).detect(frame)[0]) == 1
    assert len(MtcnnDetector(min_face_size=60).detect(frame)[0]) == 0


def test_building_leaves_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    MtcnnDetector()
    assert torch.equal(torch.random.get_rng_state(), state)


def test_factory_and_protocol(detector: MtcnnDetector) -> None:
    built = build_detector("mtcnn", device="cpu", min_face_size=40)
    assert isinstance(built, FaceDetector) and isinstance(detector, FaceDetector)
    assert built.name == "mtcnn" and built.device == torch.device("cpu") and built.min_face_size == 40
    with pytest.raises(FaceDetectorError, match="unknown face detector"):
        build_detector("haar", device="cpu")  # type: ignore[arg-type]


def test_bad_frames_are_rejected(detector: MtcnnDetector) -> None:
    with pytest.raises(FaceDetectorError, match="uint8"):
        detector.detect(torch.zeros(1, 64, 64, 3))
    with pytest.raises(FaceDetectorError, match="uint8"):
        detector.detect(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    assert detector.detect(torch.zeros(0, 64, 64, 3, dtype=torch.uint8)) == []
    # Frames smaller than P-Net's 12x12 window simply have no face.
    assert len(detector.detect(torch.zeros(1, 8, 8, 3, dtype=torch.uint8))[0]) == 0


def test_weights_with_wrong_digest_are_not_unpickled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pnet.lz4").write_bytes(b"not the packaged weights")
    monkeypatch.setattr(mtcnn_weights, "weights_dir", lambda: tmp_path)
    with pytest.raises(FaceDetectorError, match="sha256"):
        mtcnn_weights.load_net_arrays("pnet")
    with pytest.raises(FaceDetectorError, match="missing"):
        mtcnn_weights.load_net_arrays("rnet")


def test_missing_package_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mtcnn_weights.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FaceDetectorError, match="pip install mtcnn"):
        mtcnn_weights.weights_dir()


@pytest.mark.parametrize("kernel,stride", [(2, 2), (3, 2), (3, 1), (5, 3)])
def test_keras_same_pooling_pads_bottom_right(kernel: int, stride: int) -> None:
    pool = KerasSameMaxPool2d(kernel, stride)
    for height, width in [(7, 8), (8, 9), (11, 10), (12, 12)]:
        x = torch.randn(1, 2, height, width)
        out_h, out_w = -(-height // stride), -(-width // stride)
        pad_h = max((out_h - 1) * stride + kernel - height, 0)
        pad_w = max((out_w - 1) * stride + kernel - width, 0)
        padded = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=float("-inf"))
        assert torch.equal(pool(x), F.max_pool2d(padded, kernel, stride))


def test_flatten_follows_keras_permuted_order() -> None:
    x = torch.arange(2 * 3 * 4).reshape(1, 2, 3, 4)  # (N, C, H, W)
    flat = _flatten_keras_order(x)[0].tolist()
    # Keras flattens (W, H, C) after its Permute: channel fastest, then height, then width.
    assert flat[:4] == [x[0, 0, 0, 0], x[0, 1, 0, 0], x[0, 0, 1, 0], x[0, 1, 1, 0]]


def test_pyramid_and_min_overlap_suppression() -> None:
    scales = pyramid_scales(480, 640, min_face_size=20)
    assert scales[0] == pytest.approx(0.6) and 480 * scales[-1] >= 12 > 480 * scales[-1] * 0.709
    boxes = torch.tensor([[0.0, 0.0, 100.0, 100.0], [10.0, 10.0, 40.0, 40.0], [10.0, 10.0, 40.0, 40.0]])
    scores = torch.tensor([0.9, 0.95, 0.8])
    # The small box is inside the big one (overlap over the smaller box = 1): only the best survives,
    # unless the boxes belong to different frames.
    assert nms_min_overlap(boxes, scores, torch.tensor([0, 0, 0]), 0.7).tolist() == [1]
    assert sorted(nms_min_overlap(boxes, scores, torch.tensor([0, 1, 2]), 0.7).tolist()) == [0, 1, 2]


@pytest.mark.shared_data
@pytest.mark.skipif(not (SHARED_FACES / "dlib").is_dir(), reason="../shared/data/faces/dlib not present")
def test_dlib_annotated_faces_are_found(detector: MtcnnDetector) -> None:
    from PIL import Image

    found_faces, total_faces, ious, extra = 0, 0, [], 0
    for xml_name in ("testing.xml",):
        for image in ET.parse(SHARED_FACES / "dlib" / xml_name).getroot().iter("image"):
            truth = torch.tensor(
                [
                    [float(b.get("left")), float(b.get("top")),
                     float(b.get("left")) + float(b.get("width")), float(b.get("top")) + float(b.get("height"))]
                    for b in image.iter("box")
                    if b.get("ignore") != "1"
                ]
            )
            pixels = np.array(Image.open(SHARED_FACES / "dlib" / image.get("file")).convert("RGB"))
            (found,) = detector.detect(torch.from_numpy(pixels)[None])
            overlaps = box_iou(truth, found.boxes)
            best = overlaps.max(dim=1).values if len(found) else torch.zeros(len(truth))
            total_faces += len(truth)
            found_faces += int((best >= 0.5).sum())
            ious += best[best >= 0.5].tolist()
            extra += int((overlaps.max(dim=0).values < 0.3).sum()) if len(found) else 0
    # Measured: 25 of 25 faces at IoU >= 0.5, mean IoU 0.69 (dlib boxes are tighter than MTCNN's), no extra boxes.
    assert found_faces >= 0.9 * total_faces
    assert float(np.mean(ious)) > 0.6
    assert extra <= 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu(detector: MtcnnDetector, astronaut: torch.Tensor) -> None:
    frames = torch.stack([_on_canvas(astronaut, 40, 0), _on_canvas(astronaut, 100, 0)])
    on_gpu = MtcnnDetector(device="cuda").detect(frames.cuda())
    on_cpu = detector.detect(frames)
    for gpu, cpu in zip(on_gpu, on_cpu):
        assert gpu.boxes.is_cuda and len(gpu) == len(cpu) == 1
        torch.testing.assert_close(gpu.boxes.cpu(), cpu.boxes, atol=1.0, rtol=0)
