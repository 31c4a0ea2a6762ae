"""Reading a checkpoint of the authors' reference trainer (GitHub zqyuan-tw/RALF), refusing pickles.

The reference trainer saves `model.state_dict()` of its `RALF` module (`best.pt`, `last.pt`) and
a resume file `checkpoint.tar` = {'epoch', 'model', 'disc', 'opt_model', 'opt_disc',
'center': {'center': (128,)}, 'loss'}. Both are read here with `torch.load(weights_only=True)`
only, so a checkpoint holding arbitrary pickled objects is refused instead of run.
"""

from __future__ import annotations

import pickle
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

# Keys under which a trainer may have nested the model's state dict.
MODEL_STATE_ENTRIES = ("model", "state_dict")
# Entries of the reference trainer's checkpoint.tar that hold training state (discriminator,
# optimizers, epoch, best loss), not the inference module.
TRAINING_STATE_ENTRIES = ("epoch", "disc", "opt_model", "opt_disc", "loss")
CENTER_ENTRY = "center"
DATA_PARALLEL_PREFIX = "module."


class ReferenceImportError(ValueError):
    """The file is not a readable reference RALF checkpoint, or it does not fit the model.

    `unknown`, `missing` and `mismatched` hold every offending name (reference naming) so that a
    caller can show them all; the message lists up to 50 of each.
    """

    def __init__(
        self,
        message: str,
        unknown: list[str] | None = None,
        missing: list[str] | None = None,
        mismatched: list[str] | None = None,
    ) -> None:
        super().__init__(message)
        self.unknown = unknown or []
        self.missing = missing or []
        self.mismatched = mismatched or []


@dataclass(frozen=True)
class ReferenceCheckpoint:
    """What a reference checkpoint holds for the inference module."""

    model_state: dict[str, Tensor]  # reference names, `module.` prefix removed
    center: Tensor | None  # the L_emb center, when the file has one
    ignored_entries: list[str]  # top-level training-state entries that were skipped


def _is_safetensors(head: bytes, size: int) -> bool:
    return len(head) >= 9 and int.from_bytes(head[:8], "little") <= size - 8 and head[8:9] == b"{"


def _refusal_reason(error: pickle.UnpicklingError) -> str:
    """The weights-only unpickler's one-line reason (e.g. 'Unsupported global: GLOBAL a.B ...')."""
    text = str(error)
    match = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\.\s|\n|$)", text)
    return match.group(1).strip() if match else text.splitlines()[0]


def load_checkpoint_object(path: str | Path) -> Any:
    """`torch.load(path, weights_only=True)` with every failure turned into a ReferenceImportError."""
    path = Path(path)
    if not path.exists():
        raise ReferenceImportError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise ReferenceImportError(f"checkpoint path is not a file: {path}")
    size = path.stat().st_size
    if size == 0:
        raise ReferenceImportError(f"{path} is empty (0 bytes); not a PyTorch checkpoint")
    with path.open("rb") as handle:
        head = handle.read(16)
    is_zip = head.startswith(b"PK\x03\x04")
    is_pickle = head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5
    if not (is_zip or is_pickle):
        if _is_safetensors(head, size):
            raise ReferenceImportError(
                f"{path} is a safetensors file, not a checkpoint of the reference trainer; "
                "a RALF weights file needs no import"
            )
        raise ReferenceImportError(
            f"{path} is not a PyTorch checkpoint: neither a torch.save zip archive nor a pickle "
            f"(starts with {head[:8]!r})"
        )
    try:
        with warnings.catch_warnings():
            # torch warns about plain (protocol 4+) pickles before refusing them; the error below says it all.
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Weights only load failed" in str(error):
            raise ReferenceImportError(
                f"not a plain tensor checkpoint: {path} holds pickled objects other than tensors and plain "
                f"containers ({_refusal_reason(error)}); such files can run code when loaded and are refused"
            ) from None
        raise ReferenceImportError(f"{path} is a corrupt or truncated checkpoint: {error}") from None
    except (EOFError, RuntimeError, OSError, KeyError, ValueError) as error:
        kind = "zip archive" if is_zip else "pickle"
        # First sentence only: torch appends generic advice to its reader errors.
        reason = str(error).split(". ")[0].splitlines()[0] if str(error) else type(error).__name__
        raise ReferenceImportError(
            f"{path} is a truncated or corrupt checkpoint ({kind} of {size} bytes): {reason}"
        ) from None


def _describe(value: object) -> str:
    return f"a {type(value).__name__}"


def _tensor_state(entries: Mapping[Any, Any], where: str) -> dict[str, Tensor]:
    """A state dict of tensors with any DataParallel `module.` prefix removed."""
    state: dict[str, Tensor] = {}
    for key, value in entries.items():
        if not isinstance(key, str):
            raise ReferenceImportError(f"not a plain tensor checkpoint: {where} has a non-string key {key!r}")
        if not isinstance(value, Tensor):
            raise ReferenceImportError(
                f"not a plain tensor checkpoint: {where} entry {key!r} is {_describe(value)}, not a tensor"
            )
        name = key.removeprefix(DATA_PARALLEL_PREFIX)
        if name in state:
            raise ReferenceImportError(
                f"{where} holds {name!r} both with and without the {DATA_PARALLEL_PREFIX!r} prefix"
            )
        state[name] = value
    return state


def _center_tensor(value: object) -> Tensor:
    """The center as saved by the reference (`emb_loss.state_dict()` = {'center': t}) or a bare tensor."""
    if isinstance(value, Mapping):
        if set(value) != {CENTER_ENTRY} or not isinstance(value[CENTER_ENTRY], Tensor):
            raise ReferenceImportError(
                f"checkpoint entry 'center' should be {{'center': tensor}} (the reference's embedding loss state), "
                f"got keys {sorted(map(str, value))}"
            )
        return value[CENTER_ENTRY]
    if isinstance(value, Tensor):
        return value
    raise ReferenceImportError(f"not a plain tensor checkpoint: entry 'center' is {_describe(value)}")


def split_checkpoint(loaded: object) -> ReferenceCheckpoint:
    """Find the model's state dict (flat, or under 'model' / 'state_dict') and the center in a loaded checkpoint."""
    if not isinstance(loaded, Mapping):
        raise ReferenceImportError(
            f"not a plain tensor checkpoint: the file holds {_describe(loaded)}, not a state dict"
        )
    wrappers = [key for key in MODEL_STATE_ENTRIES if isinstance(loaded.get(key), Mapping)]
    if len(wrappers) > 1:
        raise ReferenceImportError(f"ambiguous checkpoint: both {wrappers[0]!r} and {wrappers[1]!r} hold a state dict")
    if not wrappers:
        entries = dict(loaded)
        center_value = entries.pop(CENTER_ENTRY, None)
        state = _tensor_state(entries, "the state dict")
        center = None if center_value is None else _center_tensor(center_value)
        return ReferenceCheckpoint(model_state=state, center=center, ignored_entries=[])

    state = _tensor_state(loaded[wrappers[0]], f"checkpoint entry {wrappers[0]!r}")
    center = _center_tensor(loaded[CENTER_ENTRY]) if CENTER_ENTRY in loaded else None
    ignored = [key for key in loaded if key in TRAINING_STATE_ENTRIES]
    unknown = sorted(str(key) for key in loaded if key not in (wrappers[0], CENTER_ENTRY, *TRAINING_STATE_ENTRIES))
    if unknown:
        raise ReferenceImportError(
            f"checkpoint has top-level entries the reference trainer does not write: {', '.join(unknown)} "
            f"(expected {wrappers[0]!r}, 'center' and training state {', '.join(TRAINING_STATE_ENTRIES)})",
            unknown=unknown,
        )
    return ReferenceCheckpoint(model_state=state, center=center, ignored_entries=ignored)


def read_reference_checkpoint(path: str | Path) -> ReferenceCheckpoint:
    return split_checkpoint(load_checkpoint_object(path))
