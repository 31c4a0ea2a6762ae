"""Import weights trained with the authors' reference implementation (GitHub zqyuan-tw/RALF).

Reading the checkpoint (weights-only unpickling) is `trainer/reference_checkpoint.py`; the name
mapping onto `RALF(config)` is `trainer/reference_mapping.py`.

The reference's logit is the log-odds of REAL (its label 1 = real); ours is the log-odds of FAKE.
Negating the final linear layer's weight and bias turns a reference logit z into -z exactly, so
P(fake) here = 1 - P(real) there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from ralf.config import RALFConfig
from ralf.core.files import file_sha256
from ralf.core.metadata import LABEL_CONVENTION, CropGeometry, WeightsMetadata
from ralf.model import RALF
from ralf.weights import save_weights
from trainer.reference_checkpoint import (
    ReferenceCheckpoint,
    ReferenceImportError,
    load_checkpoint_object,
    read_reference_checkpoint,
    split_checkpoint,
)
from trainer.reference_mapping import (
    flip_label_convention,
    map_reference_state,
    mapping_table,
    name_rules,
    reference_name,
)

REFERENCE_REPOSITORY = "zqyuan-tw/RALF"
REFERENCE_LABEL_CONVENTION = "sigmoid(logit) = P(real)"


class ImportReport(BaseModel):
    """Summary of one import, also stored in the weights metadata under training['reference_import']."""

    model_config = ConfigDict(frozen=True)

    repository: str = REFERENCE_REPOSITORY
    file: str
    sha256: str
    tensors_mapped: int
    center: Literal["checkpoint", "absent (zeros)"]
    ignored_entries: list[str]
    reference_label_convention: str = REFERENCE_LABEL_CONVENTION
    label_convention: str = LABEL_CONVENTION
    label_convention_flipped: bool = True

    @property
    def source(self) -> str:
        return f"reference:{self.repository} {self.file} sha256:{self.sha256[:12]}"


def import_reference(
    path: str | Path, config: RALFConfig | None = None, allow_missing_center: bool = False
) -> tuple[RALF, WeightsMetadata, ImportReport]:
    """Build `RALF(config)` (paper preset by default) holding the reference checkpoint's weights,
    label convention flipped to P(fake). Returns (model in eval mode, metadata to save, report)."""
    path = Path(path)
    config = config or RALFConfig.paper()
    checkpoint = read_reference_checkpoint(path)
    model = RALF(config)
    state = map_reference_state(checkpoint, model, allow_missing_center)
    flip_label_convention(state)
    model.load_state_dict(state, strict=True)
    report = ImportReport(
        file=path.name,
        sha256=file_sha256(path),
        tensors_mapped=len(checkpoint.model_state) + (checkpoint.center is not None),
        center="checkpoint" if checkpoint.center is not None else "absent (zeros)",
        ignored_entries=checkpoint.ignored_entries,
    )
    metadata = WeightsMetadata(
        config=config,
        label_convention=LABEL_CONVENTION,
        source=report.source,
        training={"reference_import": report.model_dump()},
        # The authors cut tight MTCNN boxes and resized them to 256x256 without keeping the aspect.
        crop=CropGeometry(margin=0.0, square=False),
    )
    return model.eval(), metadata, report


def import_reference_to_file(
    checkpoint: str | Path, out: str | Path, config: RALFConfig | None = None, allow_missing_center: bool = False
) -> tuple[WeightsMetadata, ImportReport]:
    """Import and write the project's safetensors weights file; returns (metadata as written, report)."""
    model, metadata, report = import_reference(checkpoint, config, allow_missing_center)
    return save_weights(out, model, metadata), report


__all__ = [
    "ImportReport",
    "ReferenceCheckpoint",
    "ReferenceImportError",
    "flip_label_convention",
    "import_reference",
    "import_reference_to_file",
    "load_checkpoint_object",
    "map_reference_state",
    "mapping_table",
    "name_rules",
    "read_reference_checkpoint",
    "reference_name",
    "split_checkpoint",
]
