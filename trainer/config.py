"""Training configuration: one pydantic model, saved with every checkpoint and checked on resume."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ralf.config import Backbone, Pooling, RALFConfig
from ralf.keras_xception import KERAS_CLASSIFIER_SETTINGS, is_keras_file
from ralf.losses.objective import LossConfig
from trainer.degrade import DegradeConfig
from trainer.sbi import SelfBlendConfig

PresetName = Literal["tiny", "lite", "paper"]
# Where the fake class comes from: the dataset's own fakes, self-blended pseudo-fakes made on the fly
# from its reals (SBI), or both.
FakeSource = Literal["data", "sbi", "data+sbi"]
AmpMode = Literal["auto", "none", "bf16", "fp16"]
TrainDevice = Literal["auto", "cpu", "cuda"]

# Fields that only change how a run is observed or scheduled on hardware, not what it computes:
# they may differ between a run and its resumption.
RESUME_MUTABLE_FIELDS = frozenset(
    {"num_workers", "log_every", "checkpoint_every", "keep_checkpoints", "device", "max_minutes", "keep_step_weights"}
)


class TrainConfig(BaseModel):
    """Everything that decides what a training run computes (paper section 4.3 defaults)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    preset: PresetName = "paper"
    backbone: Backbone | None = Field(None, description="Classifier backbone; default: the preset's")
    pool: Pooling = "max"
    image_size: int | None = Field(None, ge=16, description="Override the preset's input size")

    batch_size: int = Field(16, ge=2, description="Per process; half real, half fake")
    steps: int | None = Field(None, ge=1, description="Optimizer steps; exclusive with epochs")
    epochs: int | None = Field(None, ge=1, description="Passes over the larger class; default 100")
    lr: float = Field(1e-4, gt=0, description="Adam, destructor + reconstructor + classifier")
    betas: tuple[float, float] = (0.9, 0.999)
    disc_lr: float = Field(2e-4, gt=0, description="Adam, discriminator (reference: DCGAN setting)")
    disc_betas: tuple[float, float] = (0.5, 0.999)
    loss: LossConfig = LossConfig()
    flip_probability: float = Field(0.5, ge=0, le=1)
    center_update_every: int | None = Field(
        None, ge=1, description="Steps between updates of the L_emb center c; None = once per epoch"
    )
    fakes: FakeSource = "data"
    sbi: SelfBlendConfig = SelfBlendConfig()
    degrade: DegradeConfig | None = Field(
        None, description="Real-footage degradations (shift/scale, down-up resize, H.264, blur, noise, colour) on "
        "both classes of the training batches; None: off"
    )
    patience: int | None = Field(
        None, ge=1, description="Stop after this many validations without a better validation AUC"
    )
    max_minutes: float | None = Field(
        None, gt=0, description="Wall-clock budget of one invocation; then validate, checkpoint and stop"
    )

    val_every: int = Field(1000, ge=1)
    val_fraction: float = Field(0.1, gt=0, lt=1, description="Held-out share of groups when the data has no split")
    log_every: int = Field(50, ge=1)
    checkpoint_every: int = Field(1000, ge=1)
    keep_checkpoints: int = Field(2, ge=1, description="Step checkpoints kept besides 'best'")
    keep_step_weights: bool = Field(
        False, description="Also keep deployable weights of every checkpoint (weights/step-N.safetensors), so that "
        "checkpoints can be chosen by real-video metrics afterwards"
    )
    seed: int = 0
    num_workers: int = Field(2, ge=0)
    device: TrainDevice = "auto"
    amp: AmpMode = "auto"

    vgg19_weights: Path | None = None
    allow_random_vgg: bool = False
    con_network: Literal["vgg19", "mobilenet_v2"] = Field(
        "vgg19", description="L_con features: VGG19 (eq. 6) or frozen ImageNet MobileNetV2 (a documented deviation)"
    )
    con_weights: Path | None = Field(None, description="ImageNet MobileNetV2 file when con_network is mobilenet_v2")
    backbone_weights: Path | None = Field(
        None, description="Local ImageNet file of the classifier backbone (Xception .pth/.keras, torchvision .pth)"
    )
    allow_random_init: bool = False
    init_weights: Path | None = Field(
        None, description="Start from these deployable RALF weights (a fine-tune) instead of ImageNet initialisation"
    )

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        if self.batch_size % 2:
            raise ValueError(f"batch_size must be even (half real, half fake), got {self.batch_size}")
        if self.steps is not None and self.epochs is not None:
            raise ValueError("give either steps or epochs, not both")
        if self.loss.use_con and self.con_network == "mobilenet_v2":
            if self.con_weights is None:
                raise ValueError("L_con on MobileNetV2 features needs --con-weights FILE (torchvision mobilenet_v2 .pth)")
        elif self.loss.use_con and self.vgg19_weights is None and not self.allow_random_vgg:
            raise ValueError(
                "L_con needs ImageNet VGG19 weights: pass --vgg19-weights FILE, switch the term off with "
                "--no-con, or explicitly accept a random frozen extractor with --allow-random-vgg"
            )
        if self.vgg19_weights is not None and self.allow_random_vgg:
            raise ValueError("--vgg19-weights and --allow-random-vgg exclude each other")
        if self.backbone_weights is not None and self.allow_random_init:
            raise ValueError("--backbone-weights and --allow-random-init exclude each other")
        if self.init_weights is not None and self.backbone_weights is not None:
            raise ValueError("--init-weights and --backbone-weights exclude each other (the weights hold the backbone)")
        if self.backbone_weights is None and not self.allow_random_init and self.init_weights is None:
            backbone = self.network_config().classifier.backbone
            raise ValueError(
                f"the {backbone} classifier backbone starts from ImageNet weights (paper 4.3): pass "
                "--backbone-weights FILE, or explicitly train from random initialisation with --allow-random-init"
            )
        return self

    def network_config(self) -> RALFConfig:
        """The network configuration this run trains."""
        classifier: dict[str, object] = {"pool": self.pool}
        if self.backbone is not None:
            classifier["backbone"] = self.backbone
        overrides: dict[str, object] = {"classifier": classifier}
        if self.image_size is not None:
            overrides["image_size"] = self.image_size
        if self.backbone_weights is not None and is_keras_file(self.backbone_weights):
            # Keras ImageNet Xception weights: Keras's BatchNorm epsilon (1e-3), "same" max-pool padding.
            classifier.update(KERAS_CLASSIFIER_SETTINGS)
        return RALFConfig.from_preset(self.preset, **overrides)

    def differences(self, other: "TrainConfig") -> list[str]:
        """Fields (other than the resume-mutable ones) whose values differ."""
        mine, theirs = self.model_dump(mode="json"), other.model_dump(mode="json")
        return sorted(k for k in mine if k not in RESUME_MUTABLE_FIELDS and mine[k] != theirs[k])
