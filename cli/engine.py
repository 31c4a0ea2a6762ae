"""`export` (a deployable inference engine beside the weights) and `calibrate` (a threshold chosen on data).

Both exit 0 on success and 2 with a one-line reason when they cannot do their job (bad weights,
missing data, one-class or too little validation data, an engine this machine cannot build).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cli.app import app
from cli.common import (
    AggregationFlag,
    BatchSizeFlag,
    DecoderFlag,
    DetectorFlag,
    DeviceFlag,
    EngineFlag,
    EveryNFlag,
    FpsFlag,
    MaxFramesFlag,
    fail,
    load_settings,
    scan_options,
)
from ralf.core.device import resolve_device

if TYPE_CHECKING:
    from trainer.calibrate import CalibrationResult

# torch, the pipeline engines and the calibrator load inside the commands, so that other commands
# (enqueue, status) start without importing torch.

PrecisionName = Literal["fp32", "fp16", "bf16"]
LevelName = Literal["frame", "video"]

out = Console()
err = Console(stderr=True)


@app.command("export")
def export_command(
    weights: Annotated[Path, typer.Argument(help="RALF weights (.safetensors)", show_default=False)],
    engine: Annotated[
        Literal["auto", "tensorrt", "compile", "eager"],
        typer.Option(help="tensorrt (CUDA + torch_tensorrt) | compile (AOTInductor) | eager | auto: the best here"),
    ] = "auto",
    precision: Annotated[
        PrecisionName | None, typer.Option(help="fp16 | bf16 | fp32 [default: fp16 on GPUs, fp32 on the CPU]")
    ] = None,
    max_batch: Annotated[int, typer.Option(min=1, help="Largest batch the engine accepts (dynamic 1..N)")] = 32,
    device: Annotated[
        Literal["cpu", "cuda"] | None, typer.Option(help="Build for this device [default: cuda when present]")
    ] = None,
    out_dir: Annotated[Path | None, typer.Option(help="Where to write [default: beside the weights]")] = None,
    parity_crops: Annotated[
        Path | None,
        typer.Option(
            help="Face crops (a folder of PNG/JPEG, e.g. a prepare or self-blend output) the parity with fp32 is "
            "measured on [default: generated views of one real face]"
        ),
    ] = None,
) -> None:
    """Build a compiled inference engine for this machine and write it next to the weights.

    The pipeline and workers pick it up automatically (engine and precision 'auto': the fastest one
    whose measured parity is within tolerance) and say which engine they use and why. `--engine eager
    --precision bf16` builds nothing: it measures eager bf16 (parity on face crops, speed), which is
    what lets 'auto' run it.
    """
    from pipeline.artifacts import read_sidecar, tensorrt_available
    from pipeline.export import EngineUnavailable, default_precision, export_engine
    from ralf.core.metadata import WeightsError

    chosen = engine if engine != "auto" else ("tensorrt" if tensorrt_available() else "compile")
    target = device or ("cuda" if chosen == "tensorrt" else None)
    out.print(
        f"exporting [bold]{chosen}[/bold] engine of {escape(str(weights))} "
        f"({precision or default_precision(chosen, target or resolve_device())}, batch 1..{max_batch}); "
        "compiling can take minutes"
    )
    started = time.perf_counter()
    try:
        sidecar = export_engine(weights, chosen, precision, max_batch, out_dir, target, parity_crops)
    except (EngineUnavailable, WeightsError, ValueError, RuntimeError) as error:
        fail(str(error))
    info = read_sidecar(sidecar)
    table = Table(title=f"exported in {time.perf_counter() - started:.0f} s", show_header=False)
    artifact = sidecar.parent / info.artifact if info.artifact else None
    rows = [
        ("engine", f"{info.engine} ({info.runtime})"),
        ("artifact", str(artifact) if artifact else "none (eager runs the weights)"),
        ("size", f"{artifact.stat().st_size / 1e6:.1f} MB" if artifact else "-"),
        ("sidecar", str(sidecar)),
        ("precision", info.precision),
        ("batch", f"1..{info.max_batch}"),
        ("device", f"{info.device} ({info.device_name})"),
        ("model version", info.model_version),
        ("parity", f"max |ΔP(fake)| vs eager {info.parity_max_abs_diff:.2e} (tolerance {info.parity_tolerance:g})"),
        ("parity crops", f"noise and {info.parity_data}"),
        (
            "speed",
            f"{info.ms_per_face:.2f} ms/face vs eager fp32 {info.eager_fp32_ms_per_face:.2f} "
            f"({info.speedup:.2f}x) at batch {info.speed_batch}"
            if info.speedup
            else "not measured",
        ),
    ]
    for name, value in rows:
        table.add_row(name, escape(value))
    out.print(table)


@app.command("calibrate")
def calibrate_command(
    weights: Annotated[Path, typer.Argument(help="RALF weights (.safetensors); calibration is written into them")],
    data: Annotated[
        Path,
        typer.Option(
            help="Validation folder with real/ and fake/ (videos at any depth, crops or crop folders), or a manifest "
            "CSV of labelled videos (file,label[,split,...])"
        ),
    ],
    split: Annotated[str | None, typer.Option(help="Manifest rows of this split only (e.g. train)")] = None,
    level: Annotated[
        LevelName | None, typer.Option(help="frame | video [default: video for videos, frame for crop images]")
    ] = None,
    target_fpr: Annotated[
        float | None, typer.Option(min=0.0, max=0.999, help="False-positive rate allowed on real samples [default: 0.01]")
    ] = None,
    use_eer: Annotated[bool, typer.Option("--eer", help="Threshold at the equal error rate instead")] = False,
    temperature: Annotated[bool, typer.Option("--temperature", help="Also fit temperature scaling (one scalar T)")] = False,
    roc: Annotated[Path | None, typer.Option(help="Save the ROC curve with the chosen point to this PNG")] = None,
    min_per_class: Annotated[
        int | None, typer.Option(min=1, help="Fewest usable real and fake samples accepted [default: 5]")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Report only; leave the weights unchanged")] = False,
    device: DeviceFlag = None,
    engine: EngineFlag = None,
    decoder: DecoderFlag = None,
    detector: DetectorFlag = None,
    batch_size: BatchSizeFlag = None,
    fps: FpsFlag = None,
    every_n: EveryNFlag = None,
    max_frames: MaxFramesFlag = None,
    aggregation: AggregationFlag = None,
) -> None:
    """Choose the decision threshold on labelled validation data and store it in the weights' metadata.

    Samples are scored with the pipeline (same options and RALF_* settings as scan and the workers).

    The threshold is the ROC point with the largest TPR whose FPR <= target, or the EER point.
    """
    if use_eer and target_fpr is not None:
        fail("choose either --target-fpr or --eer")
    from ralf.core.metadata import WeightsError
    from trainer.calibrate import MIN_PER_CLASS, calibrate, save_calibration
    from trainer.layouts import DatasetLayoutError
    from trainer.roc_plot import plot_roc
    from trainer.thresholds import CalibrationError

    options = scan_options(
        load_settings(), device=device, engine=engine, decoder=decoder, detector=detector, batch_size=batch_size,
        target_fps=fps, every_n=every_n, max_frames=max_frames, aggregation=aggregation,
    )  # fmt: skip
    try:
        result = calibrate(
            weights,
            data,
            options=options,
            level=level,
            method="eer" if use_eer else "target_fpr",
            target_fpr=None if use_eer else (0.01 if target_fpr is None else target_fpr),
            fit_temp=temperature,
            min_per_class=min_per_class or MIN_PER_CLASS,
            show_progress=err.is_terminal,
            split=split,
        )
    except (CalibrationError, DatasetLayoutError, WeightsError) as error:
        fail(str(error))
    except ValueError as error:  # unreadable crop images, scanner set-up problems
        fail(str(error))
    if not dry_run:
        save_calibration(weights, result.calibration)
    out.print(_result_table(result, weights, written=not dry_run))
    if roc is not None:
        out.print(f"ROC curve: {escape(str(plot_roc(result.roc(), roc)))}")
    for name, reason in result.excluded:
        out.print(f"[yellow]left out[/yellow] {escape(name)}: {escape(reason)}")
    for warning in result.warnings:
        out.print(f"[bold yellow]warning:[/bold yellow] {escape(warning)}")


def _result_table(result: "CalibrationResult", weights: Path, *, written: bool) -> Table:
    calibration = result.calibration
    table = Table(title="calibration", show_header=False)
    temperature = calibration.temperature
    rows = [
        ("level", calibration.level),
        ("samples", f"{calibration.num_real} real, {calibration.num_fake} fake ({len(result.excluded)} left out)"),
        ("method", calibration.method + (f" (target FPR {calibration.target_fpr:g})" if calibration.target_fpr is not None else "")),
        ("threshold", f"logit {calibration.threshold:.6g}; P(fake) {result.threshold_probability:.6g} in verdicts"),
        ("achieved", f"TPR {calibration.achieved_tpr:.4f}, FPR {calibration.achieved_fpr:.4f}"),
        ("AUC / EER", f"{result.auc:.4f} / {result.eer:.4f}"),
        ("temperature", "not fitted" if temperature is None else f"T = {temperature:.4g} (P(fake) = sigmoid(logit / T))"),
        ("dataset", calibration.dataset_fingerprint[:16]),
        ("written to", str(weights) if written else "nothing (--dry-run)"),
    ]
    for name, value in rows:
        table.add_row(name, escape(value))
    return table
