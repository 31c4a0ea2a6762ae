"""Loaders for pretrained Xception weights from LOCAL files; nothing is ever downloaded.

The file's identity (sha256) is returned so it can be recorded in the RALF weights' metadata.
The readers it shares with the Keras and torchvision loaders live in `pretrained_files.py`;
`PretrainedError` and `read_state_dict` are importable from here too.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ralf.core.files import file_sha256
from ralf.pretrained_files import (
    XCEPTION_HEAD_PREFIXES,
    PretrainedError,
    check_state_dict,
    find_xception,
    read_state_dict,
)

__all__ = ["PretrainedError", "load_xception_imagenet", "read_state_dict"]

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
        from ralf.keras_xception import load_keras_xception  # deferred: only for Keras files

        return load_keras_xception(model, path)
    backbone = find_xception(model)
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
    expected = {k: v for k, v in backbone.state_dict().items() if not k.startswith(XCEPTION_HEAD_PREFIXES)}
    state: dict[str, torch.Tensor] = {}
    for key, tensor in source.items():
        if key.startswith(XCEPTION_HEAD_PREFIXES):
            continue
        target = expected.get(key)
        if target is not None and tensor.ndim == 2 and target.shape == (*tensor.shape, 1, 1):
            tensor = tensor[:, :, None, None]
        state[key] = tensor
    check_state_dict(state, expected, f"{path} is not an ImageNet Xception checkpoint with the expected layout:")
    backbone.load_state_dict(state, strict=False)
    return f"imagenet:{file_sha256(path)}"
