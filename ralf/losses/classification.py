"""Classification loss L_C (eq. 10): binary cross-entropy on the classifier logit, fake = positive."""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor

from ralf.losses.labels import fake_mask, zero_with_graph

BCEReduction = Literal["paper", "mean"]


def classification_loss(logit: Tensor, is_fake: Tensor, reduction: BCEReduction = "paper") -> Tensor:
    """BCE with logits; `logit` is the log-odds of FAKE, shape (B,).

    reduction="paper": eq. (10) as written, a SUM of per-class expectations,
        -E_r[log(1 - y_r)] - E_f[log y_f]  (y = P(fake)); a class absent from the batch adds 0.
        Each class weighs the same whatever the batch's balance; on a balanced batch this is twice "mean".
    reduction="mean": plain mean of per-sample BCE over the batch (the reference's nn.BCELoss).
    """
    if logit.dim() != 1:
        raise ValueError(f"logit must have shape (B,), got {tuple(logit.shape)}")
    fake = fake_mask(is_fake, logit.shape[0])
    per_sample = F.binary_cross_entropy_with_logits(logit, fake.to(logit.dtype), reduction="none")
    if reduction == "mean":
        return per_sample.mean()
    if reduction != "paper":
        raise ValueError(f"unknown BCE reduction {reduction!r}; use 'paper' or 'mean'")
    total = zero_with_graph(per_sample)
    for members in (~fake, fake):
        if bool(members.any()):
            total = total + per_sample[members].mean()
    return total

