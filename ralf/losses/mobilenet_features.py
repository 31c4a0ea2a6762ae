"""Frozen ImageNet MobileNetV2 features for L_con where VGG19 weights cannot be had.

A documented deviation from eq. (6), which uses VGG19: five stages of torchvision's
`mobilenet_v2().features`, one per resolution like VGG's relu*_1 slices: the outputs of
features[1] (16 ch, S/2), [3] (24 ch, S/4), [6] (32 ch, S/8), [13] (96 ch, S/16) and
[17] (320 ch, S/32). Inverted-residual outputs are linear bottlenecks (no ReLU), so distances are
taken on signed features. Nothing deeper than features[17] is computed.
"""

from __future__ import annotations

from pathlib import Path

import torchvision

from ralf.core.files import file_sha256
from ralf.losses.contrastive import FrozenFeatureSlices
from ralf.pretrained_files import PretrainedError, read_state_dict

MOBILENET_V2_LAYER_NAMES = ("features.1", "features.3", "features.6", "features.13", "features.17")
_SLICE_ENDS = (2, 4, 7, 14, 18)


class MobileNetV2Features(FrozenFeatureSlices):
    """Frozen MobileNetV2 trunk returning five stage outputs of an image in [0, 1]."""

    def __init__(self, weights_path: Path | str) -> None:
        trunk = torchvision.models.mobilenet_v2(weights=None).features[: _SLICE_ENDS[-1]]
        path = Path(weights_path)
        wanted = set(trunk.state_dict())
        state = {
            name: value
            for key, value in read_state_dict(path).items()
            if (name := key.removeprefix("features.")) in wanted and key.startswith("features.")
        }
        missing = sorted(k for k in wanted - state.keys() if not k.endswith("num_batches_tracked"))
        if missing:
            raise PretrainedError(f"{path} lacks MobileNetV2 feature parameters {missing[:4]}")
        trunk.load_state_dict(state, strict=False)
        starts = (0, *_SLICE_ENDS[:-1])
        slices = [trunk[start:end] for start, end in zip(starts, _SLICE_ENDS)]
        super().__init__(slices, f"file:{path.name} sha256:{file_sha256(path)[:12]}")
