"""Building deployable inference artifacts: Torch-TensorRT engines and AOTInductor packages, built once.

`export_engine` builds the inference graph (destructor + reconstructor + classifier, nothing of
training) at a precision, with a dynamic batch 1..max_batch, writes it next to the weights and
describes it in a JSON sidecar (`pipeline.artifacts.EngineArtifact`, which also loads it again).

Artifacts, by engine:
- "tensorrt": Torch-TensorRT dynamo path (`torch_tensorrt.compile(ir="dynamo")` with a min/opt/max
  batch `Input`), saved as an ExportedProgram holding the TensorRT engine. Needs CUDA and
  torch_tensorrt at export and at load, on the same GPU model and versions.
- "compile": `torch.export` with a dynamic batch, compiled ahead of time by AOTInductor into one
  `.pt2` package for the export machine's device. Loading takes milliseconds (no compile at
  worker start); compiling takes a minute or more, which is why it happens at export.
- "eager": no artifact; the sidecar records that the weights were checked and run eagerly.

Export measures what `pipeline.engine_choice` ranks by: parity with eager fp32 over noise and face
crops, and ms per face of the artifact and of eager fp32, interleaved in the same run.
"""

from __future__ import annotations

import contextlib
import importlib.util
import platform
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

from pipeline.artifacts import (
    EngineArtifact,
    ExportEngineName,
    Precision,
    Runtime,
    cuda_capability,
    model_digest,
    module_version,
    open_artifact,
    parity_gap,
)
from pipeline.engine import default_batch_size
from pipeline.precision import PARITY_TOLERANCE, PRECISION_DTYPES, LowPrecisionForward
from ralf.core.device import DeviceUnavailable, resolve_device
from ralf.core.files import file_sha256
from ralf.weights import load_weights

# Face crops generated for the parity check when export is given none (views of one real face).
GENERATED_PARITY_VIEWS = 24
PARITY_CROPS_MAX = 300
_RUNTIME_OF: dict[str, Runtime] = {"tensorrt": "tensorrt", "compile": "aoti", "eager": "eager"}


class EngineUnavailable(RuntimeError):
    """This machine cannot build or run the requested engine (no CUDA, no torch_tensorrt, ...)."""


class InferenceGraph(nn.Module):
    """RALF's forward at one precision with float32 in and out, so every engine has one interface.

    Below float32 it is `LowPrecisionForward` (convolutions in the low type on a copy of the weights,
    destructor and image differences in float32), the form eager bf16 runs too.
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        # A copy inside LowPrecisionForward, so lowering the precision never changes the caller's model.
        self.model = model if dtype == torch.float32 else LowPrecisionForward(model, dtype)
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.float()).float()


def default_precision(engine: ExportEngineName, device: str) -> Precision:
    """fp16 for TensorRT (its reason to exist), fp32 elsewhere (CPUs gain little from half types)."""
    return "fp16" if engine == "tensorrt" or (engine == "compile" and device == "cuda") else "fp32"


def artifact_stem(weights_path: Path, engine: ExportEngineName, device: str, precision: Precision) -> str:
    """'<weights stem>.<engine>-<device>-<precision>'; the sidecar adds '.json', the artifact '.pt2'."""
    return f"{weights_path.stem}.{engine}-{device}-{precision}"


def export_program(graph: nn.Module, image_size: int, max_batch: int, device: str) -> torch.export.ExportedProgram:
    """`torch.export` of the inference graph with the batch dimension dynamic in [1, max_batch]."""
    # Tracing at batch 2 keeps torch.export from specialising the batch size to 1.
    example = torch.rand(min(2, max_batch), 3, image_size, image_size, device=device)
    dynamic = ({0: torch.export.Dim("batch", min=1, max=max_batch)},) if max_batch > 1 else None
    with torch.no_grad():
        return torch.export.export(graph, (example,), dynamic_shapes=dynamic)


def _build_tensorrt(graph: nn.Module, image_size: int, max_batch: int, dtype: torch.dtype, path: Path) -> None:
    """Torch-TensorRT dynamo compile with a dynamic batch, saved as an ExportedProgram."""
    import torch_tensorrt  # only on machines with CUDA and the optional `tensorrt` extra

    shape = (3, image_size, image_size)
    spec = torch_tensorrt.Input(
        min_shape=(1, *shape), opt_shape=(max_batch, *shape), max_shape=(max_batch, *shape), dtype=torch.float32
    )
    # The graph already runs in `dtype` (explicit typing); enabled_precisions lets releases that
    # still use weak typing pick those kernels too.
    compiled = torch_tensorrt.compile(
        graph, ir="dynamo", inputs=[spec], enabled_precisions={dtype, torch.float32}, min_block_size=1
    )
    example = torch.rand(min(2, max_batch), *shape, device=next(graph.parameters()).device)
    # retrace=False serialises the compiled graph with the symbolic batch it was built with.
    torch_tensorrt.save(compiled, str(path), output_format="exported_program", arg_inputs=[example], retrace=False)


def _build_aoti(graph: nn.Module, image_size: int, max_batch: int, device: str, path: Path) -> None:
    program = export_program(graph, image_size, max_batch, device)
    torch._inductor.aoti_compile_and_package(program, package_path=str(path))


def _resolve_export_device(engine: ExportEngineName, device: str | None) -> str:
    if engine == "tensorrt":
        if device not in (None, "cuda"):
            raise EngineUnavailable("TensorRT engines run on CUDA GPUs only; use --engine compile on the CPU")
        if not torch.cuda.is_available():
            raise EngineUnavailable("TensorRT needs a CUDA GPU and none is available; use --engine compile")
        if importlib.util.find_spec("torch_tensorrt") is None:
            raise EngineUnavailable(
                "torch_tensorrt is not installed (pip install 'ralf-moderation[tensorrt]'); use --engine compile"
            )
        return "cuda"
    if device not in (None, "cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    try:
        return resolve_device(device or "auto")
    except DeviceUnavailable as error:
        raise EngineUnavailable(str(error)) from None


def export_engine(
    weights_path: str | Path,
    engine: ExportEngineName,
    precision: Precision | None = None,
    max_batch: int = 32,
    out_dir: str | Path | None = None,
    device: str | None = None,
    parity_crops: str | Path | None = None,
) -> Path:
    """Build the deployable artifact for `engine`, check it against eager, write its sidecar; returns the sidecar.

    The artifact and sidecar go to `out_dir` (default: beside the weights), named by `artifact_stem`.
    Parity is measured against eager fp32 on noise crops and on face crops: up to `PARITY_CROPS_MAX`
    images from the `parity_crops` folder (e.g. a `ralf-cli prepare` or `self-blend` output), else
    `GENERATED_PARITY_VIEWS` views of one real face; the speed of this engine and of eager fp32 is
    measured in the same run. Engine 'eager' at bf16/fp16 builds nothing and records the measurement
    of the eager low-precision form, which is what lets `auto` choose it.
    Raises EngineUnavailable when this machine cannot build `engine`, ValueError for bad arguments
    and RuntimeError when the built artifact disagrees with eager beyond `PARITY_TOLERANCE`.
    """
    weights_path = Path(weights_path)
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    device = _resolve_export_device(engine, device)
    precision = precision or default_precision(engine, device)
    if precision not in PRECISION_DTYPES:
        raise ValueError(f"precision must be one of {sorted(PRECISION_DTYPES)}, got {precision!r}")
    if precision == "fp16" and device == "cpu":
        raise ValueError("fp16 is not supported on the CPU (slow or missing kernels); use bf16 or fp32")
    model, metadata = load_weights(weights_path, device)
    image_size = model.config.image_size
    faces, faces_from = parity_face_crops(image_size, parity_crops)
    folder = Path(out_dir) if out_dir is not None else weights_path.parent
    folder.mkdir(parents=True, exist_ok=True)
    stem = artifact_stem(weights_path, engine, device, precision)
    sidecar_path = folder / f"{stem}.json"
    graph = InferenceGraph(model, PRECISION_DTYPES[precision]).eval()

    # Built under a temporary name and renamed only after the parity check, so a failed export never
    # replaces a working artifact nor leaves one behind without its sidecar.
    partial = None if engine == "eager" else folder / f"{stem}.partial.pt2"
    try:
        if partial is not None:
            partial.unlink(missing_ok=True)
            if engine == "tensorrt":
                _build_tensorrt(graph, image_size, max_batch, PRECISION_DTYPES[precision], partial)
            else:
                _build_aoti(graph, image_size, max_batch, device, partial)
        info = EngineArtifact(
            engine=engine,
            runtime=_RUNTIME_OF[engine],
            artifact=f"{stem}.pt2" if partial is not None else "",
            artifact_sha256=file_sha256(partial) if partial is not None else "",
            precision=precision,
            max_batch=max_batch,
            image_size=image_size,
            device=device,  # type: ignore[arg-type]
            device_name=device_name(device),
            cuda_capability=cuda_capability() if device == "cuda" else None,
            cpu_capability=torch.backends.cpu.get_cpu_capability() if device == "cpu" else None,
            torch_version=torch.__version__,
            torch_tensorrt_version=module_version("torch_tensorrt") if engine == "tensorrt" else None,
            tensorrt_version=module_version("tensorrt") if engine == "tensorrt" else None,
            weights_file=weights_path.name,
            model_version=metadata.model_version,
            weights_digest=model_digest(model),
            parity_max_abs_diff=0.0,
            parity_tolerance=PARITY_TOLERANCE[precision],
            parity_face_crops=len(faces),
            parity_data=faces_from,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        run = graph if partial is None else open_artifact(info, partial)
        batches = sorted({1, min(max_batch, 8), max_batch})
        diff = max(parity_gap(model, run, batch, image_size, device) for batch in batches)
        diff = max(diff, crops_parity_gap(model, run, faces.to(device), max_batch))
        if diff > info.parity_tolerance:
            raise RuntimeError(
                f"the {engine} {precision} build disagrees with eager: max |ΔP(fake)| {diff:.3g} > "
                f"{info.parity_tolerance:g}; nothing was written"
            )
        speed_batch = min(max_batch, default_batch_size(model.config, device))
        speed = measure_speed({"eager": model, "engine": run}, faces.to(device), speed_batch)
        if partial is not None:
            partial.replace(folder / info.artifact)
    finally:
        if partial is not None:
            partial.unlink(missing_ok=True)
    info = info.model_copy(
        update={
            "parity_max_abs_diff": diff,
            "ms_per_face": speed["engine"],
            "eager_fp32_ms_per_face": speed["eager"],
            "speed_batch": speed_batch,
        }
    )
    sidecar_path.write_text(info.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return sidecar_path


def parity_face_crops(image_size: int, folder: str | Path | None = None) -> tuple[torch.Tensor, str]:
    """(K, 3, S, S) float face crops for the parity check and what they are.

    From `folder`: up to `PARITY_CROPS_MAX` PNG/JPEG images found under it (any depth), picked by the
    smallest sha256 of their relative path (no seed, the same files every time), resized to S.
    Without a folder: `GENERATED_PARITY_VIEWS` views (shifted, zoomed, mirrored, relit) of one real
    face (skimage's astronaut), so even an export without data measures faces, not only noise.
    """
    import hashlib

    import numpy as np
    from PIL import Image

    images: list[np.ndarray] = []
    if folder is not None:
        root = Path(folder)
        if not root.is_dir():
            raise ValueError(f"parity crops folder {root} does not exist")
        found = [p for p in root.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg") and p.is_file()]
        found.sort(key=lambda p: hashlib.sha256(str(p.relative_to(root)).encode()).hexdigest())
        for path in found[:PARITY_CROPS_MAX]:
            with Image.open(path) as image:
                images.append(np.asarray(image.convert("RGB").resize((image_size, image_size), Image.BILINEAR)))
        if not images:
            raise ValueError(f"no PNG or JPEG images under {root}")
        described = f"{len(images)} images from {root}"
    else:
        from pipeline.synthetic import astronaut_face

        face = astronaut_face()
        height, width = face.shape[:2]
        rng = np.random.default_rng(0)
        for view in range(GENERATED_PARITY_VIEWS):
            side = int(min(height, width) * rng.uniform(0.7, 1.0))
            top = int(rng.integers(0, height - side + 1))
            left = int(rng.integers(0, width - side + 1))
            crop = Image.fromarray(face[top : top + side, left : left + side]).resize((image_size, image_size), Image.BILINEAR)
            pixels = np.asarray(crop).astype(np.float32) * rng.uniform(0.7, 1.2)
            if view % 2:
                pixels = pixels[:, ::-1]
            images.append(np.clip(pixels, 0, 255).astype(np.uint8))
        described = f"{len(images)} generated views of one real face (skimage astronaut); pass --parity-crops for real data"
    stacked = torch.from_numpy(np.ascontiguousarray(np.stack(images))).permute(0, 3, 1, 2).float() / 255.0
    return stacked.contiguous(), described


def crops_parity_gap(
    model: nn.Module, run: Callable[[torch.Tensor], torch.Tensor], crops: torch.Tensor, max_batch: int
) -> float:
    """Largest |P(fake)| difference between `run` and the eager fp32 model over `crops`, in batches."""
    gaps = [0.0]
    with torch.inference_mode():
        for start in range(0, crops.shape[0], max_batch):
            batch = crops[start : start + max_batch]
            reference = torch.sigmoid(model(batch).double())
            candidate = torch.sigmoid(run(batch).reshape(-1).double())
            if candidate.shape != reference.shape or not torch.isfinite(candidate).all():
                return float("inf")
            gaps.append(float((candidate - reference).abs().max()))
    return max(gaps)


def measure_speed(
    runs: dict[str, Callable[[torch.Tensor], torch.Tensor]], crops: torch.Tensor, batch: int, rounds: int = 3
) -> dict[str, float]:
    """ms per face of each run at `batch` (crops repeated as needed): one warm-up, then `rounds`
    interleaved rounds, the best of each (interleaving keeps the ratio fair on a busy machine)."""
    import time

    reps = -(-batch // max(1, crops.shape[0]))
    sample = crops.repeat(reps, 1, 1, 1)[:batch].contiguous()

    def once(run: Callable[[torch.Tensor], torch.Tensor]) -> float:
        if sample.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        run(sample)
        if sample.device.type == "cuda":
            torch.cuda.synchronize()
        return 1000.0 * (time.perf_counter() - start) / batch

    best = {name: float("inf") for name in runs}
    with torch.inference_mode():
        for run in runs.values():
            once(run)
        for _ in range(rounds):
            for name, run in runs.items():
                best[name] = min(best[name], once(run))
    return best


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    with contextlib.suppress(OSError):  # no /proc (macOS): fall back to the platform name
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "cpu"
