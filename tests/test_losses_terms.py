"""Each loss of paper section 3 against a small example worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from ralf.dct import idct2
from ralf.losses import (
    adversarial_loss_from_logits,
    band_weights,
    classification_loss,
    discriminator_loss_from_logits,
    embedding_loss,
    frequency_loss,
    real_l1_loss,
)

LN2 = math.log(2.0)


def test_l1_averages_real_samples_only() -> None:
    x = torch.zeros(3, 1, 1, 2)
    rec = torch.tensor([[[[0.5, -0.25]]], [[[10.0, 10.0]]], [[[0.0, 1.0]]]], requires_grad=True)
    is_fake = torch.tensor([False, True, False])
    loss = real_l1_loss(rec, x, is_fake)
    # |0.5| + |-0.25| + |0| + |1| over the 4 real elements; the fake sample's 10s are ignored.
    assert loss.item() == pytest.approx(1.75 / 4)
    loss.backward()
    assert torch.all(rec.grad[1] == 0) and torch.all(rec.grad[0] != 0)


def test_l1_without_reals_is_zero_on_the_graph() -> None:
    rec = torch.full((2, 3, 4, 4), float("nan"), requires_grad=True)
    loss = real_l1_loss(rec, torch.zeros(2, 3, 4, 4), torch.tensor([1.0, 1.0]))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.all(rec.grad == 0)


def test_bad_labels_are_refused() -> None:
    x = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ValueError, match="shape"):
        real_l1_loss(x, x, torch.tensor([0, 1, 0]))
    with pytest.raises(ValueError, match="only 0"):
        real_l1_loss(x, x, torch.tensor([0.0, 0.5]))


def test_band_weights_reference_grid() -> None:
    w = band_weights(256, "weighted")
    assert w.shape == (256, 256)
    # (i, j) -> expected weight, with i + j either side of each band edge 1, 8, 128, 320.
    expected = {
        (0, 0): 1e-4, (0, 1): 1e-2, (3, 4): 1e-2, (4, 4): 1.0, (127, 0): 1.0,
        (64, 64): 10.0, (160, 159): 10.0, (160, 160): 100.0, (255, 255): 100.0,
    }
    for (i, j), value in expected.items():
        assert w[i, j].item() == pytest.approx(value), (i, j)
    assert torch.equal(w, w.T)


def test_band_weights_scale_edges_with_size() -> None:
    w = band_weights(64, "weighted")  # edges 0.25, 2, 32, 80
    expected = {(0, 0): 1e-4, (0, 1): 1e-2, (1, 0): 1e-2, (1, 1): 1.0, (15, 16): 1.0,
                (16, 16): 10.0, (40, 39): 10.0, (40, 40): 100.0}
    for (i, j), value in expected.items():
        assert w[i, j].item() == pytest.approx(value), (i, j)
    assert torch.equal(band_weights(64, "unweighted"), torch.ones(64, 64))
    with pytest.raises(ValueError):
        band_weights(64, "none")  # type: ignore[arg-type]


def test_frequency_loss_coefficient_hand_example() -> None:
    # Orthonormal 2x2 DCT of [[1, 0], [0, 0]] is 0.5 everywhere.
    x = torch.zeros(2, 1, 2, 2)
    rec = torch.zeros(2, 1, 2, 2)
    rec[0, 0, 0, 0] = 1.0
    rec[1] = 7.0  # fake sample: ignored
    weights = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    loss = frequency_loss(rec, x, torch.tensor([0, 1]), weights)
    assert loss.item() == pytest.approx(0.5 * (1 + 2 + 3 + 4) / 4)


def test_frequency_loss_magnitude_ignores_sign() -> None:
    # DCT([[1,0],[0,0]]) = [[.5,.5],[.5,.5]];  DCT([[0,1],[0,0]]) = [[.5,-.5],[.5,-.5]].
    x = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    rec = torch.tensor([[[[0.0, 1.0], [0.0, 0.0]]]])
    ones = torch.ones(2, 2)
    real = torch.tensor([False])
    assert frequency_loss(rec, x, real, ones, "coefficient").item() == pytest.approx(2 * 1.0 / 4)
    assert frequency_loss(rec, x, real, ones, "magnitude").item() == pytest.approx(0.0, abs=1e-7)


def test_weighted_vs_unweighted_frequency_loss() -> None:
    size = 16  # edges 1/16, 1/2, 8, 20: DC gets 1e-4, i + j = 30 gets 100
    # float64: float32 round-off in the other coefficients, weighted up to 100, would blur the ratios.
    x = torch.rand(1, 3, size, size, dtype=torch.float64)
    real = torch.tensor([0])
    spectrum = torch.zeros_like(x)
    spectrum[..., 0, 0] = 2.0
    low = x + idct2(spectrum)  # a brightness offset: DC coefficient only
    spectrum = torch.zeros_like(x)
    spectrum[..., 15, 15] = 2.0
    high = x + idct2(spectrum)  # finest checker-like pattern: highest coefficient only
    weighted, unweighted = band_weights(size, "weighted"), band_weights(size, "unweighted")
    elements = 3 * size * size
    assert frequency_loss(low, x, real, unweighted).item() == pytest.approx(3 * 2.0 / elements, rel=1e-4)
    assert frequency_loss(low, x, real, weighted).item() == pytest.approx(1e-4 * 3 * 2.0 / elements, rel=1e-3)
    assert frequency_loss(high, x, real, weighted).item() == pytest.approx(100 * 3 * 2.0 / elements, rel=1e-3)


def test_discriminator_and_adversarial_losses() -> None:
    real_logits = torch.tensor([0.0])
    rec_logits = torch.tensor([0.0, math.log(3.0)])  # Disc = 1/2 and 3/4
    # -log(1/2) + mean(-log(1 - 1/2), -log(1 - 3/4)) = ln2 + (ln2 + ln4) / 2
    assert discriminator_loss_from_logits(real_logits, rec_logits).item() == pytest.approx(2.5 * LN2)
    assert discriminator_loss_from_logits(torch.zeros(0), rec_logits).item() == pytest.approx(1.5 * LN2)
    # mean(-log(1/2), -log(3/4))
    assert adversarial_loss_from_logits(rec_logits).item() == pytest.approx((LN2 + math.log(4 / 3)) / 2)


def test_adversarial_losses_are_stable_for_extreme_logits() -> None:
    logits = torch.tensor([-200.0, 200.0])
    assert adversarial_loss_from_logits(logits).item() == pytest.approx(100.0)
    assert math.isfinite(discriminator_loss_from_logits(logits, logits).item())


def test_classification_loss_paper_and_mean() -> None:
    logit = torch.tensor([0.0, math.log(3.0), math.log(3.0)])  # P(fake) = 1/2, 3/4, 3/4
    is_fake = torch.tensor([0.0, 0.0, 1.0])
    per_sample = [LN2, math.log(4.0), math.log(4 / 3)]  # -log(1-p) for reals, -log(p) for the fake
    paper = (per_sample[0] + per_sample[1]) / 2 + per_sample[2]
    assert classification_loss(logit, is_fake, "paper").item() == pytest.approx(paper)
    assert classification_loss(logit, is_fake, "mean").item() == pytest.approx(sum(per_sample) / 3)
    only_reals = torch.tensor([False, False, False])
    assert classification_loss(logit, only_reals).item() == pytest.approx((LN2 + 2 * math.log(4.0)) / 3)
    with pytest.raises(ValueError):
        classification_loss(logit, is_fake, "sum")  # type: ignore[arg-type]


def test_embedding_loss_hand_example() -> None:
    center = torch.tensor([1.0, 1.0])
    offsets = torch.tensor([[3.0, 4.0], [0.0, 0.01], [0.6, 0.8], [3.0, 0.0]])  # distances 5, 0.01, 1, 3
    embedding = (center + offsets).requires_grad_()
    is_fake = torch.tensor([0, 0, 1, 1])
    loss = embedding_loss(embedding, center, is_fake, radius_real=0.05, radius_fake=1.5)
    # reals: mean(5 - 0.05, 0) = 2.475; fakes: mean(1.5 - 1, 0) = 0.25
    assert loss.item() == pytest.approx(2.725)
    loss.backward()
    # Only the real outside r_r and the fake inside r_f are moved.
    assert embedding.grad[0].abs().sum() > 0 and embedding.grad[2].abs().sum() > 0
    assert torch.all(embedding.grad[1] == 0) and torch.all(embedding.grad[3] == 0)
    only_fakes = embedding_loss(embedding[2:], center, torch.tensor([1, 1]))
    assert only_fakes.item() == pytest.approx(0.25)


def test_embedding_loss_requires_ordered_radii() -> None:
    with pytest.raises(ValueError, match="radius_real < radius_fake"):
        embedding_loss(torch.zeros(1, 2), torch.zeros(2), torch.tensor([0]), radius_real=2.0, radius_fake=1.5)
