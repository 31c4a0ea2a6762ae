"""ResNet-18 / ResNet-50 classifier backbones (paper Table 5), torchvision's networks re-wrapped.

The split mirrors Xception's: `stem` = conv1 (7x7, stride 2), BN, ReLU, i.e. 64 channels at S/2,
so the destruction-guided map modulates the first full-resolution-ish features exactly as with
Xception; the max pool stays in `features_after_stem`, followed by layer1..layer4. Submodules keep
torchvision's names (conv1, bn1, layer1..4, fc) so torchvision ImageNet weights load by name.
"""

from __future__ import annotations

from typing import Literal

import torchvision
from torch import Tensor, nn

from ralf.config import ClassifierConfig

ResNetDepth = Literal["resnet18", "resnet50"]


class ResNet(nn.Module):
    # The stem conv pads (7x7, padding 3): the guidance convs pad too, to land on S/2.
    guidance_padding = 1

    def __init__(self, config: ClassifierConfig, in_channels: int = 3) -> None:
        super().__init__()
        builders = {"resnet18": torchvision.models.resnet18, "resnet50": torchvision.models.resnet50}
        if config.backbone not in builders:
            raise ValueError(f"ResNet backbone must be one of {sorted(builders)}, got {config.backbone!r}")
        net = builders[config.backbone](weights=None)
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.num_features = net.fc.in_features
        self.stem_widths = (32, 64)
        self.fc = nn.Linear(self.num_features, 1)

    def stem(self, x: Tensor) -> Tensor:
        return self.relu(self.bn1(self.conv1(x)))

    def features_after_stem(self, h: Tensor) -> Tensor:
        h = self.maxpool(h)
        return self.layer4(self.layer3(self.layer2(self.layer1(h))))
