"""DCGAN discriminator (Radford et al. 2015) for L_disc / L_adv (eq. 7-8); training only."""

from __future__ import annotations

from torch import Tensor, nn

from ralf.config import DiscriminatorConfig


class Discriminator(nn.Module):
    """4x4 stride-2 convs halving the image down to 4x4 (log2(S/4) layers; 8 -> 256 channels at
    S=256), BN on all but the first, LeakyReLU(0.2), then a 4x4 conv to one logit.

    `forward(img) -> (B,)` logits; sigmoid(logit) is the probability that `img` is an authentic
    face rather than a reconstruction (Disc(.) of the paper).
    """

    def __init__(self, config: DiscriminatorConfig, image_size: int, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        size, channels, index = image_size, in_channels, 0
        while size >= 8:
            out_channels = min(config.base_channels * 2**index, config.max_channels)
            layers.append(nn.Conv2d(channels, out_channels, 4, stride=2, padding=1))
            if index > 0:
                layers.append(nn.BatchNorm2d(out_channels))
            layers.append(nn.LeakyReLU(0.2))
            size, channels, index = size // 2, out_channels, index + 1
        if index == 0:
            raise ValueError(f"discriminator needs images of at least 8x8, got {image_size}")
        # The last conv covers the whole remaining map (4x4 for power-of-two sizes, up to 7x7 otherwise).
        layers.append(nn.Conv2d(channels, 1, size))
        self.layers = nn.Sequential(*layers)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    def forward(self, img: Tensor) -> Tensor:
        return self.layers(img).flatten(1).squeeze(1)
