"""`ralf-cli config`: the effective RALF_* settings, the scan options they give, and the engine workers would use."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cli.app import app
from cli.common import load_settings
from ralf.core.options import ScanOptions
from ralf.core.redaction import mask_url
from ralf.core.settings import Settings

out = Console()


@app.command()
def config(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Show the effective settings (RALF_* environment variables) and the scan options they give."""
    settings = load_settings()
    values = shown_settings(settings)
    options = settings.scan_options().model_dump(mode="json")
    engine = _engine_preview(settings)
    detector = _detector_preview(settings)
    if as_json:
        document = {"settings": values, "scan_options": options, "engine_choice": engine, "detector_choice": detector}
        sys.stdout.write(json.dumps(document, indent=2, default=str) + "\n")
        return
    table = Table("variable", "value", "meaning", title="RALF settings")
    for name, field in Settings.model_fields.items():
        table.add_row(f"RALF_{name.upper()}", json.dumps(values[name]), field.description or "")
    out.print(table)
    scan = Table("option", "value", title="Scan options workers use")
    for name, value in options.items():
        scan.add_row(name, json.dumps(value))
    out.print(scan)
    choice = Table("", "", title="Inference engine workers would use (checked again when they load it)", show_header=False)
    choice.add_row("engine", escape(str(engine.get("engine") or "-")))
    choice.add_row("why", escape(str(engine.get("why", ""))))
    for line in engine.get("passed_over", []) or []:
        choice.add_row("passed over", escape(str(line)))
    for line in engine.get("warnings", []) or []:
        choice.add_row("warning", escape(str(line)))
    out.print(choice)
    out.print(f"Face detector workers would use: {escape(detector['detector'] or '-')} ({escape(detector['why'])})")
    if "precision" in detector:
        out.print(f"Its network's precision: {escape(detector['precision'] or '-')} ({escape(detector['precision_why'])})")


# Settings holding URLs that may carry a password (Redis) or a token (callback query): shown masked, as
# the webhook secret (a SecretStr) is.
_URL_SETTINGS = ("redis_url", "callback_url")


def shown_settings(settings: Settings) -> dict[str, object]:
    """The settings as JSON values, with every secret masked (mask_url; SecretStr shows as stars)."""
    values = settings.model_dump(mode="json")
    for name in _URL_SETTINGS:
        if values.get(name):
            values[name] = mask_url(values[name])
    return values


def _engine_preview(settings: Settings) -> dict[str, object]:
    """`pipeline.engine_choice.preview_engine` for the workers' weights and options (imports torch)."""
    from ralf.shipped import ShippedWeightsMissing

    try:
        weights = settings.model_weights()
    except ShippedWeightsMissing as error:
        return {"engine": "", "why": str(error), "passed_over": [], "warnings": []}
    from pipeline.engine_choice import preview_engine

    return preview_engine(weights, settings.scan_options())


def _detector_preview(settings: Settings) -> dict[str, str]:
    """The detector scans would run and why (the one asked for, or for "auto" the weights'), and for
    RetinaFace the precision its network would run in and why."""
    options = settings.scan_options()
    choice = _detector_name(settings, options)
    if choice["detector"] != "retinaface":
        return choice
    from pipeline.faces.retinaface import network_precision
    from pipeline.faces.types import FaceDetectorError
    from ralf.core.device import DeviceUnavailable

    try:
        precision, why = network_precision(options.detector_precision, options.resolved_device(), "auto")
    except (FaceDetectorError, DeviceUnavailable) as error:
        precision, why = "", str(error)
    return choice | {"precision": precision, "precision_why": why}


def _detector_name(settings: Settings, options: ScanOptions) -> dict[str, str]:
    """The detector scans would run and why: the one asked for, or for "auto" the weights' (torch-free)."""
    from ralf.core.metadata import CropGeometry, read_metadata
    from ralf.shipped import ShippedWeightsMissing

    if options.detector != "auto":
        return {"detector": options.detector, "why": "asked for (RALF_DETECTOR)"}
    try:
        weights = settings.model_weights()
    except ShippedWeightsMissing as error:
        return {"detector": "", "why": str(error)}
    crop = CropGeometry() if weights is None else read_metadata(weights).crop
    recorded = "as recorded in the weights" if crop.detector else "the weights do not record it: MTCNN cut them"
    return {"detector": crop.trained_detector, "why": f"auto: the detector the training crops were cut with ({recorded})"}
