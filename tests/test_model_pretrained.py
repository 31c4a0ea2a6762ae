"""Local ImageNet Xception loader: Cadene / timm naming, 2-D pointwise weights, clear refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ralf.classifier import Classifier
from ralf.config import RALFConfig
from ralf.core.files import file_sha256
from ralf.pretrained import PretrainedError, load_xception_imagenet
from ralf.xception import Xception


@pytest.fixture(scope="module")
def imagenet_state() -> dict[str, torch.Tensor]:
    """A checkpoint laid out like Cadene's xception-43020ad28.pth: 1000-class `fc`, 2-D pointwise
    weights and no BN step counters."""
    torch.manual_seed(1)
    source = Xception(RALFConfig.paper().classifier)
    state = {}
    for key, value in source.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        if "pointwise" in key:
            value = value[:, :, 0, 0]
        state[key] = value.clone().normal_() if value.is_floating_point() else value
    state["fc.weight"] = torch.zeros(1000, 2048)
    state["fc.bias"] = torch.zeros(1000)
    return state


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_loads_cadene_layout(tmp_path: Path, imagenet_state: dict[str, torch.Tensor], suffix: str) -> None:
    path = tmp_path / f"xception{suffix}"
    if suffix == ".pth":
        torch.save(imagenet_state, path)
    else:
        save_file({k: v.contiguous() for k, v in imagenet_state.items()}, str(path))
    classifier = Classifier(RALFConfig.paper().classifier)
    head_before = classifier.backbone.fc.weight.detach().clone()
    tag = load_xception_imagenet(classifier, path)
    assert tag == f"imagenet:{file_sha256(path)}"
    loaded = classifier.backbone.state_dict()
    assert torch.equal(loaded["block5.rep.1.pointwise.weight"][:, :, 0, 0], imagenet_state["block5.rep.1.pointwise.weight"])
    assert torch.equal(loaded["conv1.weight"], imagenet_state["conv1.weight"])
    assert torch.equal(loaded["bn4.running_var"], imagenet_state["bn4.running_var"])
    assert torch.equal(classifier.backbone.fc.weight, head_before)  # the 1-logit head is untouched


def test_reports_missing_and_unexpected_keys(tmp_path: Path, imagenet_state: dict[str, torch.Tensor]) -> None:
    broken = dict(imagenet_state)
    del broken["block3.skip.weight"]
    broken["block13.rep.0.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save(broken, path)
    with pytest.raises(PretrainedError) as error:
        load_xception_imagenet(Classifier(RALFConfig.paper().classifier), path)
    assert "missing (1): block3.skip.weight" in str(error.value)
    assert "unexpected (1): block13.rep.0.weight" in str(error.value)


def test_refuses_narrow_networks_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(PretrainedError, match="width 1.0"):
        load_xception_imagenet(Classifier(RALFConfig.tiny().classifier), tmp_path / "x.pth")
    with pytest.raises(PretrainedError, match="not found"):
        load_xception_imagenet(Classifier(RALFConfig.paper().classifier), tmp_path / "x.pth")


def test_layout_matches_imagenet_checkpoint_names() -> None:
    """Key names and shapes as written in the public ImageNet checkpoint (independent of our code)."""
    with torch.device("meta"):
        state = Xception(RALFConfig.paper().classifier).state_dict()
    expected_shapes = {
        "conv1.weight": (32, 3, 3, 3),
        "conv2.weight": (64, 32, 3, 3),
        "block1.rep.0.conv1.weight": (64, 1, 3, 3),  # no leading ReLU in block 1
        "block1.rep.3.pointwise.weight": (128, 128, 1, 1),
        "block1.skip.weight": (128, 64, 1, 1),
        "block2.rep.1.pointwise.weight": (256, 128, 1, 1),
        "block3.rep.5.running_mean": (728,),
        "block4.rep.7.pointwise.weight": (728, 728, 1, 1),
        "block11.rep.8.weight": (728,),
        "block12.rep.1.pointwise.weight": (728, 728, 1, 1),  # exit block widens last
        "block12.rep.4.pointwise.weight": (1024, 728, 1, 1),
        "block12.skipbn.weight": (1024,),
        "conv3.conv1.weight": (1024, 1, 3, 3),
        "conv4.pointwise.weight": (2048, 1536, 1, 1),
        "bn4.running_var": (2048,),
        "fc.weight": (1, 2048),
    }
    for key, shape in expected_shapes.items():
        assert tuple(state[key].shape) == shape, key
    assert not any(key.startswith(f"block{i}.skip") for i in range(4, 12) for key in state)
