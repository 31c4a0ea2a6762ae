"""MTCNN's three networks (P-Net, R-Net, O-Net) as torch modules, laid out like the Keras models
of the PyPI package `mtcnn` 1.0.0 so its weights load one to one (see `mtcnn_weights.py`).

Inputs are NCHW with rows = image height, normalised as (pixel - 127.5) / 128.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class KerasSameMaxPool2d(nn.Module):
    """Max pooling with Keras/TF padding="same": output ceil(in / stride), and when the padding is
    odd the extra row/column goes to the bottom/right (torch's own padding is symmetric)."""

    def __init__(self, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride

    def _padding(self, length: int) -> tuple[int, int]:
        out = math.ceil(length / self.stride)
        total = max((out - 1) * self.stride + self.kernel_size - length, 0)
        return total // 2, total - total // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = self._padding(x.shape[-2])
        left, right = self._padding(x.shape[-1])
        if top == 0 and left == 0:
            # Padding only after: torch's ceil_mode windows hang over the end the same way, without a copy.
            return F.max_pool2d(x, self.kernel_size, self.stride, ceil_mode=True)
        x = F.pad(x, (left, right, top, bottom), value=float("-inf"))
        return F.max_pool2d(x, self.kernel_size, self.stride)


def _flatten_keras_order(x: torch.Tensor) -> torch.Tensor:
    """Flatten NCHW the way the Keras models do after their Permute((2, 1, 3)) on NHWC: (W, H, C)."""
    return x.permute(0, 3, 2, 1).flatten(1)


class PNet(nn.Module):
    """Proposal network: fully convolutional, 12×12 receptive field, stride 2.

    forward(x (N,3,H,W)) -> (box offsets (N,4,h,w), face probability (N,h,w)).
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, 3)
        self.prelu1 = nn.PReLU(10)
        self.pool1 = KerasSameMaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(10, 16, 3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, 3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 4, 1)
        self.conv4_2 = nn.Conv2d(32, 2, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu2(self.conv2(x))
        x = self.prelu3(self.conv3(x))
        return self.conv4_1(x), torch.softmax(self.conv4_2(x), dim=1)[:, 1]


class RNet(nn.Module):
    """Refinement network on 24×24 patches: forward -> (box offsets (K,4), face probability (K,))."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, 3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = KerasSameMaxPool2d(3, 2)
        self.conv2 = nn.Conv2d(28, 48, 3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2)
        self.conv3 = nn.Conv2d(48, 64, 2)
        self.prelu3 = nn.PReLU(64)
        self.fc4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.fc5_1 = nn.Linear(128, 4)
        self.fc5_2 = nn.Linear(128, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        x = self.prelu4(self.fc4(_flatten_keras_order(x)))
        return self.fc5_1(x), torch.softmax(self.fc5_2(x), dim=1)[:, 1]


class ONet(nn.Module):
    """Output network on 48×48 patches: forward -> (box offsets (K,4), landmarks (K,10) as
    x1..x5, y1..y5 relative to the patch, face probability (K,))."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = KerasSameMaxPool2d(3, 2)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2)
        self.conv3 = nn.Conv2d(64, 64, 3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = KerasSameMaxPool2d(2, 2)
        self.conv4 = nn.Conv2d(64, 128, 2)
        self.prelu4 = nn.PReLU(128)
        self.fc5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.fc6_1 = nn.Linear(256, 4)
        self.fc6_2 = nn.Linear(256, 10)
        self.fc6_3 = nn.Linear(256, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = self.prelu5(self.fc5(_flatten_keras_order(x)))
        return self.fc6_1(x), self.fc6_2(x), torch.softmax(self.fc6_3(x), dim=1)[:, 1]


def load_keras_arrays(net: nn.Module, arrays: list[np.ndarray]) -> None:
    """Copy Keras `get_weights()` arrays into `net`, whose parameters are registered in the same
    order as the Keras layers' weights (conv kernel, bias, PReLU alpha, ...).

    Conv kernels HWIO -> OIHW, dense kernels (in, out) -> (out, in), PReLU alphas (1, 1, C) -> (C,).
    """
    params = list(net.parameters())
    if len(params) != len(arrays):
        raise ValueError(f"{type(net).__name__} has {len(params)} parameter tensors, weights file has {len(arrays)}")
    with torch.no_grad():
        for param, array in zip(params, arrays):
            value = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
            if value.ndim == 4:
                value = value.permute(3, 2, 0, 1)
            elif value.ndim == 2:
                value = value.t()
            else:
                value = value.reshape(-1)
            if value.shape != param.shape:
                raise ValueError(
                    f"{type(net).__name__}: weight of shape {tuple(array.shape)} does not fit parameter {tuple(param.shape)}"
                )
            param.copy_(value)
