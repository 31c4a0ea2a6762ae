"""What a training run trains and validates on: the crop records of its folders, split, checked,
fingerprinted, with the batch plan and the crop geometry the weights will record."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ralf.core.metadata import CropGeometry
from trainer.config import TrainConfig
from trainer.data import (
    BalancedBatchPlan,
    CropRecord,
    FaceCropDataset,
    ensure_validation,
    load_crop_records,
    require_both_classes,
    select_split,
    with_fake_source,
)
from trainer.prepare import read_prepare_options
from trainer.runtime import Runtime, TrainingError
from trainer.degrade import DegradeConfig
from trainer.sbi import SelfBlendConfig


@dataclass(frozen=True)
class RunData:
    train: list[CropRecord]
    val: list[CropRecord]
    crop: CropGeometry
    fingerprint: str  # a resume on other data is refused (trainer/run_state.py)
    plan: BalancedBatchPlan
    image_size: int
    self_blend: SelfBlendConfig | None
    seed: int
    degrade: DegradeConfig | None = None  # training batches only; validation sees the crops as they are

    def dataset(self, records: Sequence[CropRecord], *, training: bool = False) -> FaceCropDataset:
        degrade = self.degrade if training else None
        return FaceCropDataset(records, self.image_size, self_blend=self.self_blend, seed=self.seed, degrade=degrade)


def load_run_data(config: TrainConfig, folders: Sequence[Path], runtime: Runtime) -> RunData:
    """The records of `folders` split into train / val (a validation share is drawn where the
    folders have none); both splits must hold both classes."""
    loaded = [record for folder in folders for record in load_crop_records(folder)]
    crop = crop_geometry(folders)
    records = ensure_validation(loaded, config.val_fraction, config.seed)
    train = with_fake_source(select_split(records, "train"), config.fakes)
    val = with_fake_source(select_split(records, "val"), config.fakes)
    require_both_classes(train, "training")
    require_both_classes(val, "validation")
    plan = BalancedBatchPlan(
        [r.is_fake for r in train],
        config.batch_size,
        config.seed,
        config.flip_probability,
        runtime.rank,
        runtime.world_size,
    )
    return RunData(
        train=train,
        val=val,
        crop=crop,
        fingerprint=data_fingerprint(train + val),
        plan=plan,
        image_size=config.network_config().image_size,
        self_blend=config.sbi if config.fakes != "data" else None,
        seed=config.seed,
        degrade=config.degrade,
    )


def crop_geometry(folders: Sequence[Path]) -> CropGeometry:
    """How the training crops were cut (`ralf-cli prepare` records it); folders must agree. Crop
    folders made otherwise are taken to follow the scanner's default geometry."""
    found = {}
    for folder in folders:
        options = read_prepare_options(folder)
        geometry = (
            CropGeometry()
            if options is None
            else CropGeometry(margin=options.margin, square=options.square, detector=options.detector)
        )
        found[str(folder)] = geometry
    if len(set(found.values())) > 1:
        raise TrainingError(f"the data folders were cut with different crop geometries: {found}")
    return next(iter(found.values()))


def data_fingerprint(records: list[CropRecord]) -> str:
    """Identity of the training data (paths, labels, splits) so a resume on other data is refused."""
    digest = hashlib.sha256()
    for r in records:
        digest.update(f"{r.path.name}|{r.video_id}|{int(r.is_fake)}|{r.split}\n".encode())
    return digest.hexdigest()[:16]
