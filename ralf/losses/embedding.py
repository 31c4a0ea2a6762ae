"""Embedding (metric-learning) loss L_emb (eq. 2) and the real-sample center c (eq. 3)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ralf.losses.labels import fake_mask, zero_with_graph


def validate_radii(radius_real: float, radius_fake: float) -> None:
    if not 0.0 <= radius_real < radius_fake:
        raise ValueError(f"need 0 <= radius_real < radius_fake, got r_r={radius_real}, r_f={radius_fake}")


def embedding_loss(
    embedding: Tensor,
    center: Tensor,
    is_fake: Tensor,
    radius_real: float = 0.05,
    radius_fake: float = 1.5,
) -> Tensor:
    """E_r max(||e_r - c||_2 - r_r, 0) + E_f max(r_f - ||e_f - c||_2, 0).

    Reals are pulled inside the sphere of radius r_r around c, fakes pushed outside radius r_f.
    Each expectation is a mean over that class's samples in the batch; an absent class adds 0.
    """
    validate_radii(radius_real, radius_fake)
    if embedding.dim() != 2 or center.shape != embedding.shape[1:]:
        raise ValueError(
            f"embedding (B, D) and center (D,) expected, got {tuple(embedding.shape)} and {tuple(center.shape)}"
        )
    fake = fake_mask(is_fake, embedding.shape[0])
    distance = torch.linalg.vector_norm(embedding - center, dim=1)
    loss = zero_with_graph(distance)
    real = ~fake
    if bool(real.any()):
        loss = loss + (distance[real] - radius_real).clamp_min(0).mean()
    if bool(fake.any()):
        loss = loss + (radius_fake - distance[fake]).clamp_min(0).mean()
    return loss


class CenterTracker(nn.Module):
    """Running mean of REAL embeddings for eq. (3), c <- E_r[R_en(x^_r)].

    Only real samples enter both the sum and the count (the reference summed the whole batch while
    dividing by the real count). Embeddings are detached: c is a statistic, not a path for gradients.
    Sums are float64 so a long epoch loses no precision; `state_dict()` holds `sum` and `count`, so a
    resumed run continues exactly. Move it to the training device with `.to(device)`.
    """

    def __init__(self, embedding_dim: int) -> None:
        super().__init__()
        if embedding_dim < 1:
            raise ValueError(f"embedding_dim must be positive, got {embedding_dim}")
        self.embedding_dim = embedding_dim
        self.register_buffer("sum", torch.zeros(embedding_dim, dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))

    @torch.no_grad()
    def update(self, embedding: Tensor, is_fake: Tensor) -> None:
        if embedding.dim() != 2 or embedding.shape[1] != self.embedding_dim:
            expected = f"(B, {self.embedding_dim})"
            raise ValueError(f"embedding must have shape {expected}, got {tuple(embedding.shape)}")
        real = ~fake_mask(is_fake, embedding.shape[0])
        real_embeddings = embedding.detach()[real].to(device=self.sum.device, dtype=torch.float64)
        self.sum += real_embeddings.sum(dim=0)
        self.count += real_embeddings.shape[0]

    def compute(self) -> Tensor:
        """Mean real embedding (float32, on the tracker's device)."""
        if int(self.count) == 0:
            raise RuntimeError("CenterTracker has seen no real sample; cannot compute the center c")
        return (self.sum / self.count).to(torch.float32)

    def reset(self) -> None:
        self.sum.zero_()
        self.count.zero_()
