"""The L_emb center c (eq. 3) is the mean embedding of REAL samples only."""

from __future__ import annotations

import pytest
import torch

from ralf.losses import CenterTracker


def test_center_uses_real_samples_only() -> None:
    tracker = CenterTracker(2)
    embedding = torch.tensor([[1.0, 2.0], [100.0, 100.0], [3.0, 4.0]])
    tracker.update(embedding, torch.tensor([False, True, False]))
    assert torch.allclose(tracker.compute(), torch.tensor([2.0, 3.0]))
    # The reference's accumulator (whole-batch sum / real count) would give [52, 53] here.
    buggy = embedding.sum(0) / 2
    assert not torch.allclose(tracker.compute(), buggy)
    tracker.update(torch.tensor([[5.0, 6.0], [-50.0, 0.0]]), torch.tensor([0.0, 1.0]))
    assert torch.allclose(tracker.compute(), torch.tensor([3.0, 4.0]))
    assert int(tracker.count) == 3


def test_center_is_detached_and_float32() -> None:
    tracker = CenterTracker(3)
    embedding = torch.randn(4, 3, requires_grad=True)
    tracker.update(embedding * 2, torch.tensor([0, 0, 1, 0]))
    center = tracker.compute()
    assert not center.requires_grad and center.dtype == torch.float32


def test_center_without_reals_is_an_error_and_reset_clears() -> None:
    tracker = CenterTracker(2)
    tracker.update(torch.ones(2, 2), torch.tensor([1, 1]))
    with pytest.raises(RuntimeError, match="no real sample"):
        tracker.compute()
    tracker.update(torch.ones(1, 2), torch.tensor([0]))
    tracker.compute()
    tracker.reset()
    with pytest.raises(RuntimeError):
        tracker.compute()
    with pytest.raises(ValueError):
        tracker.update(torch.ones(1, 3), torch.tensor([0]))


def test_center_state_dict_resumes_exactly() -> None:
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.randn(6, 4, generator=generator), torch.tensor([0, 1, 0, 1, 0, 0])) for _ in range(4)]
    uninterrupted = CenterTracker(4)
    for embedding, is_fake in batches:
        uninterrupted.update(embedding, is_fake)
    first = CenterTracker(4)
    for embedding, is_fake in batches[:2]:
        first.update(embedding, is_fake)
    resumed = CenterTracker(4)
    resumed.load_state_dict(first.state_dict())
    for embedding, is_fake in batches[2:]:
        resumed.update(embedding, is_fake)
    assert torch.equal(resumed.compute(), uninterrupted.compute())
    assert set(first.state_dict()) == {"sum", "count"}
