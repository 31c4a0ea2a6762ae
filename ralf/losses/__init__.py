"""RALF training losses (paper section 3), one file per loss; `objective.py` combines them (eq. 11-12)."""

from ralf.losses.adversarial import adversarial_loss_from_logits, discriminator_loss_from_logits
from ralf.losses.classification import classification_loss
from ralf.losses.contrastive import VGG19Features, contrastive_loss
from ralf.losses.embedding import CenterTracker, embedding_loss
from ralf.losses.frequency import band_weights, frequency_loss
from ralf.losses.objective import LossConfig, LossTerms, RALFObjective, alpha_at
from ralf.losses.reconstruction import real_l1_loss
from ralf.losses.shift_consistency import shift_consistency_loss

__all__ = [
    "CenterTracker",
    "LossConfig",
    "LossTerms",
    "RALFObjective",
    "VGG19Features",
    "adversarial_loss_from_logits",
    "alpha_at",
    "band_weights",
    "classification_loss",
    "contrastive_loss",
    "discriminator_loss_from_logits",
    "embedding_loss",
    "frequency_loss",
    "real_l1_loss",
    "shift_consistency_loss",
]
