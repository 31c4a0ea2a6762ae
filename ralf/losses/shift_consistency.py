"""Shift consistency (not in the paper): P(fake) of a face and of the same face moved by one pixel
should agree. The scanner's crops move by a pixel or two between frames and detectors, and a model
whose score jumps under such a move cannot be trusted; the DCT mask, the stride-2 backbone and global
max pooling make RALF sensitive to it unless trained otherwise."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

# The eight one-pixel moves (dy, dx), never (0, 0).
ONE_PIXEL_MOVES: tuple[tuple[int, int], ...] = tuple(
    (dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)
)


def shift_pixels(x: Tensor, dy: int, dx: int) -> Tensor:
    """(B, C, H, W) images moved by (dy, dx) pixels, the uncovered edge repeating the border
    (as `benchmarks/pixel_shift.py` shifts crops)."""
    if max(abs(dy), abs(dx)) >= min(x.shape[-2:]):
        raise ValueError(f"a shift of ({dy}, {dx}) pixels does not fit images of {tuple(x.shape[-2:])}")
    height, width = x.shape[-2:]
    padded = F.pad(x, (abs(dx), abs(dx), abs(dy), abs(dy)), mode="replicate")
    top, left = abs(dy) - dy, abs(dx) - dx
    return padded[..., top : top + height, left : left + width]


def random_one_pixel_move(generator: torch.Generator | None = None) -> tuple[int, int]:
    """One of the eight one-pixel moves, drawn from `generator` (torch's global one when None)."""
    index = int(torch.randint(len(ONE_PIXEL_MOVES), (1,), generator=generator))
    return ONE_PIXEL_MOVES[index]


def shift_consistency_loss(logit: Tensor, shifted_logit: Tensor) -> Tensor:
    """Mean squared difference of P(fake) between each face and its shifted copy: in probability
    space, so a face already scored near 0 or 1 is not pushed further."""
    if logit.shape != shifted_logit.shape:
        raise ValueError(f"logits of shape {tuple(logit.shape)} and {tuple(shifted_logit.shape)} do not pair up")
    return (torch.sigmoid(logit.float()) - torch.sigmoid(shifted_logit.float())).pow(2).mean()
