"""Keras ImageNet Xception reader: files written here with h5py in Keras's own layouts (a width-scaled
network, so no real weights are needed), name/shape mapping, value placement, clear refusals."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ralf.classifier import Classifier
from ralf.config import ClassifierConfig, RALFConfig
from ralf.core.files import file_sha256
from ralf.keras_xception import (
    KERAS_CLASSIFIER_SETTINGS,
    KerasWeightsError,
    load_keras_xception,
    read_keras_xception,
)
from ralf.model import RALF
from ralf.pretrained import PretrainedError, load_xception_imagenet
from ralf.weights import load_weights, save_weights
from ralf.xception import MaxPool2dSame, Xception

h5py = pytest.importorskip("h5py")

SMALL = {"width": 0.125, "middle_blocks": 1}


def keras_net(**extra: object) -> Xception:
    return Xception(ClassifierConfig(**{**SMALL, **KERAS_CLASSIFIER_SETTINGS, **extra}))


def _layer(class_name: str, name: str, inputs: list[str], **config: object) -> dict:
    """A layer entry as Keras 3 writes it in config.json."""
    args = [{"class_name": "__keras_tensor__", "config": {"keras_history": [i, 0, 0]}} for i in inputs]
    return {
        "module": "keras.layers",
        "class_name": class_name,
        "config": {"name": name, "trainable": False, **config},
        "name": name,
        "inbound_nodes": [{"args": args if len(args) == 1 else [args], "kwargs": {}}] if inputs else [],
    }


def keras_xception_layers(middle_blocks: int, widths: dict[str, int], seed: int = 0) -> list[tuple[dict, list[np.ndarray]]]:
    """keras.applications.Xception's layers in its graph order (stem = block1, entry blocks 2-4,
    middle blocks, exit block, final separable convs), channels-last random weights; the residual
    projections are the unnamed conv2d[_n] / batch_normalization[_n]."""
    rng = np.random.default_rng(seed)
    layers: list[tuple[dict, list[np.ndarray]]] = []

    def add(entry: dict, *arrays: np.ndarray) -> str:
        layers.append((entry, [a.astype(np.float32) for a in arrays]))
        return entry["config"]["name"]

    def conv(name: str, src: str, k: int, cin: int, cout: int, stride: int) -> str:
        return add(
            _layer("Conv2D", name, [src], filters=cout, kernel_size=[k, k], strides=[stride, stride], use_bias=False),
            rng.normal(size=(k, k, cin, cout)),
        )

    def bn(name: str, src: str, c: int) -> str:
        return add(
            _layer("BatchNormalization", name, [src], epsilon=0.001, center=True, scale=True),
            rng.normal(size=c), rng.normal(size=c), rng.normal(size=c), rng.uniform(0.5, 2.0, size=c),
        )

    def sep(name: str, src: str, cin: int, cout: int) -> str:
        return add(
            _layer("SeparableConv2D", name, [src], filters=cout, kernel_size=[3, 3], padding="same", use_bias=False),
            rng.normal(size=(3, 3, cin, 1)), rng.normal(size=(1, 1, cin, cout)),
        )

    def act(name: str, src: str) -> str:
        return add(_layer("Activation", name, [src], activation="relu"))

    residual = 0

    def res_names() -> tuple[str, str]:
        suffix = f"_{residual}" if residual else ""
        return f"conv2d{suffix}", f"batch_normalization{suffix}"

    w = widths
    h = add(_layer("InputLayer", "input_layer", [], batch_shape=[None, None, None, 3]))
    h = act("block1_conv1_act", bn("block1_conv1_bn", conv("block1_conv1", h, 3, 3, w["s1"], 2), w["s1"]))
    h = act("block1_conv2_act", bn("block1_conv2_bn", conv("block1_conv2", h, 3, w["s1"], w["s2"], 1), w["s2"]))
    # Entry blocks 2-4 and the exit block 4 + middle + 1: two separable convs, pool, projected skip.
    downs = [(2, w["s2"], w["e1"], w["e1"]), (3, w["e1"], w["e2"], w["e2"]), (4, w["e2"], w["e3"], w["e3"])]
    exit_block = 5 + middle_blocks
    plan = [("down", *d) for d in downs] + [("mid", b) for b in range(5, exit_block)]
    plan.append(("down", exit_block, w["e3"], w["e3"], w["x1"]))
    for step in plan:
        if step[0] == "mid":
            block = step[1]
            x = h
            for r in (1, 2, 3):
                x = bn(f"block{block}_sepconv{r}_bn", sep(f"block{block}_sepconv{r}", act(f"block{block}_sepconv{r}_act", x), w["e3"], w["e3"]), w["e3"])
            h = add(_layer("Add", f"add_{block}", [x, h]))
            continue
        _, block, cin, mid, cout = step
        x = h if block == 2 else act(f"block{block}_sepconv1_act", h)
        x = bn(f"block{block}_sepconv1_bn", sep(f"block{block}_sepconv1", x, cin, mid), mid)
        x = bn(f"block{block}_sepconv2_bn", sep(f"block{block}_sepconv2", act(f"block{block}_sepconv2_act", x), mid, cout), cout)
        conv_name, bn_name = res_names()
        skip = conv(conv_name, h, 1, cin, cout, 2)
        x = add(_layer("MaxPooling2D", f"block{block}_pool", [x], pool_size=[3, 3], strides=[2, 2], padding="same"))
        skip = bn(bn_name, skip, cout)
        h = add(_layer("Add", f"add_r{residual}", [x, skip]))
        residual += 1
    last = exit_block + 1
    h = act(f"block{last}_sepconv1_act", bn(f"block{last}_sepconv1_bn", sep(f"block{last}_sepconv1", h, w["x1"], w["x2"]), w["x2"]))
    act(f"block{last}_sepconv2_act", bn(f"block{last}_sepconv2_bn", sep(f"block{last}_sepconv2", h, w["x2"], w["x3"]), w["x3"]))
    return layers


def widths_of(net: Xception) -> dict[str, int]:
    state = net.state_dict()
    return {
        "s1": state["conv1.weight"].shape[0],
        "s2": state["conv2.weight"].shape[0],
        "e1": state["block1.skip.weight"].shape[0],
        "e2": state["block2.skip.weight"].shape[0],
        "e3": state["block3.skip.weight"].shape[0],
        "x1": state[f"{net.block_names[-1]}.skip.weight"].shape[0],
        "x2": state["conv3.pointwise.weight"].shape[0],
        "x3": state["conv4.pointwise.weight"].shape[0],
    }


def _snake(class_name: str) -> str:
    return {"InputLayer": "input_layer", "Conv2D": "conv2d", "BatchNormalization": "batch_normalization",
            "SeparableConv2D": "separable_conv2d", "Activation": "activation", "Add": "add",
            "MaxPooling2D": "max_pooling2d", "Functional": "functional", "Dense": "dense",
            "GlobalAveragePooling2D": "global_average_pooling2d"}[class_name]  # fmt: skip


def _write_vars(h5: "h5py.File", prefix: str, layers: list[tuple[dict, list[np.ndarray]]]) -> None:
    """Keras 3 saving: `<prefix>layers/<snake_case(class)>[_n]/vars/<i>`, counted per class name."""
    used: dict[str, int] = {}
    for entry, arrays in layers:
        base = _snake(entry["class_name"])
        used[base] = used.get(base, -1) + 1
        group = h5.create_group(f"{prefix}layers/{base}{'_' + str(used[base]) if used[base] else ''}/vars")
        for i, array in enumerate(arrays):
            group.create_dataset(str(i), data=array)


def write_keras3(path: Path, layers: list[tuple[dict, list[np.ndarray]]], nested: bool = False) -> Path:
    """A .keras archive: the Xception alone, or (nested) inside a model with its own 6-class head,
    like the kitchenware package's file."""
    xception = {"module": "keras.src.models.functional", "class_name": "Functional",
                "config": {"name": "xception", "trainable": False, "layers": [entry for entry, _ in layers]},
                "name": "xception"}  # fmt: skip
    if nested:
        head = [np.ones((8, 6), np.float32), np.zeros(6, np.float32)]
        outer_layers = [
            (_layer("InputLayer", "input_layer_1", []), []),
            (xception, []),
            (_layer("GlobalAveragePooling2D", "global_average_pooling2d", ["xception"]), []),
            (_layer("Dense", "dense", ["global_average_pooling2d"], units=6, use_bias=True), head),
        ]
        config = {"module": "keras.src.models.functional", "class_name": "Functional",
                  "config": {"name": "functional_1", "layers": [e for e, _ in outer_layers]}}  # fmt: skip
    else:
        config = xception
    weights = path.with_suffix(".weights.tmp.h5")
    with h5py.File(weights, "w") as h5:
        h5.create_group("vars")
        if nested:
            _write_vars(h5, "", outer_layers)
            _write_vars(h5, "layers/functional/", layers)
        else:
            _write_vars(h5, "", layers)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("metadata.json", json.dumps({"keras_version": "3.3.3"}))
        archive.writestr("config.json", json.dumps(config))
        archive.write(weights, "model.weights.h5")
    weights.unlink()
    return path


_KERAS2_NAMES = {
    "Conv2D": ["kernel"],
    "SeparableConv2D": ["depthwise_kernel", "pointwise_kernel"],
    "BatchNormalization": ["gamma", "beta", "moving_mean", "moving_variance"],
}


def write_keras2_h5(path: Path, layers: list[tuple[dict, list[np.ndarray]]], nested: bool = False) -> Path:
    """Keras 2 weights-only HDF5 (xception_weights_tf_dim_ordering_tf_kernels_notop.h5 layout): one
    group per layer, or (nested) one `xception` group holding every '<layer>/<weight>:0' beside a head."""
    with h5py.File(path, "w") as h5:
        weight_names: dict[str, list[bytes]] = {}
        for entry, arrays in layers:
            name = entry["config"]["name"]
            group = h5.require_group("xception" if nested else name)
            names = [f"{name}/{w}:0" for w in _KERAS2_NAMES.get(entry["class_name"], [])][: len(arrays)]
            weight_names.setdefault(group.name.lstrip("/"), []).extend(n.encode() for n in names)
            for weight_name, array in zip(names, arrays):
                group.create_dataset(weight_name, data=array)
        if nested:
            weight_names["dense"] = [b"dense/kernel:0"]
            h5.create_group("dense").create_dataset("dense/kernel:0", data=np.ones((8, 6), np.float32))
        for group_name, names in weight_names.items():
            h5[group_name].attrs["weight_names"] = names
        h5.attrs["layer_names"] = [n.encode() for n in weight_names]
        h5.attrs["keras_version"] = b"2.1.2"
    return path


def arrays_by_name(layers: list[tuple[dict, list[np.ndarray]]]) -> dict[str, list[np.ndarray]]:
    return {entry["config"]["name"]: arrays for entry, arrays in layers}


@pytest.fixture(scope="module")
def small_layers() -> list[tuple[dict, list[np.ndarray]]]:
    return keras_xception_layers(1, widths_of(keras_net()))


def _check_placement(net: Xception, source: dict[str, list[np.ndarray]]) -> None:
    state = net.state_dict()
    depthwise = source["block2_sepconv1"][0]  # (3, 3, C, 1): block2 is the project's block1 (no leading ReLU)
    assert torch.equal(state["block1.rep.0.conv1.weight"], torch.from_numpy(depthwise).permute(2, 3, 0, 1))
    assert state["block1.rep.0.conv1.weight"][5, 0, 0, 2] == float(depthwise[0, 2, 5, 0])
    pointwise = source["block5_sepconv3"][1]  # middle block: keras block5 = project block4, third conv at rep.7
    assert torch.equal(state["block4.rep.7.pointwise.weight"], torch.from_numpy(pointwise[0, 0].T)[:, :, None, None])
    stem = source["block1_conv2"][0]  # (3, 3, Ci, Co)
    assert state["conv2.weight"][3, 1, 2, 0] == float(stem[2, 0, 1, 3])
    gamma, beta, mean, var = source["block7_sepconv2_bn"]  # last keras block (14 in the stock net) -> bn4
    assert torch.equal(state["bn4.running_var"], torch.from_numpy(var))
    assert torch.equal(state["bn4.running_mean"], torch.from_numpy(mean))
    assert torch.equal(state["bn4.weight"], torch.from_numpy(gamma))
    assert torch.equal(state["bn4.bias"], torch.from_numpy(beta))
    assert torch.equal(state["conv3.conv1.weight"], torch.from_numpy(source["block7_sepconv1"][0]).permute(2, 3, 0, 1))
    # residual projections in order: conv2d_1 / batch_normalization_1 -> block2.skip / skipbn
    assert torch.equal(state["block2.skip.weight"], torch.from_numpy(source["conv2d_1"][0]).permute(3, 2, 0, 1))
    assert torch.equal(state["block2.skipbn.running_var"], torch.from_numpy(source["batch_normalization_1"][3]))
    assert torch.equal(state["block5.skipbn.running_var"], torch.from_numpy(source["batch_normalization_3"][3]))
    # exit block (grow last): keras block6_sepconv2 widens e3 -> x1 at rep.4
    assert tuple(state["block5.rep.4.pointwise.weight"].shape) == source["block6_sepconv2"][1].shape[::-1]


@pytest.mark.parametrize("nested", [False, True])
def test_keras3_archive_maps_every_tensor(tmp_path: Path, small_layers: list, nested: bool) -> None:
    path = write_keras3(tmp_path / "xception.keras", small_layers, nested=nested)
    keras = read_keras_xception(path)
    assert keras.layout == "keras3" and keras.model_path == ("layers/functional" if nested else "/")
    assert {layer.epsilon for layer in keras.layers if layer.kind == "bn"} == {0.001}
    classifier = Classifier(ClassifierConfig(**SMALL, **KERAS_CLASSIFIER_SETTINGS))
    head = classifier.backbone.fc.weight.detach().clone()
    tag = load_xception_imagenet(classifier, path)  # dispatch by suffix
    assert tag == f"imagenet-keras:{file_sha256(path)}"
    _check_placement(classifier.backbone, arrays_by_name(small_layers))
    assert torch.equal(classifier.backbone.fc.weight, head)  # the 1-logit head is untouched
    # every weight tensor of the backbone came from the file
    loaded = sum(a.size for _, arrays in small_layers for a in arrays)
    expected = sum(v.numel() for k, v in classifier.backbone.state_dict().items()
                   if not k.startswith("fc.") and not k.endswith("num_batches_tracked"))  # fmt: skip
    assert loaded == expected


def test_keras2_h5_and_submodel_selection(tmp_path: Path, small_layers: list) -> None:
    path = write_keras2_h5(tmp_path / "xception_notop.h5", small_layers)
    net = keras_net()
    assert load_xception_imagenet(net, path) == f"imagenet-keras:{file_sha256(path)}"
    _check_placement(net, arrays_by_name(small_layers))
    nested_h5 = write_keras2_h5(tmp_path / "nested.h5", small_layers, nested=True)
    assert read_keras_xception(nested_h5).model_path == "xception"
    net = keras_net()
    load_xception_imagenet(net, nested_h5)
    _check_placement(net, arrays_by_name(small_layers))
    nested = write_keras3(tmp_path / "kitchen.keras", small_layers, nested=True)
    assert read_keras_xception(nested, submodel="xception").model_path == "layers/functional"
    with pytest.raises(KerasWeightsError, match="named 'resnet'.*xception"):
        read_keras_xception(nested, submodel="resnet")


def test_any_middle_block_count(tmp_path: Path) -> None:
    net = keras_net(middle_blocks=3)
    layers = keras_xception_layers(3, widths_of(net), seed=2)
    load_keras_xception(net, write_keras3(tmp_path / "x.keras", layers))
    assert torch.equal(net.state_dict()["block6.rep.4.pointwise.weight"][:, :, 0, 0],
                       torch.from_numpy(arrays_by_name(layers)["block7_sepconv2"][1][0, 0].T))  # fmt: skip
    assert torch.equal(net.bn4.running_var, torch.from_numpy(arrays_by_name(layers)["block9_sepconv2_bn"][3]))


def test_requires_keras_epsilon_and_pool_padding(tmp_path: Path, small_layers: list) -> None:
    path = write_keras3(tmp_path / "x.keras", small_layers)
    with pytest.raises(KerasWeightsError, match=r"BatchNorm epsilon \[1e-05\].*batch_norm_eps"):
        load_xception_imagenet(Xception(ClassifierConfig(**SMALL, max_pool_padding="same")), path)
    with pytest.raises(KerasWeightsError, match="max pools padded symmetrically"):
        load_xception_imagenet(Xception(ClassifierConfig(**SMALL, batch_norm_eps=1e-3)), path)
    assert all(m.eps == 1e-3 for m in keras_net().modules() if isinstance(m, nn.BatchNorm2d))
    # Cadene/timm checkpoints refuse the Keras epsilon the other way round
    with pytest.raises(PretrainedError, match="epsilon 1e-5"):
        load_xception_imagenet(Xception(ClassifierConfig(**KERAS_CLASSIFIER_SETTINGS)), tmp_path / "x.pth")


def test_missing_tensor_wrong_shape_and_unmapped(tmp_path: Path, small_layers: list) -> None:
    without = [(e, a) for e, a in small_layers if e["config"]["name"] != "block3_sepconv2_bn"]
    with pytest.raises(KerasWeightsError) as error:
        load_keras_xception(keras_net(), write_keras3(tmp_path / "missing.keras", without))
    message = str(error.value)
    assert "missing (4): block2.rep.5.bias, block2.rep.5.running_mean, block2.rep.5.running_var, block2.rep.5.weight" in message

    reshaped = [(e, [a[:, :, :2] for a in arrays] if e["config"]["name"] == "block4_sepconv1" else arrays)
                for e, arrays in small_layers]  # fmt: skip
    with pytest.raises(KerasWeightsError, match=r"shape mismatches \(2\): block4_sepconv1/depthwise_kernel -> "
                       r"block3.rep.1.conv1.weight: converted \(2, 1, 3, 3\) vs model \(32, 1, 3, 3\)"):  # fmt: skip
        load_keras_xception(keras_net(), write_keras3(tmp_path / "shape.keras", reshaped))

    # a wider file than the network: every shape is reported, nothing is loaded
    net = keras_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    wide = keras_xception_layers(1, widths_of(Xception(ClassifierConfig(width=0.25, middle_blocks=1))))
    with pytest.raises(KerasWeightsError, match="shape mismatches"):
        load_keras_xception(net, write_keras3(tmp_path / "wide.keras", wide))
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())

    # an extra named layer the network does not have is unmapped
    extra = list(small_layers) + [(_layer("SeparableConv2D", "block99_sepconv1", ["add"]), [np.zeros((3, 3, 4, 1))])]
    with pytest.raises(KerasWeightsError, match=r"unmapped Keras tensors \(1\): block99_sepconv1/vars/0"):
        load_keras_xception(keras_net(), write_keras3(tmp_path / "extra.keras", extra))

    # one middle block too many in the file
    with pytest.raises(KerasWeightsError, match=r"block8: 2 middle blocks, the network has 1(.|\n)*unmapped Keras"):
        load_keras_xception(keras_net(), write_keras3(tmp_path / "deep.keras", keras_xception_layers(2, widths_of(keras_net()))))


def test_refuses_non_keras_files(tmp_path: Path) -> None:
    junk = tmp_path / "junk.keras"
    junk.write_bytes(b"not a zip, not hdf5")
    with pytest.raises(KerasWeightsError, match="neither a Keras 3 .keras archive"):
        load_xception_imagenet(keras_net(), junk)
    other_zip = tmp_path / "other.keras"
    with zipfile.ZipFile(other_zip, "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(KerasWeightsError, match="needs config.json and model.weights.h5"):
        load_xception_imagenet(keras_net(), other_zip)
    plain_h5 = tmp_path / "data.h5"
    with h5py.File(plain_h5, "w") as h5:
        h5.create_dataset("images", data=np.zeros(3))
    with pytest.raises(KerasWeightsError, match="not a Keras weights file"):
        load_xception_imagenet(keras_net(), plain_h5)
    with pytest.raises(KerasWeightsError, match="not found"):
        load_xception_imagenet(keras_net(), tmp_path / "absent.keras")
    no_xception = tmp_path / "tiny.keras"
    write_keras3(no_xception, [(_layer("Dense", "dense", []), [np.zeros((2, 2))])])
    with pytest.raises(KerasWeightsError, match="exactly one Keras Xception"):
        load_xception_imagenet(keras_net(), no_xception)


def test_same_pool_matches_tf_padding() -> None:
    pool = MaxPool2dSame(3, 2)
    for size in (4, 5, 8, 9):
        x = torch.randn(1, 2, size, size)
        out = pool(x)
        n = -(-size // 2)
        assert out.shape[-2:] == (n, n)
        pad_before = max((n - 1) * 2 + 3 - size, 0) // 2  # TF: the odd pixel goes after
        padded = torch.nn.functional.pad(x, (pad_before, 3, pad_before, 3), value=float("-inf"))
        expected = torch.stack([torch.stack([padded[..., 2 * i : 2 * i + 3, 2 * j : 2 * j + 3].amax((-2, -1))
                                             for j in range(n)], -1) for i in range(n)], -2)  # fmt: skip
        assert torch.equal(out, expected), size
    # odd sizes: the same as torch's symmetric padding, so only even sizes differ
    x = torch.randn(1, 2, 9, 9)
    assert torch.equal(pool(x), nn.MaxPool2d(3, 2, 1)(x))


def test_keras_settings_survive_weights_save_and_load(tmp_path: Path) -> None:
    config = RALFConfig.tiny(classifier=KERAS_CLASSIFIER_SETTINGS)
    save_weights(tmp_path / "w.safetensors", RALF(config).eval())
    model, metadata = load_weights(tmp_path / "w.safetensors", "cpu")
    assert metadata.config.classifier.batch_norm_eps == 1e-3
    assert metadata.config.classifier.max_pool_padding == "same"
    backbone = model.classifier.backbone
    assert {m.eps for m in backbone.modules() if isinstance(m, nn.BatchNorm2d)} == {1e-3}
    assert any(isinstance(m, MaxPool2dSame) for m in backbone.modules())
    # defaults unchanged: torch epsilon, symmetric pools
    default = Xception(ClassifierConfig(**SMALL))
    assert {m.eps for m in default.modules() if isinstance(m, nn.BatchNorm2d)} == {1e-5}
    assert not any(isinstance(m, MaxPool2dSame) for m in default.modules())
