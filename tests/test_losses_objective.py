"""The joint objective (eq. 11-12): composition, ablation switches, α schedule, gradient flow."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from ralf.config import RALFConfig
from ralf.discriminator import Discriminator
from ralf.losses import (
    LossConfig,
    RALFObjective,
    VGG19Features,
    adversarial_loss_from_logits,
    alpha_at,
    band_weights,
    classification_loss,
    contrastive_loss,
    discriminator_loss_from_logits,
    embedding_loss,
    frequency_loss,
    real_l1_loss,
)
from ralf.model import RALF, RALFOutput

SIZE = 16


@pytest.fixture(scope="module")
def vgg() -> VGG19Features:
    torch.manual_seed(0)
    return VGG19Features(None, allow_random=True)


class _LinearDisc(nn.Module):
    """Discriminator stand-in whose logit is a known function of the image."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(2.0))

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return self.scale * img.mean(dim=(1, 2, 3))


class _MustNotRun(nn.Module):
    def forward(self, img: torch.Tensor) -> torch.Tensor:
        raise AssertionError("an inactive term was computed")


def _synthetic_batch() -> tuple[RALFOutput, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(4, 3, SIZE, SIZE, generator=generator)
    out = RALFOutput(
        destroyed=x * 0.5,
        reconstruction=(x + 0.1 * torch.randn(4, 3, SIZE, SIZE, generator=generator)).requires_grad_(),
        embedding=torch.randn(4, 8, generator=generator, requires_grad=True),
        logit=torch.randn(4, generator=generator, requires_grad=True),
    )
    return out, x, torch.tensor([0, 1, 0, 1])


def test_loss_config_defaults_follow_the_paper() -> None:
    cfg = LossConfig()
    assert (cfg.lambda_rec, cfg.lambda_freq, cfg.lambda_adv, cfg.lambda_emb, cfg.lambda_con) == (0.1, 1.0, 0.1, 0.1, 0.1)
    assert (cfg.radius_real, cfg.radius_fake) == (0.05, 1.5)
    assert cfg.con_layer_weights == (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)
    assert cfg.freq_weighting == "weighted" and cfg.freq_distance == "coefficient"
    with pytest.raises(ValidationError, match="radius_real < radius_fake"):
        LossConfig(radius_real=2.0, radius_fake=1.0)
    with pytest.raises(ValidationError):
        LossConfig(lambda_typo=1.0)
    with pytest.raises(ValidationError):
        LossConfig(con_layer_weights=(1.0, 1.0))


def test_alpha_schedule() -> None:
    assert alpha_at(0, 100) == 0.0
    assert alpha_at(25, 100) == pytest.approx(0.25)
    assert alpha_at(50, 100) == pytest.approx(0.5)
    assert alpha_at(100, 100) == 1.0
    assert alpha_at(10_000, 100) == 1.0
    assert alpha_at(0, 0) == 1.0
    with pytest.raises(ValueError):
        alpha_at(-1, 100)


def test_total_combines_terms_as_eq_12(vgg: VGG19Features) -> None:
    cfg = LossConfig(lambda_rec=0.3, lambda_freq=0.7, lambda_adv=0.2, lambda_emb=0.4, lambda_con=0.6)
    objective = RALFObjective(cfg, SIZE, vgg)
    out, x, is_fake = _synthetic_batch()
    disc, center, alpha = _LinearDisc(), torch.full((8,), 0.1), 0.25
    terms = objective.generator_loss(out, x, is_fake, disc, center, alpha)

    rec = out.reconstruction
    l_c = classification_loss(out.logit, is_fake)
    l_1 = real_l1_loss(rec, x, is_fake)
    l_freq = frequency_loss(rec, x, is_fake, band_weights(SIZE))
    l_adv = adversarial_loss_from_logits(disc(rec))
    l_emb = embedding_loss(out.embedding, center, is_fake)
    l_con = contrastive_loss(vgg(rec), vgg(x), is_fake, cfg.con_layer_weights, cfg.con_eps)
    l_r = l_1 + 0.7 * l_freq + 0.2 * l_adv
    expected = l_c + 0.3 * l_r + alpha * 0.4 * l_emb + 0.6 * l_con

    floats = terms.as_floats()
    for name, value in [("classification", l_c), ("l1", l_1), ("frequency", l_freq), ("adversarial", l_adv),
                        ("reconstruction", l_r), ("embedding", l_emb), ("contrastive", l_con), ("total", expected)]:
        assert floats[name] == pytest.approx(value.item(), rel=1e-5), name
        assert value.item() != 0.0, name  # every term is live in this batch
    assert floats["alpha"] == 0.25
    assert terms.total.requires_grad and not terms.l1.requires_grad


def test_switched_off_terms_are_zero_and_not_computed() -> None:
    cfg = LossConfig(freq_weighting="none", use_adv=False, use_emb=False, use_con=False)
    objective = RALFObjective(cfg, SIZE, vgg=None)
    out, x, is_fake = _synthetic_batch()
    terms = objective.generator_loss(out, x, is_fake, _MustNotRun(), torch.zeros(8), alpha=1.0)
    floats = terms.as_floats()
    assert floats["frequency"] == floats["adversarial"] == floats["embedding"] == floats["contrastive"] == 0.0
    expected = classification_loss(out.logit, is_fake) + 0.1 * real_l1_loss(out.reconstruction, x, is_fake)
    assert floats["total"] == pytest.approx(expected.item())
    assert objective.vgg_source is None


def test_contrastive_needs_an_extractor() -> None:
    with pytest.raises(ValueError, match="VGG19Features"):
        RALFObjective(LossConfig(), SIZE, vgg=None)


def test_unweighted_frequency_option_changes_the_term(vgg: VGG19Features) -> None:
    out, x, is_fake = _synthetic_batch()
    values = {}
    for weighting in ("weighted", "unweighted"):
        objective = RALFObjective(LossConfig(freq_weighting=weighting, use_con=False), SIZE)
        terms = objective.generator_loss(out, x, is_fake, _LinearDisc(), torch.zeros(8), 0.0)
        values[weighting] = terms.as_floats()["frequency"]
    unweighted_expected = frequency_loss(out.reconstruction, x, is_fake, torch.ones(SIZE, SIZE)).item()
    assert values["unweighted"] == pytest.approx(unweighted_expected, rel=1e-5)
    assert values["weighted"] != pytest.approx(values["unweighted"], rel=1e-2)


def test_discriminator_loss_uses_reals_and_all_reconstructions() -> None:
    objective = RALFObjective(LossConfig(use_con=False), SIZE)
    out, x, is_fake = _synthetic_batch()
    disc = _LinearDisc()
    loss = objective.discriminator_loss(disc, x, out.reconstruction, is_fake)
    expected = discriminator_loss_from_logits(disc(x[[0, 2]]), disc(out.reconstruction))
    assert loss.item() == pytest.approx(expected.item())
    loss.backward()
    assert disc.scale.grad is not None and disc.scale.grad != 0
    assert out.reconstruction.grad is None  # never reaches the generator


@pytest.fixture(scope="module")
def tiny_step(vgg: VGG19Features) -> tuple[RALF, Discriminator, RALFObjective, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    config = RALFConfig.tiny()
    model, disc = RALF(config), Discriminator(config.discriminator, config.image_size)
    objective = RALFObjective(LossConfig(), config.image_size, vgg)
    x = torch.rand(4, 3, config.image_size, config.image_size)
    return model, disc, objective, x, torch.tensor([0, 1, 0, 1])


def test_every_generator_parameter_gets_gradient_and_discriminator_none(tiny_step) -> None:
    model, disc, objective, x, is_fake = tiny_step
    model.zero_grad(set_to_none=True)
    disc.zero_grad(set_to_none=True)
    out = model.forward_all(x)
    terms = objective.generator_loss(out, x, is_fake, disc, model.center, alpha=1.0)
    assert all(math.isfinite(v) for v in terms.as_floats().values())
    terms.total.backward()
    for part in (model.destructor, model.reconstructor, model.classifier):
        for name, parameter in part.named_parameters():
            if parameter.requires_grad:
                assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    # L_adv passes through the discriminator, yet its weights get no gradient from the generator loss.
    assert all(p.grad is None for p in disc.parameters())
    assert all(p.requires_grad for p in disc.parameters())  # flags restored


def test_classification_loss_gives_discriminator_no_gradient(tiny_step) -> None:
    model, disc, objective, x, is_fake = tiny_step
    disc.zero_grad(set_to_none=True)
    out = model.forward_all(x)
    terms = objective.generator_loss(out, x, is_fake, disc, model.center, alpha=0.0)
    l_c = classification_loss(out.logit, is_fake)
    assert terms.as_floats()["classification"] == pytest.approx(l_c.item())
    l_c.backward()
    assert all(p.grad is None for p in disc.parameters())
