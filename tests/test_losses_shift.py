"""L_shift (not in the paper): P(fake) agreeing under a one-pixel move; the move itself, the loss, its
place in the objective and in the trainer's generator step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ralf.config import RALFConfig
from ralf.discriminator import Discriminator
from ralf.losses import LossConfig, RALFObjective
from ralf.losses.shift_consistency import (
    ONE_PIXEL_MOVES,
    random_one_pixel_move,
    shift_consistency_loss,
    shift_pixels,
)
from ralf.model import RALF
from trainer.steps import GeneratorStep


def test_shift_moves_content_and_repeats_the_border() -> None:
    image = torch.arange(16.0).reshape(1, 1, 4, 4)
    right = shift_pixels(image, 0, 1)[0, 0]
    assert torch.equal(right[:, 1:], image[0, 0, :, :3])  # content moved one column right
    assert torch.equal(right[:, 0], image[0, 0, :, 0])  # uncovered column repeats the border
    up = shift_pixels(image, -1, 0)[0, 0]
    assert torch.equal(up[:3], image[0, 0, 1:]) and torch.equal(up[3], image[0, 0, 3])
    diagonal = shift_pixels(image, 1, -1)
    assert diagonal.shape == image.shape


def test_shift_matches_the_benchmarks_numpy_shift() -> None:
    """The training move is the move benchmarks/pixel_shift.py measures (np.pad 'edge')."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (6, 5, 3)).astype(np.float32)
    for dy, dx in ONE_PIXEL_MOVES:
        padded = np.pad(image, ((abs(dy), abs(dy)), (abs(dx), abs(dx)), (0, 0)), mode="edge")
        top, left = abs(dy) - dy, abs(dx) - dx
        expected = padded[top : top + 6, left : left + 5]
        moved = shift_pixels(torch.from_numpy(image).permute(2, 0, 1)[None], dy, dx)[0].permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(moved, expected)


def test_moves_are_the_eight_neighbours_and_drawn_from_the_generator() -> None:
    assert len(ONE_PIXEL_MOVES) == 8 and (0, 0) not in ONE_PIXEL_MOVES
    assert all(max(abs(dy), abs(dx)) == 1 for dy, dx in ONE_PIXEL_MOVES)
    draws = [random_one_pixel_move(torch.Generator().manual_seed(s)) for s in range(64)]
    assert len(set(draws)) > 4
    assert draws == [random_one_pixel_move(torch.Generator().manual_seed(s)) for s in range(64)]
    with pytest.raises(ValueError, match="does not fit"):
        shift_pixels(torch.zeros(1, 1, 1, 1), 1, 0)


def test_loss_is_the_squared_probability_gap() -> None:
    logit = torch.tensor([0.0, 2.0, -3.0], requires_grad=True)
    assert shift_consistency_loss(logit, logit.detach().clone()).item() == 0.0
    shifted = torch.tensor([1.0, 2.0, 3.0])
    gap = torch.sigmoid(logit.detach()) - torch.sigmoid(shifted)
    loss = shift_consistency_loss(logit, shifted)
    assert loss.item() == pytest.approx(gap.pow(2).mean().item())
    loss.backward()
    assert logit.grad is not None and logit.grad[1] == 0 and logit.grad[0] != 0
    with pytest.raises(ValueError, match="do not pair up"):
        shift_consistency_loss(torch.zeros(3), torch.zeros(2))


TinyBatch = tuple[RALFConfig, RALF, Discriminator, torch.Tensor, torch.Tensor]


@pytest.fixture
def tiny_batch() -> TinyBatch:
    config = RALFConfig.tiny()
    torch.manual_seed(0)
    model, disc = RALF(config), Discriminator(config.discriminator, config.image_size)
    return config, model, disc, torch.rand(4, 3, config.image_size, config.image_size), torch.tensor([0, 1, 0, 1])


def test_objective_adds_lambda_shift_times_the_term(tiny_batch: TinyBatch) -> None:
    config, model, disc, x, is_fake = tiny_batch
    out = model.forward_all(x)
    pair = (out.logit[::2], out.logit[::2].detach() + 1.0)
    off = RALFObjective(LossConfig(use_con=False), config.image_size)
    on = RALFObjective(LossConfig(use_con=False, lambda_shift=2.0), config.image_size)
    base = off.generator_loss(out, x, is_fake, disc, model.center, 1.0)
    with_shift = on.generator_loss(out, x, is_fake, disc, model.center, 1.0, shifted_logits=pair)
    assert base.as_floats()["shift"] == 0.0
    term = shift_consistency_loss(*pair).item()
    assert term > 0 and with_shift.as_floats()["shift"] == pytest.approx(term)
    assert with_shift.total.item() == pytest.approx(base.total.item() + 2.0 * term, rel=1e-5)
    with pytest.raises(ValueError, match="shifted_logits"):
        on.generator_loss(out, x, is_fake, disc, model.center, 1.0)


def test_generator_step_runs_the_shifted_forward_only_when_asked(tiny_batch: TinyBatch) -> None:
    config, model, disc, x, is_fake = tiny_batch
    calls: list[int] = []
    hook = model.classifier.register_forward_hook(lambda module, args, output: calls.append(output.shape[0]))
    try:
        off = GeneratorStep(model, RALFObjective(LossConfig(use_con=False), config.image_size))
        terms, _ = off(x, is_fake, 1.0, disc)
        assert calls == [4] and terms.as_floats()["shift"] == 0.0
        calls.clear()
        on = GeneratorStep(model, RALFObjective(LossConfig(use_con=False, lambda_shift=1.0), config.image_size))
        terms, _ = on(x, is_fake, 1.0, disc)
        assert calls == [4, 2]  # every other face once more, moved
        assert terms.as_floats()["shift"] > 0
        model.zero_grad(set_to_none=True)
        terms.total.backward()
        assert all(p.grad is not None for p in model.classifier.parameters() if p.requires_grad)
    finally:
        hook.remove()
