"""RALF weights file: bit-exact round trip, metadata rewrite, clear refusals."""

from __future__ import annotations

import json
import pickle
import re
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ralf.config import RALFConfig
from ralf.core.metadata import (
    LABEL_CONVENTION,
    Calibration,
    WeightsError,
    WeightsMetadata,
    read_metadata,
    write_metadata,
)
from ralf.model import RALF
from ralf.weights import load_weights, save_weights


@pytest.fixture(scope="module")
def trained_like() -> RALF:
    """Tiny model whose BN statistics, mask and center all differ from their initial values."""
    torch.manual_seed(0)
    model = RALF(RALFConfig.tiny()).train()
    with torch.no_grad():
        model(torch.rand(2, 3, 64, 64))
        model.destructor.mask_logits.normal_()
        model.center.normal_()
    return model.eval()


def assert_same_state(a: RALF, b: RALF) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for name in sa:
        assert sa[name].dtype == sb[name].dtype, name
        assert torch.equal(sa[name], sb[name]), name


def calibration() -> Calibration:
    return Calibration(
        threshold=0.25, method="target_fpr", target_fpr=0.01, achieved_tpr=0.8, achieved_fpr=0.009,
        level="video", temperature=None, dataset_fingerprint="sha256:abc", date="2025-01-01", num_real=10, num_fake=12,
    )


def test_round_trip_is_bit_exact(tmp_path: Path, trained_like: RALF) -> None:
    path = tmp_path / "model.safetensors"
    metadata = WeightsMetadata(config=trained_like.config, pretrained={"xception": "random"}, training={"steps": 3})
    written = save_weights(path, trained_like, metadata)
    assert re.fullmatch(r"ralf-tiny-[0-9a-f]{12}", written.model_version)
    loaded, read = load_weights(path)
    assert_same_state(trained_like, loaded)
    assert read == written
    assert read.label_convention == LABEL_CONVENTION == "sigmoid(logit) = P(fake)"
    assert read.format == "ralf-weights" and read.format_version == 1
    assert not loaded.training
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(trained_like(x), loaded(x))
    # Same tensors give the same version; the center is part of it.
    assert save_weights(tmp_path / "again.safetensors", trained_like).model_version == written.model_version
    other = RALF(RALFConfig.tiny())
    other.load_state_dict(trained_like.state_dict())
    other.center.add_(1.0)
    assert save_weights(tmp_path / "other.safetensors", other).model_version != written.model_version


def test_write_metadata_keeps_tensors(tmp_path: Path, trained_like: RALF) -> None:
    path = tmp_path / "model.safetensors"
    written = save_weights(path, trained_like)
    tensor_bytes = path.read_bytes()[8 + struct.unpack("<Q", path.read_bytes()[:8])[0]:]
    write_metadata(path, written.model_copy(update={"calibration": calibration()}))
    assert path.read_bytes().endswith(tensor_bytes)
    assert read_metadata(path).calibration == calibration()
    loaded, metadata = load_weights(path)
    assert_same_state(trained_like, loaded)
    assert metadata.model_version == written.model_version
    with pytest.raises(WeightsError, match="different config"):
        write_metadata(path, written.model_copy(update={"config": RALFConfig.paper()}))


def test_torch_checkpoints_and_pickles_are_refused(tmp_path: Path, trained_like: RALF) -> None:
    zipped, legacy, plain = tmp_path / "a.pth", tmp_path / "b.pth", tmp_path / "c.pkl"
    torch.save(trained_like.state_dict(), zipped)
    torch.save(trained_like.state_dict(), legacy, _use_new_zipfile_serialization=False)
    plain.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    with pytest.raises(WeightsError, match="zip / torch.save checkpoint"):
        load_weights(zipped)
    for path in (legacy, plain):
        with pytest.raises(WeightsError, match="pickle file"):
            load_weights(path)
        with pytest.raises(WeightsError, match="pickle file"):
            read_metadata(path)


def test_missing_empty_and_corrupt_files(tmp_path: Path, trained_like: RALF) -> None:
    with pytest.raises(WeightsError, match="not found"):
        load_weights(tmp_path / "absent.safetensors")
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(WeightsError, match="empty or truncated"):
        load_weights(empty)
    good = tmp_path / "good.safetensors"
    save_weights(good, trained_like)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(WeightsError, match="cannot read tensors"):
        load_weights(truncated)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!" + b"\x00" * 32)
    with pytest.raises(WeightsError, match="not a safetensors file|corrupt"):
        load_weights(garbage)


def test_foreign_safetensors_and_future_versions(tmp_path: Path, trained_like: RALF) -> None:
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(WeightsError, match="without RALF metadata"):
        load_weights(foreign)
    future = tmp_path / "future.safetensors"
    meta = json.loads(WeightsMetadata(config=trained_like.config).model_dump_json())
    meta["format_version"] = 2
    save_file({"w": torch.zeros(2)}, str(future), metadata={"ralf": json.dumps(meta)})
    with pytest.raises(WeightsError, match="format version 2"):
        load_weights(future)


def test_wrong_shapes_and_names_are_reported_together(tmp_path: Path, trained_like: RALF) -> None:
    tensors = {k: v.clone() for k, v in trained_like.state_dict().items()}
    del tensors["center"]
    tensors["destructor.mask_logits"] = torch.zeros(32, 32)
    tensors["classifier.extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.safetensors"
    metadata = WeightsMetadata(config=trained_like.config, model_version="x")
    save_file(tensors, str(path), metadata={"ralf": metadata.model_dump_json()})
    with pytest.raises(WeightsError) as error:
        load_weights(path)
    message = str(error.value)
    assert "missing tensors (1): center" in message
    assert "unexpected tensors (1): classifier.extra.weight" in message
    assert "destructor.mask_logits: file (32, 32) vs model (64, 64)" in message


def test_metadata_must_match_model(tmp_path: Path, trained_like: RALF) -> None:
    with pytest.raises(WeightsError, match="differs"):
        save_weights(tmp_path / "x.safetensors", trained_like, WeightsMetadata(config=RALFConfig.paper()))


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_weights_and_checkpoints_are_readable_as_the_umask_allows(
    tmp_path: Path, trained_like: RALF, umask: int
) -> None:
    """safetensors writes 0600 files; a worker running as another user (uid 10001 in the image, weights
    mounted read-only) could not read what train/calibrate/import-weights/export wrote on the host."""
    import os
    import stat

    from trainer.checkpoint import TrainingState, save_checkpoint

    previous = os.umask(umask)
    try:
        path = tmp_path / "w.safetensors"
        metadata = save_weights(path, trained_like)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask
        write_metadata(path, metadata.model_copy(update={"source": "rewritten"}))
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask
        folder = save_checkpoint(tmp_path / "checkpoints", TrainingState(step=1, tensors={"w": torch.zeros(2)}), keep=1)
        for written in folder.iterdir():
            assert stat.S_IMODE(os.stat(written).st_mode) == 0o666 & ~umask, written.name
    finally:
        os.umask(previous)
