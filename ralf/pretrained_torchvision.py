"""ImageNet initialisation of the torchvision-shaped backbones (MobileNetV2, ResNet) from LOCAL files.

torchvision's own checkpoints (`mobilenet_v2-b0353104.pth`, `resnet18-f37072fd.pth`, ...) load by
name into the backbone, whose submodules keep torchvision's names; the 1000-class head is skipped.
`load_backbone_imagenet` picks the reader for the classifier's backbone, Xception included.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ralf.core.files import file_sha256
from ralf.mobilenet import MobileNetV2
from ralf.pretrained import load_xception_imagenet
from ralf.pretrained_files import PretrainedError, check_state_dict, read_state_dict
from ralf.resnet import ResNet
from ralf.xception import Xception

# torchvision's ImageNet heads; RALF replaces them with a 1-logit `fc`.
_HEADS = {MobileNetV2: ("classifier.",), ResNet: ("fc.",)}


def _find_backbone(model: nn.Module) -> nn.Module:
    found = [m for m in model.modules() if isinstance(m, (Xception, ResNet, MobileNetV2))]
    if len(found) != 1:
        raise PretrainedError(f"expected exactly one classifier backbone inside {type(model).__name__}, found {len(found)}")
    return found[0]


def load_torchvision_imagenet(backbone: MobileNetV2 | ResNet, path: str | Path) -> str:
    """Load a torchvision ImageNet state dict into `backbone` by name; every non-head tensor must fit.

    Returns "imagenet:<sha256 of the file>" for the weights' `pretrained` metadata.
    """
    path = Path(path)
    heads = _HEADS[type(backbone)]
    source = {k: v for k, v in read_state_dict(path).items() if not k.startswith(heads)}
    expected = {k: v for k, v in backbone.state_dict().items() if not k.startswith("fc.")}
    check_state_dict(source, expected, f"{path} is not a torchvision ImageNet {type(backbone).__name__} checkpoint of this width:")
    backbone.load_state_dict(source, strict=False)
    return f"imagenet:{file_sha256(path)}"


def load_backbone_imagenet(model: nn.Module, path: str | Path) -> str:
    """ImageNet weights from a local file into the classifier backbone inside `model`, whichever it is."""
    backbone = _find_backbone(model)
    if isinstance(backbone, Xception):
        return load_xception_imagenet(model, path)
    return load_torchvision_imagenet(backbone, path)
