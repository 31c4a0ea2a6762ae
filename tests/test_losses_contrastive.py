"""L_con (eq. 6) and the frozen, locally loaded VGG19 feature extractor."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ralf.losses import VGG19Features, contrastive_loss


@pytest.fixture(scope="module")
def random_vgg() -> VGG19Features:
    torch.manual_seed(0)
    return VGG19Features(None, allow_random=True)


def test_contrastive_hand_example() -> None:
    # Two layers, sample 0 real, sample 1 fake; features (B, 1, 1, 2).
    rec = [torch.tensor([[[[1.0, 3.0]]], [[[2.0, 2.0]]]]), torch.tensor([[[[0.5, 0.5]]], [[[1.0, 0.0]]]])]
    inp = [torch.zeros(2, 1, 1, 2), torch.zeros(2, 1, 1, 2)]
    is_fake = torch.tensor([0, 1])
    # layer 1: pull mean(1, 3) = 2, push mean(2, 2) = 2 -> 1;  layer 2: pull 0.5, push 0.5 -> 1
    loss = contrastive_loss(rec, inp, is_fake, layer_weights=(0.5, 1.0), eps=1e-7)
    assert loss.item() == pytest.approx(0.5 * 1 + 1.0 * 1, rel=1e-6)


def test_contrastive_pulls_reals_and_pushes_fakes() -> None:
    rec = [torch.tensor([[[[1.0]]], [[[2.0]]]], requires_grad=True)]
    loss = contrastive_loss(rec, [torch.zeros(2, 1, 1, 1)], torch.tensor([0, 1]), layer_weights=(1.0,))
    loss.backward()
    grad = rec[0].grad.flatten()
    assert grad[0] > 0  # descent shrinks the real distance
    assert grad[1] < 0  # descent grows the fake distance


def test_contrastive_is_zero_without_both_classes() -> None:
    rec = [torch.ones(2, 1, 2, 2, requires_grad=True)]
    loss = contrastive_loss(rec, [torch.zeros(2, 1, 2, 2)], torch.tensor([1, 1]), layer_weights=(1.0,))
    assert loss.item() == 0.0 and loss.requires_grad
    with pytest.raises(ValueError, match="one weight per layer"):
        contrastive_loss(rec, rec, torch.tensor([0, 1]), layer_weights=(1.0, 2.0))


def test_random_vgg_layers_and_freezing(random_vgg: VGG19Features) -> None:
    assert random_vgg.source == "random-init"
    features = random_vgg(torch.rand(1, 3, 32, 32))
    assert [tuple(f.shape[1:]) for f in features] == [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 2, 2)]
    assert all(not p.requires_grad for p in random_vgg.parameters())
    random_vgg.train()
    assert not random_vgg.training and not any(m.training for m in random_vgg.modules())
    # Cut after relu5_1 (index 29): 13 convolutions, nothing deeper.
    assert sum(isinstance(m, torch.nn.Conv2d) for m in random_vgg.modules()) == 13
    assert all(f.min() >= 0 for f in features)  # every slice ends on a ReLU


def test_missing_vgg_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="--no-con"):
        VGG19Features(None)
    with pytest.raises(FileNotFoundError, match="vgg19-weights"):
        VGG19Features(tmp_path / "vgg19-dcbb9e9d.pth")


def _trunk_state(vgg: VGG19Features) -> dict[str, torch.Tensor]:
    """The extractor's weights in torchvision's vgg19 key layout (features.<index>.<param>)."""
    # Slicing an nn.Sequential keeps the original indices: "<slice>.<index>.<param>".
    return {f"features.{key.split('.', 1)[1]}": value.clone() for key, value in vgg.slices.state_dict().items()}


def test_vgg_loads_torchvision_and_safetensors_files(random_vgg: VGG19Features, tmp_path: Path) -> None:
    state = _trunk_state(random_vgg)
    state["classifier.0.bias"] = torch.zeros(3)  # torchvision files also hold the head: ignored
    pth = tmp_path / "vgg19.pth"
    torch.save(state, pth)
    plain = tmp_path / "vgg19.safetensors"
    save_file({k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}, str(plain))
    image = torch.rand(1, 3, 16, 16)
    expected = random_vgg(image)
    for path in (pth, plain):
        loaded = VGG19Features(path)
        assert loaded.source.startswith(f"file:{path.name} sha256:") and len(loaded.source.split("sha256:")[1]) == 12
        assert all(torch.equal(a, b) for a, b in zip(loaded(image), expected))


def test_vgg_rejects_wrong_files(tmp_path: Path) -> None:
    wrong_shape = tmp_path / "wrong.safetensors"
    save_file({f"{i}.weight": torch.zeros(1) for i in (0,)}, str(wrong_shape))
    with pytest.raises(ValueError, match="lacks VGG19"):
        VGG19Features(wrong_shape)
    pickled = tmp_path / "pickled.pth"
    torch.save({"features.0.weight": object()}, pickled)
    with pytest.raises(ValueError, match="cannot read"):
        VGG19Features(pickled)
