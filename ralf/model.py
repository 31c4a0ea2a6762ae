"""RALF: frequency destructor -> reconstructor -> destruction-guided classifier (paper Fig. 2).

Label convention: `forward` returns the log-odds of FAKE, so sigmoid(logit) = P(fake). (The
authors' code used 1 = real; imported reference weights are flipped on import.)
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from ralf.classifier import Classifier
from ralf.config import RALFConfig
from ralf.destructor import FrequencyDestructor
from ralf.reconstructor import MIMOUNet


class RALFOutput(NamedTuple):
    destroyed: Tensor  # x^ = D(x), (B, 3, S, S)
    reconstruction: Tensor  # x~ = R(x^), (B, 3, S, S)
    embedding: Tensor  # GAP of the deepest encoder output (L_emb), (B, embedding_dim)
    logit: Tensor  # log-odds of fake, (B,)


class RALF(nn.Module):
    """The inference graph (destructor, reconstructor, classifier); the discriminator lives apart.

    Input: float RGB in [0, 1], (B, 3, S, S) with S = config.image_size. The buffer `center` is the
    L_emb reference center c (eq. 3): saved with the weights, unused by `forward`.
    """

    def __init__(self, config: RALFConfig) -> None:
        super().__init__()
        if config.image_size % 4:
            raise ValueError(f"image_size must be divisible by 4 (MIMO-UNet's 1/4 scale), got {config.image_size}")
        self.config = config
        self.destructor = FrequencyDestructor(config.image_size)
        self.reconstructor = MIMOUNet(config.reconstructor, config.in_channels)
        self.classifier = Classifier(config.classifier, config.in_channels)
        self.register_buffer("center", torch.zeros(config.reconstructor.embedding_dim))

    def forward_all(self, x: Tensor) -> RALFOutput:
        destroyed = self.destructor(x)
        reconstruction, embedding = self.reconstructor(destroyed)
        logit = self.classifier((x - reconstruction).abs(), (x - destroyed).abs())
        return RALFOutput(destroyed, reconstruction, embedding, logit)

    def forward(self, x: Tensor) -> Tensor:
        """(B,) logits; sigmoid(logit) = P(fake)."""
        return self.forward_all(x).logit
