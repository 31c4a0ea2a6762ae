"""Importing weights trained with the authors' reference code (zqyuan-tw/RALF).

No reference code is involved: `reference_spec` writes down the reference module's tensor names
and shapes from its structure (models/ralf.py, reconstructor.py, xception.py, attention.py of the
authors' repository), random values fill them, and `reference_forward` is an independent
functional re-implementation of the reference forward pass on that reference-named state dict
(torch_dct's unnormalised DCT as explicit matrices, MIMO-UNet, Xception classifier with the
destruction-guided spatial attention). The reference's logit is log-odds of REAL; ours of FAKE.
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from typer.testing import CliRunner

from ralf.config import RALFConfig
from ralf.core.metadata import LABEL_CONVENTION, read_metadata
from ralf.weights import load_weights
from trainer.import_reference import (
    ReferenceImportError,
    import_reference,
    import_reference_to_file,
    mapping_table,
)

Spec = list[tuple[str, tuple[int, ...]]]

# --- the reference module's state dict, from its structure -------------------------------------------


def _conv(spec: Spec, prefix: str, cin: int, cout: int, k: int, bias: bool = True, transpose: bool = False) -> None:
    spec.append((f"{prefix}.weight", (cin, cout, k, k) if transpose else (cout, cin, k, k)))
    if bias:
        spec.append((f"{prefix}.bias", (cout,)))


def _bn(spec: Spec, prefix: str, ch: int) -> None:
    spec += [(f"{prefix}.{n}", (ch,)) for n in ("weight", "bias", "running_mean", "running_var")]
    spec.append((f"{prefix}.num_batches_tracked", ()))


def _sep(spec: Spec, prefix: str, cin: int, cout: int) -> None:
    spec.append((f"{prefix}.conv1.weight", (cin, 1, 3, 3)))
    spec.append((f"{prefix}.pointwise.weight", (cout, cin, 1, 1)))


BlockSpec = tuple[int, int, int, int, bool, bool]


def xception_blocks(stem: int, entry: tuple[int, int, int], exit1: int, middle: int) -> list[BlockSpec]:
    """(in, out, reps, stride, start_with_relu, grow_first) of block1..blockN, as in the reference."""
    e1, e2, e3 = entry
    blocks = [(stem, e1, 2, 2, False, True), (e1, e2, 2, 2, True, True), (e2, e3, 2, 2, True, True)]
    blocks += [(e3, e3, 3, 1, True, True)] * middle
    return blocks + [(e3, exit1, 2, 2, True, False)]


def block_layers(cin: int, cout: int, reps: int, stride: int, start_relu: bool, grow_first: bool) -> list[tuple]:
    """The reference Block's `rep` sequence: ('relu',), ('sep', in, out), ('bn', ch), ('pool', stride)."""
    layers: list[tuple] = []
    filters = cin
    if grow_first:
        layers += [("relu",), ("sep", cin, cout), ("bn", cout)]
        filters = cout
    for _ in range(reps - 1):
        layers += [("relu",), ("sep", filters, filters), ("bn", filters)]
    if not grow_first:
        layers += [("relu",), ("sep", cin, cout), ("bn", cout)]
    if not start_relu:
        layers = layers[1:]
    if stride != 1:
        layers.append(("pool", stride))
    return layers


def reference_spec(size: int, base: int, num_res: int, widths: dict, middle: int) -> Spec:
    spec: Spec = [("destructor.freq_mask", (size, size))]
    r = "reconstructor"
    chans = (base, 2 * base, 4 * base)
    for stage, name in ((chans, "Encoder"), (chans[::-1], "Decoder")):
        for i, ch in enumerate(stage):
            for k in range(num_res):
                for j in (0, 1):
                    _conv(spec, f"{r}.{name}.{i}.layers.{k}.main.{j}.main.0", ch, ch, 3)
    c = base
    feat_extract = [
        (3, c, 3, False), (c, 2 * c, 3, False), (2 * c, 4 * c, 3, False),
        (4 * c, 2 * c, 4, True), (2 * c, c, 4, True), (c, 3, 3, False),
    ]
    for i, (cin, cout, k, transpose) in enumerate(feat_extract):
        _conv(spec, f"{r}.feat_extract.{i}.main.0", cin, cout, k, transpose=transpose)
    _conv(spec, f"{r}.Convs.0.main.0", 4 * c, 2 * c, 1)
    _conv(spec, f"{r}.Convs.1.main.0", 2 * c, c, 1)
    for i, out in enumerate((c, 2 * c)):
        _conv(spec, f"{r}.AFFs.{i}.conv.0.main.0", 7 * c, out, 1)
        _conv(spec, f"{r}.AFFs.{i}.conv.1.main.0", out, out, 3)
    for name, out in (("1", 4 * c), ("2", 2 * c)):
        _conv(spec, f"{r}.FAM{name}.merge.main.0", out, out, 3)
        scm = [(3, out // 4, 3), (out // 4, out // 2, 1), (out // 2, out // 2, 3), (out // 2, out - 3, 1)]
        for j, (cin, cout, k) in enumerate(scm):
            _conv(spec, f"{r}.SCM{name}.main.{j}.main.0", cin, cout, k)
        _conv(spec, f"{r}.SCM{name}.conv.main.0", out, out, 1)

    s1, s2 = widths["stem"]
    for branch in ("stage1", "attn_map"):
        _conv(spec, f"classifier.{branch}.0", 3, s1, 3, bias=False)
        _bn(spec, f"classifier.{branch}.1", s1)
        _conv(spec, f"classifier.{branch}.3", s1, s2, 3, bias=False)
        _bn(spec, f"classifier.{branch}.4", s2)
    _conv(spec, "classifier.attn_map.6.conv", 2, 1, 7)
    x1, x2, x3 = widths["exit"]
    blocks = xception_blocks(s2, widths["entry"], x1, middle)
    for b, (cin, cout, reps, stride, start_relu, grow_first) in enumerate(blocks):
        prefix = f"classifier.stage2.{b}"
        for idx, layer in enumerate(block_layers(cin, cout, reps, stride, start_relu, grow_first)):
            if layer[0] == "sep":
                _sep(spec, f"{prefix}.rep.{idx}", layer[1], layer[2])
            elif layer[0] == "bn":
                _bn(spec, f"{prefix}.rep.{idx}", layer[1])
        if cout != cin or stride != 1:
            _conv(spec, f"{prefix}.skip", cin, cout, 1, bias=False)
            _bn(spec, f"{prefix}.skipbn", cout)
    n = len(blocks)
    _sep(spec, f"classifier.stage2.{n}", x1, x2)
    _bn(spec, f"classifier.stage2.{n + 1}", x2)
    _sep(spec, f"classifier.stage2.{n + 3}", x2, x3)
    _bn(spec, f"classifier.stage2.{n + 4}", x3)
    spec += [(f"classifier.stage2.{n + 8}.weight", (1, x3)), (f"classifier.stage2.{n + 8}.bias", (1,))]
    return spec


PAPER_WIDTHS = {"stem": (32, 64), "entry": (128, 256, 728), "exit": (1024, 1536, 2048)}


def scaled_widths(width: float) -> dict:
    return {key: tuple(max(1, round(c * width)) for c in value) for key, value in PAPER_WIDTHS.items()}


def spec_for(config: RALFConfig) -> Spec:
    return reference_spec(
        config.image_size,
        config.reconstructor.base_channels,
        config.reconstructor.num_res_blocks,
        scaled_widths(config.classifier.width),
        config.classifier.middle_blocks,
    )


def random_state(spec: Spec, seed: int) -> dict[str, Tensor]:
    """Random values that keep activations moderate through the deep reference network."""
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, Tensor] = {}
    for name, shape in spec:
        leaf = name.rsplit(".", 1)[1]
        if leaf == "num_batches_tracked":
            state[name] = torch.randint(0, 10_000, shape, generator=gen, dtype=torch.long)
        elif leaf == "running_var":
            state[name] = torch.rand(shape, generator=gen) + 0.5
        elif leaf in ("running_mean", "bias"):
            state[name] = 0.05 * torch.randn(shape, generator=gen)
        elif leaf == "weight" and len(shape) == 1:  # BatchNorm scale
            state[name] = 0.5 + torch.rand(shape, generator=gen)
        elif name == "destructor.freq_mask":
            state[name] = 2.0 * torch.randn(shape, generator=gen)
        else:  # conv / linear weight; fan-in of a transposed conv is its dim 0 (in channels) over the kernel
            transposed = "feat_extract.3" in name or "feat_extract.4" in name
            fan_in = shape[0] * 4 if transposed else math.prod(shape[1:])
            state[name] = torch.randn(shape, generator=gen) * (0.7 / math.sqrt(fan_in))
    return state


# --- independent functional forward of the reference model --------------------------------------------


def unnormalised_dct_matrices(n: int) -> tuple[Tensor, Tensor]:
    """torch_dct's norm=None DCT-II, X_k = 2 sum_i x_i cos(pi k (2i+1) / 2n), and its exact inverse."""
    k = torch.arange(n, dtype=torch.float64).unsqueeze(1)
    i = torch.arange(n, dtype=torch.float64).unsqueeze(0)
    cosines = torch.cos(math.pi * k * (2 * i + 1) / (2 * n))
    forward = 2.0 * cosines
    weights = torch.full((n, 1), 1.0 / n, dtype=torch.float64)
    weights[0] = 1.0 / (2 * n)
    inverse = (cosines * weights).transpose(0, 1)  # x_i = X_0/2n + sum_{k>0} X_k cos(...)/n
    return forward.float(), inverse.float()


def ref_basic(sd: dict, prefix: str, x: Tensor, stride: int = 1, relu: bool = True, transpose: bool = False) -> Tensor:
    weight, bias = sd[f"{prefix}.main.0.weight"], sd[f"{prefix}.main.0.bias"]
    k = weight.shape[-1]
    if transpose:
        y = F.conv_transpose2d(x, weight, bias, stride=stride, padding=k // 2 - 1)
    else:
        y = F.conv2d(x, weight, bias, stride=stride, padding=k // 2)
    return F.relu(y) if relu else y


def ref_res_stage(sd: dict, prefix: str, x: Tensor) -> Tensor:
    k = 0
    while f"{prefix}.layers.{k}.main.0.main.0.weight" in sd:
        block = f"{prefix}.layers.{k}.main"
        x = ref_basic(sd, f"{block}.1", ref_basic(sd, f"{block}.0", x), relu=False) + x
        k += 1
    return x


def ref_scm(sd: dict, prefix: str, x: Tensor) -> Tensor:
    h = x
    for j, relu in enumerate((True, True, True, True)):
        h = ref_basic(sd, f"{prefix}.main.{j}", h, relu=relu)
    return ref_basic(sd, f"{prefix}.conv", torch.cat([x, h], dim=1), relu=False)


def ref_fam(sd: dict, prefix: str, x1: Tensor, x2: Tensor) -> Tensor:
    return x1 + ref_basic(sd, f"{prefix}.merge", x1 * x2, relu=False)


def ref_aff(sd: dict, prefix: str, *xs: Tensor) -> Tensor:
    h = ref_basic(sd, f"{prefix}.conv.0", torch.cat(xs, dim=1))
    return ref_basic(sd, f"{prefix}.conv.1", h, relu=False)


def ref_reconstructor(sd: dict, x: Tensor) -> Tensor:
    r = "reconstructor"
    x_2 = F.interpolate(x, scale_factor=0.5)
    x_4 = F.interpolate(x_2, scale_factor=0.5)
    z2, z4 = ref_scm(sd, f"{r}.SCM2", x_2), ref_scm(sd, f"{r}.SCM1", x_4)
    res1 = ref_res_stage(sd, f"{r}.Encoder.0", ref_basic(sd, f"{r}.feat_extract.0", x))
    z = ref_fam(sd, f"{r}.FAM2", ref_basic(sd, f"{r}.feat_extract.1", res1, stride=2), z2)
    res2 = ref_res_stage(sd, f"{r}.Encoder.1", z)
    z = ref_fam(sd, f"{r}.FAM1", ref_basic(sd, f"{r}.feat_extract.2", res2, stride=2), z4)
    embedding = ref_res_stage(sd, f"{r}.Encoder.2", z)
    z12 = F.interpolate(res1, scale_factor=0.5)
    z21 = F.interpolate(res2, scale_factor=2)
    z42 = F.interpolate(embedding, scale_factor=2)
    z41 = F.interpolate(z42, scale_factor=2)
    res2 = ref_aff(sd, f"{r}.AFFs.1", z12, res2, z42)
    res1 = ref_aff(sd, f"{r}.AFFs.0", res1, z21, z41)
    z = ref_basic(sd, f"{r}.feat_extract.3", ref_res_stage(sd, f"{r}.Decoder.0", embedding), stride=2, transpose=True)
    z = ref_res_stage(sd, f"{r}.Decoder.1", ref_basic(sd, f"{r}.Convs.0", torch.cat([z, res2], dim=1)))
    z = ref_basic(sd, f"{r}.feat_extract.4", z, stride=2, transpose=True)
    z = ref_res_stage(sd, f"{r}.Decoder.2", ref_basic(sd, f"{r}.Convs.1", torch.cat([z, res1], dim=1)))
    return ref_basic(sd, f"{r}.feat_extract.5", z, relu=False) + x


def ref_bn(sd: dict, prefix: str, x: Tensor) -> Tensor:
    return F.batch_norm(
        x, sd[f"{prefix}.running_mean"], sd[f"{prefix}.running_var"], sd[f"{prefix}.weight"], sd[f"{prefix}.bias"],
        training=False, eps=1e-5,
    )


def ref_sep(sd: dict, prefix: str, x: Tensor) -> Tensor:
    x = F.conv2d(x, sd[f"{prefix}.conv1.weight"], padding=1, groups=x.shape[1])
    return F.conv2d(x, sd[f"{prefix}.pointwise.weight"])


def ref_stem(sd: dict, prefix: str, x: Tensor) -> Tensor:
    x = F.relu(ref_bn(sd, f"{prefix}.1", F.conv2d(x, sd[f"{prefix}.0.weight"], stride=2)))
    return F.relu(ref_bn(sd, f"{prefix}.4", F.conv2d(x, sd[f"{prefix}.3.weight"])))


def ref_classifier(sd: dict, diff_recon: Tensor, residual: Tensor, blocks: list) -> Tensor:
    out1 = ref_stem(sd, "classifier.stage1", diff_recon)
    h = ref_stem(sd, "classifier.attn_map", residual)
    pooled = torch.cat([h.max(dim=1, keepdim=True).values, h.mean(dim=1, keepdim=True)], dim=1)
    attention = torch.sigmoid(
        F.conv2d(pooled, sd["classifier.attn_map.6.conv.weight"], sd["classifier.attn_map.6.conv.bias"], padding=3)
    )
    x = out1 * attention
    for b, block in enumerate(blocks):
        prefix = f"classifier.stage2.{b}"
        h = x
        for idx, layer in enumerate(block_layers(*block)):
            if layer[0] == "relu":
                h = F.relu(h)
            elif layer[0] == "sep":
                h = ref_sep(sd, f"{prefix}.rep.{idx}", h)
            elif layer[0] == "bn":
                h = ref_bn(sd, f"{prefix}.rep.{idx}", h)
            else:
                h = F.max_pool2d(h, 3, layer[1], 1)
        skip = x
        if f"{prefix}.skip.weight" in sd:
            skip = ref_bn(sd, f"{prefix}.skipbn", F.conv2d(x, sd[f"{prefix}.skip.weight"], stride=block[3]))
        x = h + skip
    n = len(blocks)
    x = F.relu(ref_bn(sd, f"classifier.stage2.{n + 1}", ref_sep(sd, f"classifier.stage2.{n}", x)))
    x = F.relu(ref_bn(sd, f"classifier.stage2.{n + 4}", ref_sep(sd, f"classifier.stage2.{n + 3}", x)))
    x = F.adaptive_max_pool2d(x, 1).flatten(1)
    return F.linear(x, sd[f"classifier.stage2.{n + 8}.weight"], sd[f"classifier.stage2.{n + 8}.bias"])


def reference_forward_all(sd: dict, x: Tensor, config: RALFConfig) -> tuple[Tensor, Tensor, Tensor]:
    """(filtered x^, reconstruction x~, (B, 1) logits = log-odds of REAL) of the reference RALF in eval mode."""
    dct, idct = unnormalised_dct_matrices(x.shape[-1])
    mask = torch.sigmoid(sd["destructor.freq_mask"])
    filtered = idct @ (mask * (dct @ x @ dct.T)) @ idct.T
    residual = (x - filtered).abs()
    reconstruction = ref_reconstructor(sd, filtered)
    widths = scaled_widths(config.classifier.width)
    blocks = xception_blocks(widths["stem"][1], widths["entry"], widths["exit"][0], config.classifier.middle_blocks)
    return filtered, reconstruction, ref_classifier(sd, (reconstruction - x).abs(), residual, blocks)


def reference_forward(sd: dict, x: Tensor, config: RALFConfig) -> Tensor:
    return reference_forward_all(sd, x, config)[2]


# --- fixtures -------------------------------------------------------------------------------------

PAPER = RALFConfig.paper()
# Full 256x256 input and full widths, one residual block per MIMO-UNet stage and one Xception
# middle block: the reference repeats those blocks unchanged (8 of each), so this exercises every
# kind of layer and the exact per-layer shapes while keeping two CPU forward passes to seconds.
PAPER_SHALLOW = RALFConfig.paper(reconstructor={"num_res_blocks": 1}, classifier={"middle_blocks": 1})
TINY = RALFConfig.tiny()


class Arbitrary:
    """A class instance: unpickling it would mean importing and running code of the file's choice."""


def reference_checkpoint(config: RALFConfig, seed: int = 0) -> tuple[dict[str, Tensor], Tensor]:
    state = random_state(spec_for(config), seed)
    center = torch.randn(config.reconstructor.embedding_dim, generator=torch.Generator().manual_seed(seed + 1))
    return state, center


def checkpoint_tar(state: dict[str, Tensor], center: Tensor) -> dict:
    """The layout of the reference trainer's checkpoint.tar, with optimizer states like Adam's."""
    disc = {"discriminator.0.weight": torch.randn(8, 3, 4, 4), "discriminator.2.1.running_var": torch.ones(16)}
    adam = {
        "state": {0: {"step": torch.tensor(10.0), "exp_avg": torch.zeros(3), "exp_avg_sq": torch.zeros(3)}},
        "param_groups": [{"lr": 2e-4, "betas": (0.5, 0.999), "eps": 1e-8, "weight_decay": 0, "params": [0]}],
    }
    return {
        "epoch": 3, "model": state, "disc": disc, "opt_model": adam, "opt_disc": adam,
        "center": {"center": center}, "loss": 0.25,
    }


@pytest.fixture(scope="module")
def paper_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Tensor], Tensor]:
    state, center = reference_checkpoint(PAPER)
    path = tmp_path_factory.mktemp("reference") / "checkpoint.tar"
    torch.save(checkpoint_tar(state, center), path)
    return path, state, center


@pytest.fixture(scope="module")
def tiny_checkpoint() -> tuple[dict[str, Tensor], Tensor]:
    return reference_checkpoint(TINY, seed=7)


def save(path: Path, obj: object) -> Path:
    torch.save(obj, path)
    return path


# --- mapping --------------------------------------------------------------------------------------


def test_paper_reference_keys_import_bit_exact(paper_checkpoint: tuple[Path, dict[str, Tensor], Tensor]) -> None:
    path, state, center = paper_checkpoint
    model, metadata, report = import_reference(path, PAPER)

    table = mapping_table(model)
    assert set(table) == set(state)  # every reference tensor claimed, none of ours unclaimed
    assert len(state) == len(spec_for(PAPER)) == 531
    ours = model.state_dict()
    flipped = {"classifier.stage2.20.weight", "classifier.stage2.20.bias"}
    for theirs, value in state.items():
        expected = -value if theirs in flipped else value
        got = ours[table[theirs]]
        assert got.dtype == value.dtype and torch.equal(got, expected), theirs
    assert torch.equal(model.center, center)
    assert report.tensors_mapped == 532 and report.center == "checkpoint"
    assert report.ignored_entries == ["epoch", "disc", "opt_model", "opt_disc", "loss"]
    # Spot checks of the structural rules against names written out by hand.
    assert table["destructor.freq_mask"] == "destructor.mask_logits"
    assert table["reconstructor.SCM1.conv.main.0.weight"] == "reconstructor.shallow.1.fuse.0.weight"
    assert table["reconstructor.FAM2.merge.main.0.bias"] == "reconstructor.fam.0.merge.0.bias"
    assert table["reconstructor.Decoder.2.layers.7.main.1.main.0.weight"] == (
        "reconstructor.decoders.2.7.body.1.0.weight"
    )
    assert table["reconstructor.feat_extract.3.main.0.weight"] == "reconstructor.upsample.0.0.weight"
    assert table["classifier.attn_map.6.conv.bias"] == "classifier.guidance.gate.conv.bias"
    assert table["classifier.stage1.4.num_batches_tracked"] == "classifier.backbone.bn2.num_batches_tracked"
    assert table["classifier.stage2.11.skipbn.running_var"] == "classifier.backbone.block12.skipbn.running_var"
    assert table["classifier.stage2.16.weight"] == "classifier.backbone.bn4.weight"
    assert table["classifier.stage2.20.weight"] == "classifier.backbone.fc.weight"
    assert metadata.source == f"reference:zqyuan-tw/RALF checkpoint.tar sha256:{report.sha256[:12]}"


def test_forward_equals_reference_with_label_flipped(tmp_path: Path) -> None:
    state, center = reference_checkpoint(PAPER_SHALLOW, seed=3)
    # A larger final layer so the logit is O(1) and a wrong sign or scale cannot hide in rounding.
    fc = "classifier.stage2.13.weight"
    state[fc] = state[fc] * 40
    path = save(tmp_path / "best.pt", {"state_dict": state, "center": center})
    model, _, _ = import_reference(path, PAPER_SHALLOW)
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(5))
    dct, idct = unnormalised_dct_matrices(256)
    assert torch.allclose(idct @ (dct @ x @ dct.T) @ idct.T, x, atol=1e-5)  # the helper's DCT pair inverts
    with torch.inference_mode():
        filtered, reconstruction, reference_logit = reference_forward_all(state, x, PAPER_SHALLOW)
        reference_logit = reference_logit[:, 0]
        ours = model.forward_all(x)
    assert torch.allclose(ours.destroyed, filtered, atol=1e-5, rtol=0)
    assert torch.allclose(ours.reconstruction, reconstruction, atol=1e-4, rtol=0)
    assert reference_logit.abs().min() > 0.3
    assert torch.allclose(ours.logit, -reference_logit, atol=1e-4, rtol=0)
    assert torch.allclose(torch.sigmoid(ours.logit), 1 - torch.sigmoid(reference_logit), atol=1e-5)


def test_known_reference_logit_becomes_its_negative(tmp_path: Path, tiny_checkpoint: tuple[dict, Tensor]) -> None:
    state, center = tiny_checkpoint
    fc = f"classifier.stage2.{3 + TINY.classifier.middle_blocks + 1 + 8}"
    known = {**state, f"{fc}.weight": torch.zeros_like(state[f"{fc}.weight"]), f"{fc}.bias": torch.tensor([1.75])}
    model, metadata, report = import_reference(save(tmp_path / "z.pt", {"model": known, "center": center}), TINY)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        z = reference_forward(known, x, TINY)[:, 0]
        ours = model(x)
    assert torch.equal(z, torch.full((2,), 1.75))
    assert torch.equal(ours, -z)  # exact: only the final layer's sign changed
    assert torch.allclose(torch.sigmoid(ours), 1 - torch.sigmoid(z))
    # The weights declare this project's convention; the report records the one they were trained in.
    assert metadata.label_convention == report.label_convention == LABEL_CONVENTION
    assert report.reference_label_convention == "sigmoid(logit) = P(real)"
    assert metadata.training["reference_import"]["label_convention_flipped"] is True


# --- checkpoint layouts ---------------------------------------------------------------------------


def test_flat_state_dict_needs_center_or_explicit_opt_out(tmp_path: Path, tiny_checkpoint: tuple[dict, Tensor]) -> None:
    state, _ = tiny_checkpoint
    path = save(tmp_path / "best.pt", state)
    with pytest.raises(ReferenceImportError, match="missing tensors \\(1\\):\n    center"):
        import_reference(path, TINY)
    model, _, report = import_reference(path, TINY, allow_missing_center=True)
    assert report.center == "absent (zeros)" and torch.equal(model.center, torch.zeros(32))
    assert report.ignored_entries == []


def test_data_parallel_prefix_and_flat_center(tmp_path: Path, tiny_checkpoint: tuple[dict, Tensor]) -> None:
    state, center = tiny_checkpoint
    prefixed = {f"module.{name}": value for name, value in state.items()} | {"center": center}
    model, _, report = import_reference(save(tmp_path / "dp.pt", prefixed), TINY)
    assert torch.equal(model.destructor.mask_logits, state["destructor.freq_mask"])
    assert torch.equal(model.center, center) and report.tensors_mapped == len(state) + 1


def test_saved_file_round_trips_with_metadata(tmp_path: Path, tiny_checkpoint: tuple[dict, Tensor]) -> None:
    state, center = tiny_checkpoint
    checkpoint = save(tmp_path / "checkpoint.tar", checkpoint_tar(state, center))
    written, report = import_reference_to_file(checkpoint, tmp_path / "out.safetensors", TINY)
    loaded, metadata = load_weights(tmp_path / "out.safetensors")
    assert metadata == read_metadata(tmp_path / "out.safetensors") == written
    assert metadata.source is not None and metadata.source.startswith("reference:zqyuan-tw/RALF checkpoint.tar sha256:")
    assert len(metadata.source.rsplit(":", 1)[1]) == 12
    ignored = metadata.training["reference_import"]["ignored_entries"]
    assert ignored == ["epoch", "disc", "opt_model", "opt_disc", "loss"]
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        assert torch.allclose(loaded(x), -reference_forward(state, x, TINY)[:, 0], atol=1e-5, rtol=0)


# --- wrong files ----------------------------------------------------------------------------------


def test_every_mismatch_is_listed_by_name_in_one_error(tmp_path: Path, tiny_checkpoint: tuple[dict, Tensor]) -> None:
    state, center = tiny_checkpoint
    broken = dict(state)
    del broken["reconstructor.SCM2.conv.main.0.bias"]
    del broken["classifier.stage2.0.skipbn.num_batches_tracked"]
    broken["classifier.extra_head.weight"] = torch.zeros(2)
    broken["classifier.attn_map.6.conv.weight"] = torch.zeros(1, 2, 3, 3)
    with pytest.raises(ReferenceImportError) as caught:
        import_reference(save(tmp_path / "broken.pt", {"model": broken, "center": {"center": center}}), TINY)
    message = str(caught.value)
    for name in (
        "reconstructor.SCM2.conv.main.0.bias",
        "classifier.stage2.0.skipbn.num_batches_tracked",
        "classifier.extra_head.weight",
        "classifier.attn_map.6.conv.weight: checkpoint (1, 2, 3, 3), expected (1, 2, 7, 7)",
    ):
        assert name in message
    assert caught.value.unknown == ["classifier.extra_head.weight"]
    assert len(caught.value.missing) == 2 and len(caught.value.mismatched) == 1


def test_checkpoint_of_the_wrong_size_is_refused(tiny_checkpoint: tuple[dict, Tensor], tmp_path: Path) -> None:
    state, center = tiny_checkpoint
    with pytest.raises(ReferenceImportError, match="does not fit the 'paper' RALF model") as caught:
        import_reference(save(tmp_path / "tiny.pt", {"model": state, "center": {"center": center}}), PAPER)
    expected = "destructor.freq_mask: checkpoint (64, 64), expected (256, 256) (ours: destructor.mask_logits)"
    assert expected in caught.value.mismatched


def test_checkpoint_of_another_architecture(tmp_path: Path) -> None:
    from torchvision.models import resnet18

    path = save(tmp_path / "resnet18.pth", resnet18(weights=None).state_dict())
    problem = "not a reference RALF checkpoint: none of its 122 tensors"
    with pytest.raises(ReferenceImportError, match=problem) as caught:
        import_reference(path, TINY)
    assert "conv1.weight" in caught.value.unknown and "layer4.1.bn2.num_batches_tracked" in caught.value.unknown


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        ({"model": Arbitrary()}, "GLOBAL test_import_reference.Arbitrary"),
        ({"model": {"destructor.freq_mask": {1, 2}}}, "entry 'destructor.freq_mask' is a set, not a tensor"),
        ([torch.zeros(2)], "holds a list, not a state dict"),
    ],
)
def test_pickles_with_other_objects_are_refused(tmp_path: Path, payload: object, problem: str) -> None:
    path = save(tmp_path / "odd.pt", payload)
    with pytest.raises(ReferenceImportError, match="not a plain tensor checkpoint") as caught:
        import_reference(path, TINY)
    assert problem in str(caught.value)


def test_plain_pickle_of_an_object_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "object.pkl"
    path.write_bytes(pickle.dumps({"model": Arbitrary()}))
    with pytest.raises(ReferenceImportError, match="not a plain tensor checkpoint"):
        import_reference(path, TINY)


def test_truncated_empty_and_foreign_files(tmp_path: Path, tiny_checkpoint: tuple[dict, Tensor]) -> None:
    state, center = tiny_checkpoint
    whole = save(tmp_path / "whole.pt", {"model": state, "center": {"center": center}}).read_bytes()
    (tmp_path / "cut.pt").write_bytes(whole[: len(whole) // 2])
    legacy = tmp_path / "legacy.pt"
    torch.save({"model": state}, legacy, _use_new_zipfile_serialization=False)
    legacy.write_bytes(legacy.read_bytes()[:-1000])
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "notes.pt").write_text("hello, not weights\n")
    cases = {
        "cut.pt": "truncated or corrupt checkpoint (zip archive",
        "legacy.pt": "truncated or corrupt checkpoint (pickle",
        "empty.pt": "is empty (0 bytes)",
        "notes.pt": "not a PyTorch checkpoint: neither a torch.save zip archive nor a pickle",
        "missing.pt": "checkpoint not found",
    }
    for name, problem in cases.items():
        with pytest.raises(ReferenceImportError) as caught:
            import_reference(tmp_path / name, TINY)
        assert problem in str(caught.value), name


# --- command line ---------------------------------------------------------------------------------


def test_cli_imports_and_reports_errors(tmp_path: Path, tiny_checkpoint: tuple[dict, Tensor]) -> None:
    from cli.main import app

    state, center = tiny_checkpoint
    checkpoint = save(tmp_path / "checkpoint.tar", checkpoint_tar(state, center))
    runner = CliRunner()
    ok = runner.invoke(app, ["import-weights", str(checkpoint), str(tmp_path / "w.safetensors"), "--preset", "tiny"])
    assert ok.exit_code == 0, ok.output
    assert "label convention flipped" in ok.output and "disc, opt_model" in ok.output
    assert read_metadata(tmp_path / "w.safetensors").source.startswith("reference:zqyuan-tw/RALF checkpoint.tar")

    best = save(tmp_path / "best.pt", state)
    refused = runner.invoke(app, ["import-weights", str(best), str(tmp_path / "b.safetensors"), "--preset", "tiny"])
    assert refused.exit_code == 2 and "missing tensors (1)" in refused.output and refused.exception is not None
    assert not (tmp_path / "b.safetensors").exists()
    accepted = runner.invoke(
        app, ["import-weights", str(best), str(tmp_path / "b.safetensors"), "--preset", "tiny", "--no-center"]
    )
    assert accepted.exit_code == 0, accepted.output

    (tmp_path / "junk.pth").write_bytes(b"\x00" * 64)
    junk = runner.invoke(app, ["import-weights", str(tmp_path / "junk.pth"), str(tmp_path / "j.safetensors")])
    assert junk.exit_code == 2 and "not a PyTorch checkpoint" in junk.output
    assert "Traceback" not in junk.output
