"""The CPU recipe's model side: MobileNetV2 backbone, the `lite` preset, torchvision ImageNet loading,
L_con on MobileNetV2 features, and crop geometry travelling with the weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from ralf.config import RALFConfig
from ralf.core.files import file_sha256
from ralf.core.metadata import CropGeometry, WeightsMetadata, read_metadata
from ralf.losses.mobilenet_features import MobileNetV2Features
from ralf.mobilenet import MobileNetV2
from ralf.model import RALF
from ralf.pretrained import PretrainedError
from ralf.pretrained_torchvision import load_backbone_imagenet
from ralf.weights import load_weights, save_weights


@pytest.fixture(scope="module")
def mobilenet_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A file laid out like torchvision's mobilenet_v2-b0353104.pth (1000-class head included)."""
    torch.manual_seed(3)
    net = torchvision.models.mobilenet_v2(weights=None)
    for name, value in net.state_dict().items():
        if name.endswith("running_var"):
            value.uniform_(0.5, 1.5)
        elif value.is_floating_point():
            value.normal_(0, 0.05)
    path = tmp_path_factory.mktemp("imagenet") / "mobilenet_v2.pth"
    torch.save(net.state_dict(), path)
    return path


def test_lite_preset_is_the_whole_topology_at_cpu_size() -> None:
    config = RALFConfig.from_preset("lite")
    model = RALF(config).eval()
    assert config.image_size == 128 and config.classifier.backbone == "mobilenet_v2"
    assert isinstance(model.classifier.backbone, MobileNetV2) and model.classifier.guidance is not None
    parameters = sum(p.numel() for p in model.parameters())
    assert 2.0e6 < parameters < 3.0e6
    with torch.no_grad():
        out = model.forward_all(torch.rand(2, 3, 128, 128))
    assert out.logit.shape == (2,) and out.reconstruction.shape == (2, 3, 128, 128)
    # The destruction-guided gate acts on the stem's (S/2) features.
    stem = model.classifier.backbone.stem(torch.rand(1, 3, 128, 128))
    gate = model.classifier.guidance(torch.rand(1, 3, 128, 128))
    assert stem.shape[-2:] == gate.shape[-2:] == (64, 64)


def test_torchvision_imagenet_file_loads_into_the_backbone(mobilenet_file: Path) -> None:
    model = RALF(RALFConfig.lite())
    head = model.classifier.backbone.fc.weight.detach().clone()
    tag = load_backbone_imagenet(model, mobilenet_file)
    assert tag == f"imagenet:{file_sha256(mobilenet_file)}"
    reference = torchvision.models.mobilenet_v2(weights=None)
    reference.load_state_dict(torch.load(mobilenet_file, weights_only=True))
    backbone = model.classifier.backbone.eval()
    x = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        assert torch.equal(reference.eval().features(x), backbone.features_after_stem(backbone.stem(x)))
    assert torch.equal(backbone.fc.weight, head)  # RALF's 1-logit head is not ImageNet's


def test_wrong_backbone_file_is_refused_by_name(mobilenet_file: Path, tmp_path: Path) -> None:
    state = torch.load(mobilenet_file, weights_only=True)
    del state["features.5.conv.1.0.weight"]
    broken = tmp_path / "broken.pth"
    torch.save(state, broken)
    with pytest.raises(PretrainedError, match="features.5.conv.1.0.weight"):
        load_backbone_imagenet(RALF(RALFConfig.lite()), broken)
    with pytest.raises(PretrainedError, match="not found"):
        load_backbone_imagenet(RALF(RALFConfig.lite()), tmp_path / "absent.pth")
    resnet = RALF(RALFConfig.tiny(classifier={"backbone": "resnet18"}))
    with pytest.raises(PretrainedError, match="unexpected"):
        load_backbone_imagenet(resnet, mobilenet_file)


def test_mobilenet_features_for_contrastive_loss(mobilenet_file: Path) -> None:
    features = MobileNetV2Features(mobilenet_file)
    features.train()
    assert not features.training and not any(p.requires_grad for p in features.parameters())
    maps = features(torch.rand(2, 3, 128, 128))
    assert [m.shape[1] for m in maps] == [16, 24, 32, 96, 320]
    assert [m.shape[-1] for m in maps] == [64, 32, 16, 8, 4]
    with pytest.raises(PretrainedError):
        torch.save({"x": torch.zeros(1)}, mobilenet_file.parent / "empty.pth")
        MobileNetV2Features(mobilenet_file.parent / "empty.pth")


def test_crop_geometry_travels_with_the_weights(tmp_path: Path) -> None:
    model = RALF(RALFConfig.tiny())
    path = tmp_path / "w.safetensors"
    geometry = CropGeometry(margin=0.0, square=False)
    save_weights(path, model, WeightsMetadata(config=model.config, crop=geometry))
    assert read_metadata(path).crop == geometry
    assert load_weights(path)[1].crop == geometry
    # Files written before the field existed read as the scanner's long-standing default.
    assert WeightsMetadata(config=model.config).crop == CropGeometry(margin=0.3, square=True)


def test_half_precision_storage_loads_as_float32_and_is_digest_checked(tmp_path: Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from ralf.core.metadata import WeightsError
    from ralf.weights import tensors_digest

    torch.manual_seed(0)
    model = RALF(RALFConfig.tiny()).eval()
    path = tmp_path / "half.safetensors"
    metadata = save_weights(path, model, dtype=torch.float16)
    with safe_open(str(path), framework="pt") as handle:
        assert handle.get_tensor("destructor.mask_logits").dtype == torch.float16
    loaded, read = load_weights(path)
    assert read.tensors_sha256 == metadata.tensors_sha256 == tensors_digest(load_file(str(path)))
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert (torch.sigmoid(loaded(x)) - torch.sigmoid(model(x))).abs().max() < 1e-2
    # Tensors changed behind the metadata's back are refused.
    tensors = load_file(str(path))
    tensors["destructor.mask_logits"] = tensors["destructor.mask_logits"] + 1
    header = read_metadata(path).model_dump_json()
    save_file(tensors, str(path), metadata={"ralf": header})
    with pytest.raises(WeightsError, match="digest"):
        load_weights(path)
