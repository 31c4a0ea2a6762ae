"""Dataset layouts users have, read into one list of `VideoEntry`.

- folder: `ROOT/real/<video>` and `ROOT/fake/<video>`, each `<video>` a sub-folder of face crops or a
  video file; optionally one level of `train/ val/ test/` above `real/ fake/`.
- ffpp: FaceForensics++ with the official split files (train.json, val.json, test.json: lists of
  [target, source] id pairs), `original_sequences/youtube/<c>/videos/<id>.mp4` and
  `manipulated_sequences/<method>/<c>/videos/<target>_<source>.mp4` for the four manipulations.
- celebdf: Celeb-DF's `List_of_testing_videos.txt`, lines "<label> <path>" where 1 = REAL there.
- dfdc: DFDC `metadata.json` files ({"x.mp4": {"label": "FAKE" | "REAL", ...}}), at the root or in
  one level of part folders.
- reals: every video file and still image below ROOT (any depth) is one REAL item, for training on
  real faces with self-blended pseudo-fakes. Items of one person share a group (MEAD-style person
  ids such as `M030_`/`W009_` in the name; otherwise each file is its own person), and a fixed share
  of the groups, chosen by a hash of the group id, is held back as the `test` split.
- manifest: a CSV with `file,label[,split,method,kind,layout,source_repo]` (trainer/video_sets.py; the
  devset's `manifest.csv`), or a folder holding one; only the rows of `split` (default `train`: a
  manifest's `val` split judges and is never trained on), which keep that split name. Videos of one source repository share a
  group; side-by-side `panels` files are left out (not every face in them is fake).

Every problem with a layout raises `DatasetLayoutError` naming the file or folder at fault.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from trainer.video_sets import VideoSetError, read_video_set

Split = Literal["train", "val", "test"]
SPLITS: tuple[str, ...] = get_args(Split)
LayoutName = Literal["folder", "ffpp", "celebdf", "dfdc", "reals", "manifest"]
LAYOUTS: tuple[str, ...] = get_args(LayoutName)

VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv"})
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp"})
FFPP_METHODS: tuple[str, ...] = ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures")
FFPP_COMPRESSIONS: tuple[str, ...] = ("raw", "c23", "c40")
CELEBDF_LIST = "List_of_testing_videos.txt"
DFDC_METADATA = "metadata.json"


class DatasetLayoutError(ValueError):
    """A dataset folder or index file is missing or malformed; the message names it."""


@dataclass(frozen=True)
class VideoEntry:
    """One video of a dataset: a video file, or a folder holding its face crops.

    `group_id`: videos sharing a group always land in the same split (a fake and its source video,
    the two directions of an FF++ pair), so no face is seen in training and validation both.
    """

    path: Path
    video_id: str
    group_id: str
    is_fake: bool
    split: Split | None
    source: str  # "real" or the manipulation / dataset the fake comes from

    @property
    def is_video_file(self) -> bool:
        return self.path.is_file() and self.path.suffix.lower() in VIDEO_SUFFIXES


def read_layout(name: str, root: Path, **options: object) -> list[VideoEntry]:
    """Entries of the dataset at `root` read with layout `name` (see the module docstring)."""
    readers = {
        "folder": read_folder, "ffpp": read_ffpp, "celebdf": read_celebdf, "dfdc": read_dfdc, "reals": read_reals,
        "manifest": read_manifest,
    }  # fmt: skip
    if name not in readers:
        raise DatasetLayoutError(f"unknown layout {name!r}; choose one of {list(LAYOUTS)}")
    root = Path(root)
    if not root.is_dir():
        raise DatasetLayoutError(f"dataset folder not found: {root}")
    entries = readers[name](root, **options)  # type: ignore[operator]
    if not entries:
        raise DatasetLayoutError(f"no videos found in {root} (layout {name!r})")
    return entries


def _has_images(folder: Path) -> bool:
    return any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir() if p.is_file())


def _read_class_folder(folder: Path, is_fake: bool, split: Split | None, prefix: str) -> list[VideoEntry]:
    entries = []
    label = "fake" if is_fake else "real"
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_dir():
            if not _has_images(path):
                raise DatasetLayoutError(f"{path} holds no face crop images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            raise DatasetLayoutError(
                f"{path} is an image directly in {folder}: put each video's crops in their own sub-folder "
                f"({folder}/<video>/...), so that splits keep a video's frames together"
            )
        elif path.suffix.lower() not in VIDEO_SUFFIXES:
            continue  # notes, checksums and the like
        name = path.stem if path.is_file() else path.name
        entries.append(
            VideoEntry(
                path=path,
                video_id=f"{prefix}{label}/{name}",
                group_id=f"{prefix}{name}",  # real/x and fake/x (a fake made from x) share a group
                is_fake=is_fake,
                split=split,
                source=label,
            )
        )
    return entries


def read_folder(root: Path) -> list[VideoEntry]:
    """`ROOT/{real,fake}/<video>` or `ROOT/{train,val,test}/{real,fake}/<video>`."""
    split_dirs = [root / s for s in SPLITS if (root / s).is_dir()]
    if split_dirs:
        entries: list[VideoEntry] = []
        for split_dir in split_dirs:
            entries += _read_classes(split_dir, split_dir.name, f"{split_dir.name}/")  # type: ignore[arg-type]
        return entries
    return _read_classes(root, None, "")


def _read_classes(folder: Path, split: Split | None, prefix: str) -> list[VideoEntry]:
    present = {c: folder / c for c in ("real", "fake") if (folder / c).is_dir()}
    if not present:
        raise DatasetLayoutError(f"{folder} has neither a real/ nor a fake/ folder (folder layout)")
    entries: list[VideoEntry] = []
    for label, path in present.items():
        entries += _read_class_folder(path, label == "fake", split, prefix)
    return entries


def _load_json(path: Path) -> object:
    if not path.is_file():
        raise DatasetLayoutError(f"missing file: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetLayoutError(f"{path} is not valid JSON: {error}") from error


def _ffpp_pairs(path: Path) -> list[tuple[str, str]]:
    data = _load_json(path)
    ok = isinstance(data, list) and all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(i, str) for i in p) for p in data
    )
    if not ok or not data:
        raise DatasetLayoutError(f'{path} must be a JSON list of [target, source] id pairs, e.g. [["071", "054"]]')
    return [(p[0], p[1]) for p in data]  # type: ignore[index]


def read_ffpp(
    root: Path,
    compression: str = "c23",
    methods: tuple[str, ...] = FFPP_METHODS,
    splits_dir: Path | None = None,
) -> list[VideoEntry]:
    """FaceForensics++ videos of the official splits; every listed video must exist."""
    if compression not in FFPP_COMPRESSIONS:
        raise DatasetLayoutError(f"unknown FF++ compression {compression!r}; choose one of {list(FFPP_COMPRESSIONS)}")
    unknown = sorted(set(methods) - set(FFPP_METHODS))
    if unknown:
        raise DatasetLayoutError(f"unknown FF++ manipulations {unknown}; choose from {list(FFPP_METHODS)}")
    if splits_dir is None:
        splits_dir = root / "splits" if (root / "splits" / "train.json").is_file() else root
    real_dir = root / "original_sequences" / "youtube" / compression / "videos"
    method_dirs = {m: root / "manipulated_sequences" / m / compression / "videos" for m in methods}
    for folder in (real_dir, *method_dirs.values()):
        if not folder.is_dir():
            raise DatasetLayoutError(f"missing FF++ folder: {folder}")

    entries: list[VideoEntry] = []
    missing: list[Path] = []

    def add(path: Path, video_id: str, group: str, is_fake: bool, split: Split, source: str) -> None:
        if not path.is_file():
            missing.append(path)
        entries.append(VideoEntry(path, video_id, group, is_fake, split, source))

    for split in SPLITS:
        for target, source in _ffpp_pairs(Path(splits_dir) / f"{split}.json"):
            group = "_".join(sorted((target, source)))
            for vid in (target, source):
                add(real_dir / f"{vid}.mp4", f"original/{vid}", group, False, split, "real")  # type: ignore[arg-type]
            for method, folder in method_dirs.items():
                for name in (f"{target}_{source}", f"{source}_{target}"):
                    add(folder / f"{name}.mp4", f"{method}/{name}", group, True, split, method)  # type: ignore[arg-type]
    if missing:
        shown = ", ".join(str(p) for p in missing[:3])
        raise DatasetLayoutError(f"{len(missing)} FF++ videos listed in the split files are missing, e.g. {shown}")
    return entries


def read_celebdf(root: Path, list_file: Path | None = None) -> list[VideoEntry]:
    """Celeb-DF test videos from its list file: "1 <path>" is REAL, "0 <path>" is FAKE."""
    list_path = Path(list_file) if list_file is not None else root / CELEBDF_LIST
    if not list_path.is_file():
        raise DatasetLayoutError(f"missing file: {list_path}")
    entries = []
    for number, line in enumerate(list_path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or parts[0] not in ("0", "1"):
            raise DatasetLayoutError(f'{list_path}:{number}: expected "<0|1> <relative path>", got {line!r}')
        path = root / parts[1]
        if not path.is_file():
            raise DatasetLayoutError(f"{list_path}:{number}: video not found: {path}")
        is_fake = parts[0] == "0"  # the list's 1 means real
        video_id = str(Path(parts[1]).with_suffix("")).replace("\\", "/")
        entries.append(VideoEntry(path, video_id, video_id, is_fake, "test", "celebdf" if is_fake else "real"))
    return entries


def read_dfdc(root: Path) -> list[VideoEntry]:
    """DFDC videos labelled by every metadata.json at the root or one folder below it."""
    files = [root / DFDC_METADATA] if (root / DFDC_METADATA).is_file() else sorted(root.glob(f"*/{DFDC_METADATA}"))
    if not files:
        raise DatasetLayoutError(f"missing file: {root / DFDC_METADATA} (nor any */{DFDC_METADATA})")
    entries = []
    for meta_path in files:
        data = _load_json(meta_path)
        if not isinstance(data, dict):
            raise DatasetLayoutError(f'{meta_path} must map file names to {{"label": "FAKE" | "REAL"}}')
        for name, info in sorted(data.items()):
            label = info.get("label") if isinstance(info, dict) else None
            if label not in ("FAKE", "REAL"):
                raise DatasetLayoutError(f'{meta_path}: entry {name!r} needs "label": "FAKE" or "REAL", got {info!r}')
            path = meta_path.parent / name
            if not path.is_file():
                raise DatasetLayoutError(f"{meta_path}: video not found: {path}")
            is_fake = label == "FAKE"
            original = info.get("original") if is_fake else None
            group = Path(original).stem if isinstance(original, str) and original else Path(name).stem
            split = info.get("split")
            entries.append(
                VideoEntry(
                    path=path,
                    video_id=f"{meta_path.parent.name}/{Path(name).stem}",
                    group_id=group,
                    is_fake=is_fake,
                    split=split if split in SPLITS else None,
                    source="dfdc" if is_fake else "real",
                )
            )
    return entries


# A person id inside a file name: MEAD's M030 / W009 (several clips of one person).
_PERSON_ID = re.compile(r"(?:^|_)([MW]\d{3})_")


def person_group(relative: Path) -> str:
    """The group of a real item: its person id when the name carries one, else the file itself."""
    found = _PERSON_ID.search(relative.name)
    parent = relative.parent.as_posix()
    return f"{parent}/{found.group(1)}" if found else relative.with_suffix("").as_posix()


def held_out(group_id: str, share: float) -> bool:
    """Deterministic pick of `share` of the groups (sha256 of the id, independent of any seed)."""
    value = int.from_bytes(hashlib.sha256(group_id.encode()).digest()[:8], "big") / 2**64
    return value < share


def read_reals(root: Path, holdout: float = 0.15, subset: int | None = None) -> list[VideoEntry]:
    """Every video and still image below `root` as a real item; `holdout` of the groups as `test`.

    `subset` keeps that many items, the ones whose relative path has the smallest sha256: a fixed,
    seed-free sample that anyone with the same files draws again.
    """
    if not 0 <= holdout < 1:
        raise DatasetLayoutError(f"holdout must be in [0, 1), got {holdout}")
    if subset is not None and subset < 1:
        raise DatasetLayoutError(f"subset must be >= 1, got {subset}")
    media = [
        p for p in root.rglob("*")
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in VIDEO_SUFFIXES | IMAGE_SUFFIXES
    ]  # fmt: skip
    if subset is not None:
        media = sorted(media, key=lambda p: hashlib.sha256(p.relative_to(root).as_posix().encode()).hexdigest())[:subset]
    entries = []
    for path in sorted(media):
        relative = path.relative_to(root)
        group = person_group(relative)
        entries.append(
            VideoEntry(
                path=path,
                video_id=relative.as_posix(),
                group_id=group,
                is_fake=False,
                split="test" if held_out(group, holdout) else "train",
                source="real",
            )
        )
    return entries


def read_manifest(root: Path, split: str = "train") -> list[VideoEntry]:
    """The manifest's videos of `split` (panels files left out), grouped by source repository."""
    try:
        videos = read_video_set(root, split)
    except VideoSetError as error:
        raise DatasetLayoutError(str(error)) from None
    return [
        VideoEntry(path=v.path, video_id=v.name, group_id=v.group, is_fake=v.is_fake,
                   split=v.split if v.split in SPLITS else None, source=v.method if v.is_fake else "real")  # type: ignore[arg-type]  # fmt: skip
        for v in videos
        if not v.is_panels
    ]
