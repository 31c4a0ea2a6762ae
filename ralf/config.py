"""Model configuration: one pydantic model, two presets, every size derived from it."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Backbone = Literal["xception", "resnet18", "resnet50", "mobilenet_v2"]
Pooling = Literal["max", "avg"]


class ReconstructorConfig(BaseModel):
    """MIMO-UNet sizes (Cho et al. 2021): channels at full, 1/2 and 1/4 scale are base, 2*base, 4*base."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    base_channels: int = Field(32, ge=2)
    num_res_blocks: int = Field(8, ge=1)

    @property
    def embedding_dim(self) -> int:
        """Width of the deepest encoder output, globally pooled into the L_emb embedding."""
        return 4 * self.base_channels


class ClassifierConfig(BaseModel):
    """Classifier C(|x - x~|, |x - x^|) of eq. (9)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    backbone: Backbone = "xception"
    pool: Pooling = "max"
    # Multiplies every Xception / MobileNetV2 width (1.0 = the ImageNet network; ResNets ignore it).
    width: float = Field(1.0, gt=0.0, le=1.0)
    # Xception's middle flow repeats this many blocks (8 in Chollet's network).
    middle_blocks: int = Field(8, ge=1)
    # Destruction-guided spatial attention (Fig. 4 lower branch); off = plain backbone on |x - x~|.
    destruction_guidance: bool = True
    attention_kernel: int = Field(7, ge=1)
    # Xception only. BatchNorm epsilon of every BN: torch's 1e-5 (Cadene/timm ImageNet weights), or
    # Keras's 1e-3 when the backbone starts from Keras ImageNet weights (ralf.keras_xception), whose
    # BN statistics were learned with it; saved with the RALF weights so they reload identically.
    batch_norm_eps: float = Field(1e-5, gt=0.0)
    # Xception only. Padding of the stride-2 3x3 max pools: "symmetric" (torch, padding=1 on every
    # side) or "same" (TF/Keras padding="same": on even sizes one extra row/column at the end
    # only), which Keras ImageNet weights need to reproduce Keras's features.
    max_pool_padding: Literal["symmetric", "same"] = "symmetric"


class DiscriminatorConfig(BaseModel):
    """DCGAN discriminator: 4x4 stride-2 convs doubling from base_channels up to max_channels."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    base_channels: int = Field(8, ge=1)
    max_channels: int = Field(256, ge=1)


class RALFConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    preset: str = "custom"
    image_size: int = Field(256, ge=16)
    in_channels: int = 3
    reconstructor: ReconstructorConfig = ReconstructorConfig()
    classifier: ClassifierConfig = ClassifierConfig()
    discriminator: DiscriminatorConfig = DiscriminatorConfig()

    @classmethod
    def paper(cls, **overrides: object) -> "RALFConfig":
        """256x256 faces, MIMO-UNet 32/64/128 with 8 blocks, full Xception (paper section 4.3)."""
        return cls.model_validate(_deep_merge({"preset": "paper"}, overrides))

    @classmethod
    def tiny(cls, **overrides: object) -> "RALFConfig":
        """Small input and widths so CPU tests run in seconds; same graph topology as `paper`."""
        base = {
            "preset": "tiny",
            "image_size": 64,
            "reconstructor": {"base_channels": 8, "num_res_blocks": 1},
            "classifier": {"width": 0.125, "middle_blocks": 1},
            "discriminator": {"base_channels": 8, "max_channels": 64},
        }
        return cls.model_validate(_deep_merge(base, overrides))

    @classmethod
    def lite(cls, **overrides: object) -> "RALFConfig":
        """CPU-sized RALF: 128x128 faces, MIMO-UNet 8/16/32 with 2 blocks, ImageNet MobileNetV2
        classifier. Same topology and joint loss as `paper`; trains and serves on a 2-core CPU
        (the reconstructor dominates the cost: base 16 took 1.5x the time per training image)."""
        base = {
            "preset": "lite",
            "image_size": 128,
            "reconstructor": {"base_channels": 8, "num_res_blocks": 2},
            "classifier": {"backbone": "mobilenet_v2"},
            "discriminator": {"base_channels": 16, "max_channels": 128},
        }
        return cls.model_validate(_deep_merge(base, overrides))

    @classmethod
    def from_preset(cls, name: str, **overrides: object) -> "RALFConfig":
        presets = {"paper": cls.paper, "lite": cls.lite, "tiny": cls.tiny}
        if name not in presets:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(presets)}")
        return presets[name](**overrides)


def _deep_merge(base: dict, overrides: dict) -> dict:
    """Overrides win; nested dicts merge so `tiny(classifier={"pool": "avg"})` keeps tiny widths."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, BaseModel):
            value = value.model_dump()
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged
