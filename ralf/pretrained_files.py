"""What every reader of pretrained weights files shares (the torch checkpoint readers of
`pretrained.py` and `pretrained_torchvision.py`, the Keras readers of `keras_files.py` and
`keras_xception.py`): the error, reading a state dict from a local file, checking one against a
network, and finding the Xception inside a model. It imports none of them, so they import it
without a circle. Pickle-based checkpoints are read only with torch.load(weights_only=True).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from ralf.xception import Xception

# Keys of the ImageNet 1000-class head; RALF replaces it with a 1-logit head, so they are skipped.
XCEPTION_HEAD_PREFIXES = ("fc.", "last_linear.", "head.fc.")
# Wrapping keys some training scripts put around the state dict.
_STATE_DICT_WRAPPERS = ("state_dict", "model", "model_state_dict")


class PretrainedError(ValueError):
    """A pretrained weights file is missing, unreadable, or does not fit the network."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a local .safetensors file or a .pth/.pt/.bin checkpoint (weights_only unpickling)."""
    path = Path(path)
    if not path.is_file():
        raise PretrainedError(f"pretrained weights file not found: {path}")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as error:
            raise PretrainedError(f"cannot read {path} as safetensors: {error}") from None
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as error:
        raise PretrainedError(f"cannot read {path} as a weights-only torch checkpoint: {error}") from None
    for wrapper in _STATE_DICT_WRAPPERS:
        if isinstance(loaded, dict) and isinstance(loaded.get(wrapper), dict):
            loaded = loaded[wrapper]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise PretrainedError(f"{path} does not hold a state dict of tensors")
    return {key.removeprefix("module."): value for key, value in loaded.items()}


def check_state_dict(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], heading: str) -> None:
    """PretrainedError under `heading` listing missing, unexpected and mis-shaped tensors, if any.
    BN step counters may be missing: checkpoints older than PyTorch 0.4 have none, and they are not weights."""
    missing = sorted(k for k in set(expected) - set(state) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(state) & set(expected)
        if state[k].shape != expected[k].shape
    )
    if missing or unexpected or mismatched:
        lines = [heading, *listed("missing", missing), *listed("unexpected", unexpected)]
        raise PretrainedError("\n".join(lines + listed("shape mismatches", mismatched, "; ")))


def listed(label: str, names: list[str], separator: str = ", ") -> list[str]:
    """An error message's line `label (count): the first 20 names`; no line for no names."""
    return [f"{label} ({len(names)}): {separator.join(names[:20])}"] if names else []


def find_xception(model: nn.Module) -> Xception:
    if isinstance(model, Xception):
        return model
    found = [module for module in model.modules() if isinstance(module, Xception)]
    if len(found) != 1:
        raise PretrainedError(f"expected exactly one Xception inside {type(model).__name__}, found {len(found)}")
    return found[0]
