"""Keras ImageNet Xception (keras.applications.Xception) weights -> the project's Xception.

The file is read by `ralf/keras_files.py` (Keras 3 `.keras` archives and Keras 2 `.h5` files; h5py
is imported only when one is); this module maps its layers onto the network.

Keras layer -> project module, explicitly:

* `block1_conv1`, `block1_conv1_bn`, `block1_conv2`, `block1_conv2_bn` -> conv1, bn1, conv2, bn2;
* Keras block `k + 1` (`block{k+1}_sepconv{r}[_bn]`) -> `block{k}`'s r-th SeparableConv2d / BN in `rep`
  (entry blocks 2-4, middle blocks 5.., exit block), for any number of middle blocks;
* the last Keras block's `sepconv1[_bn]`, `sepconv2[_bn]` (block14 in the stock network) -> conv3, bn3,
  conv4, bn4;
* the residual projections (Conv2D / BatchNormalization outside the `block*` names, `conv2d_<n>`,
  `batch_normalization_<n>`) in graph order -> `skip` / `skipbn` of the blocks that have one; where
  the config records the graph, each BN must read its paired conv;
* Dense layers (the 1000-class head of `include_top` files) are skipped: RALF has a 1-logit `fc`.

Tensors: depthwise (kh, kw, C, 1) -> (C, 1, kh, kw); pointwise (1, 1, Ci, Co) and plain conv
(kh, kw, Ci, Co) -> (Co, Ci, kh, kw); BN gamma / beta / moving_mean / moving_variance -> weight /
bias / running_mean / running_var.

Keras's BatchNormalization uses epsilon 1e-3 and its pools pad like TF "same", so the network must
be built with `KERAS_CLASSIFIER_SETTINGS` (`ClassifierConfig.batch_norm_eps` 1e-3,
`max_pool_padding` "same"); `load_keras_xception` refuses one that is not. Keras Xception expects
inputs scaled to [-1, 1] (x / 127.5 - 1); RALF's classifier sees residuals, not images, so the
model does not rescale them.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ralf.core.files import file_sha256
from ralf.keras_files import KERAS_BATCH_NORM_EPS, KerasLayer, KerasWeightsError, KerasXception, read_keras_xception
from ralf.pretrained_files import find_xception, listed
from ralf.xception import MaxPool2dSame, SeparableConv2d, Xception

KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
# ClassifierConfig fields a network needs to take Keras Xception weights (the trainer merges them
# into the classifier config when --xception-weights is a Keras file).
KERAS_CLASSIFIER_SETTINGS: dict[str, Any] = {"batch_norm_eps": KERAS_BATCH_NORM_EPS, "max_pool_padding": "same"}
_BN_TORCH_NAMES = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}

__all__ = [
    "KERAS_CLASSIFIER_SETTINGS",
    "KerasWeightsError",
    "check_keras_compatible",
    "is_keras_file",
    "keras_layer_targets",
    "keras_state_dict",
    "load_keras_xception",
    "read_keras_xception",
]


def is_keras_file(path: str | Path) -> bool:
    """Whether `path` names a Keras file by its suffix (.keras, .h5, .hdf5); reads nothing."""
    return Path(path).suffix.lower() in KERAS_SUFFIXES


def _convert(kind: str, array: np.ndarray) -> torch.Tensor:
    """Keras (channels-last) layout -> torch layout; arrays of the wrong rank are returned as they are
    so the shape check reports them."""
    tensor = torch.from_numpy(np.asarray(array, dtype=np.float32))
    if kind == "depthwise" and tensor.ndim == 4:  # (kh, kw, C, 1) -> (C, 1, kh, kw)
        tensor = tensor.permute(2, 3, 0, 1)
    elif kind == "conv" and tensor.ndim == 4:  # (kh, kw, Ci, Co) -> (Co, Ci, kh, kw)
        tensor = tensor.permute(3, 2, 0, 1)
    return tensor.contiguous()


def keras_layer_targets(backbone: Xception) -> tuple[dict[str, str], list[str]]:
    """Keras layer name -> project module prefix for every named layer of the network, and the
    `skip` prefixes (the residual projections, matched to the file's unnamed convs in order)."""
    targets = {
        "block1_conv1": "conv1",
        "block1_conv1_bn": "bn1",
        "block1_conv2": "conv2",
        "block1_conv2_bn": "bn2",
    }
    skips: list[str] = []
    for k, block_name in enumerate(backbone.block_names, start=1):
        block = backbone.get_submodule(block_name)
        rep = block.rep
        convs = [i for i, module in enumerate(rep) if isinstance(module, SeparableConv2d)]
        bns = [i for i, module in enumerate(rep) if isinstance(module, nn.BatchNorm2d)]
        for r, (conv_index, bn_index) in enumerate(zip(convs, bns), start=1):
            targets[f"block{k + 1}_sepconv{r}"] = f"{block_name}.rep.{conv_index}"
            targets[f"block{k + 1}_sepconv{r}_bn"] = f"{block_name}.rep.{bn_index}"
        if block.skip is not None:
            skips.append(block_name)
    last = len(backbone.block_names) + 2
    targets.update(
        {
            f"block{last}_sepconv1": "conv3",
            f"block{last}_sepconv1_bn": "bn3",
            f"block{last}_sepconv2": "conv4",
            f"block{last}_sepconv2_bn": "bn4",
        }
    )
    return targets, skips


def keras_state_dict(backbone: Xception, keras: KerasXception) -> dict[str, torch.Tensor]:
    """The project state dict (head excluded) from the Keras layers; raises KerasWeightsError listing
    every unmapped, missing and mis-shaped tensor."""
    targets, skip_blocks = keras_layer_targets(backbone)
    expected = {
        key: value
        for key, value in backbone.state_dict().items()
        if not key.startswith("fc.") and not key.endswith("num_batches_tracked")
    }
    state: dict[str, torch.Tensor] = {}
    sources: dict[str, str] = {}
    unmapped: list[str] = []
    skipped: list[str] = []
    residual_convs: list[KerasLayer] = []
    residual_bns: list[KerasLayer] = []
    problems: list[str] = []

    def put(key: str, source: str, tensor: torch.Tensor) -> None:
        state[key] = tensor
        sources[key] = source

    def place(layer: KerasLayer, prefix: str) -> None:
        arrays = dict(layer.arrays)
        if layer.kind == "conv":
            put(f"{prefix}.weight", f"{layer.name}/kernel", _convert("conv", arrays.pop("kernel")))
        elif layer.kind == "sepconv":
            put(f"{prefix}.conv1.weight", f"{layer.name}/depthwise_kernel", _convert("depthwise", arrays.pop("depthwise_kernel")))
            put(f"{prefix}.pointwise.weight", f"{layer.name}/pointwise_kernel", _convert("conv", arrays.pop("pointwise_kernel")))
        elif layer.kind == "bn":
            for keras_name, torch_name in _BN_TORCH_NAMES.items():
                if keras_name in arrays:
                    put(f"{prefix}.{torch_name}", f"{layer.name}/{keras_name}", _convert("vector", arrays.pop(keras_name)))
        unmapped.extend(f"{layer.name}/{name}" for name in arrays)  # e.g. a bias the network lacks

    for layer in keras.layers:
        prefix = targets.get(layer.name)
        if layer.kind == "dense":
            skipped.append(layer.name)  # the ImageNet head
        elif prefix is not None:
            wanted = "bn" if layer.name.endswith("_bn") else ("conv" if prefix in ("conv1", "conv2") else "sepconv")
            if layer.kind != wanted:
                problems.append(f"{layer.name}: a {layer.kind} layer where the network has a {wanted}")
                continue
            place(layer, prefix)
        elif layer.kind == "conv" and not layer.name.startswith("block"):
            residual_convs.append(layer)
        elif layer.kind == "bn" and not layer.name.startswith("block"):
            residual_bns.append(layer)
        else:
            unmapped.extend(f"{layer.name}/{name}" for name in layer.arrays)

    blocks = [int(m.group(1)) for layer in keras.layers if (m := re.match(r"block(\d+)_", layer.name))]
    if blocks and max(blocks) != len(backbone.block_names) + 2:
        problems.append(
            f"the file's last block is block{max(blocks)}: {max(blocks) - 6} middle blocks, the network has "
            f"{len(backbone.block_names) - 4} (ClassifierConfig.middle_blocks)"
        )
    if len(residual_convs) != len(skip_blocks) or len(residual_bns) != len(skip_blocks):
        problems.append(
            f"the network has {len(skip_blocks)} residual projections ({', '.join(skip_blocks)}), the file "
            f"{len(residual_convs)} residual convs ({', '.join(c.name for c in residual_convs)}) and "
            f"{len(residual_bns)} residual BNs ({', '.join(b.name for b in residual_bns)})"
        )
    for block_name, conv, bn in zip(skip_blocks, residual_convs, residual_bns):
        if bn.inputs is not None and conv.name not in bn.inputs:
            problems.append(f"residual BN {bn.name} reads {', '.join(bn.inputs)}, not its paired conv {conv.name}")
        place(conv, f"{block_name}.skip")
        place(bn, f"{block_name}.skipbn")
    for extra in residual_convs[len(skip_blocks) :] + residual_bns[len(skip_blocks) :]:
        unmapped.extend(f"{extra.name}/{name}" for name in extra.arrays)

    missing = sorted(set(expected) - set(state))
    mismatched = [
        f"{sources[key]} -> {key}: converted {tuple(state[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in sorted(set(state) & set(expected))
        if state[key].shape != expected[key].shape
    ]
    if missing or unmapped or mismatched or problems:
        lines = [
            f"{keras.path} ({keras.layout}, model {keras.model_path}) does not fit this Xception "
            f"({len(backbone.block_names) - 4} middle blocks, {backbone.num_features} features):"
        ]
        lines += problems + listed("missing", missing) + listed("unmapped Keras tensors", unmapped)
        raise KerasWeightsError("\n".join(lines + listed("shape mismatches", mismatched, "; ")))
    return state


def check_keras_compatible(backbone: Xception, keras: KerasXception | None = None) -> None:
    """Refuse a network whose BatchNorm epsilon or max-pool padding differs from Keras's."""
    file_eps = {layer.epsilon for layer in (keras.layers if keras else []) if layer.epsilon is not None}
    wanted_eps = file_eps.pop() if len(file_eps) == 1 else KERAS_BATCH_NORM_EPS
    model_eps = {module.eps for module in backbone.modules() if isinstance(module, nn.BatchNorm2d)}
    pools = [module for module in backbone.modules() if isinstance(module, (nn.MaxPool2d, MaxPool2dSame))]
    problems = []
    if any(not math.isclose(eps, wanted_eps, rel_tol=1e-6) for eps in model_eps):
        problems.append(f"BatchNorm epsilon {sorted(model_eps)} (Keras's is {wanted_eps:g})")
    if any(not isinstance(pool, MaxPool2dSame) for pool in pools):
        problems.append('max pools padded symmetrically (Keras pads them "same")')
    if problems:
        raise KerasWeightsError(
            "Keras Xception weights need a network built like Keras's, but this one has "
            + " and ".join(problems)
            + f": build the classifier with {KERAS_CLASSIFIER_SETTINGS} (ClassifierConfig.batch_norm_eps, "
            "max_pool_padding; `ralf-cli train` sets them when --xception-weights is a .keras/.h5 file)"
        )


def load_keras_xception(model: nn.Module, path: str | Path, submodel: str | None = None) -> str:
    """Load Keras ImageNet Xception weights into the Xception inside `model` (a RALF, Classifier or
    Xception) built with KERAS_CLASSIFIER_SETTINGS; the head is left alone. Any width / middle-block
    count works if the file's shapes match. Returns "imagenet-keras:<sha256 of the file>"."""
    backbone = find_xception(model)
    path = Path(path)
    keras = read_keras_xception(path, submodel)
    check_keras_compatible(backbone, keras)
    state = keras_state_dict(backbone, keras)
    backbone.load_state_dict(state, strict=False)
    return f"imagenet-keras:{file_sha256(path)}"
