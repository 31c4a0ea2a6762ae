"""Loaders for pretrained weights from LOCAL files; nothing is ever downloaded.

The file's identity (sha256) is returned so it can be recorded in the RALF weights' metadata.
Pickle-based checkpoints are read only with torch.load(weights_only=True).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from ralf.core.files import file_sha256
from ralf.xception import Xception

# Keys of the ImageNet 1000-class head; RALF replaces it with a 1-logit head, so they are skipped.
_XCEPTION_HEAD_PREFIXES = ("fc.", "last_linear.", "head.fc.")
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


def _find_xception(model: nn.Module) -> Xception:
    if isinstance(model, Xception):
        return model
    found = [module for module in model.modules() if isinstance(module, Xception)]
    if len(found) != 1:
        raise PretrainedError(f"expected exactly one Xception inside {type(model).__name__}, found {len(found)}")
    return found[0]


def load_xception_imagenet(model: nn.Module, path: str | Path) -> str:
    """Load ImageNet Xception weights into the Xception inside `model` (a RALF, Classifier or
    Xception); the 1000-class head is skipped.

    By suffix: .keras / .h5 / .hdf5 are Keras's ImageNet Xception (`ralf.keras_xception`; the network
    must be built with its `KERAS_CLASSIFIER_SETTINGS`), returning "imagenet-keras:<sha256>";
    anything else (.pth, .pt, .bin, .safetensors) is a Cadene pretrainedmodels / timm
    legacy_xception checkpoint, returning "imagenet:<sha256 of the file>". Old Cadene checkpoints
    store pointwise convs as (out, in) matrices; they are reshaped to (out, in, 1, 1).
    """
    if Path(path).suffix.lower() in (".keras", ".h5", ".hdf5"):
        from ralf.keras_xception import load_keras_xception  # imports this module; h5py loads lazily

        return load_keras_xception(model, path)
    backbone = _find_xception(model)
    if backbone.stem_widths != (32, 64) or backbone.num_features != 2048 or len(backbone.block_names) != 12:
        raise PretrainedError(
            "ImageNet Xception weights fit only the full network (classifier width 1.0, 8 middle blocks); "
            f"this one has stem widths {backbone.stem_widths}, {backbone.num_features} features and "
            f"{len(backbone.block_names) - 4} middle blocks"
        )
    if any(isinstance(m, nn.BatchNorm2d) and m.eps != 1e-5 for m in backbone.modules()):
        raise PretrainedError(
            "Cadene/timm ImageNet Xception weights were trained with BatchNorm epsilon 1e-5; this network "
            "uses another ClassifierConfig.batch_norm_eps (1e-3 is for Keras weights: a .keras/.h5 file)"
        )
    path = Path(path)
    source = read_state_dict(path)
    expected = {k: v for k, v in backbone.state_dict().items() if not k.startswith(_XCEPTION_HEAD_PREFIXES)}
    state: dict[str, torch.Tensor] = {}
    for key, tensor in source.items():
        if key.startswith(_XCEPTION_HEAD_PREFIXES):
            continue
        target = expected.get(key)
        if target is not None and tensor.ndim == 2 and target.shape == (*tensor.shape, 1, 1):
            tensor = tensor[:, :, None, None]
        state[key] = tensor
    check_state_dict(state, expected, f"{path} is not an ImageNet Xception checkpoint with the expected layout:")
    backbone.load_state_dict(state, strict=False)
    return f"imagenet:{file_sha256(path)}"
