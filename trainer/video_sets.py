"""Labelled video sets for real-world evaluation and video-level calibration.

Two ways to name them:
- a manifest CSV with at least the columns `file` (relative to the CSV's folder, or absolute) and
  `label` (`real` / `fake`); optional `split`, `method`, `kind` and `layout` columns are kept (the
  devset's manifest has them all), so results can be broken down per kind and per generator;
- a folder with `real/` and `fake/` sub-folders holding video files at any depth; the first
  sub-folder below `real/` or `fake/` (if any) becomes the method.

Every problem raises `VideoSetError` naming the file at fault. Standard library only, so that the
dataset layouts (`trainer.layouts`) can read a manifest too.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# Files scanned as videos; animated GIFs and WebPs are videos too (generators publish them).
VIDEO_SET_SUFFIXES = frozenset(
    {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".gif", ".webp"}
)
UNKNOWN = "-"


class VideoSetError(ValueError):
    """A manifest or video folder is missing or malformed; the message names it."""


@dataclass(frozen=True)
class LabelledVideo:
    """One video with its label and what the manifest says about it."""

    path: Path
    name: str  # as the manifest or folder names it (relative), for reports
    is_fake: bool
    split: str = UNKNOWN
    method: str = UNKNOWN
    kind: str = UNKNOWN
    layout: str = "single"
    group: str = UNKNOWN  # videos of one source (repository) share a group: never on both sides of a split

    @property
    def label(self) -> str:
        return "fake" if self.is_fake else "real"

    @property
    def is_panels(self) -> bool:
        """Side-by-side files (original | edit): the video holds a fake face, but not every face is fake."""
        return self.layout.startswith("panels")


def read_video_set(source: Path, split: str | None = None) -> list[LabelledVideo]:
    """The labelled videos of a manifest CSV or a real/ + fake/ folder, optionally of one split only."""
    source = Path(source)
    if source.is_file():
        videos = _read_manifest(source)
    elif source.is_dir():
        manifest = source / "manifest.csv"
        videos = _read_manifest(manifest) if manifest.is_file() else _read_folders(source)
    else:
        raise VideoSetError(f"video set not found: {source}")
    if split is not None and split != "all":
        known = sorted({v.split for v in videos})
        videos = [v for v in videos if v.split == split]
        if not videos:
            raise VideoSetError(f"{source} has no videos in split {split!r} (splits: {', '.join(known)})")
    if not videos:
        raise VideoSetError(f"{source} lists no videos")
    return videos


def _read_manifest(path: Path) -> list[LabelledVideo]:
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise VideoSetError(f"cannot read manifest {path}: {error}") from None
    if not rows or not {"file", "label"} <= set(rows[0]):
        raise VideoSetError(f"manifest {path} needs the columns 'file' and 'label'")
    videos = []
    for line, row in enumerate(rows, start=2):
        label = (row.get("label") or "").strip().lower()
        if label not in ("real", "fake"):
            raise VideoSetError(f"{path}, line {line}: label must be 'real' or 'fake', got {label!r}")
        name = (row.get("file") or "").strip()
        if not name:
            raise VideoSetError(f"{path}, line {line}: empty 'file'")
        file = Path(name) if Path(name).is_absolute() else path.parent / name
        videos.append(
            LabelledVideo(
                path=file.absolute(),
                name=name,
                is_fake=label == "fake",
                split=(row.get("split") or UNKNOWN).strip() or UNKNOWN,
                method=(row.get("method") or UNKNOWN).strip() or UNKNOWN,
                kind=(row.get("kind") or UNKNOWN).strip() or UNKNOWN,
                layout=(row.get("layout") or "single").strip() or "single",
                group=(row.get("source_repo") or row.get("group") or name).strip(),
            )
        )
    return videos


def _read_folders(root: Path) -> list[LabelledVideo]:
    missing = [name for name in ("real", "fake") if not (root / name).is_dir()]
    if missing:
        raise VideoSetError(
            f"{root} needs real/ and fake/ sub-folders of videos, or a manifest.csv (missing: {', '.join(missing)})"
        )
    videos = []
    for label in ("real", "fake"):
        folder = root / label
        for file in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SET_SUFFIXES):
            relative = file.relative_to(folder)
            method = relative.parts[0] if len(relative.parts) > 1 else UNKNOWN
            videos.append(
                LabelledVideo(
                    path=file.absolute(),
                    name=file.relative_to(root).as_posix(),
                    is_fake=label == "fake",
                    method=method if label == "fake" else "real",
                    kind=UNKNOWN if label == "fake" else "real",
                    group=relative.parts[0] if len(relative.parts) > 1 else relative.as_posix(),
                )
            )
    return videos


def count_by_label(videos: Sequence[LabelledVideo]) -> tuple[int, int]:
    """(real, fake) counts."""
    fake = sum(v.is_fake for v in videos)
    return len(videos) - fake, fake
