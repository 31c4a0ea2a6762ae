"""The typer application every command module registers on."""

import typer

app = typer.Typer(
    name="ralf-cli",
    help="RALF deepfake moderation: scan videos, run queue workers, train and calibrate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
