"""Contrastive perceptual loss L_con (eq. 6) over frozen VGG19 features.

Layers: relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 of torchvision's `vgg19().features`, the slicing
of AECR-Net (Wu et al. 2021), which the paper cites for this loss. The authors' code slices the first
five feature blocks at a shallower depth; we follow the cited method so that the L = 5 layers span
every VGG stage. The network is cut after relu5_1: deeper layers are never computed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn

from ralf.core.files import file_sha256
from ralf.losses.labels import fake_mask, zero_with_graph
from ralf.pretrained_files import PretrainedError, read_state_dict

VGG19_LAYER_NAMES = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
# Exclusive end index of each slice in vgg19().features: ReLU modules at 1, 6, 11, 20, 29.
_SLICE_ENDS = (2, 7, 12, 21, 30)
DEFAULT_LAYER_WEIGHTS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MISSING_WEIGHTS_HELP = (
    "L_con needs ImageNet VGG19 weights from a local file, and nothing is downloaded. Provide torchvision's "
    "vgg19-dcbb9e9d.pth (or a .safetensors with the same keys) with `ralf-cli train --vgg19-weights PATH`, "
    "switch L_con off (--no-con / use_con=False), or explicitly accept a randomly "
    "initialised frozen extractor (allow_random=True / --allow-random-vgg), which is only useful for tests."
)


class FrozenFeatureSlices(nn.Module):
    """A frozen ImageNet trunk cut into consecutive slices; `forward` returns each slice's output for an
    image in [0, 1] (ImageNet-normalised first). Always in eval mode, whatever the caller's mode."""

    def __init__(self, slices: list[nn.Module], source: str) -> None:
        super().__init__()
        self.source = source
        self.slices = nn.ModuleList(slices)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "FrozenFeatureSlices":
        return super().train(False)

    def forward(self, images: Tensor) -> list[Tensor]:
        h = (images - self.mean) / self.std
        features = []
        for block in self.slices:
            h = block(h)
            features.append(h)
        return features


class VGG19Features(FrozenFeatureSlices):
    """Frozen VGG19 trunk returning the five relu*_1 activations of an image in [0, 1].

    `source` records what was loaded, for the weights' metadata:
    "file:<name> sha256:<first 12 hex digits>" or "random-init".
    """

    def __init__(self, weights_path: Path | str | None = None, allow_random: bool = False) -> None:
        trunk = _vgg19_trunk(_SLICE_ENDS[-1])
        if weights_path is not None:
            path = Path(weights_path)
            state = _read_vgg_state_dict(path, set(trunk.state_dict()))
            try:
                trunk.load_state_dict(state)
            except RuntimeError as error:  # wrong shapes: say which file, not a bare traceback
                raise PretrainedError(f"{path} does not hold VGG19 feature weights: {error}") from None
            source = f"file:{path.name} sha256:{file_sha256(path)[:12]}"
        elif allow_random:
            source = "random-init"
        else:
            raise FileNotFoundError(f"no VGG19 weights file given. {MISSING_WEIGHTS_HELP}")
        starts = (0, *_SLICE_ENDS[:-1])
        super().__init__([trunk[start:end] for start, end in zip(starts, _SLICE_ENDS)], source)


def _vgg19_trunk(num_layers: int) -> nn.Sequential:
    """The first `num_layers` modules of torchvision's vgg19().features, randomly initialised.

    Built on the meta device first so the 120M-parameter classifier head is never allocated, then
    initialised as torchvision initialises VGG convolutions (Kaiming normal, fan_out; zero bias).
    """
    with torch.device("meta"):
        trunk = torchvision.models.vgg19(weights=None).features[:num_layers]
    trunk = trunk.to_empty(device="cpu")
    for module in trunk:
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.ReLU):
            module.inplace = False  # captured activations must not be overwritten
    return trunk


def _read_vgg_state_dict(path: Path, expected: set[str]) -> dict[str, Tensor]:
    """Trunk parameters from a torchvision-format VGG19 state dict ('features.' prefix optional)."""
    if not path.is_file():
        raise FileNotFoundError(f"VGG19 weights file not found: {path}. {MISSING_WEIGHTS_HELP}")
    raw = read_state_dict(path)
    # Keep only the trunk up to relu5_1; the classifier head and deeper convs are not used.
    state = {name: value for key, value in raw.items() if (name := key.removeprefix("features.")) in expected}
    missing = sorted(expected - state.keys())
    if missing:
        more = "..." if len(missing) > 4 else ""
        raise PretrainedError(f"{path} lacks VGG19 feature parameters {missing[:4]}{more}")
    return state


def contrastive_loss(
    features_reconstruction: Sequence[Tensor],
    features_input: Sequence[Tensor],
    is_fake: Tensor,
    layer_weights: Sequence[float] = DEFAULT_LAYER_WEIGHTS,
    eps: float = 1e-7,
) -> Tensor:
    """Eq. (6): sum_i w_i * |phi_i(x~_r) - phi_i(x_r)|_1 / (|phi_i(x~_f) - phi_i(x_f)|_1 + eps).

    The L1 distances are means over the class's samples and feature elements (AECR-Net's L1Loss).
    Real reconstructions are pulled towards their inputs, fake reconstructions pushed away (gradient
    flows through numerator and denominator). A batch without reals or without fakes gives 0: the
    ratio is undefined without both.
    """
    if not (len(features_reconstruction) == len(features_input) == len(layer_weights)):
        raise ValueError(
            f"need one weight per layer: {len(layer_weights)} weights, "
            f"{len(features_reconstruction)} and {len(features_input)} feature maps"
        )
    fake = fake_mask(is_fake, features_input[0].shape[0])
    real = ~fake
    loss = zero_with_graph(features_reconstruction[0])
    if not (bool(real.any()) and bool(fake.any())):
        return loss
    for weight, phi_rec, phi_in in zip(layer_weights, features_reconstruction, features_input):
        pull = (phi_rec[real] - phi_in[real]).abs().mean()
        push = (phi_rec[fake] - phi_in[fake]).abs().mean()
        loss = loss + weight * pull / (push + eps)
    return loss
