"""Orthonormal DCT-II as matrix products, and the frequency destructor built on it."""

from __future__ import annotations

import pytest
import scipy.fft
import torch

from ralf.dct import dct2, dct_matrix, idct2
from ralf.destructor import FrequencyDestructor


@pytest.mark.parametrize("n", [1, 8, 64, 256])
def test_dct_matrix_is_orthonormal(n: int) -> None:
    basis = dct_matrix(n)
    assert torch.allclose(basis @ basis.T, torch.eye(n), atol=1e-5)
    assert torch.allclose(basis.T @ basis, torch.eye(n), atol=1e-5)


def test_dct2_matches_scipy_orthonormal_dct() -> None:
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    expected = scipy.fft.dctn(x.numpy(), type=2, axes=(-2, -1), norm="ortho")
    assert torch.allclose(dct2(x), torch.from_numpy(expected), atol=1e-12)


def test_round_trip_is_exact_at_paper_size() -> None:
    x = torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    basis = dct_matrix(256)
    assert (idct2(dct2(x, basis), basis) - x).abs().max() < 1e-5
    assert (idct2(dct2(x)) - x).abs().max() < 1e-5


def test_non_square_round_trip_and_dc_coefficient() -> None:
    x = torch.full((1, 12, 20), 0.25)
    coefficients = dct2(x)
    # A constant image has only a DC term, equal to mean * sqrt(H * W) under orthonormal scaling.
    assert coefficients[0, 0, 0].item() == pytest.approx(0.25 * (12 * 20) ** 0.5, rel=1e-5)
    coefficients[0, 0, 0] = 0
    assert coefficients.abs().max() < 1e-5
    y = torch.rand(1, 3, 12, 20)
    assert (idct2(dct2(y)) - y).abs().max() < 1e-5


def test_basis_of_wrong_size_is_refused() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        dct2(torch.rand(1, 8, 8), dct_matrix(16))


def test_mask_starts_at_half_and_stays_in_unit_interval() -> None:
    destructor = FrequencyDestructor(32)
    assert torch.equal(destructor.mask(), torch.full((32, 32), 0.5))
    with torch.no_grad():
        destructor.mask_logits.normal_(0.0, 1e4)
    mask = destructor.mask().detach()
    assert mask.shape == (32, 32)
    assert float(mask.min()) >= 0.0 and float(mask.max()) <= 1.0


def test_destructor_applies_the_mask_in_dct_space() -> None:
    destructor = FrequencyDestructor(16)
    x = torch.rand(2, 3, 16, 16)
    # Mask 0.5 everywhere is a linear transform: the output is exactly half the input.
    assert torch.allclose(destructor(x), 0.5 * x, atol=1e-6)
    with torch.no_grad():
        destructor.mask_logits.fill_(-1e4)
        destructor.mask_logits[0, 0] = 1e4  # keep only DC: every channel becomes its own mean
    out = destructor(x)
    assert torch.allclose(out, x.mean(dim=(2, 3), keepdim=True).expand_as(x), atol=1e-5)


def test_destructor_basis_is_not_saved_and_size_is_checked() -> None:
    destructor = FrequencyDestructor(16)
    assert set(destructor.state_dict()) == {"mask_logits"}
    with pytest.raises(ValueError, match=r"\(B, C, 16, 16\)"):
        destructor(torch.rand(1, 3, 32, 32))
