"""Import weights trained with the authors' reference implementation (GitHub zqyuan-tw/RALF).

The reference trainer saves `model.state_dict()` of its `RALF` module (`best.pt`, `last.pt`) and
a resume file `checkpoint.tar` = {'epoch', 'model', 'disc', 'opt_model', 'opt_disc',
'center': {'center': (128,)}, 'loss'}. Both are read here with `torch.load(weights_only=True)`
only, so a checkpoint holding arbitrary pickled objects is refused instead of run.

The mapping is a table built from this project's module: every tensor name of `RALF(config)` is
translated by explicit structural rules (`reference_name`) into the reference's name, so each
parameter and persistent buffer must be found in the checkpoint, and each checkpoint tensor must
be claimed by one of ours. Anything unknown, missing or of the wrong shape is listed by name in
one `ReferenceImportError`.

The reference's logit is the log-odds of REAL (its label 1 = real); ours is the log-odds of FAKE.
Negating the final linear layer's weight and bias turns a reference logit z into -z exactly, so
P(fake) here = 1 - P(real) there.
"""

from __future__ import annotations

import pickle
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor

from ralf.config import RALFConfig
from ralf.model import LABEL_CONVENTION, RALF
from ralf.pretrained import file_sha256
from ralf.weights import CropGeometry, WeightsMetadata, save_weights

REFERENCE_REPOSITORY = "zqyuan-tw/RALF"
REFERENCE_LABEL_CONVENTION = "sigmoid(logit) = P(real)"
# Keys under which a trainer may have nested the model's state dict.
MODEL_STATE_ENTRIES = ("model", "state_dict")
# Entries of the reference trainer's checkpoint.tar that hold training state (discriminator,
# optimizers, epoch, best loss), not the inference module.
TRAINING_STATE_ENTRIES = ("epoch", "disc", "opt_model", "opt_disc", "loss")
CENTER_ENTRY = "center"
DATA_PARALLEL_PREFIX = "module."
# The final linear layer whose sign carries the label convention.
FC_PARAMETERS = ("classifier.backbone.fc.weight", "classifier.backbone.fc.bias")
CENTER_MISSING = (
    "center (the embedding center; the reference trainer saves it only in checkpoint.tar, entry 'center'. "
    "It is unused at inference: import anyway with zeros via allow_missing_center / --no-center)"
)
# Names listed per problem category in an error message; the exception keeps the full lists.
_MAX_LISTED = 50


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


# --- reading the file ---------------------------------------------------------------------------


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


# --- name mapping -------------------------------------------------------------------------------

# (pattern over our name's module path, reference module path); groups feed the template.
NameRule = tuple[str, Callable[[re.Match[str]], str]]


def _reconstructor_rules() -> list[NameRule]:
    """MIMO-UNet: our ConvAct `k` is the reference's BasicConv `main.k` (see ralf/reconstructor.py)."""

    def res_block(stage: str, match: re.Match[str]) -> str:
        return f"{stage}.{match['i']}.layers.{match['k']}.main.{match['j']}.main.0"

    def scale(match: re.Match[str]) -> str:
        # Our shallow.0 / fam.0 work at 1/2 scale: the reference's SCM2 / FAM2; index 1 is SCM1 / FAM1.
        return str(2 - int(match["i"]))

    return [
        (r"stem\.0", lambda m: "feat_extract.0.main.0"),
        (r"downsample\.(?P<i>[01])\.0", lambda m: f"feat_extract.{1 + int(m['i'])}.main.0"),
        (r"upsample\.(?P<i>[01])\.0", lambda m: f"feat_extract.{3 + int(m['i'])}.main.0"),
        (r"head\.0", lambda m: "feat_extract.5.main.0"),
        (r"encoders\.(?P<i>\d+)\.(?P<k>\d+)\.body\.(?P<j>[01])\.0", lambda m: res_block("Encoder", m)),
        (r"decoders\.(?P<i>\d+)\.(?P<k>\d+)\.body\.(?P<j>[01])\.0", lambda m: res_block("Decoder", m)),
        (r"fuse\.(?P<i>[01])\.0", lambda m: f"Convs.{m['i']}.main.0"),
        (r"aff\.(?P<i>[01])\.body\.(?P<j>[01])\.0", lambda m: f"AFFs.{m['i']}.conv.{m['j']}.main.0"),
        (r"fam\.(?P<i>[01])\.merge\.0", lambda m: f"FAM{scale(m)}.merge.main.0"),
        (r"shallow\.(?P<i>[01])\.body\.(?P<j>[0-3])\.0", lambda m: f"SCM{scale(m)}.main.{m['j']}.main.0"),
        (r"shallow\.(?P<i>[01])\.fuse\.0", lambda m: f"SCM{scale(m)}.conv.main.0"),
    ]


def _classifier_rules(num_blocks: int) -> list[NameRule]:
    """The reference's Classifier: stage1 = Xception stem (ReLUs at 2, 5), attn_map = guidance convs
    (ReLUs at 2, 5) + SpatialAttention at 6, stage2 = blocks, conv3, bn3, ReLU, conv4, bn4, ReLU,
    max pool, flatten, fc; so stage2 positions after the blocks are offsets from `num_blocks`."""
    exit_offsets = {"conv3": 0, "bn3": 1, "conv4": 3, "bn4": 4, "fc": 8}
    return [
        (r"backbone\.conv1", lambda m: "stage1.0"),
        (r"backbone\.bn1", lambda m: "stage1.1"),
        (r"backbone\.conv2", lambda m: "stage1.3"),
        (r"backbone\.bn2", lambda m: "stage1.4"),
        (r"guidance\.features\.(?P<k>[0134])", lambda m: f"attn_map.{m['k']}"),
        (r"guidance\.gate\.conv", lambda m: "attn_map.6.conv"),
        (r"backbone\.block(?P<n>\d+)", lambda m: f"stage2.{int(m['n']) - 1}"),
        (r"backbone\.(?P<layer>conv3|bn3|conv4|bn4|fc)", lambda m: f"stage2.{num_blocks + exit_offsets[m['layer']]}"),
    ]


def name_rules(config: RALFConfig) -> dict[str, list[NameRule]]:
    """Per top-level module of ours: rules translating a module path into the reference's."""
    num_blocks = 3 + config.classifier.middle_blocks + 1  # entry, middle, exit flow blocks
    return {
        "destructor": [(r"mask_logits", lambda m: "freq_mask")],
        "reconstructor": _reconstructor_rules(),
        "classifier": _classifier_rules(num_blocks),
    }


def reference_name(name: str, rules: Mapping[str, list[NameRule]]) -> str | None:
    """The reference's name for our tensor `name`, or None if no rule covers it.

    A rule matches a module-path prefix of `name`; the rest (e.g. `weight`, `rep.1.conv1.weight`)
    is kept, since inside those modules both implementations use the same layout.
    """
    top, _, rest = name.partition(".")
    for pattern, template in rules.get(top, []):
        match = re.match(pattern + r"(?=\.|$)", rest)
        if match:
            return f"{top}.{template(match)}{rest[match.end():]}"
    return None


def _check_reference_architecture(config: RALFConfig) -> None:
    classifier = config.classifier
    if classifier.backbone != "xception" or not classifier.destruction_guidance or classifier.pool != "max":
        raise ReferenceImportError(
            "the reference model is Xception with destruction guidance and max pooling; this config has "
            f"backbone={classifier.backbone!r}, destruction_guidance={classifier.destruction_guidance}, "
            f"pool={classifier.pool!r}"
        )


def mapping_table(model: RALF) -> dict[str, str]:
    """{reference name: our name} for every parameter and persistent buffer of `model` except `center`."""
    rules = name_rules(model.config)
    table: dict[str, str] = {}
    uncovered: list[str] = []
    for ours in model.state_dict():
        if ours == CENTER_ENTRY:
            continue
        theirs = reference_name(ours, rules)
        if theirs is None:
            uncovered.append(ours)
        elif theirs in table:
            raise ReferenceImportError(f"mapping error: {table[theirs]!r} and {ours!r} both map to {theirs!r}")
        else:
            table[theirs] = ours
    if uncovered:
        raise ReferenceImportError(
            f"this model has tensors with no counterpart in the reference: {', '.join(uncovered)}", missing=uncovered
        )
    return table


def _listed(names: list[str]) -> str:
    shown = "\n    ".join(names[:_MAX_LISTED])
    more = f"\n    ... and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else ""
    return f"\n    {shown}{more}"


def map_reference_state(
    checkpoint: ReferenceCheckpoint, model: RALF, allow_missing_center: bool = False
) -> dict[str, Tensor]:
    """Our full state dict (still in the reference's label convention), or one error listing every problem."""
    _check_reference_architecture(model.config)
    table = mapping_table(model)
    expected = model.state_dict()
    given = checkpoint.model_state

    unknown = sorted(set(given) - set(table))
    missing = sorted(set(table) - set(given))
    mismatched = sorted(
        f"{theirs}: checkpoint {tuple(given[theirs].shape)}, expected {tuple(expected[ours].shape)} (ours: {ours})"
        for theirs, ours in table.items()
        if theirs in given and given[theirs].shape != expected[ours].shape
    )
    center_shape = tuple(expected[CENTER_ENTRY].shape)
    if checkpoint.center is None and not allow_missing_center:
        missing.append(CENTER_MISSING)
    elif checkpoint.center is not None and tuple(checkpoint.center.shape) != center_shape:
        mismatched.append(f"center: checkpoint {tuple(checkpoint.center.shape)}, expected {center_shape}")

    if unknown or missing or mismatched:
        parts = []
        if missing == [CENTER_MISSING] and not unknown and not mismatched:
            parts.append("the checkpoint holds the model but not the embedding center")
        elif not set(given) & set(table):
            parts.append(
                f"not a reference RALF checkpoint: none of its {len(given)} tensors has a name of the reference's "
                "RALF module (destructor.freq_mask, reconstructor.*, classifier.stage1/attn_map/stage2.*)"
            )
        else:
            parts.append(f"the checkpoint does not fit the {model.config.preset!r} RALF model")
        if unknown:
            parts.append(f"unknown tensors ({len(unknown)}):{_listed(unknown)}")
        if missing:
            parts.append(f"missing tensors ({len(missing)}):{_listed(missing)}")
        if mismatched:
            parts.append(f"shape mismatches ({len(mismatched)}):{_listed(mismatched)}")
        raise ReferenceImportError("\n".join(parts), unknown=unknown, missing=missing, mismatched=mismatched)

    state: dict[str, Tensor] = {}
    for theirs, ours in table.items():
        value = given[theirs]
        target = expected[ours]
        if value.dtype != target.dtype and (value.is_floating_point() != target.is_floating_point()):
            raise ReferenceImportError(f"{theirs}: dtype {value.dtype} does not fit {target.dtype}")
        state[ours] = value.detach().to(dtype=target.dtype).clone()
    center = checkpoint.center if checkpoint.center is not None else torch.zeros(center_shape)
    state[CENTER_ENTRY] = center.detach().to(dtype=expected[CENTER_ENTRY].dtype).clone()
    if set(state) != set(expected):  # every parameter and persistent buffer assigned, nothing extra
        raise ReferenceImportError(f"internal mapping error: unassigned {sorted(set(expected) - set(state))}")
    return state


def flip_label_convention(state: dict[str, Tensor]) -> None:
    """Negate the final linear layer in place: logit -> -logit, P(real) -> P(fake)."""
    for name in FC_PARAMETERS:
        state[name] = -state[name]


# --- entry points -------------------------------------------------------------------------------


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
