"""What a RALF weights file says about itself, read and rewritten without torch.

A weights file is safetensors: a little-endian u64 header length, a JSON header, then the tensor
bytes. The RALF metadata (config, label convention, provenance, calibration, crop geometry, tensor
digest) is JSON under the header's `__metadata__` key "ralf", so reading or replacing it needs only
struct and json: enqueue reads the model version this way without importing torch. Tensors are
loaded and saved by `ralf.weights`.

Pickles and zip checkpoints are refused before anything is parsed: they can run code when loaded.
"""

from __future__ import annotations

import json
import os
import struct
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ralf.config import RALFConfig
from ralf.core.options import UNRECORDED_DETECTOR, DetectorName

FORMAT_NAME = "ralf-weights"
FORMAT_VERSION = 1
METADATA_KEY = "ralf"
LABEL_CONVENTION = "sigmoid(logit) = P(fake)"
# Larger headers are refused: a corrupt length must not make us read gigabytes as JSON.
_MAX_HEADER_BYTES = 100 * 1024 * 1024


class WeightsError(ValueError):
    """A weights file is missing, not a RALF safetensors file, or does not fit its config."""


class Calibration(BaseModel):
    """Decision threshold on the logit, chosen on a labelled set (fake = positive class).

    `ralf.core.decision.Decision` is the only code that turns it into the P(fake) verdicts use."""

    model_config = ConfigDict(extra="forbid")

    threshold: float
    method: str  # e.g. "target_fpr", "eer", "youden"
    target_fpr: float | None = None
    achieved_tpr: float
    achieved_fpr: float
    level: str  # "frame" or "video"
    temperature: float | None = None
    dataset_fingerprint: str
    date: str
    num_real: int = Field(ge=0)
    num_fake: int = Field(ge=0)


class CropGeometry(BaseModel):
    """How the training face crops were cut, so that serving cuts them the same way: a square around
    the detector box's longer side grown by `margin` (the scanner's default), or the box grown by
    `margin` and stretched to a square (`square=False`, the authors' reference code: margin 0)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    margin: float = Field(0.3, ge=0)
    square: bool = True
    # Whose face boxes the crops were cut around (detectors frame faces slightly differently, and a
    # model learns its training framing); None: not recorded (weights made before this field).
    detector: DetectorName | None = None

    @property
    def trained_detector(self) -> DetectorName:
        """The detector the crops were cut with: as recorded, else MTCNN (what `prepare` used before)."""
        return self.detector or UNRECORDED_DETECTOR


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class WeightsMetadata(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["ralf-weights"] = FORMAT_NAME
    format_version: Literal[1] = FORMAT_VERSION
    # "ralf-<preset>-<first 12 hex of the tensors' sha256>", filled in by save_weights when empty.
    model_version: str = ""
    config: RALFConfig
    label_convention: str = LABEL_CONVENTION
    # What initialised the pretrained parts, e.g. {"xception": "imagenet:<sha256>", "vgg19": "random"}.
    pretrained: dict[str, str] = Field(default_factory=dict)
    source: str | None = None  # e.g. "imported from the authors' reference checkpoint <sha256>"
    training: dict[str, Any] = Field(default_factory=dict)  # free JSON: steps, best validation AUC, ...
    calibration: Calibration | None = None
    crop: CropGeometry = CropGeometry()
    # sha256 of the stored tensors (`ralf.weights.tensors_digest`), checked on load; absent in older files.
    tensors_sha256: str | None = None
    created: str = Field(default_factory=_now_iso)


def read_header(path: Path) -> tuple[int, dict[str, Any]]:
    """(header length, header JSON) after checking that `path` is a safetensors file, not a pickle."""
    if not path.exists():
        raise WeightsError(f"weights file not found: {path}")
    if not path.is_file():
        raise WeightsError(f"weights path is not a file: {path}")
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(9)
        if head.startswith(b"PK\x03\x04"):
            raise WeightsError(
                f"{path} is a zip / torch.save checkpoint, which can run code when unpickled and is refused; "
                "convert the authors' checkpoint with `ralf-cli import-weights`"
            )
        if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
            raise WeightsError(f"{path} is a pickle file, which can run code when loaded and is refused")
        if len(head) < 9:
            raise WeightsError(f"{path} is empty or truncated ({size} bytes); not a safetensors file")
        (header_len,) = struct.unpack("<Q", head[:8])
        if header_len > min(_MAX_HEADER_BYTES, size - 8) or head[8:9] != b"{":
            raise WeightsError(f"{path} is not a safetensors file (bad or truncated header)")
        handle.seek(8)
        raw = handle.read(header_len)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise WeightsError(f"{path} has a corrupt safetensors header: {error}") from None
    if not isinstance(header, dict):
        raise WeightsError(f"{path} has a corrupt safetensors header (not a JSON object)")
    return header_len, header


def parse_metadata(path: Path, header: dict[str, Any]) -> WeightsMetadata:
    """The RALF metadata in a header `read_header` returned (`path` names the file in errors)."""
    text = (header.get("__metadata__") or {}).get(METADATA_KEY)
    if text is None:
        raise WeightsError(
            f"{path} is a safetensors file without RALF metadata (header key {METADATA_KEY!r}); "
            "import foreign checkpoints with `ralf-cli import-weights`"
        )
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as error:
        raise WeightsError(f"{path}: RALF metadata is not valid JSON: {error}") from None
    if isinstance(raw, dict) and raw.get("format_version", FORMAT_VERSION) != FORMAT_VERSION:
        raise WeightsError(
            f"{path} uses weights format version {raw.get('format_version')!r}; this code reads version {FORMAT_VERSION}"
        )
    try:
        return WeightsMetadata.model_validate(raw)
    except ValidationError as error:
        raise WeightsError(f"{path}: invalid RALF metadata:\n{error}") from None


def read_metadata(path: str | Path) -> WeightsMetadata:
    path = Path(path)
    _, header = read_header(path)
    return parse_metadata(path, header)


def write_metadata(path: str | Path, metadata: WeightsMetadata) -> None:
    """Replace the file's metadata (e.g. to add a calibration); tensor bytes are copied unchanged."""
    path = Path(path)
    header_len, header = read_header(path)
    current = parse_metadata(path, header)
    if metadata.config != current.config:
        raise WeightsError("new metadata has a different config than the stored tensors; refusing to rewrite")
    header.setdefault("__metadata__", {})[METADATA_KEY] = metadata.model_dump_json()
    encoded = json.dumps(header, separators=(",", ":")).encode()
    # Pad with spaces (allowed by the format) so the tensor data stays 8-byte aligned.
    encoded += b" " * (-len(encoded) % 8)
    partial = path.with_name(path.name + ".partial")
    with path.open("rb") as source, partial.open("wb") as target:
        target.write(struct.pack("<Q", len(encoded)))
        target.write(encoded)
        source.seek(8 + header_len)
        while chunk := source.read(16 * 1024 * 1024):
            target.write(chunk)
    os.replace(partial, path)
