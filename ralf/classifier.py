"""Classifier C (paper eq. 9): y = C(|x - x~|, |x - x^|), one logit, log-odds of FAKE."""

from __future__ import annotations

from torch import Tensor, nn

from ralf.attention import DestructionGuidance
from ralf.config import ClassifierConfig
from ralf.mobilenet import MobileNetV2
from ralf.resnet import ResNet
from ralf.xception import Xception

Backbone = Xception | ResNet | MobileNetV2


def build_backbone(config: ClassifierConfig, in_channels: int = 3) -> Backbone:
    if config.backbone == "xception":
        return Xception(config, in_channels)
    if config.backbone == "mobilenet_v2":
        return MobileNetV2(config, in_channels)
    return ResNet(config, in_channels)


class Classifier(nn.Module):
    """Backbone stem on |x - x~|, gated by the destruction-guided map from |x - x^|, the rest of
    the backbone, ReLU, global max (or average) pooling, linear -> (B,) logits."""

    def __init__(self, config: ClassifierConfig, in_channels: int = 3) -> None:
        super().__init__()
        self.pool = config.pool
        self.backbone = build_backbone(config, in_channels)
        self.guidance: DestructionGuidance | None = None
        if config.destruction_guidance:
            self.guidance = DestructionGuidance(
                self.backbone.stem_widths, self.backbone.guidance_padding, config.attention_kernel, in_channels
            )

    def forward(self, diff_recon: Tensor, diff_destroyed: Tensor) -> Tensor:
        h = self.backbone.stem(diff_recon)
        if self.guidance is not None:
            h = h * self.guidance(diff_destroyed)
        features = self.backbone.features_after_stem(h).relu()
        pooled = features.amax(dim=(2, 3)) if self.pool == "max" else features.mean(dim=(2, 3))
        return self.backbone.fc(pooled).squeeze(1)
