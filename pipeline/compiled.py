"""Deployable inference artifacts: Torch-TensorRT engines and AOTInductor packages, built once, loaded fast.

`export_engine` builds the inference graph (destructor + reconstructor + classifier, nothing of
training) at a precision, with a dynamic batch 1..max_batch, writes it next to the weights and
describes it in a JSON sidecar. `load_compiled_engine` is how the pipeline picks one up again.

Artifacts, by engine:
- "tensorrt": Torch-TensorRT dynamo path (`torch_tensorrt.compile(ir="dynamo")` with a min/opt/max
  batch `Input`), saved as an ExportedProgram holding the TensorRT engine. Needs CUDA and
  torch_tensorrt at export and at load, on the same GPU model and versions.
- "compile": `torch.export` with a dynamic batch, compiled ahead of time by AOTInductor into one
  `.pt2` package for the export machine's device. Loading takes milliseconds (no compile at
  worker start); compiling takes a minute or more, which is why it happens at export.
- "eager": no artifact; the sidecar records that the weights were checked and run eagerly.

Every sidecar records the weights' tensor digest: calibrating rewrites only the metadata, so it keeps
an artifact valid, while new tensors make it stale. An artifact is used only after it passed every
check (format, digest, device, versions, file hash) and matched the eager model on two crops; any
failure is a warning naming the reason, and the next candidate (finally eager) takes over.

Which one, when several lie beside the weights (`plan_engine`), is a rule, never file age: the
precision asked for (`ScanOptions.precision`), else (`auto`) the fastest whose parity was measured
within `PARITY_TOLERANCE` — low precisions only when that parity was measured on face crops (a
trained model's scores on real faces; `--parity-crops`), not on noise alone — and that beat eager
fp32 in the same export run. Export measures both: parity over noise and face crops, and ms per face
of the artifact and of eager fp32, interleaved. An `eager` sidecar at bf16 records the same for the
eager bf16 form (`pipeline.precision.LowPrecisionForward`). The engine's `choice` says which and why.

Artifacts hold compiled native code and pickled constants: load only artifacts you built.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import platform
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from pipeline.engine import EagerEngine, InferenceEngine, InferenceOutOfMemory, check_crops, default_batch_size
from pipeline.options import ScanOptions
from pipeline.precision import PARITY_TOLERANCE, PRECISION_DTYPES, LowPrecisionForward, precision_supported
from ralf.pretrained import file_sha256
from ralf.weights import load_weights, tensors_digest

ExportEngineName = Literal["tensorrt", "compile", "eager"]
Precision = Literal["fp32", "fp16", "bf16"]
Runtime = Literal["tensorrt", "aoti", "eager"]

SIDECAR_FORMAT = "ralf-engine"
SIDECAR_VERSION = 1
# Face crops generated for the parity check when export is given none (views of one real face).
GENERATED_PARITY_VIEWS = 24
PARITY_CROPS_MAX = 300
_RUNTIME_OF: dict[str, Runtime] = {"tensorrt": "tensorrt", "compile": "aoti", "eager": "eager"}


class EngineUnavailable(RuntimeError):
    """This machine cannot build or run the requested engine (no CUDA, no torch_tensorrt, ...)."""


class ArtifactRejected(ValueError):
    """An artifact exists but must not be used here; the message says why."""


class EngineArtifact(BaseModel):
    """The JSON sidecar describing one exported artifact."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["ralf-engine"] = SIDECAR_FORMAT
    format_version: Literal[1] = SIDECAR_VERSION
    engine: ExportEngineName
    runtime: Runtime
    artifact: str = Field(description="File name beside the sidecar ('' for eager)")
    artifact_sha256: str = ""
    precision: Precision
    max_batch: int = Field(ge=1)
    image_size: int = Field(ge=1)
    device: Literal["cpu", "cuda"]
    device_name: str
    cuda_capability: str | None = None
    # ATen's CPU vector ISA (e.g. AVX512): Inductor's CPU code uses it, and fails on a CPU without it.
    cpu_capability: str | None = None
    torch_version: str
    torch_tensorrt_version: str | None = None
    tensorrt_version: str | None = None
    weights_file: str
    model_version: str
    weights_digest: str = Field(description="sha256 of the weights' tensors (metadata excluded)")
    parity_max_abs_diff: float = Field(description="Largest |ΔP(fake)| against eager fp32 at export")
    parity_tolerance: float
    parity_face_crops: int = Field(
        0, description="Face crops among the parity samples (0: noise crops only, which do not qualify a low precision for 'auto')"
    )
    parity_data: str = Field("", description="Where the parity face crops came from")
    ms_per_face: float | None = Field(None, description="This engine's ms per face at speed_batch, measured at export")
    eager_fp32_ms_per_face: float | None = Field(None, description="Eager fp32 ms per face in the same run")
    speed_batch: int | None = None
    created: str

    @property
    def speedup(self) -> float | None:
        """Eager fp32 time / this engine's time, measured in the same export run (None: not measured)."""
        if not self.ms_per_face or not self.eager_fp32_ms_per_face:
            return None
        return self.eager_fp32_ms_per_face / self.ms_per_face

    @property
    def label(self) -> str:
        return f"{self.engine}-{self.device}-{self.precision}"


# -- building -------------------------------------------------------------------------------------


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


def tensorrt_available() -> bool:
    return torch.cuda.is_available() and importlib.util.find_spec("torch_tensorrt") is not None


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
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise EngineUnavailable("device 'cuda' was requested but no CUDA GPU is available")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    return device


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
            cuda_capability=_cuda_capability() if device == "cuda" else None,
            cpu_capability=torch.backends.cpu.get_cpu_capability() if device == "cpu" else None,
            torch_version=torch.__version__,
            torch_tensorrt_version=_module_version("torch_tensorrt") if engine == "tensorrt" else None,
            tensorrt_version=_module_version("tensorrt") if engine == "tensorrt" else None,
            weights_file=weights_path.name,
            model_version=metadata.model_version,
            weights_digest=model_digest(model),
            parity_max_abs_diff=0.0,
            parity_tolerance=PARITY_TOLERANCE[precision],
            parity_face_crops=len(faces),
            parity_data=faces_from,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        run = graph if partial is None else _open_artifact(info, partial)
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


# -- checks -----------------------------------------------------------------------------------------


def model_digest(model: nn.Module) -> str:
    """The tensors' sha256 exactly as `save_weights` computes it (its first 12 hex name model_version)."""
    return tensors_digest(model.state_dict())


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    with contextlib.suppress(OSError):  # no /proc (macOS): fall back to the platform name
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "cpu"


def _cuda_capability() -> str:
    major, minor = torch.cuda.get_device_capability()
    return f"{major}.{minor}"


def _module_version(name: str) -> str | None:
    """`__version__` of an importable module (torch_tensorrt, tensorrt), None when it is absent."""
    try:
        return str(importlib.import_module(name).__version__)
    except ImportError:
        return None


def parity_gap(
    model: nn.Module, run: Callable[[torch.Tensor], torch.Tensor], batch: int, image_size: int, device: str
) -> float:
    """Largest |P(fake)| difference between `run` and the eager fp32 model on `batch` random crops."""
    generator = torch.Generator().manual_seed(batch)
    crops = torch.rand(batch, 3, image_size, image_size, generator=generator).to(device)
    with torch.inference_mode():
        reference = torch.sigmoid(model(crops).double())
        candidate = torch.sigmoid(run(crops).reshape(-1).double())
    if candidate.shape != reference.shape or not torch.isfinite(candidate).all():
        return float("inf")
    return float((candidate - reference).abs().max())


def read_sidecar(path: Path) -> EngineArtifact:
    try:
        return EngineArtifact.model_validate_json(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise ArtifactRejected(f"cannot read {path.name}: {error}") from None
    except ValidationError as error:
        raise ArtifactRejected(f"{path.name} is not a RALF engine sidecar: {error.errors()[0]['msg']}") from None


def find_sidecars(weights_path: Path, engine: ExportEngineName, device: str) -> list[Path]:
    """Sidecars of `engine` for `device` beside the weights (their order decides nothing: `plan_engine` ranks)."""
    found = weights_path.parent.glob(f"{weights_path.stem}.{engine}-{device}-*.json")
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def check_weights(info: EngineArtifact, model: nn.Module, device: torch.device, digest: str | None = None) -> None:
    """ArtifactRejected unless `info` was measured on these weights (tensor digest) and this device type."""
    if info.image_size != model.config.image_size:
        raise ArtifactRejected(f"built for {info.image_size}px crops, the model takes {model.config.image_size}px")
    if info.weights_digest != (digest or model_digest(model)):
        raise ArtifactRejected(f"stale: built from other weights ({info.model_version}); export again")
    if info.device != device.type:
        raise ArtifactRejected(f"built for {info.device}, this scan runs on {device.type}")


def check_artifact(
    info: EngineArtifact, sidecar: Path, model: nn.Module, device: torch.device, digest: str | None = None
) -> Path:
    """The artifact's path if `info` fits this model and machine; ArtifactRejected says why not.

    `digest`: the model's `model_digest`, when the caller already has it.
    """
    check_weights(info, model, device, digest)
    if info.torch_version != torch.__version__:
        raise ArtifactRejected(f"built with torch {info.torch_version}, running {torch.__version__}; export again")
    if info.device == "cpu" and info.cpu_capability != torch.backends.cpu.get_cpu_capability():
        raise ArtifactRejected(
            f"built for CPUs with {info.cpu_capability}, this CPU has {torch.backends.cpu.get_cpu_capability()}; "
            "export again on this machine"
        )
    if info.device == "cuda" and info.cuda_capability != _cuda_capability():
        raise ArtifactRejected(
            f"built for GPU compute capability {info.cuda_capability} ({info.device_name}), this GPU is "
            f"{_cuda_capability()} ({torch.cuda.get_device_name(device)}); export again on this machine"
        )
    if info.runtime == "tensorrt":
        if importlib.util.find_spec("torch_tensorrt") is None:
            raise ArtifactRejected("torch_tensorrt is not installed here")
        for module, built in (("torch_tensorrt", info.torch_tensorrt_version), ("tensorrt", info.tensorrt_version)):
            if _module_version(module) != built:
                raise ArtifactRejected(f"built with {module} {built}, running {_module_version(module)}")
    if info.runtime == "eager":
        raise ArtifactRejected("an eager sidecar has no artifact to load")
    path = sidecar.parent / info.artifact
    if not path.is_file():
        raise ArtifactRejected(f"artifact file {info.artifact} is missing")
    if file_sha256(path) != info.artifact_sha256:
        raise ArtifactRejected(f"artifact file {info.artifact} changed since export (sha256 differs)")
    return path


def _open_artifact(info: EngineArtifact, path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    """A callable running the artifact: float32 (B, 3, S, S) on its device -> float32 logits (B,)."""
    if info.runtime == "tensorrt":
        import torch_tensorrt  # registers the TensorRT engine op that the saved program calls

        return torch_tensorrt.load(str(path)).module()
    if info.runtime == "aoti":
        return torch._inductor.aoti_load_package(str(path))
    raise ArtifactRejected(f"runtime {info.runtime!r} has no artifact to open")


# -- running ----------------------------------------------------------------------------------------


class CompiledEngine:
    """An exported artifact behind the `InferenceEngine` protocol; batches never exceed its max_batch."""

    def __init__(
        self, run: Callable[[torch.Tensor], torch.Tensor], info: EngineArtifact, device: torch.device, batch_size: int
    ) -> None:
        self.run = run
        self.info = info
        self.device = device
        self.max_batch = max(1, min(batch_size, info.max_batch))
        self.name = f"{info.engine}-{info.device}-{info.precision} ({info.artifact})"

    def logits(self, crops: torch.Tensor) -> torch.Tensor:
        check_crops(crops)
        outputs = []
        with torch.inference_mode():
            for start in range(0, crops.shape[0], self.max_batch):
                batch = crops[start : start + self.max_batch].to(self.device, torch.float32).contiguous()
                try:
                    outputs.append(self.run(batch).reshape(-1).float())
                except torch.OutOfMemoryError as error:
                    raise InferenceOutOfMemory(self.max_batch, self.device, str(error)) from error
        if not outputs:
            return torch.zeros((0,), dtype=torch.float32, device=self.device)
        return torch.cat(outputs)


def open_engine(
    sidecar: Path, model: nn.Module, device: torch.device, batch_size: int, digest: str | None = None
) -> CompiledEngine:
    """Check and open one artifact, then confirm it matches the eager model; ArtifactRejected otherwise."""
    info = read_sidecar(sidecar)
    path = check_artifact(info, sidecar, model, device, digest)
    try:
        run = _open_artifact(info, path)
        gap = parity_gap(model, run, min(2, info.max_batch), info.image_size, device.type)
    except ArtifactRejected:
        raise
    except Exception as error:  # noqa: BLE001  (a broken artifact must not stop the scan; eager takes over)
        raise ArtifactRejected(f"cannot run {info.artifact}: {type(error).__name__}: {error}") from error
    if gap > info.parity_tolerance:
        raise ArtifactRejected(f"{info.artifact} disagrees with eager here (|ΔP(fake)| {gap:.3g})")
    return CompiledEngine(run, info, device, batch_size)


def _candidates(requested: str, device: torch.device) -> list[ExportEngineName]:
    """Artifact kinds to try, by engine preference; eager follows them all."""
    if requested == "tensorrt":
        return ["tensorrt", "compile"]
    if requested == "compile":
        return ["compile"]
    if requested == "auto":
        return ["tensorrt", "compile"] if device.type == "cuda" else ["compile"]
    return []


@dataclass(frozen=True)
class EngineCandidate:
    """One way to run the model, in the order `plan_engine` ranks them: an artifact's sidecar, or
    eager (sidecar None, or an eager sidecar recording the eager low-precision form's measurement)."""

    sidecar: Path | None
    info: EngineArtifact | None
    precision: str
    why: str


@dataclass
class EnginePlan:
    """Candidates best first (eager fp32 or the requested eager precision last), and why others were passed over."""

    candidates: list[EngineCandidate]
    passed_over: list[str]
    warnings: list[str]


def _describe(info: EngineArtifact) -> str:
    speed = f"{info.speedup:.2f}x eager fp32 at batch {info.speed_batch}" if info.speedup else "speed not measured"
    faces = f"{info.parity_face_crops} face crops" if info.parity_face_crops else "noise crops only"
    return f"{speed}; max |ΔP(fake)| {info.parity_max_abs_diff:.1e} on {faces} (tolerance {info.parity_tolerance:g})"


def plan_engine(weights_path: Path | None, options: ScanOptions, device: torch.device) -> EnginePlan:
    """Rank the ways to run the model here (by rule, never by file age); nothing is loaded or checked
    beyond reading the sidecars (`load_compiled_engine` checks each candidate before using it).

    The rule: `options.engine` names the kinds of artifact allowed (auto: TensorRT then AOTInductor
    on CUDA, AOTInductor on the CPU; eager: none). `options.precision`:
    - fp32 / bf16 / fp16: only that precision, by engine preference; eager at that precision last
      (a low precision this device runs natively; else a warning and eager fp32).
    - auto: a sidecar qualifies when its recorded parity is within `PARITY_TOLERANCE` for its
      precision and, below fp32, was measured on face crops and the device has the type natively.
      Qualified ones with a measured speed come first, fastest (speed-up over eager fp32 measured in
      the same export) first; a low precision only if it was faster than eager fp32 (it must pay for
      its parity cost; an fp32 artifact costs nothing and was exported on purpose); then unmeasured
      (older) ones by engine preference, fp32 first; then eager fp32.
    """
    warnings: list[str] = []
    passed: list[str] = []
    wanted = options.precision
    kinds: list[ExportEngineName] = list(_candidates(options.engine, device))
    if options.engine in ("auto", "eager"):
        kinds.append("eager")  # eager sidecars: measured eager low-precision forms
    sidecars: list[tuple[Path, EngineArtifact]] = []
    if weights_path is not None:
        for kind in kinds:
            if kind == "tensorrt" and not tensorrt_available():
                continue
            found = find_sidecars(Path(weights_path), kind, device.type)
            if not found and kind != "eager" and options.engine not in ("auto", "eager"):
                warnings.append(
                    f"no {kind} artifact for {device.type} beside {Path(weights_path).name} "
                    f"(run `ralf-cli export {Path(weights_path).name} --engine {kind}` on this machine)"
                )
            for sidecar in found:
                try:
                    info = read_sidecar(sidecar)
                except ArtifactRejected as reason:
                    warnings.append(f"{kind} artifact {sidecar.name} not used: {reason}")
                    continue
                if info.runtime == "eager" and info.precision == "fp32":
                    continue  # a record of the weights, not another way to run them
                sidecars.append((sidecar, info))
    preference = {kind: rank for rank, kind in enumerate(["tensorrt", "compile", "eager"])}
    candidates: list[EngineCandidate] = []
    if wanted != "auto":
        for sidecar, info in sorted(sidecars, key=lambda item: preference[item[1].engine]):
            if info.precision != wanted:
                passed.append(f"{info.label}: precision {wanted} was asked for")
                continue
            candidates.append(EngineCandidate(sidecar, info, wanted, f"precision {wanted} asked for; {_describe(info)}"))
        usable, why = precision_supported(wanted, device)
        if usable:
            measured = wanted == "fp32" or any(c.info and c.info.runtime == "eager" for c in candidates)
            note = "" if measured else ", parity not measured here"
            candidates.append(EngineCandidate(None, None, wanted, f"precision {wanted} asked for ({why}{note})"))
        else:
            warnings.append(f"precision {wanted} unavailable: {why}; using fp32")
            candidates.append(EngineCandidate(None, None, "fp32", f"precision {wanted} asked for but unavailable ({why})"))
        return EnginePlan(candidates, passed, warnings)

    measured: list[tuple[float, EngineCandidate]] = []
    unmeasured: list[tuple[tuple[int, int], EngineCandidate]] = []
    for sidecar, info in sidecars:
        if info.parity_max_abs_diff > PARITY_TOLERANCE[info.precision]:
            passed.append(f"{info.label}: parity {info.parity_max_abs_diff:.1e} exceeds {PARITY_TOLERANCE[info.precision]:g}")
            continue
        if info.precision != "fp32":
            usable, why = precision_supported(info.precision, device)
            if not usable:
                passed.append(f"{info.label}: {why}")
                continue
            if info.parity_face_crops == 0 or info.speedup is None:
                passed.append(
                    f"{info.label}: parity not measured on face crops at export "
                    f"(export again: ralf-cli export --precision {info.precision} --parity-crops DIR)"
                )
                continue
        speedup = info.speedup
        if info.precision != "fp32" and speedup is not None and speedup <= 1.0:
            # A lower precision must pay for its parity cost in speed; an fp32 artifact costs nothing.
            passed.append(f"{info.label}: not faster than eager fp32 ({speedup:.2f}x)")
            continue
        if speedup is not None:
            measured.append((speedup, EngineCandidate(sidecar, info, info.precision, "")))
        else:
            order = (preference[info.engine], 0 if info.precision == "fp32" else 1)
            unmeasured.append((order, EngineCandidate(sidecar, info, info.precision, "")))
    measured.sort(key=lambda item: -item[0])
    unmeasured.sort(key=lambda item: item[0])
    ranked = [candidate for _, candidate in measured] + [candidate for _, candidate in unmeasured]
    for position, candidate in enumerate(ranked):
        assert candidate.info is not None
        if position == 0 and candidate.info.speedup is not None:
            rule = "auto: the fastest measured within parity"
        elif candidate.info.speedup is not None:
            rule = "auto: next fastest measured within parity"
        else:
            rule = "auto: within parity (older sidecar, speed not measured; engine preference)"
        candidates.append(EngineCandidate(candidate.sidecar, candidate.info, candidate.precision, f"{rule}; {_describe(candidate.info)}"))
    if weights_path is None:
        why = "no weights file, so no exported engine"
    elif not sidecars:
        why = f"no exported engine beside {Path(weights_path).name}"
    else:
        why = "no exported engine qualified" if not candidates else "fallback"
    candidates.append(EngineCandidate(None, None, "fp32", f"auto: {why}"))
    return EnginePlan(candidates, passed, warnings)


def preview_engine(weights_path: Path | None, options: ScanOptions) -> dict[str, object]:
    """What `load_engine` would choose, without loading the model (for `ralf-cli config`).

    Applies `plan_engine` and the checks that need no model (device, torch version, CPU, artifact
    present, model version from the weights' header); digest, file hash and the parity re-check happen
    when a worker loads the engine. Returns engine, precision, why, passed_over and warnings.
    """
    from ralf.weights import WeightsError, read_metadata

    device = torch.device(options.resolved_device())
    plan = plan_engine(weights_path, options, device)
    passed = list(plan.passed_over)
    version = None
    if weights_path is not None:
        try:
            version = read_metadata(weights_path).model_version
        except (OSError, WeightsError) as error:
            return {"engine": "", "precision": "", "why": f"weights unreadable: {error}", "passed_over": passed,
                    "warnings": plan.warnings}
    for candidate in plan.candidates:
        info = candidate.info
        if info is None or candidate.sidecar is None:
            name = "eager" if candidate.precision == "fp32" else f"eager-{candidate.precision}"
            return {"engine": name, "precision": candidate.precision, "why": candidate.why, "passed_over": passed,
                    "warnings": plan.warnings}
        problem = None
        if info.model_version != version:
            problem = f"stale: built from {info.model_version}, the weights are {version}"
        elif info.device != device.type:
            problem = f"built for {info.device}"
        elif info.torch_version != torch.__version__:
            problem = f"built with torch {info.torch_version}"
        elif info.device == "cpu" and info.cpu_capability != torch.backends.cpu.get_cpu_capability():
            problem = f"built for CPUs with {info.cpu_capability}"
        elif info.artifact and not (candidate.sidecar.parent / info.artifact).is_file():
            problem = f"artifact file {info.artifact} is missing"
        if problem:
            passed.append(f"{info.label}: {problem}")
            continue
        return {"engine": info.label, "precision": info.precision, "why": candidate.why, "passed_over": passed,
                "warnings": plan.warnings}
    raise AssertionError("plan_engine always ends with an eager candidate")  # pragma: no cover


def _eager(model: nn.Module, device: torch.device, batch_size: int, candidate: EngineCandidate, plan: EnginePlan) -> EagerEngine:
    engine = EagerEngine(model, device, batch_size, candidate.precision)
    engine.choice = _choice_text(engine.name, candidate, plan)
    return engine


def _choice_text(name: str, candidate: EngineCandidate, plan: EnginePlan) -> str:
    text = f"{name}: {candidate.why}"
    if plan.passed_over:
        text += "; passed over: " + "; ".join(plan.passed_over)
    return text


def choose_engine(
    model: nn.Module, options: ScanOptions, weights_path: Path | None, device: torch.device
) -> tuple[InferenceEngine, list[str]]:
    """The engine `plan_engine` ranks first that passes its checks, with a warning per fallback.

    'auto' takes TensorRT then AOTInductor on CUDA, AOTInductor on the CPU, silently using eager when
    no artifact was exported; an explicitly requested engine that cannot be used is always a warning.
    The engine's `choice` says which artifact and precision, and why (the verdict carries it).
    """
    batch_size = options.batch_size or default_batch_size(model.config, device)
    explicit = options.engine not in ("auto", "eager")
    if weights_path is None:
        plan = plan_engine(None, options, device)
        warnings = [f"engine {options.engine!r} needs exported weights (no weights file); using eager"] if explicit else []
        return _eager(model, device, batch_size, plan.candidates[-1], plan), warnings + plan.warnings
    warnings: list[str] = []
    if options.engine == "tensorrt" and not tensorrt_available():
        missing = "no CUDA GPU" if not torch.cuda.is_available() else "torch_tensorrt is not installed"
        warnings.append(f"TensorRT engine unavailable ({missing})")
    plan = plan_engine(weights_path, options, device)
    warnings.extend(plan.warnings)
    digest: str | None = None
    for candidate in plan.candidates:
        if candidate.sidecar is None or candidate.info is None:
            if explicit and not warnings:
                warnings.append(f"no usable {options.engine} artifact: " + "; ".join(plan.passed_over or ["none found"]))
            if warnings:
                warnings.append("using the eager engine")
            return _eager(model, device, batch_size, candidate, plan), warnings
        digest = digest or model_digest(model)
        try:
            if candidate.info.runtime == "eager":
                check_weights(candidate.info, model, device, digest)
                engine: InferenceEngine = _eager(model, device, batch_size, candidate, plan)
            else:
                engine = open_engine(candidate.sidecar, model, device, batch_size, digest)
                engine.choice = _choice_text(engine.name, candidate, plan)  # type: ignore[attr-defined]
            return engine, warnings
        except ArtifactRejected as reason:
            warnings.append(f"{candidate.info.engine} artifact {candidate.sidecar.name} not used: {reason}")
    raise AssertionError("plan_engine always ends with an eager candidate")  # pragma: no cover


def load_compiled_engine(
    model: nn.Module, options: ScanOptions, weights_path: Path | None, device: torch.device
) -> tuple[InferenceEngine | None, list[str]]:
    """`choose_engine`, with None instead of an eager engine (the caller builds its own eager one)."""
    engine, warnings = choose_engine(model, options, weights_path, device)
    return (None if isinstance(engine, EagerEngine) else engine), warnings


__all__ = [
    "PARITY_TOLERANCE",
    "PRECISION_DTYPES",
    "EngineCandidate",
    "EnginePlan",
    "check_weights",
    "choose_engine",
    "crops_parity_gap",
    "measure_speed",
    "parity_face_crops",
    "plan_engine",
    "preview_engine",
    "ArtifactRejected",
    "CompiledEngine",
    "EngineArtifact",
    "EngineUnavailable",
    "InferenceGraph",
    "artifact_stem",
    "check_artifact",
    "default_precision",
    "export_engine",
    "export_program",
    "find_sidecars",
    "load_compiled_engine",
    "model_digest",
    "open_engine",
    "parity_gap",
    "read_sidecar",
    "tensorrt_available",
]
