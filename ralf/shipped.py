"""The trained weights that ship with the package (`lite` preset, see MODEL_CARD.md).

They are used whenever no weights file is named (`--weights`, `RALF_WEIGHTS`); a seeded random
model is used only on explicit request (`--random-weights`, `RALF_RANDOM_WEIGHTS`).
"""

from __future__ import annotations

from pathlib import Path

SHIPPED_WEIGHTS_NAME = "ralf-lite-v3.1.safetensors"
SHIPPED_WEIGHTS = Path(__file__).resolve().parent / "assets" / SHIPPED_WEIGHTS_NAME


class ShippedWeightsMissing(FileNotFoundError):
    """This installation lacks the shipped weights file."""


def shipped_weights() -> Path:
    """Path of the shipped weights file (this module imports no torch: enqueue stays light)."""
    if not SHIPPED_WEIGHTS.is_file():
        raise ShippedWeightsMissing(
            f"the shipped weights ({SHIPPED_WEIGHTS}) are missing from this installation: reinstall the "
            "package, or name a weights file with --weights / RALF_WEIGHTS"
        )
    return SHIPPED_WEIGHTS


def resolve_weights(weights: Path | None, random_weights: bool) -> Path | None:
    """The weights to load: a named file always wins; else None (a seeded random model) when random
    weights are asked for explicitly; else the shipped file."""
    if weights is not None:
        return weights
    return None if random_weights else shipped_weights()
