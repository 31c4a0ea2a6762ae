"""Keras ImageNet Xception (keras.applications.Xception) weights -> the project's Xception.

Two local file layouts are read (h5py is imported only when one is):

* Keras 3 `.keras` archives: a zip with `config.json` (the model graph) and `model.weights.h5`, where
  a layer's variables sit at `<model path>/layers/<snake_case(class)>[_<n>]/vars/<i>`: groups are
  named by class and position, not by layer name, so the layer names and order come from
  config.json. A nested Xception (e.g. `base = Xception(include_top=False)` inside a model with its
  own head) is found by its layers (or named with `submodel=`); the outer model's layers are ignored.
* Keras 2 HDF5 weights (`xception_weights_tf_dim_ordering_tf_kernels[_notop].h5`, or a full-model
  `.h5` with `model_weights`): one group per layer in `layer_names` order, each naming its
  weights `<layer>/<weight>:0`.

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

import io
import json
import math
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ralf.pretrained import PretrainedError, _find_xception, file_sha256
from ralf.xception import MaxPool2dSame, SeparableConv2d, Xception

KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
KERAS_BATCH_NORM_EPS = 1e-3
# ClassifierConfig fields a network needs to take Keras Xception weights (the trainer merges them
# into the classifier config when --xception-weights is a Keras file).
KERAS_CLASSIFIER_SETTINGS: dict[str, Any] = {"batch_norm_eps": KERAS_BATCH_NORM_EPS, "max_pool_padding": "same"}

# Keras variable order inside `vars/` per layer class (given the config's flags).
_CONV_CLASSES = {"Conv2D": "conv", "SeparableConv2D": "sepconv", "BatchNormalization": "bn", "Dense": "dense"}
_MODEL_CLASSES = ("Functional", "Model", "Sequential")
_BN_TORCH_NAMES = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}


class KerasWeightsError(PretrainedError):
    """A Keras file is unreadable, holds no Xception, or does not fit the network."""


@dataclass
class KerasLayer:
    """One Keras layer with weights: its name, kind (conv / sepconv / bn / dense / other: class name)
    and arrays by Keras variable name; `inputs` are the layers feeding it when the file records it."""

    name: str
    kind: str
    arrays: dict[str, np.ndarray]
    inputs: tuple[str, ...] | None = None
    epsilon: float | None = None


@dataclass
class KerasXception:
    """The Xception layers of a Keras file in graph order, and where they came from."""

    path: Path
    layout: str  # "keras3" or "keras2-h5"
    model_path: str  # the (sub)model inside the file, e.g. "functional" for a nested model
    layers: list[KerasLayer] = field(default_factory=list)


def is_keras_file(path: str | Path) -> bool:
    """Whether `path` names a Keras file by its suffix (.keras, .h5, .hdf5); reads nothing."""
    return Path(path).suffix.lower() in KERAS_SUFFIXES


# ----------------------------------------------------------------------------- reading


def read_keras_xception(path: str | Path, submodel: str | None = None) -> KerasXception:
    """The Xception layers of a Keras 3 `.keras` archive or a Keras 2 `.h5` weights file.

    `submodel` names the nested model holding Xception (its Keras name, e.g. "xception"); by
    default the one model whose layers include `block1_conv1` is taken.
    """
    path = Path(path)
    if not path.is_file():
        raise KerasWeightsError(f"Keras weights file not found: {path}")
    try:
        import h5py
    except ImportError:  # pragma: no cover - h5py is a project dependency
        raise KerasWeightsError("reading Keras weights needs h5py (pip install 'h5py>=3.10')") from None
    if zipfile.is_zipfile(path):
        return _read_keras3(path, submodel, h5py)
    if h5py.is_hdf5(path):
        return _read_keras2_h5(path, submodel, h5py)
    raise KerasWeightsError(
        f"{path} is neither a Keras 3 .keras archive (zip with config.json and model.weights.h5) "
        "nor a Keras HDF5 weights file"
    )


def _snake_case(name: str) -> str:
    """keras.src.utils.naming.to_snake_case: the group names of Keras 3 weights files."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _layer_name(layer: dict) -> str:
    return str(layer.get("config", {}).get("name") or layer.get("name") or "?")


def _sublayers(model: dict) -> list[dict] | None:
    layers = model.get("config", {}).get("layers") if isinstance(model.get("config"), dict) else None
    return layers if isinstance(layers, list) else None


def _walk_models(model: dict, h5_path: str) -> Iterator[tuple[dict, str]]:
    """(model config, its h5 group path) for `model` and every model nested in it, depth first.
    Paths follow Keras 3 saving: `<parent>/layers/<snake_case(class)>[_<n>]`, counted per name."""
    yield model, h5_path
    used: dict[str, int] = {}
    for layer in _sublayers(model) or []:
        group = _unique(_snake_case(str(layer.get("class_name", ""))), used)
        if _sublayers(layer) is not None:
            yield from _walk_models(layer, f"{h5_path}/layers/{group}".lstrip("/"))


def _unique(name: str, used: dict[str, int]) -> str:
    """keras.src.saving.saving_lib._get_unique_name."""
    if name in used:
        used[name] += 1
        return f"{name}_{used[name]}"
    used[name] = 0
    return name


def _inbound_names(node: Any) -> list[str]:
    """Layer names in a config's inbound_nodes (Keras 3 `keras_history` dicts or Keras 2 lists)."""
    if isinstance(node, dict):
        if "keras_history" in node and isinstance(node["keras_history"], list):
            return [str(node["keras_history"][0])]
        return [name for value in node.values() for name in _inbound_names(value)]
    if isinstance(node, list):
        if len(node) >= 3 and isinstance(node[0], str) and isinstance(node[1], int):
            return [node[0]]
        return [name for value in node for name in _inbound_names(value)]
    return []


def _keras3_var_names(class_name: str, config: dict) -> list[str]:
    """Names of `vars/0..n` in creation order for the layer classes Xception has."""
    if class_name == "Conv2D" or class_name == "Dense":
        return ["kernel"] + (["bias"] if config.get("use_bias", True) else [])
    if class_name == "SeparableConv2D":
        return ["depthwise_kernel", "pointwise_kernel"] + (["bias"] if config.get("use_bias", True) else [])
    if class_name == "BatchNormalization":
        names = (["gamma"] if config.get("scale", True) else []) + (["beta"] if config.get("center", True) else [])
        return names + ["moving_mean", "moving_variance"]
    return []


def _read_keras3(path: Path, submodel: str | None, h5py: Any) -> KerasXception:
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            if "config.json" not in names or "model.weights.h5" not in names:
                raise KerasWeightsError(
                    f"{path} is a zip but not a Keras 3 archive: it needs config.json and model.weights.h5 "
                    f"(found {sorted(names)[:10]})"
                )
            config = json.loads(archive.read("config.json"))
            weights = archive.read("model.weights.h5")
    except (zipfile.BadZipFile, json.JSONDecodeError, OSError) as error:
        raise KerasWeightsError(f"cannot read {path} as a Keras 3 archive: {error}") from None
    if not isinstance(config, dict) or _sublayers(config) is None:
        raise KerasWeightsError(f"{path}: config.json describes no functional or sequential model")

    candidates = [
        (model, h5_path)
        for model, h5_path in _walk_models(config, "")
        if any(_layer_name(layer) == "block1_conv1" for layer in _sublayers(model) or [])
    ]
    if submodel is not None:
        candidates = [(m, p) for m, p in candidates if _layer_name(m) == submodel]
    if len(candidates) != 1:
        models = [f"{_layer_name(m)!r} at {p or '/'}" for m, p in _walk_models(config, "")]
        wanted = f"named {submodel!r} " if submodel is not None else ""
        raise KerasWeightsError(
            f"{path}: expected exactly one Keras Xception model {wanted}(with a 'block1_conv1' layer), "
            f"found {len(candidates)}; models in the file: {', '.join(models)}"
        )
    model, model_path = candidates[0]

    layers: list[KerasLayer] = []
    with h5py.File(io.BytesIO(weights), "r") as h5:
        used: dict[str, int] = {}
        for layer in _sublayers(model) or []:
            class_name = str(layer.get("class_name", ""))
            layer_config = layer.get("config", {})
            group_path = f"{model_path}/layers/{_unique(_snake_case(class_name), used)}".lstrip("/")
            name = _layer_name(layer)
            group = h5.get(f"{group_path}/vars")
            stored = sorted(group.keys(), key=int) if group is not None else []
            if not stored:
                continue
            stored_name = group.attrs.get("name")  # newer Keras records the layer name
            if stored_name is not None and str(stored_name) != name:
                raise KerasWeightsError(
                    f"{path}: weights group {group_path} belongs to layer {stored_name!r}, but config.json "
                    f"puts {name!r} there; the archive's config and weights disagree"
                )
            var_names = _keras3_var_names(class_name, layer_config)
            if class_name not in _CONV_CLASSES or len(var_names) != len(stored):
                kind = f"{class_name} ({len(stored)} variables)"
                arrays = {f"vars/{i}": np.asarray(group[i]) for i in stored}
            else:
                kind = _CONV_CLASSES[class_name]
                arrays = {var: np.asarray(group[i]) for var, i in zip(var_names, stored)}
            epsilon = layer_config.get("epsilon") if class_name == "BatchNormalization" else None
            inputs = tuple(_inbound_names(layer.get("inbound_nodes"))) if layer.get("inbound_nodes") else None
            layers.append(KerasLayer(name, kind, arrays, inputs, None if epsilon is None else float(epsilon)))
    return KerasXception(path, "keras3", model_path or "/", layers)


def _decode(value: Any) -> str:
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def _read_keras2_h5(path: Path, submodel: str | None, h5py: Any) -> KerasXception:
    """Keras 2 HDF5: `layer_names` attribute, one group per layer with a `weight_names` attribute."""
    try:
        h5 = h5py.File(path, "r")
    except OSError as error:
        raise KerasWeightsError(f"cannot read {path} as HDF5: {error}") from None
    with h5:
        root = h5["model_weights"] if "model_weights" in h5 else h5
        if "layer_names" not in root.attrs:
            raise KerasWeightsError(
                f"{path} is HDF5 but not a Keras weights file (no 'layer_names' attribute"
                f"{' under model_weights' if root is not h5 else ''}); top-level keys: {sorted(h5.keys())[:10]}"
            )
        epsilon = _keras2_epsilon(h5)
        # Weight names are '<layer>/<weight>:0' ('<model>/<layer>/<weight>:0' in some nested files);
        # group them by layer, in order, remembering which top-level group held them.
        by_group: dict[str, dict[str, dict[str, np.ndarray]]] = {}
        for group_name in (_decode(n) for n in root.attrs["layer_names"]):
            group = root[group_name]
            layers: dict[str, dict[str, np.ndarray]] = by_group.setdefault(group_name, {})
            for weight_name in (_decode(n) for n in group.attrs.get("weight_names", [])):
                parts = weight_name.split("/")
                layer = parts[-2] if len(parts) >= 2 else group_name
                layers.setdefault(layer, {})[parts[-1].split(":")[0]] = np.asarray(group[weight_name])
        if submodel is not None:
            if submodel not in by_group:
                raise KerasWeightsError(f"{path}: no layer group {submodel!r}; groups: {', '.join(by_group)}")
            chosen = {submodel: by_group[submodel]}
            model_path = submodel
        elif "block1_conv1" in by_group:
            chosen, model_path = by_group, "/"
        else:
            nested = [name for name, layers in by_group.items() if "block1_conv1" in layers]
            if len(nested) != 1:
                raise KerasWeightsError(
                    f"{path}: expected exactly one Keras Xception (a 'block1_conv1' layer), found {len(nested)}; "
                    f"layer groups: {', '.join(list(by_group)[:20])}"
                )
            chosen, model_path = {nested[0]: by_group[nested[0]]}, nested[0]
    result = KerasXception(path, "keras2-h5", model_path)
    for layers in chosen.values():
        for name, arrays in layers.items():
            result.layers.append(KerasLayer(name, _keras2_kind(arrays), arrays, None, epsilon))
    return result


def _keras2_epsilon(h5: Any) -> float:
    """BN epsilon from a full-model file's `model_config`; Keras's default 1e-3 (which Xception uses)
    for weights-only files, which do not record it."""
    raw = h5.attrs.get("model_config")
    if raw is None:
        return KERAS_BATCH_NORM_EPS
    try:
        config = json.loads(_decode(raw))
    except json.JSONDecodeError:
        return KERAS_BATCH_NORM_EPS
    found: list[float] = []

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("class_name") == "BatchNormalization" and "epsilon" in node.get("config", {}):
                found.append(float(node["config"]["epsilon"]))
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(config)
    return found[0] if found and all(math.isclose(e, found[0]) for e in found) else KERAS_BATCH_NORM_EPS


def _keras2_kind(arrays: dict[str, np.ndarray]) -> str:
    if {"depthwise_kernel", "pointwise_kernel"} <= set(arrays):
        return "sepconv"
    if "moving_mean" in arrays:
        return "bn"
    if "kernel" in arrays:
        return "conv" if arrays["kernel"].ndim == 4 else "dense"
    return "unknown"


# ----------------------------------------------------------------------------- mapping


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
        lines += problems
        if missing:
            lines.append(f"missing ({len(missing)}): {', '.join(missing[:20])}")
        if unmapped:
            lines.append(f"unmapped Keras tensors ({len(unmapped)}): {', '.join(unmapped[:20])}")
        if mismatched:
            lines.append(f"shape mismatches ({len(mismatched)}): {'; '.join(mismatched[:20])}")
        raise KerasWeightsError("\n".join(lines))
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
    backbone = _find_xception(model)
    path = Path(path)
    keras = read_keras_xception(path, submodel)
    check_keras_compatible(backbone, keras)
    state = keras_state_dict(backbone, keras)
    backbone.load_state_dict(state, strict=False)
    return f"imagenet-keras:{file_sha256(path)}"
