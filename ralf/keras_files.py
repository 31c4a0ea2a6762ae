"""Reading Keras ImageNet Xception weights files into `KerasXception` (their layers in graph order).

Two local file layouts are read (h5py is imported only when one is):

* Keras 3 `.keras` archives: a zip with `config.json` (the model graph) and `model.weights.h5`, where
  a layer's variables sit at `<model path>/layers/<snake_case(class)>[_<n>]/vars/<i>`: groups are
  named by class and position, not by layer name, so the layer names and order come from
  config.json. A nested Xception (e.g. `base = Xception(include_top=False)` inside a model with its
  own head) is found by its layers (or named with `submodel=`); the outer model's layers are ignored.
* Keras 2 HDF5 weights (`xception_weights_tf_dim_ordering_tf_kernels[_notop].h5`, or a full-model
  `.h5` with `model_weights`): one group per layer in `layer_names` order, each naming its
  weights `<layer>/<weight>:0`.

Mapping the layers onto the project's Xception is `ralf/keras_xception.py`.
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

from ralf.pretrained_files import PretrainedError

# Keras's BatchNormalization default, which Xception uses.
KERAS_BATCH_NORM_EPS = 1e-3
# Keras layer class -> kind; its variables are read in Keras's creation order (`_keras3_var_names`).
_CONV_CLASSES = {"Conv2D": "conv", "SeparableConv2D": "sepconv", "BatchNormalization": "bn", "Dense": "dense"}


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
