"""Destruction-guided spatial attention (paper Fig. 4, lower branch; CBAM spatial gate)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class SpatialGate(nn.Module):
    """CBAM spatial attention: per-pixel max and mean over channels -> k x k conv -> sigmoid."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"spatial gate kernel must be odd to keep the map size, got {kernel_size}")
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2)

    def forward(self, x: Tensor) -> Tensor:
        pooled = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv(pooled))


class DestructionGuidance(nn.Module):
    """|x - x^| -> two stem-shaped convs (3x3 stride 2, then 3x3; BN + ReLU) -> SpatialGate.

    Returns a (B, 1, h, w) map in (0, 1) at the backbone stem's output resolution; `padding` is the
    backbone's (0 for Xception's unpadded stem, 1 for ResNet's padded one).
    """

    def __init__(
        self, widths: tuple[int, int], padding: int, kernel_size: int = 7, in_channels: int = 3
    ) -> None:
        super().__init__()
        first, second = widths
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, first, 3, stride=2, padding=padding, bias=False),
            nn.BatchNorm2d(first),
            nn.ReLU(),
            nn.Conv2d(first, second, 3, padding=padding, bias=False),
            nn.BatchNorm2d(second),
            nn.ReLU(),
        )
        self.gate = SpatialGate(kernel_size)

    def forward(self, residual: Tensor) -> Tensor:
        return self.gate(self.features(residual))
