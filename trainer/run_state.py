"""What a training run's checkpoint holds, and how a resume puts it back.

`trainer/checkpoint.py` stores a `TrainingState` (tensors in safetensors, the rest in JSON) without
pickle; this module fills one from the run's networks, optimizers, scalers, centre sums and
progress, and restores them from one, refusing a resume whose config, data or number of
processes differ from the checkpoint's (an exact resume needs all three).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from ralf.losses.embedding import CenterTracker
from trainer import checkpoint as ckpt
from trainer.config import TrainConfig
from trainer.networks import TrainingParts
from trainer.runtime import Runtime, TrainingError


@dataclass(frozen=True)
class RunProgress:
    """Where the run stands: steps done, best validation so far, pretrained sources used."""

    step: int
    best_auc: float | None
    best_step: int | None
    pretrained: dict[str, str]


def tracker_totals(tracker: CenterTracker, runtime: Runtime) -> dict[str, Tensor]:
    """Center-tracker sums over every rank (a collective: all ranks must call it)."""
    totals = {name: value.detach().clone() for name, value in tracker.state_dict().items()}
    runtime.sum_over_ranks(totals.values())
    return totals


def build_training_state(
    parts: TrainingParts,
    progress: RunProgress,
    *,
    tracker: dict[str, Tensor],
    config: TrainConfig,
    fingerprint: str,
    world_size: int,
    epoch_position: tuple[int, int],
) -> ckpt.TrainingState:
    """The checkpoint of the run as it stands; `tracker` from `tracker_totals`."""
    tensors: dict[str, Tensor] = {}
    tensors.update(ckpt.module_tensors("model", parts.model.state_dict()))
    tensors.update(ckpt.module_tensors("discriminator", parts.discriminator.state_dict()))
    tensors.update(ckpt.module_tensors("center_tracker", tracker))
    info: dict[str, Any] = {
        "epoch_position": list(epoch_position),
        "config": config.model_dump(mode="json"),
        "data_fingerprint": fingerprint,
        "world_size": world_size,
        "optimizers": {
            "generator": ckpt.flatten_state_dict("opt_gen", parts.opt_gen.state_dict(), tensors),
            "discriminator": ckpt.flatten_state_dict("opt_disc", parts.opt_disc.state_dict(), tensors),
        },
        "scalers": {"generator": parts.scaler_gen.state_dict(), "discriminator": parts.scaler_disc.state_dict()},
        "best": {"auc": progress.best_auc, "step": progress.best_step},
        "pretrained": progress.pretrained,
    }
    info["rng"] = ckpt.rng_state(tensors)
    return ckpt.TrainingState(step=progress.step, tensors=tensors, info=info)


def restore_training_state(
    parts: TrainingParts,
    state: ckpt.TrainingState,
    *,
    config: TrainConfig,
    fingerprint: str,
    runtime: Runtime,
    pretrained: dict[str, str],
) -> RunProgress:
    """Load `state` into `parts` (and the RNGs); returns the progress it records. `pretrained` is
    kept where the checkpoint records none."""
    info = state.info
    try:
        saved = TrainConfig.model_validate(info["config"])
    except Exception as error:  # pydantic ValidationError or missing key: same message
        raise ckpt.CheckpointError(f"checkpoint config unreadable: {error}") from None
    changed = config.differences(saved)
    if changed:
        raise TrainingError(f"cannot resume: the training config differs from the checkpoint's in {changed}")
    if info.get("data_fingerprint") != fingerprint:
        raise TrainingError("cannot resume: the training/validation data differ from the checkpoint's")
    if info.get("world_size") != runtime.world_size:
        raise TrainingError(
            f"cannot resume: checkpoint written with {info.get('world_size')} processes, now {runtime.world_size}"
        )
    tensors = state.tensors
    try:
        parts.model.load_state_dict(ckpt.module_state("model", tensors))
        parts.discriminator.load_state_dict(ckpt.module_state("discriminator", tensors))
        parts.center_tracker.load_state_dict(ckpt.module_state("center_tracker", tensors))
        if runtime.rank != 0:
            parts.center_tracker.reset()  # the checkpoint holds every rank's sums; rank 0 carries them
        optimizers = info["optimizers"]
        parts.opt_gen.load_state_dict(ckpt.unflatten_state_dict(optimizers["generator"], tensors))
        parts.opt_disc.load_state_dict(ckpt.unflatten_state_dict(optimizers["discriminator"], tensors))
        parts.scaler_gen.load_state_dict(info["scalers"]["generator"])
        parts.scaler_disc.load_state_dict(info["scalers"]["discriminator"])
        ckpt.restore_rng_state(info["rng"], tensors)
    except (KeyError, RuntimeError, ValueError, TypeError) as error:
        raise ckpt.CheckpointError(f"checkpoint does not fit this run: {error}") from None
    return RunProgress(
        step=state.step,
        best_auc=info["best"]["auc"],
        best_step=info["best"]["step"],
        pretrained=info.get("pretrained", pretrained),
    )
