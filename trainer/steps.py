"""The two optimisation steps of joint training, each one `nn.Module` so DDP sees its whole graph.

Generator step: destructor + reconstructor + classifier forward and eq. (12) (plus L_shift, with a
second forward of half the batch moved by a pixel, when λ_shift > 0); discriminator step:
eq. (7). The Trainer wraps each with `Runtime.wrap` (DDP under torchrun).
"""

from __future__ import annotations

from torch import Tensor, nn

from ralf.discriminator import Discriminator
from ralf.losses.objective import LossTerms, RALFObjective
from ralf.losses.shift_consistency import random_one_pixel_move, shift_pixels
from ralf.model import RALF, RALFOutput


class GeneratorStep(nn.Module):
    """Model forward + eq. (12) in one `forward`, so DDP sees the whole generator graph.

    The discriminator comes in as an argument, not a submodule: the generator step gives it no
    gradient, and DDP must not wait for one.
    """

    def __init__(self, model: RALF, objective: RALFObjective) -> None:
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(
        self, x: Tensor, is_fake: Tensor, alpha: float, discriminator: nn.Module
    ) -> tuple[LossTerms, RALFOutput]:
        out = self.model.forward_all(x)
        shifted_logits = None
        if self.objective.config.lambda_shift > 0:
            # Every other face of the batch (both classes) once more, moved by one pixel: +~40% of a step.
            dy, dx = random_one_pixel_move()
            shifted_logits = (out.logit[::2], self.model(shift_pixels(x[::2], dy, dx)))
        terms = self.objective.generator_loss(
            out, x, is_fake, discriminator, self.model.center, alpha, shifted_logits=shifted_logits
        )
        return terms, out


class DiscriminatorStep(nn.Module):
    """Eq. (7) in one `forward` (two discriminator passes inside), for the same DDP reason."""

    def __init__(self, discriminator: Discriminator, objective: RALFObjective) -> None:
        super().__init__()
        self.discriminator = discriminator
        # Held outside the module tree: its VGG and buffers belong to the generator step.
        self._objective = [objective]

    def forward(self, x: Tensor, reconstruction: Tensor, is_fake: Tensor) -> Tensor:
        return self._objective[0].discriminator_loss(self.discriminator, x, reconstruction, is_fake)
