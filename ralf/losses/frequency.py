"""Frequency reconstruction loss L_freq (eq. 5) with the band weighting matrix W.

W follows the authors' code: the weight of DCT coefficient (i, j) depends on its band index i + j,
from 1e-4 at DC to 100 at the highest frequencies, so that the few strong low-frequency coefficients
do not drown the many weak high-frequency ones (paper section 3.1, Table 4 "weighted").
The reference defines the band edges on a 256x256 grid; for another size S every edge is scaled by
S / 256 so that each band covers the same fraction of the spectrum (at S = 64 the edges are
0.25, 2, 32, 80: DC alone still gets 1e-4).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from ralf.dct import dct2
from ralf.losses.labels import fake_mask, zero_with_graph

BandWeighting = Literal["weighted", "unweighted"]
FrequencyDistance = Literal["coefficient", "magnitude"]

REFERENCE_GRID = 256
# Coefficients with i + j < edge get the weight listed at the same position; beyond the last edge, 100.
REFERENCE_BAND_EDGES = (1, 8, 128, 320)
REFERENCE_BAND_WEIGHTS = (1e-4, 1e-2, 1.0, 10.0, 100.0)


def band_weights(size: int, mode: BandWeighting = "weighted") -> Tensor:
    """(size, size) float32 matrix W; 'unweighted' is all ones (Table 4's "unweighted" row)."""
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    if mode == "unweighted":
        return torch.ones(size, size)
    if mode != "weighted":
        raise ValueError(f"unknown band weighting {mode!r}; use 'weighted' or 'unweighted'")
    index = torch.arange(size)
    band = (index[:, None] + index[None, :]).to(torch.float64)
    edges = torch.tensor(REFERENCE_BAND_EDGES, dtype=torch.float64) * (size / REFERENCE_GRID)
    # bucketize(right=True) counts the edges <= i + j, i.e. the index of the band holding i + j.
    band_id = torch.bucketize(band, edges, right=True)
    return torch.tensor(REFERENCE_BAND_WEIGHTS, dtype=torch.float32)[band_id]


def frequency_loss(
    reconstruction: Tensor,
    x: Tensor,
    is_fake: Tensor,
    weights: Tensor,
    distance: FrequencyDistance = "coefficient",
    basis: Tensor | None = None,
) -> Tensor:
    """E_r ||W * (DCT(x~_r) - DCT(x_r))||_1 over the real samples, as a mean over every element
    (batch, channel, frequency), so its scale does not grow with the image size.

    distance="coefficient": eq. (5), the signed coefficient difference.
    distance="magnitude": the authors' code, | |DCT(x~_r)| - |DCT(x_r)| | (sign-blind).
    Zero (on the graph) when the batch holds no real sample. `basis`: a cached `dct_matrix(S)`.
    """
    if reconstruction.shape != x.shape:
        raise ValueError(f"reconstruction {tuple(reconstruction.shape)} and input {tuple(x.shape)} differ")
    if weights.shape != x.shape[-2:]:
        raise ValueError(f"weights {tuple(weights.shape)} do not match the image size {tuple(x.shape[-2:])}")
    real = ~fake_mask(is_fake, x.shape[0])
    if not bool(real.any()):
        return zero_with_graph(reconstruction)
    spectrum_rec = dct2(reconstruction[real], basis)
    spectrum_in = dct2(x[real], basis)
    if distance == "coefficient":
        difference = spectrum_rec - spectrum_in
    elif distance == "magnitude":
        difference = spectrum_rec.abs() - spectrum_in.abs()
    else:
        raise ValueError(f"unknown frequency distance {distance!r}; use 'coefficient' or 'magnitude'")
    return (weights * difference).abs().mean()
