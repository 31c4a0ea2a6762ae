"""RALF weights file: safetensors tensors + JSON metadata under the header key "ralf".

The file never holds pickled data, and loading refuses pickles / zip checkpoints outright, so an
untrusted weights file cannot execute code. The metadata carries everything needed to rebuild the
model (its config), the label convention, provenance and, once calibrated, the decision threshold.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ralf.config import RALFConfig
from ralf.model import LABEL_CONVENTION, RALF

FORMAT_NAME = "ralf-weights"
FORMAT_VERSION = 1
METADATA_KEY = "ralf"
# A safetensors header is a little-endian u64 length then a JSON object; larger headers are refused.
_MAX_HEADER_BYTES = 100 * 1024 * 1024


class WeightsError(ValueError):
    """A weights file is missing, not a RALF safetensors file, or does not fit its config."""


class Calibration(BaseModel):
    """Decision threshold on the logit, chosen on a labelled set (fake = positive class)."""

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
    # sha256 of the stored tensors (`tensors_digest`), checked on load; absent in older files.
    tensors_sha256: str | None = None
    created: str = Field(default_factory=_now_iso)


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and raw bytes, in name order (independent of file layout)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_weights(
    path: str | Path, model: RALF, metadata: WeightsMetadata | None = None, dtype: torch.dtype | None = None
) -> WeightsMetadata:
    """Write `model`'s state dict and metadata; returns the metadata as written (with model_version
    and the stored tensors' digest). `dtype` (e.g. float16) stores floating tensors in that type;
    `load_weights` always rebuilds a float32 model."""
    path = Path(path)
    if metadata is None:
        metadata = WeightsMetadata(config=model.config)
    elif metadata.config != model.config:
        raise WeightsError("metadata.config differs from the model's config; the file could not be rebuilt")
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in model.state_dict().items()}
    if dtype is not None:
        tensors = {name: t.to(dtype) if t.is_floating_point() else t for name, t in tensors.items()}
    digest = tensors_digest(tensors)
    if not metadata.model_version:
        metadata = metadata.model_copy(update={"model_version": f"ralf-{model.config.preset}-{digest[:12]}"})
    metadata = metadata.model_copy(update={"tensors_sha256": digest})
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    save_tensors_file(tensors, partial, metadata={METADATA_KEY: metadata.model_dump_json()})
    os.replace(partial, path)
    return metadata


def save_tensors_file(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors' `save_file`, leaving the file with the mode `open()` would give it (0644 under umask
    022): `save_file` creates 0600 files, which a worker running as another user (the image's uid 10001,
    weights mounted read-only) cannot read."""
    save_file(tensors, str(path), metadata=metadata)
    os.chmod(path, 0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0o022)  # the only portable way to read it is to set it; put it straight back
    os.umask(mask)
    return mask


def _read_header(path: Path) -> tuple[int, dict[str, Any]]:
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


def _parse_metadata(path: Path, header: dict[str, Any]) -> WeightsMetadata:
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
    _, header = _read_header(path)
    return _parse_metadata(path, header)


def write_metadata(path: str | Path, metadata: WeightsMetadata) -> None:
    """Replace the file's metadata (e.g. to add a calibration); tensor bytes are copied unchanged."""
    path = Path(path)
    header_len, header = _read_header(path)
    current = _parse_metadata(path, header)
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


def load_weights(path: str | Path, device: str | torch.device = "cpu") -> tuple[RALF, WeightsMetadata]:
    """Rebuild the model from the file's config and load its tensors; returns (model in eval mode, metadata)."""
    path = Path(path)
    _, header = _read_header(path)
    metadata = _parse_metadata(path, header)
    model = RALF(metadata.config)
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as error:
        raise WeightsError(f"{path}: cannot read tensors: {error}") from None
    expected = model.state_dict()
    problems = []
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing:
        problems.append(f"missing tensors ({len(missing)}): {', '.join(missing[:20])}")
    if unexpected:
        problems.append(f"unexpected tensors ({len(unexpected)}): {', '.join(unexpected[:20])}")
    mismatched = [
        f"{name}: file {tuple(tensors[name].shape)} vs model {tuple(expected[name].shape)}"
        for name in sorted(set(expected) & set(tensors))
        if tensors[name].shape != expected[name].shape
    ]
    if mismatched:
        problems.append(f"shape mismatches ({len(mismatched)}): {'; '.join(mismatched[:20])}")
    if problems:
        raise WeightsError(f"{path} does not fit its config (preset {metadata.config.preset!r}):\n" + "\n".join(problems))
    if metadata.tensors_sha256 is not None and tensors_digest(tensors) != metadata.tensors_sha256:
        raise WeightsError(f"{path}: the tensors do not match the digest in its metadata (file altered or damaged)")
    model.load_state_dict(tensors, strict=True)  # copies into float32 parameters whatever the stored type
    return model.to(device).eval(), metadata


__all__ = [
    "Calibration",
    "WeightsError",
    "WeightsMetadata",
    "load_weights",
    "read_metadata",
    "save_weights",
    "tensors_digest",
    "write_metadata",
]
