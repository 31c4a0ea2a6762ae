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
from ralf.core.settings import Settings

out = Console()


@app.command()
def config(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Show the effective settings (RALF_* environment variables) and the scan options they give."""
    settings = load_settings()
    values = settings.model_dump(mode="json")
    options = settings.scan_options().model_dump(mode="json")
    engine = _engine_preview(settings)
    if as_json:
        document = {"settings": values, "scan_options": options, "engine_choice": engine}
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


def _engine_preview(settings: Settings) -> dict[str, object]:
    """`pipeline.engine_choice.preview_engine` for the workers' weights and options (imports torch)."""
    from ralf.shipped import ShippedWeightsMissing

    try:
        weights = settings.model_weights()
    except ShippedWeightsMissing as error:
        return {"engine": "", "why": str(error), "passed_over": [], "warnings": []}
    from pipeline.engine_choice import preview_engine

    return preview_engine(weights, settings.scan_options())
