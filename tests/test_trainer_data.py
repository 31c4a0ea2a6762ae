"""Dataset layout readers, group-wise splits, the crop dataset and the balanced batch plan."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trainer import data, layouts
from trainer.layouts import DatasetLayoutError


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x00")
    return path


def _png(path: Path, value: int = 100, size: int = 12) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.full((size, size, 3), value, np.uint8)
    pixels[:, : size // 2, 0] = 255  # left half differs so a flip is visible
    Image.fromarray(pixels).save(path)
    return path


def _crop_tree(root: Path, real: int, fake: int, frames: int = 3) -> Path:
    for label, count in (("real", real), ("fake", fake)):
        for v in range(count):
            for f in range(frames):
                _png(root / label / f"vid{v:02d}" / f"{f:03d}.png", value=40 if label == "real" else 200)
    return root


def test_folder_layout_reads_crop_folders_and_videos(tmp_path: Path) -> None:
    _crop_tree(tmp_path / "a", real=2, fake=1)
    _touch(tmp_path / "a" / "fake" / "clip.mp4")
    (tmp_path / "a" / "real" / "notes.txt").write_text("ignored")
    entries = layouts.read_layout("folder", tmp_path / "a")
    assert sorted(e.video_id for e in entries) == ["fake/clip", "fake/vid00", "real/vid00", "real/vid01"]
    by_id = {e.video_id: e for e in entries}
    assert by_id["fake/vid00"].is_fake and not by_id["real/vid00"].is_fake
    assert by_id["fake/vid00"].group_id == by_id["real/vid00"].group_id == "vid00"
    assert by_id["fake/clip"].is_video_file and by_id["fake/clip"].split is None

    _crop_tree(tmp_path / "b" / "train", real=1, fake=1)
    _crop_tree(tmp_path / "b" / "val", real=1, fake=1)
    splits = {e.video_id: e.split for e in layouts.read_layout("folder", tmp_path / "b")}
    assert splits == {"train/real/vid00": "train", "train/fake/vid00": "train", "val/real/vid00": "val", "val/fake/vid00": "val"}


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda root: root.mkdir(), "neither a real/ nor a fake/"),
        (lambda root: _png(root / "real" / "loose.png"), "directly in"),
        (lambda root: (root / "fake" / "empty").mkdir(parents=True), "holds no face crop"),
        (lambda root: None, "dataset folder not found"),
    ],
)
def test_folder_layout_errors_name_the_path(tmp_path: Path, make, message: str) -> None:
    root = tmp_path / "ds"
    make(root)
    with pytest.raises(DatasetLayoutError, match=message) as info:
        layouts.read_layout("folder", root)
    assert str(root) in str(info.value)


def _ffpp(root: Path, compression: str = "c23") -> Path:
    pairs = {"train": [["000", "003"]], "val": [["001", "004"]], "test": [["002", "005"]]}
    for split, content in pairs.items():
        (root / "splits").mkdir(parents=True, exist_ok=True)
        (root / "splits" / f"{split}.json").write_text(json.dumps(content))
        for target, source in content:
            for vid in (target, source):
                _touch(root / "original_sequences" / "youtube" / compression / "videos" / f"{vid}.mp4")
            for method in layouts.FFPP_METHODS:
                for name in (f"{target}_{source}", f"{source}_{target}"):
                    _touch(root / "manipulated_sequences" / method / compression / "videos" / f"{name}.mp4")
    return root


def test_ffpp_reader(tmp_path: Path) -> None:
    root = _ffpp(tmp_path / "ff", "c40")
    entries = layouts.read_layout("ffpp", root, compression="c40")
    assert len(entries) == 3 * (2 + 4 * 2)
    train = [e for e in entries if e.split == "train"]
    assert {e.video_id for e in train if not e.is_fake} == {"original/000", "original/003"}
    assert {e.source for e in train if e.is_fake} == set(layouts.FFPP_METHODS)
    assert {e.group_id for e in train} == {"000_003"}
    only_df = layouts.read_layout("ffpp", root, compression="c40", methods=("Deepfakes",))
    assert {e.source for e in only_df} == {"real", "Deepfakes"}
    with pytest.raises(DatasetLayoutError, match="original_sequences/youtube/c23/videos"):
        layouts.read_layout("ffpp", root, compression="c23")


def test_ffpp_reader_errors(tmp_path: Path) -> None:
    root = _ffpp(tmp_path / "ff")
    (root / "splits" / "val.json").write_text("{not json")
    with pytest.raises(DatasetLayoutError, match="val.json is not valid JSON"):
        layouts.read_layout("ffpp", root)
    (root / "splits" / "val.json").write_text('[["001"]]')
    with pytest.raises(DatasetLayoutError, match="val.json must be a JSON list"):
        layouts.read_layout("ffpp", root)
    (root / "splits" / "val.json").unlink()
    with pytest.raises(DatasetLayoutError, match="missing file: .*val.json"):
        layouts.read_layout("ffpp", root)
    root2 = _ffpp(tmp_path / "ff2")
    (root2 / "manipulated_sequences" / "FaceSwap" / "c23" / "videos" / "000_003.mp4").unlink()
    with pytest.raises(DatasetLayoutError, match="1 FF\\+\\+ videos .* missing, e.g. .*000_003.mp4"):
        layouts.read_layout("ffpp", root2)


def test_celebdf_list_label_one_is_real(tmp_path: Path) -> None:
    root = tmp_path / "celeb"
    _touch(root / "Celeb-real" / "id0_0000.mp4")
    _touch(root / "Celeb-synthesis" / "id0_id1_0000.mp4")
    (root / layouts.CELEBDF_LIST).write_text("1 Celeb-real/id0_0000.mp4\n0 Celeb-synthesis/id0_id1_0000.mp4\n")
    entries = {e.video_id: e for e in layouts.read_layout("celebdf", root)}
    assert not entries["Celeb-real/id0_0000"].is_fake
    assert entries["Celeb-synthesis/id0_id1_0000"].is_fake
    assert {e.split for e in entries.values()} == {"test"}
    (root / layouts.CELEBDF_LIST).write_text("real Celeb-real/id0_0000.mp4\n")
    with pytest.raises(DatasetLayoutError, match=f"{layouts.CELEBDF_LIST}:1"):
        layouts.read_layout("celebdf", root)
    (root / layouts.CELEBDF_LIST).unlink()
    with pytest.raises(DatasetLayoutError, match="missing file"):
        layouts.read_layout("celebdf", root)


def test_dfdc_metadata(tmp_path: Path) -> None:
    root = tmp_path / "dfdc"
    _touch(root / "part0" / "aaa.mp4")
    _touch(root / "part0" / "bbb.mp4")
    meta = {"aaa.mp4": {"label": "REAL", "split": "train"}, "bbb.mp4": {"label": "FAKE", "original": "aaa.mp4"}}
    (root / "part0" / "metadata.json").write_text(json.dumps(meta))
    entries = {e.video_id: e for e in layouts.read_layout("dfdc", root)}
    assert not entries["part0/aaa"].is_fake and entries["part0/bbb"].is_fake
    assert entries["part0/bbb"].group_id == entries["part0/aaa"].group_id == "aaa"
    (root / "part0" / "metadata.json").write_text(json.dumps({"aaa.mp4": {"label": "maybe"}}))
    with pytest.raises(DatasetLayoutError, match="metadata.json: entry 'aaa.mp4'"):
        layouts.read_layout("dfdc", root)
    with pytest.raises(DatasetLayoutError, match="missing file: .*metadata.json"):
        layouts.read_layout("dfdc", tmp_path)


def test_records_and_group_split(tmp_path: Path) -> None:
    root = _crop_tree(tmp_path / "crops", real=5, fake=5)
    records = data.load_crop_records(root)
    assert len(records) == 30
    split = data.split_by_group(records, val_fraction=0.2, seed=1)
    for group in {r.group_id for r in split}:
        assert len({r.split for r in split if r.group_id == group}) == 1  # never split inside a group
    val = data.select_split(split, "val")
    data.require_both_classes(val, "validation")
    data.require_both_classes(data.select_split(split, "train"), "training")
    assert data.split_by_group(records, 0.2, seed=1) == split
    with pytest.raises(DatasetLayoutError, match="only real"):
        data.require_both_classes([r for r in records if not r.is_fake], "training")


def test_video_files_need_prepare_and_index_errors(tmp_path: Path) -> None:
    _touch(tmp_path / "v" / "real" / "a.mp4")
    with pytest.raises(DatasetLayoutError, match="ralf-cli prepare"):
        data.load_crop_records(tmp_path / "v")
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / data.INDEX_FILE).write_text('{"path": "a.png", "video_id": "a", "group_id": "a", "frame_index": 0, "label": "maybe"}\n')
    with pytest.raises(DatasetLayoutError, match="index.jsonl:1: label"):
        data.load_crop_records(tmp_path / "p")


def test_dataset_flip_resize_and_corrupt_image(tmp_path: Path) -> None:
    root = _crop_tree(tmp_path / "crops", real=1, fake=1, frames=1)
    records = data.load_crop_records(root)
    dataset = data.FaceCropDataset(records, image_size=8)
    image, label, index = dataset[0]
    flipped, _, _ = dataset[(0, True)]
    assert image.shape == (3, 8, 8) and 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    torch.testing.assert_close(flipped, image.flip(-1))
    (records[1].path).write_bytes(b"not a png at all")
    batch = data.collate_crops([dataset[0], dataset[1]])
    with pytest.raises(data.ImageReadError, match="cannot read face crop .*000.png"):
        data.unwrap_batch(batch)


def test_balanced_plan_is_balanced_deterministic_and_rank_disjoint() -> None:
    is_fake = [False] * 3 + [True] * 9
    plan = data.BalancedBatchPlan(is_fake, batch_size=4, seed=7)
    assert plan.batches_per_epoch == 5  # ceil(9 fakes / 2 per batch)
    seen_fake = []
    for step in range(plan.batches_per_epoch):
        batch = plan.batch(*plan.position(step))
        labels = [is_fake[i] for i, _ in batch]
        assert labels.count(True) == labels.count(False) == 2
        seen_fake += [i for i, _ in batch if is_fake[i]]
    assert len(set(seen_fake)) == 9  # one epoch covers the larger class once
    again = data.BalancedBatchPlan(is_fake, batch_size=4, seed=7)
    expected = [[(i, f, s) for i, f in plan.batch(*plan.position(s))] for s in range(3, 9)]
    assert list(again.steps(3, 9)) == expected
    flips = [f for s in range(50) for _, f in plan.batch(*plan.position(s))]
    assert 0.3 < np.mean(flips) < 0.7
    ranks = [data.BalancedBatchPlan(is_fake, 4, seed=7, rank=r, world_size=2) for r in range(2)]
    assert ranks[0].batches_per_epoch == 2
    fakes = [{i for i, _ in p.batch(0, pos) if is_fake[i]} for p in ranks for pos in range(2)]
    assert len(set().union(*fakes)) == 8  # ranks draw different fakes


def test_validation_carved_from_train_when_data_has_none(tmp_path: Path) -> None:
    _crop_tree(tmp_path / "d" / "train", real=4, fake=4)
    _crop_tree(tmp_path / "d" / "test", real=1, fake=1)
    records = data.ensure_validation(data.load_crop_records(tmp_path / "d"), val_fraction=0.25, seed=0)
    val = data.select_split(records, "val")
    data.require_both_classes(val, "validation")
    assert all(r.video_id.startswith("train/") for r in val)
    assert {r.split for r in records if r.video_id.startswith("test/")} == {"test"}
