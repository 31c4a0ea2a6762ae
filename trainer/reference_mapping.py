"""Our tensor names -> the reference's (GitHub zqyuan-tw/RALF), and a checkpoint's state mapped onto
our model.

The mapping is a table built from this project's module: every tensor name of `RALF(config)` is
translated by explicit structural rules (`reference_name`) into the reference's name, so each
parameter and persistent buffer must be found in the checkpoint, and each checkpoint tensor must
be claimed by one of ours. Anything unknown, missing or of the wrong shape is listed by name in
one `ReferenceImportError`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from ralf.config import RALFConfig
from ralf.model import RALF
from trainer.reference_checkpoint import CENTER_ENTRY, ReferenceCheckpoint, ReferenceImportError

# The final linear layer whose sign carries the label convention.
FC_PARAMETERS = ("classifier.backbone.fc.weight", "classifier.backbone.fc.bias")
CENTER_MISSING = (
    "center (the embedding center; the reference trainer saves it only in checkpoint.tar, entry 'center'. "
    "It is unused at inference: import anyway with zeros via allow_missing_center / --no-center)"
)
# Names listed per problem category in an error message; the exception keeps the full lists.
_MAX_LISTED = 50

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
