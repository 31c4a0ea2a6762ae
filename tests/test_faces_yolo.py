import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.faces import FaceDetector, FaceDetectorError, build_detector
from pipeline.faces.yolo import YoloFaceDetector

REPO = Path(__file__).resolve().parents[1]


def _save_untrained_model(path: Path, names: dict[int, str]) -> Path:
    """An untrained YOLOv8n built from ultralytics' bundled yaml (no download), saved like a checkpoint."""
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", nc=len(names), verbose=False)
    model.names = names
    torch.save({"model": model.half()}, path)
    return path


@pytest.fixture(scope="module")
def face_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save_untrained_model(tmp_path_factory.mktemp("yolo") / "face.pt", {0: "face"})


@pytest.fixture(scope="module")
def detector(face_weights: Path) -> YoloFaceDetector:
    # conf 0 keeps whatever the untrained network proposes, so the output path is exercised.
    return YoloFaceDetector(face_weights, device="cpu", conf=0.0, image_size=160)


@pytest.fixture()
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    attempts: list[tuple] = []

    def refuse(*args: object, **kwargs: object) -> None:
        attempts.append(args)
        raise OSError("network access attempted in a test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


def test_missing_weights_give_clear_error_without_download(tmp_path: Path, no_network: list[tuple]) -> None:
    # "yolov8n.pt" is an ultralytics release asset name: ultralytics itself would try to download it.
    with pytest.raises(FaceDetectorError, match="not found.*nothing is downloaded"):
        YoloFaceDetector(tmp_path / "yolov8n.pt")
    with pytest.raises(FaceDetectorError, match="local .pt"):
        YoloFaceDetector(tmp_path / "weights.onnx")
    with pytest.raises(FaceDetectorError, match="needs a local face weights file"):
        build_detector("yolo", device="cpu", yolo_weights=None)
    assert no_network == []


def test_import_is_offline() -> None:
    code = (
        "import socket\n"
        "attempts = []\n"
        "def refuse(*a, **k):\n"
        "    attempts.append(a); raise OSError('offline')\n"
        "socket.getaddrinfo = socket.create_connection = socket.socket.connect = refuse\n"
        "import pipeline.faces.yolo\n"
        "print('attempts', len(attempts))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "attempts 0" in done.stdout


def test_untrained_model_runs_batched(detector: YoloFaceDetector, no_network: list[tuple]) -> None:
    assert isinstance(detector, FaceDetector) and detector.name == "yolo"
    generator = torch.Generator().manual_seed(1)
    frames = torch.randint(0, 256, (3, 90, 200, 3), dtype=torch.uint8, generator=generator)
    batched = detector.detect(frames)
    assert len(batched) == 3
    for found in batched:
        assert found.boxes.dtype == torch.float32 and found.boxes.shape[1] == 4
        assert found.scores.shape == (len(found),) and found.landmarks is None
        assert torch.all(found.boxes[:, 0] >= 0) and torch.all(found.boxes[:, 2] <= 200)
        assert torch.all(found.boxes[:, 1] >= 0) and torch.all(found.boxes[:, 3] <= 90)
        assert torch.all(found.scores[:-1] >= found.scores[1:])
    alone = detector.detect(frames[1:2])[0]
    torch.testing.assert_close(alone.boxes, batched[1].boxes, atol=1e-2, rtol=0)
    assert detector.detect(torch.zeros(0, 90, 200, 3, dtype=torch.uint8)) == []
    assert no_network == []


def test_letterbox_geometry_round_trips(detector: YoloFaceDetector) -> None:
    frame = torch.zeros(1, 90, 200, 3, dtype=torch.uint8)
    frame[0, 40:60, 100:150] = 255
    images, scale, left, top = detector._letterbox(frame)
    # 200 -> 160 wide (scale 0.8), 90 -> 72 high, padded to 96: 12 rows of grey above.
    assert images.shape == (1, 3, 96, 160) and scale == pytest.approx(0.8) and (left, top) == (0, 12)
    assert float(images[0, 0, 0, 0]) == pytest.approx(114 / 255)
    bright = torch.nonzero(images[0, 0] > 0.9)
    y0, x0 = bright.min(dim=0).values.tolist()
    y1, x1 = (bright.max(dim=0).values + 1).tolist()
    assert [(x0 - left) / scale, (y0 - top) / scale, (x1 - left) / scale, (y1 - top) / scale] == pytest.approx(
        [100, 40, 150, 60], abs=1.5
    )


def test_weights_without_face_class_are_refused(tmp_path: Path) -> None:
    weights = _save_untrained_model(tmp_path / "animals.pt", {0: "cat", 1: "dog"})
    with pytest.raises(FaceDetectorError, match="none is 'face'"):
        YoloFaceDetector(weights)


class _Payload:
    """Unpickling this would create a marker file: proof that arbitrary code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def test_checkpoint_is_not_fully_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    weights = tmp_path / "evil.pt"
    torch.save({"model": _Payload(marker)}, weights)
    with pytest.raises(FaceDetectorError, match="cannot load YOLO weights"):
        YoloFaceDetector(weights)
    assert not marker.exists()


def test_corrupt_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    weights = tmp_path / "broken.pt"
    weights.write_bytes(b"this is not a checkpoint")
    with pytest.raises(FaceDetectorError, match="cannot load YOLO weights"):
        YoloFaceDetector(weights)
def test_importing_yolo_backend_keeps_pil_errors(tmp_path: Path) -> None:
    """ultralytics patches PIL.Image.open at import; a corrupt crop must still raise PIL's own error."""
    from PIL import Image, UnidentifiedImageError

    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(UnidentifiedImageError):
        Image.open(bad)
