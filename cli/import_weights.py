"""`import-weights`: convert a checkpoint of the authors' reference trainer into this project's weights file.

Exit codes: 0 written, 2 the checkpoint could not be imported (the reason is printed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from cli.app import app
from cli.common import EXIT_ERROR

# The networks and the importer load inside the command: other ralf-cli commands start without torch.

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


@app.command("import-weights")
def import_weights(
    checkpoint: Annotated[Path, typer.Argument(help="best.pt / last.pt / checkpoint.tar of the reference trainer")],
    output: Annotated[Path, typer.Argument(help="RALF weights file to write (.safetensors)")],
    preset: Annotated[str, typer.Option(help="model preset the checkpoint was trained with")] = "paper",
    no_center: Annotated[
        bool,
        typer.Option(
            "--no-center",
            help="accept a checkpoint without the embedding center (best.pt / last.pt); zeros are stored. "
            "The center is unused at inference.",
        ),
    ] = False,
) -> None:
    """Import weights trained with the authors' code (GitHub zqyuan-tw/RALF), flipping P(real) to P(fake)."""
    from ralf.config import RALFConfig
    from trainer.import_reference import import_reference_to_file

    try:
        config = RALFConfig.from_preset(preset)
        metadata, report = import_reference_to_file(checkpoint, output, config, allow_missing_center=no_center)
    except (ValueError, OSError) as error:  # ReferenceImportError, WeightsError, unknown preset, disk errors
        err.print(f"[red]cannot import {escape(str(checkpoint))}:[/red]\n{escape(str(error))}")
        raise typer.Exit(EXIT_ERROR) from None
    out.print(f"wrote {escape(str(output))} ({metadata.model_version})")
    out.print(f"  source: {escape(report.source)}")
    out.print(f"  tensors mapped: {report.tensors_mapped}; embedding center: {report.center}")
    if report.ignored_entries:
        out.print(f"  ignored training state (not part of the inference model): {', '.join(report.ignored_entries)}")
    out.print(
        f"  label convention flipped: the reference's {report.reference_label_convention} "
        f"became {report.label_convention} (final layer negated)"
    )
