"""The networks, objective and optimizers of a training run, built on the run's device.

The classifier backbone and the L_con features start from local files named in the config
(`pretrained` records which), never from a download.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ralf.discriminator import Discriminator
from ralf.losses.contrastive import VGG19Features
from ralf.losses.embedding import CenterTracker
from ralf.losses.mobilenet_features import MobileNetV2Features
from ralf.losses.objective import RALFObjective
from ralf.model import RALF
from ralf.core.files import file_sha256
from ralf.pretrained_torchvision import load_backbone_imagenet
from ralf.weights import load_weights
from trainer.config import TrainConfig
from trainer.runtime import Runtime


@dataclass(frozen=True)
class TrainingParts:
    """What training updates, and so what a checkpoint carries (trainer/run_state.py)."""

    model: RALF
    discriminator: Discriminator
    center_tracker: CenterTracker
    opt_gen: torch.optim.Optimizer
    opt_disc: torch.optim.Optimizer
    scaler_gen: torch.amp.GradScaler
    scaler_disc: torch.amp.GradScaler


def build_parts(config: TrainConfig, runtime: Runtime) -> tuple[TrainingParts, RALFObjective, dict[str, str]]:
    """Fresh networks in training mode, their optimizers and loss scalers, the objective, and the
    pretrained sources used ({"classifier": ..., "vgg19": ..., ["con_features": ...]})."""
    device = runtime.device
    network = config.network_config()
    model = RALF(network)
    pretrained = {"classifier": "random-init", "vgg19": "unused"}
    if config.backbone_weights is not None:
        pretrained["classifier"] = load_backbone_imagenet(model, config.backbone_weights)
    if config.init_weights is not None:
        pretrained["classifier"] = pretrained["init"] = load_initial_weights(model, config.init_weights)
    discriminator = Discriminator(network.discriminator, network.image_size)
    vgg: VGG19Features | MobileNetV2Features | None = None
    if config.loss.use_con and config.con_network == "mobilenet_v2":
        assert config.con_weights is not None  # TrainConfig checks it
        vgg = MobileNetV2Features(config.con_weights)
        pretrained["con_features"] = f"mobilenet_v2 {vgg.source}"
    elif config.loss.use_con:
        vgg = VGG19Features(config.vgg19_weights, allow_random=config.allow_random_vgg)
        pretrained["vgg19"] = vgg.source
    objective = RALFObjective(config.loss, network.image_size, vgg)
    model.to(device).train()
    discriminator.to(device).train()
    objective.to(device)
    parts = TrainingParts(
        model=model,
        discriminator=discriminator,
        center_tracker=CenterTracker(network.reconstructor.embedding_dim).to(device),
        opt_gen=torch.optim.Adam(model.parameters(), lr=config.lr, betas=config.betas),
        opt_disc=torch.optim.Adam(discriminator.parameters(), lr=config.disc_lr, betas=config.disc_betas),
        scaler_gen=runtime.grad_scaler(),
        scaler_disc=runtime.grad_scaler(),
    )
    return parts, objective, pretrained


def load_initial_weights(model: RALF, path: Path) -> str:
    """Copy deployable weights (every tensor, the L_emb center included) into `model`, whose network
    configuration must be the same; returns what the metadata records ("weights:<version>:<sha256>")."""
    loaded, metadata = load_weights(path)
    if loaded.config != model.config:
        raise ValueError(
            f"--init-weights {path} holds a different network ({loaded.config.model_dump()} vs the run's "
            f"{model.config.model_dump()}); choose the preset, backbone and image size of those weights"
        )
    model.load_state_dict(loaded.state_dict())
    return f"weights:{metadata.model_version}:{file_sha256(path)}"
