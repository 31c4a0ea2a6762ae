"""Face-crop records, group-wise splits, the crop dataset and the class-balanced batch plan.

Training data is a folder of face crops: either what `ralf-cli prepare` wrote (an `index.jsonl`
beside the crops) or the plain folder layout with one sub-folder of crops per video.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch.utils.data import Dataset

from trainer.degrade import DegradeConfig, degrade
from trainer.layouts import IMAGE_SUFFIXES, DatasetLayoutError, Split, read_folder
from trainer.sbi import SelfBlendConfig, default_landmarks, jpeg_compress, self_blend

INDEX_FILE = "index.jsonl"
DEGRADE_STREAM = 1  # the degradations draw from their own random stream, apart from the self-blending's


class CropRow(BaseModel):
    """One line of a prepared dataset's index.jsonl (paths relative to the index's folder)."""

    model_config = ConfigDict(extra="ignore")

    path: str
    video_id: str
    group_id: str
    frame_index: int = Field(ge=0)
    label: str = Field(pattern="^(real|fake)$")
    split: Split | None = None
    box: tuple[float, float, float, float] | None = None
    score: float | None = None
    # The detector's 5 points (eyes, nose, mouth corners) in the saved crop's pixels.
    landmarks: list[tuple[float, float]] | None = Field(None, min_length=5, max_length=5)
    source: str = ""


@dataclass(frozen=True)
class CropRecord:
    path: Path
    video_id: str
    group_id: str
    frame_index: int
    is_fake: bool
    split: Split | None
    landmarks: tuple[tuple[float, float], ...] | None = None  # 5 points in the crop's pixels
    # A pseudo-fake made on the fly by self-blending the real crop at `path` (trainer.sbi).
    self_blend: bool = False


def load_crop_records(data: Path) -> list[CropRecord]:
    """Every face crop of a prepared dataset (`index.jsonl`) or of a folder layout of crop folders."""
    data = Path(data)
    if not data.is_dir():
        raise DatasetLayoutError(f"dataset folder not found: {data}")
    index = data / INDEX_FILE
    records = _records_from_index(index) if index.is_file() else _records_from_folders(data)
    if not records:
        raise DatasetLayoutError(f"no face crops in {index if index.is_file() else data}")
    return records


def _records_from_index(index: Path) -> list[CropRecord]:
    records = []
    with index.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = CropRow.model_validate_json(line)
            except ValidationError as error:
                first = error.errors()[0]
                where = ".".join(str(p) for p in first["loc"]) or "line"
                raise DatasetLayoutError(f"{index}:{number}: {where}: {first['msg']}") from None
            records.append(
                CropRecord(
                    path=index.parent / row.path,
                    video_id=row.video_id,
                    group_id=row.group_id,
                    frame_index=row.frame_index,
                    is_fake=row.label == "fake",
                    split=row.split,
                    landmarks=tuple(row.landmarks) if row.landmarks is not None else None,
                )
            )
    return records


def _records_from_folders(root: Path) -> list[CropRecord]:
    records = []
    for entry in read_folder(root):
        if entry.path.is_file():
            raise DatasetLayoutError(
                f"{entry.path} is a video file; training reads face crops: run `ralf-cli prepare {root} OUT` "
                "first and train on OUT"
            )
        images = sorted(p for p in entry.path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        for position, image in enumerate(images):
            records.append(CropRecord(image, entry.video_id, entry.group_id, position, entry.is_fake, entry.split))
    return records


def split_by_group(records: Sequence[CropRecord], val_fraction: float, seed: int) -> list[CropRecord]:
    """Records with a split keep it; without, whole groups go to 'val' until each class has its share.

    Groups are shuffled with `seed`; a group joins 'val' while its classes' validation share is below
    `val_fraction` of that class's videos, so both classes are held out whenever both have >= 2 groups.
    """
    with_split = sum(r.split is not None for r in records)
    if with_split == len(records):
        return list(records)
    if with_split:
        raise DatasetLayoutError("some crops have a split and others none; give every crop a split or none")
    videos: dict[str, dict[bool, set[str]]] = {}
    for r in records:
        videos.setdefault(r.group_id, {False: set(), True: set()})[r.is_fake].add(r.video_id)
    totals = {c: sum(len(v[c]) for v in videos.values()) for c in (False, True)}
    held = {False: 0, True: 0}
    groups = sorted(videos)
    np.random.default_rng(seed).shuffle(groups)
    val_groups = set()
    for group in groups:
        counts = {c: len(videos[group][c]) for c in (False, True)}
        wanted = [c for c in (False, True) if counts[c] and held[c] < val_fraction * totals[c]]
        # Never move the last training group of a class into validation.
        leaves_train = all(held[c] + counts[c] < totals[c] for c in (False, True) if counts[c])
        if wanted and leaves_train:
            val_groups.add(group)
            for c in (False, True):
                held[c] += counts[c]
    return [replace(r, split="val" if r.group_id in val_groups else "train") for r in records]


def ensure_validation(records: Sequence[CropRecord], val_fraction: float, seed: int) -> list[CropRecord]:
    """Group-wise splits, and a validation share carved from the training groups when the data's own
    splits have none (e.g. only train/ and test/ folders)."""
    records = split_by_group(records, val_fraction, seed)
    if any(r.split == "val" for r in records):
        return records
    train = [replace(r, split=None) for r in records if r.split == "train"]
    if not train:
        return records
    carved = iter(split_by_group(train, val_fraction, seed))
    return [next(carved) if r.split == "train" else r for r in records]


def select_split(records: Sequence[CropRecord], split: Split) -> list[CropRecord]:
    return [r for r in records if r.split == split]


def with_fake_source(records: Sequence[CropRecord], fakes: str) -> list[CropRecord]:
    """The records a run trains or validates on for a fake source (`TrainConfig.fakes`).

    "data": as they are. "sbi": the reals plus one self-blended twin of each (the data's own fakes
    are left out). "data+sbi": everything plus the twins. A twin keeps its real's group, so a person
    never lands on both sides of a split, and gets a video id of its own for video-level metrics.
    """
    if fakes == "data":
        return list(records)
    if fakes not in ("sbi", "data+sbi"):
        raise ValueError(f"unknown fake source {fakes!r}; choose data, sbi or data+sbi")
    reals = [r for r in records if not r.is_fake]
    kept = reals if fakes == "sbi" else list(records)
    twins = [replace(r, video_id=f"{r.video_id}#sbi", is_fake=True, self_blend=True) for r in reals]
    return kept + twins


def require_both_classes(records: Sequence[CropRecord], what: str) -> None:
    """Raise DatasetLayoutError unless `records` hold real and fake crops."""
    if not records:
        raise DatasetLayoutError(f"the {what} set is empty")
    fakes = sum(r.is_fake for r in records)
    if fakes == 0 or fakes == len(records):
        only = "fake" if fakes else "real"
        raise DatasetLayoutError(f"the {what} set has only {only} crops ({len(records)}); it needs real and fake")


class ImageReadError(ValueError):
    """A face crop file cannot be decoded."""


@dataclass(frozen=True)
class UnreadableImage:
    """Returned by the dataset instead of raising, so a worker process reports it cleanly."""

    message: str


def read_rgb(path: Path) -> np.ndarray:
    """uint8 RGB (H, W, 3); ImageReadError naming the file when it cannot be decoded."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB")).copy()
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise ImageReadError(f"cannot read face crop {path}: {error}") from None


def to_model_input(image: np.ndarray, size: int) -> torch.Tensor:
    """uint8 RGB (H, W, 3) -> float32 (3, size, size) in [0, 1] (antialiased bilinear resize)."""
    if image.shape[0] != size or image.shape[1] != size:
        image = np.array(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).to(torch.float32).div_(255.0)


class FaceCropDataset(Dataset):
    """Crops as model inputs. Keys are an index, (index, flip) or (index, flip, draw); returns
    (image, is_fake, index).

    With `self_blend` set, records marked `self_blend` become pseudo-fakes of their real crop and
    every image (both classes) then gets the configured compression, all drawn from
    (seed, draw, index): a training run passes its step as `draw`, so each epoch sees new fakes
    and a resumed run the same ones; validation uses draw 0, the same fakes at every validation.
    `degrade` (training batches: trainer/degrade.py) then changes both classes alike, drawn from its own
    stream of (seed, draw, index). `distortion` (uint8 RGB -> uint8 RGB) is applied at the stored
    resolution, before resizing.
    """

    def __init__(
        self,
        records: Sequence[CropRecord],
        image_size: int,
        distortion: Callable[[np.ndarray], np.ndarray] | None = None,
        self_blend: SelfBlendConfig | None = None,
        seed: int = 0,
        degrade: DegradeConfig | None = None,
    ) -> None:
        self.records = list(records)
        self.degrade = degrade
        self.image_size = image_size
        self.distortion = distortion
        self.self_blend = self_blend
        self.seed = seed
        if self_blend is None and any(r.self_blend for r in self.records):
            raise ValueError("records include self-blended pseudo-fakes but no self-blend configuration was given")

    def __len__(self) -> int:
        return len(self.records)

    def _blend(self, image: np.ndarray, record: CropRecord, index: int, draw: int) -> np.ndarray:
        assert self.self_blend is not None
        rng = np.random.default_rng([self.seed, draw, index])
        if record.self_blend:
            height, width = image.shape[:2]
            landmarks = np.asarray(record.landmarks, np.float64) if record.landmarks else default_landmarks(height, width)
            image = self_blend(image, landmarks, rng, self.self_blend).fake
        return jpeg_compress(image, rng, self.self_blend)

    def blended_image(self, index: int, draw: int = 0) -> np.ndarray:
        """The uint8 RGB image record `index` becomes (self-blended and compressed as configured)."""
        image = read_rgb(self.records[index].path)
        return self._blend(image, self.records[index], index, draw) if self.self_blend is not None else image

    def __getitem__(self, key: int | tuple[int, ...]) -> tuple[torch.Tensor, float, int] | UnreadableImage:
        index, flip, draw = (*key, 0)[:3] if isinstance(key, tuple) else (key, False, 0)
        record = self.records[index]
        try:
            image = read_rgb(record.path)
        except ImageReadError as error:
            return UnreadableImage(str(error))
        if self.self_blend is not None:
            image = self._blend(image, record, index, draw)
        if self.degrade is not None:
            image = degrade(image, np.random.default_rng([self.seed, draw, index, DEGRADE_STREAM]), self.degrade)
        if self.distortion is not None:
            image = self.distortion(image)
        tensor = to_model_input(image, self.image_size)
        if flip:
            tensor = tensor.flip(-1)
        return tensor, float(record.is_fake), index


@dataclass(frozen=True)
class Batch:
    images: torch.Tensor  # (B, 3, S, S) float in [0, 1]
    is_fake: torch.Tensor  # (B,) float 0/1
    indices: torch.Tensor  # (B,) positions in the dataset's records


def collate_crops(samples: list[tuple[torch.Tensor, float, int] | UnreadableImage]) -> Batch | UnreadableImage:
    for sample in samples:
        if isinstance(sample, UnreadableImage):
            return sample
    images, labels, indices = zip(*samples)  # type: ignore[misc]
    return Batch(torch.stack(images), torch.tensor(labels), torch.tensor(indices))


def unwrap_batch(batch: Batch | UnreadableImage) -> Batch:
    if isinstance(batch, UnreadableImage):
        raise ImageReadError(batch.message)
    return batch


class BalancedBatchPlan:
    """Which crops form each training batch: half real, half fake, and which to flip.

    Deterministic in (seed, epoch, position), so a resumed run draws exactly the batches it would
    have drawn. An epoch passes once over the larger class; the smaller class is drawn again in fresh
    permutations as needed (upsampling, like a class-balance sampler). Under DDP each of
    `world_size` ranks takes every world_size-th batch, the DistributedSampler idea applied to batches.
    """

    def __init__(
        self,
        is_fake: Sequence[bool],
        batch_size: int,
        seed: int,
        flip_probability: float = 0.5,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 2 or batch_size % 2:
            raise ValueError(f"batch_size must be even and >= 2, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of size {world_size}")
        labels = np.asarray(is_fake, dtype=bool)
        self.real = np.flatnonzero(~labels)
        self.fake = np.flatnonzero(labels)
        if self.real.size == 0 or self.fake.size == 0:
            raise DatasetLayoutError("balanced sampling needs real and fake crops in the training set")
        self.half = batch_size // 2
        self.seed = seed
        self.flip_probability = flip_probability
        self.rank = rank
        self.world_size = world_size
        global_batches = math.ceil(max(self.real.size, self.fake.size) / self.half)
        self.batches_per_epoch = max(1, global_batches // world_size)

    @lru_cache(maxsize=2)  # noqa: B019 - a plan lives as long as its run; two epochs straddle a boundary
    def _epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        needed = self.batches_per_epoch * self.world_size * self.half
        streams = []
        for tag, members in ((0, self.real), (1, self.fake)):
            rounds = math.ceil(needed / members.size)
            orders = [
                np.random.default_rng([self.seed, epoch, tag, k]).permutation(members) for k in range(rounds)
            ]
            streams.append(np.concatenate(orders)[:needed])
        flips = np.random.default_rng([self.seed, epoch, 2]).random(needed * 2) < self.flip_probability
        return streams[0], streams[1], flips

    def batch(self, epoch: int, position: int) -> list[tuple[int, bool]]:
        if not 0 <= position < self.batches_per_epoch:
            raise IndexError(f"position {position} outside an epoch of {self.batches_per_epoch} batches")
        real, fake, flips = self._epoch(epoch)
        slot = position * self.world_size + self.rank
        chosen = np.concatenate([real[slot * self.half : (slot + 1) * self.half], fake[slot * self.half : (slot + 1) * self.half]])
        flip = flips[slot * 2 * self.half : (slot + 1) * 2 * self.half]
        return [(int(i), bool(f)) for i, f in zip(chosen, flip)]

    def position(self, step: int) -> tuple[int, int]:
        """(epoch, position within the epoch) of global optimizer step `step` (0-based)."""
        return divmod(step, self.batches_per_epoch)

    def steps(self, start: int, stop: int) -> "PlannedBatches":
        return PlannedBatches(self, start, stop)


class PlannedBatches:
    """Batches for steps [start, stop) as a DataLoader `batch_sampler`: keys (index, flip, step)."""

    def __init__(self, plan: BalancedBatchPlan, start: int, stop: int) -> None:
        self.plan, self.start, self.stop = plan, start, stop

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[list[tuple[int, bool, int]]]:
        for step in range(self.start, self.stop):
            yield [(index, flip, step) for index, flip in self.plan.batch(*self.plan.position(step))]


def write_index_rows(path: Path, rows: Sequence[CropRow]) -> None:
    """Append rows to an index.jsonl (one JSON object per line)."""
    with path.open("a", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row.model_dump(mode="json")) + "\n")
