"""The random ranges of self-blending (`SelfBlendConfig`), validated."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from trainer.sbi.images import Range


class SelfBlendConfig(BaseModel):
    """Random ranges of the self-blending. Lengths given as fractions are of the image's shorter side."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Blend ratio. SBI draws r from {0.25, 0.5, 0.75, 1, 1, 1}; we use a continuous version with
    # less weight on 1: r = 1 with probability 0.25, else uniform in [0.25, 1). Mean about 0.72, so
    # most fakes are partial (subtle) blends and a quarter paste the source fully.
    ratio_range: Range = Field((0.25, 1.0), description="Uniform range of the blend ratio r")
    ratio_one_prob: float = Field(0.25, ge=0, le=1, description="Probability that r is exactly 1")

    # Mask.
    hull_prob: float = Field(0.75, ge=0, le=1, description="Probability of the landmark hull (else the face ellipse)")
    elastic_strength: float = Field(
        0.03, ge=0, le=0.2, description="Largest elastic displacement of the mask, fraction of the side"
    )
    elastic_grid: int = Field(
        6, ge=2, le=64, description="Control points per side of the smooth random displacement field"
    )
    morph_range: Range = Field(
        (-0.03, 0.03), description="Dilation (> 0) or erosion (< 0) of the mask edge, fraction of the side"
    )
    blur_range: Range = Field(
        (0.01, 0.04), description="Gaussian sigma of the soft mask edge, fraction of the side"
    )

    # Geometry of the source.
    max_shift: float = Field(0.03, ge=0, le=0.25, description="Largest source shift per axis, fraction of the side")
    scale_range: Range = Field((0.95, 1.05), description="Source scale per axis (independent x and y)")

    # Which copy gets the appearance (colour + frequency) augmentation; the other stays unchanged.
    source_augment_prob: float = Field(
        0.5, ge=0, le=1, description="Probability that the source (else the target) gets colour/frequency changes"
    )

    # Colour: each of the three changes is applied with `colour_op_prob`.
    colour_op_prob: float = Field(0.5, ge=0, le=1, description="Probability of each colour change")
    rgb_shift: float = Field(20.0, ge=0, le=255, description="Largest per-channel offset, in 0..255 levels")
    brightness: float = Field(0.1, ge=0, le=1, description="Largest brightness offset, fraction of 255")
    contrast: float = Field(0.1, ge=0, le=1, description="Largest contrast change (factor 1 ± contrast)")
    hue_degrees: float = Field(10.0, ge=0, le=180, description="Largest hue rotation, degrees")
    saturation: float = Field(0.15, ge=0, le=1, description="Largest saturation change (factor 1 ± saturation)")

    # Frequency.
    sharpen_blur_prob: float = Field(
        0.5, ge=0, le=1, description="Probability of sharpening or blurring (half each)"
    )
    blur_sigma_range: Range = Field((0.5, 1.5), description="Gaussian sigma of the blur, pixels")
    sharpen_range: Range = Field((0.3, 1.0), description="Unsharp-mask amount (radius 1 px)")
    resize_prob: float = Field(0.5, ge=0, le=1, description="Probability of a down-and-up resize")
    resize_range: Range = Field((0.5, 0.9), description="Down-scaling factor of the down-and-up resize")

    # JPEG (both classes, after blending; see `jpeg_compress`).
    jpeg_prob: float = Field(0.7, ge=0, le=1, description="Probability of a JPEG round trip")
    jpeg_quality: tuple[int, int] = Field((40, 95), description="JPEG quality range, inclusive")

    @model_validator(mode="after")
    def _check_ranges(self) -> SelfBlendConfig:
        for name in (
            "ratio_range", "morph_range", "blur_range", "scale_range", "blur_sigma_range",
            "sharpen_range", "resize_range", "jpeg_quality",
        ):
            low, high = getattr(self, name)
            if low > high:
                raise ValueError(f"{name}: lower bound {low} above upper bound {high}")
        checks = {
            "ratio_range": 0 < self.ratio_range[0] and self.ratio_range[1] <= 1,
            "blur_range": 0 <= self.blur_range[0] and self.blur_range[1] <= 0.5,
            "morph_range": -0.2 <= self.morph_range[0] and self.morph_range[1] <= 0.2,
            "scale_range": 0.5 <= self.scale_range[0] and self.scale_range[1] <= 2,
            "blur_sigma_range": 0 <= self.blur_sigma_range[0] and self.blur_sigma_range[1] <= 10,
            "sharpen_range": 0 <= self.sharpen_range[0] and self.sharpen_range[1] <= 5,
            "resize_range": 0.05 <= self.resize_range[0] and self.resize_range[1] <= 1,
            "jpeg_quality": 1 <= self.jpeg_quality[0] and self.jpeg_quality[1] <= 100,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"out of range: {', '.join(bad)}")
        return self
