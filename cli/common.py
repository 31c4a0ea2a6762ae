"""What the command modules share: the error exit code, one way to fail with a reason, loading the
RALF_* settings, and the scan flags (declared once here; `scan`, `calibrate` and `enqueue` take them)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from ralf.core.options import (
    SAMPLING_FIELDS,
    AggregationName,
    DecoderName,
    DetectorChoice,
    DetectorPrecision,
    DeviceName,
    EngineName,
    PrecisionRequest,
    ScanOptions,
)
from ralf.core.redaction import mask_url, mask_urls_in
from ralf.core.settings import Settings
from worker.jobs import describe_validation_error

# Exit code of every command that could not do its job (bad input, setup problems); the message says why.
EXIT_ERROR = 2
EXIT_REDIS = 3  # Redis could not be reached (or went away)

err = Console(stderr=True)


def fail(message: str) -> NoReturn:
    """Print `error: <message>` on stderr and exit with EXIT_ERROR."""
    # soft_wrap: paths in messages stay whole (copyable), whatever the terminal width.
    err.print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_ERROR)


def redis_failure(exc: Exception, settings: Settings) -> typer.Exit:
    """Print why Redis failed, its URL without the password (mask_url), and give exit 3 to raise."""
    shown = mask_url(settings.redis_url)
    reason = mask_urls_in(str(exc), [settings.redis_url])
    err.print(f"[red]cannot talk to Redis at {escape(shown)}:[/red] {escape(reason)}", highlight=False, soft_wrap=True)
    return typer.Exit(EXIT_REDIS)


def load_settings() -> Settings:
    """The RALF_* settings, or exit 2 naming the invalid ones."""
    try:
        return Settings()
    except ValidationError as exc:
        err.print(f"[red]invalid RALF_* settings:[/red] {escape(describe_validation_error(exc))}")
        raise typer.Exit(EXIT_ERROR) from None


# The scan flags; unset (None) leaves the RALF_* setting (a worker's, for enqueue), else ScanOptions' default.
DeviceFlag = Annotated[DeviceName | None, typer.Option(help="auto | cpu | cuda [default: $RALF_DEVICE or auto]")]
DecoderFlag = Annotated[DecoderName | None, typer.Option(help="auto | dali | pyav [default: auto]")]
DetectorFlag = Annotated[
    DetectorChoice | None,
    typer.Option(help="auto | retinaface | mtcnn | yolo [default: auto: the one the weights were trained with]"),
]
DetectorPrecisionFlag = Annotated[
    DetectorPrecision | None,
    typer.Option(help="RetinaFace's network: auto (fp32) | fp32 | bf16 (faster on CPUs with bf16, may lose marginal faces)"),
]
YoloWeightsFlag = Annotated[Path | None, typer.Option(help="Local YOLO face weights (.pt) for --detector yolo")]
EngineFlag = Annotated[EngineName | None, typer.Option(help="auto | tensorrt | compile | eager [default: auto]")]
PrecisionFlag = Annotated[
    PrecisionRequest | None,
    typer.Option(help="auto (fastest exported engine within its measured parity, else fp32) | fp32 | bf16 | fp16"),
]
BatchSizeFlag = Annotated[
    int | None, typer.Option(min=1, help="Face crops per model forward [default: per device and model preset]")
]
FpsFlag = Annotated[float | None, typer.Option(min=0.001, help="Sample this many frames per second [default: 2]")]
EveryNFlag = Annotated[int | None, typer.Option(min=1, help="Sample every n-th frame instead")]
MaxFramesFlag = Annotated[int | None, typer.Option(min=1, help="Sample at most this many frames, evenly")]
AggregationFlag = Annotated[
    AggregationName | None, typer.Option(help="Track score from frame scores: mean | topk | median [default: mean]")
]


def scan_options(settings: Settings, **flags: object) -> ScanOptions:
    """The settings' scan options with the flags given (None: not given); exit 2 on a conflict or an invalid value."""
    given = {name: value for name, value in flags.items() if value is not None}
    if sum(name in given for name in SAMPLING_FIELDS) > 1:
        fail("choose at most one of --fps, --every-n, --max-frames")
    try:
        return settings.scan_options(**given)
    except ValidationError as exc:
        fail(f"invalid scan options or RALF_* settings: {describe_validation_error(exc)}")
