"""Which engine a scan runs, by rule: an exported artifact beside the weights, or eager.

Which one, when several lie beside the weights (`plan_engine`), is a rule, never file age: the
precision asked for (`ScanOptions.precision`), else (`auto`) the fastest whose parity was measured
within `PARITY_TOLERANCE` — low precisions only when that parity was measured on face crops (a
trained model's scores on real faces; `--parity-crops`), not on noise alone — and that beat eager
fp32 in the same export run. An `eager` sidecar at bf16 records the same for the eager bf16 form
(`pipeline.precision.LowPrecisionForward`). Each candidate is checked when loaded
(`pipeline.artifacts`); any failure is a warning naming the reason, and the next candidate (finally
eager) takes over. The engine's `choice` says which and why.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pipeline.artifacts import (
    ArtifactRejected,
    EngineArtifact,
    ExportEngineName,
    check_weights,
    find_sidecars,
    model_digest,
    open_engine,
    read_sidecar,
    tensorrt_available,
)
from pipeline.engine import EagerEngine, InferenceEngine, default_batch_size, resolved_batch_size
from pipeline.precision import PARITY_TOLERANCE, precision_supported
from ralf.core.device import DeviceUnavailable
from ralf.core.metadata import WeightsError, read_metadata
from ralf.core.options import ScanOptions


def load_engine(
    model: nn.Module, options: ScanOptions, weights_path: Path | None = None
) -> tuple[InferenceEngine, list[str]]:
    """The engine `options.engine` asks for, falling back to eager with a warning when it is unavailable.

    `weights_path` identifies the weights, so an engine that compiles ahead of time can cache its
    build next to them. Returns the engine and the warnings a verdict should carry. An unset batch
    size becomes `default_batch_size` for the model and device. Which artifact and precision, by
    rule (`plan_engine`): the engine's `choice` says which and why.
    """
    device = torch.device(options.resolved_device())
    batch_size = resolved_batch_size(options, getattr(model, "config", None), device)
    options = options.model_copy(update={"batch_size": batch_size})
    return choose_engine(model, options, weights_path, device)


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
    try:
        device = torch.device(options.resolved_device())
    except DeviceUnavailable as error:
        return {"engine": "", "precision": "", "why": str(error), "passed_over": [], "warnings": []}
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
