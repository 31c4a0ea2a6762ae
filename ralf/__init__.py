"""RALF networks and losses (pure torch); see ARCHITECTURE.md for the contracts.

The exports load on first use, so that torch-free parts (`ralf.core`, `ralf.config`, `ralf.shipped`) can be
imported by light commands (enqueue, status) without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "LABEL_CONVENTION": "ralf.core.metadata",
    "RALF": "ralf.model",
    "RALFOutput": "ralf.model",
    "ClassifierConfig": "ralf.config",
    "DiscriminatorConfig": "ralf.config",
    "RALFConfig": "ralf.config",
    "ReconstructorConfig": "ralf.config",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ralf' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
