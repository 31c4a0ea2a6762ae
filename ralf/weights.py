"""RALF weights file, the tensor side: save a model, load it back (safetensors, never pickle).

The metadata (config, label convention, provenance, calibration, crop geometry, tensor digest) is
read and rewritten torch-free by `ralf.core.metadata`; this module adds what needs the tensors. The
file never holds pickled data, and loading refuses pickles / zip checkpoints outright, so an
untrusted weights file cannot execute code.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ralf.core.metadata import METADATA_KEY, WeightsError, WeightsMetadata, parse_metadata, read_header
from ralf.model import RALF


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


def load_weights(path: str | Path, device: str | torch.device = "cpu") -> tuple[RALF, WeightsMetadata]:
    """Rebuild the model from the file's config and load its tensors; returns (model in eval mode, metadata)."""
    path = Path(path)
    _, header = read_header(path)
    metadata = parse_metadata(path, header)
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
