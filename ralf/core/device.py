"""Which device a run uses: the one place where "auto" becomes cuda or cpu."""

from __future__ import annotations

from typing import Any


class DeviceUnavailable(ValueError):
    """CUDA was asked for on a machine without a usable CUDA GPU."""


def resolve_device(requested: Any = "auto") -> str:
    """'auto' -> 'cuda' when a CUDA GPU is usable, else 'cpu'; 'cpu', 'cuda' and 'cuda:N' (or a
    torch.device) are returned as text after checking that CUDA is there. torch is imported only to
    ask about CUDA, so resolving 'cpu' costs nothing."""
    name = str(requested)
    if name == "cpu":
        return name
    if name != "auto" and not name.startswith("cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {name!r}")
    import torch

    available = torch.cuda.is_available()
    if name == "auto":
        return "cuda" if available else "cpu"
    if not available:
        raise DeviceUnavailable(
            f"device {name!r} was requested but CUDA is not available on this machine (use --device cpu or auto)"
        )
    return name
