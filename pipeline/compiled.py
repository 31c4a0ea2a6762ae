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

Artifacts hold compiled native code and pickled constants: load only artifacts you built.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import importlib.util
import platform
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from pipeline.engine import InferenceEngine, InferenceOutOfMemory, check_crops
from pipeline.options import ScanOptions
from ralf.pretrained import file_sha256
from ralf.weights import load_weights, tensors_digest

ExportEngineName = Literal["tensorrt", "compile", "eager"]
Precision = Literal["fp32", "fp16", "bf16"]
Runtime = Literal["tensorrt", "aoti", "eager"]

SIDECAR_FORMAT = "ralf-engine"
SIDECAR_VERSION = 1
PRECISION_DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Largest |P(fake) compiled - P(fake) eager| accepted at export and load, per precision.
PARITY_TOLERANCE: dict[str, float] = {"fp32": 1e-4, "fp16": 1e-2, "bf16": 2e-2}
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
    created: str


# -- building -------------------------------------------------------------------------------------


class InferenceGraph(nn.Module):
    """RALF's forward at one precision with float32 in and out, so every engine has one interface."""

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        # A copy, so lowering the precision never changes the caller's model.
        self.model = model if dtype == torch.float32 else copy.deepcopy(model).to(dtype)
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(self.dtype)).float()


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
) -> Path:
    """Build the deployable artifact for `engine`, check it against eager, write its sidecar; returns the sidecar.

    The artifact and sidecar go to `out_dir` (default: beside the weights), named by `artifact_stem`.
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
    if engine == "eager" and precision != "fp32":
        raise ValueError("the eager engine runs the weights as stored (fp32); export tensorrt or compile for lower precision")
    model, metadata = load_weights(weights_path, device)
    image_size = model.config.image_size
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
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        run = graph if partial is None else _open_artifact(info, partial)
        batches = sorted({1, min(max_batch, 8), max_batch})
        diff = max(parity_gap(model, run, batch, image_size, device) for batch in batches)
        if diff > info.parity_tolerance:
            raise RuntimeError(
                f"the {engine} {precision} build disagrees with eager: max |ΔP(fake)| {diff:.3g} > "
                f"{info.parity_tolerance:g}; nothing was written"
            )
        if partial is not None:
            partial.replace(folder / info.artifact)
    finally:
        if partial is not None:
            partial.unlink(missing_ok=True)
    info = info.model_copy(update={"parity_max_abs_diff": diff})
    sidecar_path.write_text(info.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return sidecar_path


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
    """Sidecars of `engine` for `device` beside the weights, newest file first."""
    found = weights_path.parent.glob(f"{weights_path.stem}.{engine}-{device}-*.json")
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def check_artifact(
    info: EngineArtifact, sidecar: Path, model: nn.Module, device: torch.device, digest: str | None = None
) -> Path:
    """The artifact's path if `info` fits this model and machine; ArtifactRejected says why not.

    `digest`: the model's `model_digest`, when the caller already has it.
    """
    if info.image_size != model.config.image_size:
        raise ArtifactRejected(f"built for {info.image_size}px crops, the model takes {model.config.image_size}px")
    if info.weights_digest != (digest or model_digest(model)):
        raise ArtifactRejected(f"stale: built from other weights ({info.model_version}); export again")
    if info.device != device.type:
        raise ArtifactRejected(f"built for {info.device}, this scan runs on {device.type}")
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
    """Artifact kinds to try, best first; eager follows them all."""
    if requested == "tensorrt":
        return ["tensorrt", "compile"]
    if requested == "compile":
        return ["compile"]
    if requested == "auto":
        return ["tensorrt", "compile"] if device.type == "cuda" else ["compile"]
    return []


def load_compiled_engine(
    model: nn.Module, options: ScanOptions, weights_path: Path | None, device: torch.device
) -> tuple[InferenceEngine | None, list[str]]:
    """The best usable artifact for `options.engine`, or None (use eager), with a warning per fallback.

    'auto' takes TensorRT then AOTInductor on CUDA, AOTInductor on the CPU, silently using eager when
    no artifact was exported; an explicitly requested engine that cannot be used is always a warning.
    """
    if options.engine == "eager":
        return None, []
    warnings: list[str] = []
    explicit = options.engine != "auto"
    if weights_path is None:
        if explicit:
            warnings.append(f"engine {options.engine!r} needs exported weights (no weights file); using eager")
        return None, warnings
    if options.engine == "tensorrt" and not tensorrt_available():
        missing = "no CUDA GPU" if not torch.cuda.is_available() else "torch_tensorrt is not installed"
        warnings.append(f"TensorRT engine unavailable ({missing})")
    digest: str | None = None
    for kind in _candidates(options.engine, device):
        if kind == "tensorrt" and not tensorrt_available():
            continue
        sidecars = find_sidecars(Path(weights_path), kind, device.type)
        if not sidecars and explicit:
            warnings.append(
                f"no {kind} artifact for {device.type} beside {Path(weights_path).name} "
                f"(run `ralf-cli export {Path(weights_path).name} --engine {kind}` on this machine)"
            )
        for sidecar in sidecars:
            digest = digest or model_digest(model)
            try:
                return open_engine(sidecar, model, device, options.batch_size, digest), warnings
            except ArtifactRejected as reason:
                warnings.append(f"{kind} artifact {sidecar.name} not used: {reason}")
    if warnings:
        warnings.append("using the eager engine")
    return None, warnings


__all__ = [
    "PARITY_TOLERANCE",
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
