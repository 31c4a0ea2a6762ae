"""Frequency destructor D (paper eq. 1): x^ = IDCT(DCT(x) * M) with a learnable mask M in [0, 1]."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ralf.dct import dct2, dct_matrix, idct2


class FrequencyDestructor(nn.Module):
    """One mask value per spatial frequency, shared by the colour channels.

    M = sigmoid(mask_logits); the logits start at zero, so every frequency starts half suppressed,
    as in the authors' code. The DCT basis is a non-persistent buffer: rebuilt, never saved.
    """

    def __init__(self, image_size: int) -> None:
        super().__init__()
        if image_size < 1:
            raise ValueError(f"image_size must be positive, got {image_size}")
        self.image_size = image_size
        self.mask_logits = nn.Parameter(torch.zeros(image_size, image_size))
        self.register_buffer("dct_basis", dct_matrix(image_size), persistent=False)

    def mask(self) -> Tensor:
        """(S, S) suppression mask in [0, 1]."""
        return torch.sigmoid(self.mask_logits)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(
                f"expected images of shape (B, C, {self.image_size}, {self.image_size}), got {tuple(x.shape)}"
            )
        return idct2(dct2(x, self.dct_basis) * self.mask(), self.dct_basis)
