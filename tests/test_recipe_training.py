"""Training on real faces alone: self-blended twins as the fake class, drawn anew every step but
reproducibly, the time budget and early stopping of `ralf-cli train`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trainer import data
from trainer.config import TrainConfig
from trainer.loop import train
from trainer.sbi import SelfBlendConfig

SIZE = 64


def _astronaut_crop(rng: np.random.Generator) -> np.ndarray:
    from skimage import data as skdata

    image = Image.fromarray(skdata.astronaut())
    x, y, half = 235 + rng.uniform(-10, 10), 125 + rng.uniform(-10, 10), rng.uniform(95, 115)
    crop = image.crop(tuple(int(v) for v in (x - half, y - half, x + half, y + half))).resize((SIZE, SIZE))
    gain = rng.uniform(0.85, 1.15, 3)
    return np.clip(np.asarray(crop, np.float32) * gain, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def real_crops(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared folder of real crops only (6 'people', 3 frames each), with landmarks on some."""
    root = tmp_path_factory.mktemp("reals")
    rng = np.random.default_rng(0)
    rows = []
    for person in range(6):
        for frame in range(3):
            path = Path("crops") / f"p{person}" / f"f{frame}.png"
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(_astronaut_crop(rng)).save(root / path)
            landmarks = [[24, 26], [40, 26], [32, 35], [26, 44], [38, 44]] if person % 2 else None
            rows.append(
                {"path": path.as_posix(), "video_id": f"p{person}", "group_id": f"p{person}", "frame_index": frame,
                 "label": "real", "landmarks": landmarks}
            )  # fmt: skip
    (root / data.INDEX_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_fake_sources(real_crops: Path) -> None:
    records = data.load_crop_records(real_crops)
    fake = data.CropRecord(Path("x.png"), "fake/x", "p0", 0, True, None)
    assert data.with_fake_source([*records, fake], "data") == [*records, fake]
    sbi = data.with_fake_source([*records, fake], "sbi")
    assert len(sbi) == 2 * len(records) and fake not in sbi
    twins = [r for r in sbi if r.self_blend]
    assert all(t.is_fake and t.video_id.endswith("#sbi") for t in twins)
    assert [t.group_id for t in twins] == [r.group_id for r in records]  # a person stays on one side
    assert fake in data.with_fake_source([*records, fake], "data+sbi")
    with pytest.raises(ValueError, match="fake source"):
        data.with_fake_source(records, "gan")


def test_twins_are_drawn_per_step_and_reproducible(real_crops: Path) -> None:
    records = data.with_fake_source(data.load_crop_records(real_crops), "sbi")
    config = SelfBlendConfig()
    dataset = data.FaceCropDataset(records, SIZE, self_blend=config, seed=3)
    twin = next(i for i, r in enumerate(records) if r.self_blend and r.landmarks)
    real = records.index(next(r for r in records if r.path == records[twin].path and not r.self_blend))
    first, again = dataset[(twin, False, 5)][0], dataset[(twin, False, 5)][0]
    assert torch.equal(first, again)
    others = [dataset[(twin, False, step)][0] for step in range(6, 10)]
    assert any(not torch.equal(first, other) for other in others)  # a new fake each step
    assert not torch.equal(dataset[(twin, False, 5)][0], dataset[(real, False, 5)][0])
    assert torch.equal(dataset[twin][0], dataset[twin][0])  # validation: draw 0, always the same
    assert torch.equal(dataset[(twin, True, 5)][0], first.flip(-1))
    no_landmarks = next(i for i, r in enumerate(records) if r.self_blend and not r.landmarks)
    assert dataset[(no_landmarks, False, 1)][0].shape == (3, SIZE, SIZE)
    with pytest.raises(ValueError, match="self-blend"):
        data.FaceCropDataset(records, SIZE)


def _config(**overrides: object) -> TrainConfig:
    base = dict(
        preset="tiny", fakes="sbi", batch_size=4, steps=40, num_workers=0, val_fraction=0.34, val_every=2,
        log_every=2, checkpoint_every=100, allow_random_init=True, loss={"use_con": False},
    )  # fmt: skip
    return TrainConfig(**{**base, **overrides})


def test_real_faces_alone_train_with_early_stopping(real_crops: Path, tmp_path: Path, one_thread: None) -> None:
    result = train(_config(patience=2), real_crops, tmp_path / "run", progress=False)
    assert result.stopped == "patience" and result.steps < 40
    assert result.best_step is not None and result.steps - result.best_step >= 2 * 2
    log = [json.loads(line) for line in result.log_path.read_text().splitlines()]
    validations = [r for r in log if r["event"] == "val"]
    assert validations and validations[-1]["step"] == result.steps
    assert result.best_weights is not None and result.best_weights.is_file()


def test_time_budget_validates_and_stops(real_crops: Path, tmp_path: Path, one_thread: None) -> None:
    result = train(_config(max_minutes=1e-4, val_every=1000), real_crops, tmp_path / "run", progress=False)
    assert result.stopped == "time" and result.steps == 1
    assert result.best_weights is not None  # the stop validated
    # The budget belongs to one invocation: a resume may give another one.
    again = train(_config(max_minutes=1e-4, val_every=1000), real_crops, tmp_path / "run", resume=True, progress=False)
    assert again.steps == 2 and again.stopped == "time"


def test_self_blend_output_reads_as_a_folder_layout(real_crops: Path, tmp_path: Path) -> None:
    """`ralf-cli self-blend` output feeds `evaluate`/`calibrate`: video ids holding '/' (talking heads
    are `repo/clip.mp4`) become one folder each, and real/x pairs with its twin fake/x."""
    from trainer.layouts import read_layout
    from trainer.pseudo_fakes import write_pseudo_fakes

    nested = tmp_path / "nested"
    nested.mkdir()
    rows = [json.loads(line) for line in (real_crops / data.INDEX_FILE).read_text().splitlines()]
    for row in rows:
        row["video_id"] = f"repo/{row['video_id']}.mp4"
        (nested / row["path"]).parent.mkdir(parents=True, exist_ok=True)
        (nested / row["path"]).write_bytes((real_crops / row["path"]).read_bytes())
    (nested / data.INDEX_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = write_pseudo_fakes([nested], tmp_path / "out", split=None, progress=False)
    assert summary.real == summary.fake == len(rows)
    entries = read_layout("folder", tmp_path / "out")
    assert sorted(e.video_id for e in entries if not e.is_fake) == [f"real/repo__p{i}.mp4" for i in range(6)]
    assert {e.group_id for e in entries if e.is_fake} == {e.group_id for e in entries if not e.is_fake}
