"""Xception (Chollet, CVPR 2017), the ImageNet network, split at the stem for destruction guidance.

Submodule names and the indices inside each block's `rep` follow the common ImageNet checkpoint
(Cadene pretrainedmodels / timm legacy_xception): conv1, bn1, conv2, bn2, block1..blockN, conv3,
bn3, conv4, bn4, fc, so `ralf.pretrained.load_xception_imagenet` can load it by name. At width 1
with 8 middle blocks and a 2048 -> 1 head this is the paper's 20.81M-parameter classifier.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from ralf.config import ClassifierConfig

# Chollet's widths: stem, entry flow blocks, middle flow, exit flow.
STEM_WIDTHS = (32, 64)
ENTRY_WIDTHS = (128, 256, 728)
EXIT_WIDTHS = (1024, 1536, 2048)


class SeparableConv2d(nn.Module):
    """Depthwise k x k conv then pointwise 1x1 conv, no bias (BN follows)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, padding: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, in_channels, kernel_size, padding=padding, groups=in_channels, bias=False)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.conv1(x))


class MaxPool2dSame(nn.Module):
    """Max pool padded like TF/Keras `padding="same"`: out = ceil(n / stride), and the total padding
    max((out - 1) * stride + k - n, 0) is split with the odd pixel at the end (bottom/right).

    For a 3x3 stride-2 pool this equals torch's padding=1 on odd sizes; on even sizes Keras pads one
    row/column after and none before, so torch's symmetric padding would shift every window by one.
    """

    def __init__(self, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride

    def _pads(self, size: int) -> tuple[int, int]:
        total = max((math.ceil(size / self.stride) - 1) * self.stride + self.kernel_size - size, 0)
        return total // 2, total - total // 2

    def forward(self, x: Tensor) -> Tensor:
        top, bottom = self._pads(x.shape[-2])
        left, right = self._pads(x.shape[-1])
        x = F.pad(x, (left, right, top, bottom), value=float("-inf"))
        return F.max_pool2d(x, self.kernel_size, self.stride)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding=same"


class Block(nn.Module):
    """`reps` x (ReLU, separable conv, BN), optional stride-2 max pool, plus a (projected) skip.

    The layer order (and so the `rep.<i>` indices) reproduces the ImageNet checkpoint's layout:
    `grow_first` widens in the first separable conv, otherwise in the last; without
    `start_with_relu` the leading ReLU is dropped (block 1 follows the stem's ReLU).
    `bn_eps` and `same_pool` (Keras-style pool padding) follow `ClassifierConfig`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        reps: int,
        stride: int = 1,
        start_with_relu: bool = True,
        grow_first: bool = True,
        bn_eps: float = 1e-5,
        same_pool: bool = False,
    ) -> None:
        super().__init__()
        if out_channels != in_channels or stride != 1:
            self.skip: nn.Module | None = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)
            self.skipbn: nn.Module | None = nn.BatchNorm2d(out_channels, eps=bn_eps)
        else:
            self.skip = None
            self.skipbn = None
        # Channel count before/after each separable conv.
        widths = [in_channels] + [out_channels] * reps if grow_first else [in_channels] * reps + [out_channels]
        layers: list[nn.Module] = []
        for conv_in, conv_out in zip(widths[:-1], widths[1:]):
            layers += [nn.ReLU(), SeparableConv2d(conv_in, conv_out), nn.BatchNorm2d(conv_out, eps=bn_eps)]
        if not start_with_relu:
            layers = layers[1:]
        if stride != 1:
            layers.append(MaxPool2dSame(3, stride) if same_pool else nn.MaxPool2d(3, stride, 1))
        self.rep = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        skip = x if self.skip is None or self.skipbn is None else self.skipbn(self.skip(x))
        return self.rep(x) + skip


def scaled(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


class Xception(nn.Module):
    """Backbone with a `stem(x)` / `features_after_stem(h)` split and a 1-logit `fc`.

    stem: conv1 (3->32, 3x3, stride 2, no padding), BN, ReLU, conv2 (32->64, 3x3), BN, ReLU:
    64 channels at (S-1)//2 - 2 (125 at S=256). `features_after_stem` ends at bn4 (pre-ReLU);
    the classifier applies ReLU, global pooling and `fc`. `block_names[-2]` is the last block of
    the middle flow, where the authors take Grad-CAM.

    `config.batch_norm_eps` sets every BN's epsilon and `config.max_pool_padding` the stride-2 pools'
    padding: (1e-5, "symmetric") for Cadene/timm weights, (1e-3, "same") for Keras weights.
    """

    # DestructionGuidance mirrors the stem: same widths, same unpadded 3x3 convs.
    guidance_padding = 0

    def __init__(self, config: ClassifierConfig, in_channels: int = 3) -> None:
        super().__init__()
        width = config.width
        stem1, stem2 = (scaled(c, width) for c in STEM_WIDTHS)
        entry = [scaled(c, width) for c in ENTRY_WIDTHS]
        exit1, exit2, exit3 = (scaled(c, width) for c in EXIT_WIDTHS)
        self.stem_widths = (stem1, stem2)
        self.num_features = exit3

        self.conv1 = nn.Conv2d(in_channels, stem1, 3, stride=2, bias=False)
        eps = config.batch_norm_eps
        same_pool = config.max_pool_padding == "same"
        self.bn1 = nn.BatchNorm2d(stem1, eps=eps)
        self.conv2 = nn.Conv2d(stem1, stem2, 3, bias=False)
        self.bn2 = nn.BatchNorm2d(stem2, eps=eps)
        self.relu = nn.ReLU()

        options = {"bn_eps": eps, "same_pool": same_pool}
        blocks = [
            Block(stem2, entry[0], 2, stride=2, start_with_relu=False, **options),
            Block(entry[0], entry[1], 2, stride=2, **options),
            Block(entry[1], entry[2], 2, stride=2, **options),
        ]
        blocks += [Block(entry[2], entry[2], 3, **options) for _ in range(config.middle_blocks)]
        blocks.append(Block(entry[2], exit1, 2, stride=2, grow_first=False, **options))
        self.block_names = [f"block{i}" for i in range(1, len(blocks) + 1)]
        for name, block in zip(self.block_names, blocks):
            self.add_module(name, block)

        self.conv3 = SeparableConv2d(exit1, exit2)
        self.bn3 = nn.BatchNorm2d(exit2, eps=eps)
        self.conv4 = SeparableConv2d(exit2, exit3)
        self.bn4 = nn.BatchNorm2d(exit3, eps=eps)
        self.fc = nn.Linear(exit3, 1)
        _init_weights(self)

    def stem(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(x)))

    def features_after_stem(self, h: Tensor) -> Tensor:
        for name in self.block_names:
            h = self.get_submodule(name)(h)
        h = self.relu(self.bn3(self.conv3(h)))
        return self.bn4(self.conv4(h))


def _init_weights(model: nn.Module) -> None:
    """He-normal convs, unit BN, as torchvision does for networks trained from scratch."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
