"""MobileNetV2 classifier backbone (Sandler et al. 2018), torchvision's network re-wrapped.

A CPU-sized choice beside Xception and ResNet (the paper's Table 5 shows the backbone is a choice).
The split mirrors the others: `stem` = features[0] (3x3 stride-2 conv, BN, ReLU6), 32 channels at
S/2, which the destruction-guided map modulates; `features_after_stem` = the inverted-residual
stages and the final 1x1 conv to 1280 channels. Submodule names stay torchvision's (`features.N`),
so its ImageNet file `mobilenet_v2-b0353104.pth` loads by name.
"""

from __future__ import annotations

import torchvision
from torch import Tensor, nn

from ralf.config import ClassifierConfig


class MobileNetV2(nn.Module):
    # The stem conv pads (3x3, padding 1): the guidance convs pad too, to land on S/2.
    guidance_padding = 1

    def __init__(self, config: ClassifierConfig, in_channels: int = 3) -> None:
        super().__init__()
        net = torchvision.models.mobilenet_v2(weights=None, width_mult=config.width)
        stem_conv = net.features[0][0]
        if in_channels != 3:
            net.features[0][0] = nn.Conv2d(in_channels, stem_conv.out_channels, 3, stride=2, padding=1, bias=False)
        self.features = net.features
        stem_width = stem_conv.out_channels
        self.stem_widths = (stem_width, stem_width)
        self.num_features = net.last_channel
        self.fc = nn.Linear(self.num_features, 1)

    def stem(self, x: Tensor) -> Tensor:
        return self.features[0](x)

    def features_after_stem(self, h: Tensor) -> Tensor:
        return self.features[1:](h)
