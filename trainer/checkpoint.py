"""Training checkpoints without pickle: tensors in safetensors, everything else in JSON.

A checkpoint is a folder `checkpoints/step_<N>/` holding `state.safetensors` (model, discriminator,
optimizer moments, center tracker, torch RNG states) and `state.json` (step, training config,
optimizer hyper-parameters, numpy / python RNG states, best validation result). It is written to a
`.partial` folder and renamed, and `checkpoints/latest.json` names the newest complete one, so a
crash while saving never leaves a half-written checkpoint behind the name.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from ralf.weights import save_tensors_file

FORMAT = "ralf-train-checkpoint"
VERSION = 1
STATE_TENSORS = "state.safetensors"
STATE_JSON = "state.json"
LATEST = "latest.json"


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete or does not fit the run resuming from it."""


@dataclass
class TrainingState:
    """Everything a run needs to continue exactly: tensors by name plus JSON-able facts."""

    step: int
    tensors: dict[str, Tensor] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


def flatten_state_dict(prefix: str, state: dict[str, Any], tensors: dict[str, Tensor]) -> dict[str, Any]:
    """Move every tensor of a (nested) state dict into `tensors` under `prefix/...`; return the rest.

    Keys become strings; a tensor's place in the JSON remainder is a {"__tensor__": name} marker.
    """

    def walk(value: Any, path: str) -> Any:
        if isinstance(value, Tensor):
            tensors[path] = value.detach().to("cpu").contiguous()
            return {"__tensor__": path}
        if isinstance(value, dict):
            return {"__dict__": [[_encode_key(k), walk(v, f"{path}/{k}")] for k, v in value.items()]}
        if isinstance(value, (list, tuple)):
            return [walk(v, f"{path}/{i}") for i, v in enumerate(value)]
        return value

    return walk(state, prefix)


def unflatten_state_dict(encoded: Any, tensors: dict[str, Tensor]) -> Any:
    """Inverse of `flatten_state_dict`."""
    if isinstance(encoded, dict) and "__tensor__" in encoded:
        name = encoded["__tensor__"]
        if name not in tensors:
            raise CheckpointError(f"checkpoint lacks tensor {name!r}")
        return tensors[name]
    if isinstance(encoded, dict) and "__dict__" in encoded:
        return {_decode_key(k): unflatten_state_dict(v, tensors) for k, v in encoded["__dict__"]}
    if isinstance(encoded, list):
        return [unflatten_state_dict(v, tensors) for v in encoded]
    return encoded


def _encode_key(key: Any) -> list[Any]:
    # Optimizer state is keyed by int parameter ids; keep the key type through JSON.
    return ["int", key] if isinstance(key, int) else ["str", str(key)]


def _decode_key(key: list[Any]) -> Any:
    kind, value = key
    return int(value) if kind == "int" else value


def rng_state(tensors: dict[str, Tensor]) -> dict[str, Any]:
    """Capture torch (CPU and CUDA), numpy and python RNG states; torch states go into `tensors`."""
    tensors["rng/torch"] = torch.get_rng_state()
    cuda_count = 0
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{index}"] = state
            cuda_count += 1
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    return {
        "cuda_devices": cuda_count,
        "numpy": [np_kind, np.asarray(np_keys).tolist(), int(np_pos), int(np_has_gauss), float(np_gauss)],
        "python": [py_version, list(py_internal), py_gauss],
    }


def restore_rng_state(info: dict[str, Any], tensors: dict[str, Tensor]) -> None:
    torch.set_rng_state(tensors["rng/torch"])
    cuda_count = int(info.get("cuda_devices", 0))
    if cuda_count and torch.cuda.is_available():
        states = [tensors[f"rng/cuda/{i}"] for i in range(min(cuda_count, torch.cuda.device_count()))]
        torch.cuda.set_rng_state_all(states)
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = info["numpy"]
    np.random.set_state((np_kind, np.asarray(np_keys, dtype=np.uint32), np_pos, np_has_gauss, np_gauss))
    py_version, py_internal, py_gauss = info["python"]
    random.setstate((py_version, tuple(py_internal), py_gauss))


def checkpoint_dir(root: Path, step: int) -> Path:
    return root / f"step_{step:09d}"


def save_checkpoint(root: Path, state: TrainingState, keep: int) -> Path:
    """Write `state` as checkpoint `step_<N>` under `root`, point latest.json at it, prune old ones."""
    root.mkdir(parents=True, exist_ok=True)
    final = checkpoint_dir(root, state.step)
    partial = final.with_name(final.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    save_tensors_file(state.tensors, partial / STATE_TENSORS)
    payload = {"format": FORMAT, "version": VERSION, "step": state.step, **state.info}
    (partial / STATE_JSON).write_text(json.dumps(payload, indent=1), encoding="utf-8")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(partial, final)
    latest_tmp = root / (LATEST + ".partial")
    latest_tmp.write_text(json.dumps({"step": state.step, "path": final.name}), encoding="utf-8")
    os.replace(latest_tmp, root / LATEST)
    for old in sorted(root.glob("step_*[0-9]"))[:-keep]:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(root: Path) -> Path:
    """The folder latest.json names; CheckpointError when there is none."""
    pointer = root / LATEST
    if not pointer.is_file():
        raise CheckpointError(f"no checkpoint to resume from: {pointer} does not exist")
    try:
        name = json.loads(pointer.read_text(encoding="utf-8"))["path"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{pointer} is corrupt: {error}") from None
    return root / name


def load_checkpoint(path: Path) -> TrainingState:
    """Read a checkpoint folder; CheckpointError naming the file for anything unreadable."""
    json_path, tensor_path = path / STATE_JSON, path / STATE_TENSORS
    for required in (json_path, tensor_path):
        if not required.is_file():
            raise CheckpointError(f"checkpoint file missing: {required}")
    try:
        payload = json.loads(json_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{json_path} is not valid JSON: {error}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or payload.get("version") != VERSION:
        raise CheckpointError(f"{json_path} is not a version-{VERSION} {FORMAT} file")
    try:
        tensors = load_file(str(tensor_path), device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"cannot read {tensor_path}: {error}") from None
    step = payload.pop("step")
    payload.pop("format"), payload.pop("version")
    return TrainingState(step=int(step), tensors=tensors, info=payload)


def module_tensors(prefix: str, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    return {f"{prefix}/{name}": value.detach().to("cpu").contiguous() for name, value in state_dict.items()}


def module_state(prefix: str, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    start = prefix + "/"
    return {name[len(start) :]: value for name, value in tensors.items() if name.startswith(start)}
