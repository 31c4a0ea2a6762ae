"""Spatial reconstruction loss L_1 (eq. 4): only real faces must be reconstructed faithfully."""

from __future__ import annotations

from torch import Tensor

from ralf.losses.labels import fake_mask, zero_with_graph


def real_l1_loss(reconstruction: Tensor, x: Tensor, is_fake: Tensor) -> Tensor:
    """Mean absolute error between x~_r and x_r over every element of the real samples.

    Eq. (4) writes a per-image L1 norm; we average over pixels and channels as well (the reference's
    nn.L1Loss), so the term's scale does not depend on the image size. Zero (on the graph) without reals.
    """
    if reconstruction.shape != x.shape:
        raise ValueError(f"reconstruction {tuple(reconstruction.shape)} and input {tuple(x.shape)} differ")
    real = ~fake_mask(is_fake, x.shape[0])
    if not bool(real.any()):
        return zero_with_graph(reconstruction)
    return (reconstruction[real] - x[real]).abs().mean()
