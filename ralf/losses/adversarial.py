"""GAN losses of eq. (7)-(8). The discriminator's logit is log-odds that an image is AUTHENTIC
(Disc(x) in the paper), the GAN convention, unlike the classifier's fake-positive logit."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def _bce_to(logits: Tensor, target: float) -> Tensor:
    # BCE-with-logits is the numerically stable form of -log(sigmoid) / -log(1 - sigmoid).
    return F.binary_cross_entropy_with_logits(logits, logits.new_full(logits.shape, target))


def discriminator_loss_from_logits(real_logits: Tensor, reconstruction_logits: Tensor) -> Tensor:
    """Eq. (7): -E_r log Disc(x_r) - E_x log(1 - Disc(x~)).

    `real_logits`: Disc on the REAL input images only (may be empty: that term is then 0);
    `reconstruction_logits`: Disc on the reconstructions of ALL images, real and fake.
    """
    loss = _bce_to(reconstruction_logits, 0.0)
    if real_logits.numel() > 0:
        loss = loss + _bce_to(real_logits, 1.0)
    return loss


def adversarial_loss_from_logits(reconstruction_logits: Tensor) -> Tensor:
    """Eq. (8): -E_x log Disc(x~): every reconstruction should pass as authentic."""
    return _bce_to(reconstruction_logits, 1.0)
