"""Loading an exported inference artifact at run time, and the sidecar that describes it.

`pipeline.export` builds the artifacts (Torch-TensorRT engines, AOTInductor packages) and writes a
JSON sidecar beside each; this module is the loading backend, kept apart from the exporter so a
worker loads an artifact without the build code (as ultralytics keeps its exporter apart from its
`AutoBackend`). `pipeline.engine_choice` decides which artifact, if any, a scan uses.

Every sidecar records the weights' tensor digest: calibrating rewrites only the metadata, so it keeps
an artifact valid, while new tensors make it stale. An artifact is used only after it passed every
check (format, digest, device, versions, file hash) and matched the eager model on two crops; a
failure raises `ArtifactRejected` naming the reason.

Artifacts hold compiled native code and pickled constants: load only artifacts you built.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from pipeline.engine import batched_logits
from ralf.core.files import file_sha256
from ralf.weights import tensors_digest

ExportEngineName = Literal["tensorrt", "compile", "eager"]
Precision = Literal["fp32", "fp16", "bf16"]
Runtime = Literal["tensorrt", "aoti", "eager"]

SIDECAR_FORMAT = "ralf-engine"
SIDECAR_VERSION = 1


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


def tensorrt_available() -> bool:
    return torch.cuda.is_available() and importlib.util.find_spec("torch_tensorrt") is not None


def model_digest(model: nn.Module) -> str:
    """The tensors' sha256 exactly as `save_weights` computes it (its first 12 hex name model_version)."""
    return tensors_digest(model.state_dict())


def cuda_capability() -> str:
    major, minor = torch.cuda.get_device_capability()
    return f"{major}.{minor}"


def module_version(name: str) -> str | None:
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
    if info.device == "cuda" and info.cuda_capability != cuda_capability():
        raise ArtifactRejected(
            f"built for GPU compute capability {info.cuda_capability} ({info.device_name}), this GPU is "
            f"{cuda_capability()} ({torch.cuda.get_device_name(device)}); export again on this machine"
        )
    if info.runtime == "tensorrt":
        if importlib.util.find_spec("torch_tensorrt") is None:
            raise ArtifactRejected("torch_tensorrt is not installed here")
        for module, built in (("torch_tensorrt", info.torch_tensorrt_version), ("tensorrt", info.tensorrt_version)):
            if module_version(module) != built:
                raise ArtifactRejected(f"built with {module} {built}, running {module_version(module)}")
    if info.runtime == "eager":
        raise ArtifactRejected("an eager sidecar has no artifact to load")
    path = sidecar.parent / info.artifact
    if not path.is_file():
        raise ArtifactRejected(f"artifact file {info.artifact} is missing")
    if file_sha256(path) != info.artifact_sha256:
        raise ArtifactRejected(f"artifact file {info.artifact} changed since export (sha256 differs)")
    return path


def open_artifact(info: EngineArtifact, path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    """A callable running the artifact: float32 (B, 3, S, S) on its device -> float32 logits (B,)."""
    if info.runtime == "tensorrt":
        import torch_tensorrt  # registers the TensorRT engine op that the saved program calls

        return torch_tensorrt.load(str(path)).module()
    if info.runtime == "aoti":
        return torch._inductor.aoti_load_package(str(path))
    raise ArtifactRejected(f"runtime {info.runtime!r} has no artifact to open")


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
        return batched_logits(self.run, crops, self.device, self.max_batch)


def open_engine(
    sidecar: Path, model: nn.Module, device: torch.device, batch_size: int, digest: str | None = None
) -> CompiledEngine:
    """Check and open one artifact, then confirm it matches the eager model; ArtifactRejected otherwise."""
    info = read_sidecar(sidecar)
    path = check_artifact(info, sidecar, model, device, digest)
    try:
        run = open_artifact(info, path)
        gap = parity_gap(model, run, min(2, info.max_batch), info.image_size, device.type)
    except ArtifactRejected:
        raise
    except Exception as error:  # noqa: BLE001  (a broken artifact must not stop the scan; eager takes over)
        raise ArtifactRejected(f"cannot run {info.artifact}: {type(error).__name__}: {error}") from error
    if gap > info.parity_tolerance:
        raise ArtifactRejected(f"{info.artifact} disagrees with eager here (|ΔP(fake)| {gap:.3g})")
    return CompiledEngine(run, info, device, batch_size)
