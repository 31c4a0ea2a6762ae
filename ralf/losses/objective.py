"""The joint objective of eq. (11)-(12), every λ exposed, every term switchable for the ablations."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

from ralf.dct import dct_matrix
from ralf.losses.adversarial import adversarial_loss_from_logits, discriminator_loss_from_logits
from ralf.losses.classification import BCEReduction, classification_loss
from ralf.losses.mobilenet_features import MobileNetV2Features
from ralf.losses.contrastive import DEFAULT_LAYER_WEIGHTS, VGG19Features, contrastive_loss
from ralf.losses.embedding import embedding_loss, validate_radii
from ralf.losses.frequency import FrequencyDistance, band_weights, frequency_loss
from ralf.losses.labels import fake_mask, zero_with_graph
from ralf.losses.reconstruction import real_l1_loss
from ralf.losses.shift_consistency import shift_consistency_loss

if TYPE_CHECKING:
    from ralf.model import RALFOutput


class LossConfig(BaseModel):
    """Weights and switches of the training objective (defaults: paper section 4.3)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    lambda_rec: float = Field(0.1, ge=0)  # λ_R on L_R = L1 + λ_freq L_freq + λ_adv L_adv
    lambda_freq: float = Field(1.0, ge=0)
    lambda_adv: float = Field(0.1, ge=0)
    lambda_emb: float = Field(0.1, ge=0)
    lambda_con: float = Field(0.1, ge=0)
    # Not in the paper: L_shift, P(fake) agreeing under a one-pixel move (shift_consistency.py); 0 = off.
    lambda_shift: float = Field(0.0, ge=0)
    # 'none' switches L_freq off (Table 4 row "-").
    freq_weighting: Literal["weighted", "unweighted", "none"] = "weighted"
    freq_distance: FrequencyDistance = "coefficient"
    # Ablation switches: an inactive term is not computed and is reported as 0.
    use_adv: bool = True
    use_emb: bool = True
    use_con: bool = True
    radius_real: float = Field(0.05, ge=0)
    radius_fake: float = Field(1.5, gt=0)
    con_layer_weights: tuple[float, float, float, float, float] = DEFAULT_LAYER_WEIGHTS
    con_eps: float = Field(1e-7, gt=0)
    bce_reduction: BCEReduction = "paper"
    # α of eq. (12) rises linearly from 0 to 1 over this many optimizer steps; None = over the whole
    # run (the trainer passes its total step count, like the reference's epoch / n_epochs).
    alpha_ramp_steps: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _radii_ordered(self) -> "LossConfig":
        validate_radii(self.radius_real, self.radius_fake)
        return self


def alpha_at(step: int, ramp_steps: int) -> float:
    """α = min(step / ramp_steps, 1): 0 at step 0, 1 from step `ramp_steps` on; ramp_steps 0 = always 1."""
    if step < 0 or ramp_steps < 0:
        raise ValueError(f"step and ramp_steps must be >= 0, got {step}, {ramp_steps}")
    if ramp_steps == 0:
        return 1.0
    return min(step / ramp_steps, 1.0)


@dataclass(frozen=True)
class LossTerms:
    """Every term of one generator step. `total` keeps the graph; the others are detached."""

    total: Tensor
    classification: Tensor  # L_C (eq. 10)
    l1: Tensor  # L_1 (eq. 4)
    frequency: Tensor  # L_freq (eq. 5)
    adversarial: Tensor  # L_adv (eq. 8)
    reconstruction: Tensor  # L_R (eq. 11)
    embedding: Tensor  # L_emb (eq. 2), before α and λ_emb
    contrastive: Tensor  # L_con (eq. 6)
    shift: Tensor  # L_shift (not in the paper), before λ_shift
    alpha: float

    def as_floats(self) -> dict[str, float]:
        """All terms as Python floats for logging (one device sync)."""
        names = [f.name for f in fields(self) if f.name != "alpha"]
        values = torch.stack([getattr(self, name).detach().float() for name in names]).tolist()
        return {**dict(zip(names, values)), "alpha": self.alpha}


@contextmanager
def _no_parameter_grad(module: nn.Module) -> Iterator[None]:
    """Build the graph through `module` without making its parameters leaves of it.

    L_adv must train the reconstructor only: the discriminator's weights then get no gradient
    from the generator step at all, whatever the trainer does with its optimizers.
    """
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for parameter, _ in flags:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)


class RALFObjective(nn.Module):
    """Computes L (eq. 12) for the generator side and L_disc (eq. 7) for the discriminator.

    Holds the band-weight matrix W (a buffer, moved with `.to(device)`) and the frozen VGG19 for L_con.
    """

    def __init__(
        self, config: LossConfig, image_size: int, vgg: VGG19Features | MobileNetV2Features | None = None
    ) -> None:
        super().__init__()
        if config.use_con and vgg is None:
            raise ValueError("use_con=True needs a VGG19Features extractor (or set use_con=False)")
        self.config = config
        self.vgg = vgg if config.use_con else None
        freq_on = config.freq_weighting != "none"
        weights = band_weights(image_size, config.freq_weighting) if freq_on else None
        self.register_buffer("freq_weights", weights, persistent=False)
        self.register_buffer("dct_basis", dct_matrix(image_size) if freq_on else None, persistent=False)

    @property
    def vgg_source(self) -> str | None:
        """What L_con's extractor was loaded from, for the weights' metadata (None when L_con is off)."""
        return self.vgg.source if self.vgg is not None else None

    def generator_loss(
        self,
        out: "RALFOutput",
        x: Tensor,
        is_fake: Tensor,
        discriminator: nn.Module,
        center: Tensor,
        alpha: float,
        shifted_logits: tuple[Tensor, Tensor] | None = None,
    ) -> LossTerms:
        """L = L_C + λ_R (L1 + λ_freq L_freq + λ_adv L_adv) + α λ_emb L_emb + λ_con L_con (+ λ_shift L_shift).

        The discriminator is run on x~ for L_adv but receives no gradient from this loss.
        `shifted_logits` (logits of some inputs, logits of the same inputs moved by a pixel) feeds
        L_shift; it is needed when λ_shift > 0.
        """
        cfg = self.config
        fake_mask(is_fake, x.shape[0])  # one clear error for bad labels before any term
        rec = out.reconstruction
        zero = zero_with_graph(rec)

        classification = classification_loss(out.logit, is_fake, cfg.bce_reduction)
        l1 = real_l1_loss(rec, x, is_fake)
        frequency = (
            frequency_loss(rec, x, is_fake, self.freq_weights, cfg.freq_distance, self.dct_basis)
            if self.freq_weights is not None
            else zero
        )
        if cfg.use_adv:
            with _no_parameter_grad(discriminator):
                adversarial = adversarial_loss_from_logits(discriminator(rec))
        else:
            adversarial = zero
        reconstruction = l1 + cfg.lambda_freq * frequency + cfg.lambda_adv * adversarial
        embedding = (
            embedding_loss(out.embedding, center, is_fake, cfg.radius_real, cfg.radius_fake)
            if cfg.use_emb
            else zero
        )
        contrastive = self._contrastive(rec, x, is_fake) if self.vgg is not None else zero
        if cfg.lambda_shift > 0 and shifted_logits is None:
            raise ValueError("lambda_shift > 0 needs the logits of shifted inputs (shifted_logits)")
        shift = shift_consistency_loss(*shifted_logits) if cfg.lambda_shift > 0 and shifted_logits else zero

        total = (
            classification
            + cfg.lambda_rec * reconstruction
            + alpha * cfg.lambda_emb * embedding
            + cfg.lambda_con * contrastive
            + cfg.lambda_shift * shift
        )
        return LossTerms(
            total=total,
            classification=classification.detach(),
            l1=l1.detach(),
            frequency=frequency.detach(),
            adversarial=adversarial.detach(),
            reconstruction=reconstruction.detach(),
            embedding=embedding.detach(),
            contrastive=contrastive.detach(),
            shift=shift.detach(),
            alpha=float(alpha),
        )

    def _contrastive(self, rec: Tensor, x: Tensor, is_fake: Tensor) -> Tensor:
        assert self.vgg is not None
        fake = fake_mask(is_fake, x.shape[0])
        if not (bool(fake.any()) and bool((~fake).any())):
            return zero_with_graph(rec)  # skip two VGG passes for a term that is 0 anyway
        with torch.no_grad():
            features_input = self.vgg(x)
        features_rec = self.vgg(rec)
        cfg = self.config
        return contrastive_loss(features_rec, features_input, is_fake, cfg.con_layer_weights, cfg.con_eps)

    def discriminator_loss(
        self, discriminator: nn.Module, x: Tensor, reconstruction_detached: Tensor, is_fake: Tensor
    ) -> Tensor:
        """Eq. (7): real inputs -> authentic, reconstructions of ALL inputs -> not authentic.

        The reconstruction is detached here too, so this loss never reaches the generator.
        """
        real = ~fake_mask(is_fake, x.shape[0])
        real_logits = discriminator(x[real]) if bool(real.any()) else x.new_zeros(0)
        reconstruction_logits = discriminator(reconstruction_detached.detach())
        return discriminator_loss_from_logits(real_logits, reconstruction_logits)

