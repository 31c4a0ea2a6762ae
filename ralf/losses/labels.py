"""Label handling shared by the losses: `is_fake` (B,) bool or 0/1 float, fake = 1."""

from __future__ import annotations

import torch
from torch import Tensor


def fake_mask(is_fake: Tensor, batch_size: int) -> Tensor:
    """Boolean (B,) mask of fake samples; rejects shapes or values that are not a binary label per sample."""
    if is_fake.dim() != 1 or is_fake.shape[0] != batch_size:
        raise ValueError(f"is_fake must have shape ({batch_size},), got {tuple(is_fake.shape)}")
    if is_fake.dtype == torch.bool:
        return is_fake
    if not bool(((is_fake == 0) | (is_fake == 1)).all()):
        raise ValueError("is_fake must hold only 0 (real) and 1 (fake)")
    return is_fake == 1


def zero_with_graph(tensor: Tensor) -> Tensor:
    """A scalar 0 connected to `tensor`'s graph, for a term whose class is absent from the batch.

    Summing an empty slice (not `0 * tensor`) keeps NaN/inf in `tensor` from leaking into the zero.
    """
    return tensor.reshape(-1)[:0].sum()
