"""Labelled video sets (trainer/video_sets.py) and the manifest layout of `prepare` (trainer/layouts.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer.layouts import DatasetLayoutError, read_layout
from trainer.video_sets import VideoSetError, count_by_label, read_video_set

HEADER = "file,label,split,method,kind,layout,source_repo\n"


def _manifest(root: Path, rows: list[str]) -> Path:
    for row in rows:
        file = root / row.split(",")[0]
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(b"not scanned here")
    path = root / "manifest.csv"
    path.write_text(HEADER + "".join(r + "\n" for r in rows), encoding="utf-8")
    return path


ROWS = [
    "fake/a/one.mp4,fake,train,GenA,talking_head,single,org/a",
    "real/a/two.mp4,real,train,camera,real,single,org/a",
    "fake/b/three.mp4,fake,val,GenB,face_swap,single,org/b",
    "real/b/four.mp4,real,val,camera,real,single,org/b",
    "fake/a/side.mp4,fake,train,GenA,attribute,panels: left = original,org/a",
]


def test_manifest_rows_keep_their_columns_and_filter_by_split(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path, ROWS)
    everything = read_video_set(manifest)
    assert count_by_label(everything) == (2, 3)
    val = read_video_set(tmp_path, "val")  # a folder holding manifest.csv reads the same
    assert [(v.name, v.label, v.method, v.kind, v.group) for v in val] == [
        ("fake/b/three.mp4", "fake", "GenB", "face_swap", "org/b"),
        ("real/b/four.mp4", "real", "camera", "real", "org/b"),
    ]
    assert all(v.path.is_absolute() and v.path.is_file() for v in val)
    assert [v.is_panels for v in everything] == [False, False, False, False, True]


def test_manifest_problems_name_the_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("file,label\nx.mp4,maybe\n", encoding="utf-8")
    with pytest.raises(VideoSetError, match="bad.csv, line 2: label must be 'real' or 'fake'"):
        read_video_set(bad)
    (tmp_path / "cols.csv").write_text("path,truth\nx.mp4,real\n", encoding="utf-8")
    with pytest.raises(VideoSetError, match="needs the columns 'file' and 'label'"):
        read_video_set(tmp_path / "cols.csv")
    _manifest(tmp_path / "m", ROWS)
    with pytest.raises(VideoSetError, match="no videos in split 'test'"):
        read_video_set(tmp_path / "m", "test")
    with pytest.raises(VideoSetError, match="not found"):
        read_video_set(tmp_path / "missing")


def test_a_folder_of_real_and_fake_videos(tmp_path: Path) -> None:
    for name in ("real/x.mp4", "real/studio/y.webm", "fake/gen/z.gif", "fake/notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    videos = read_video_set(tmp_path)
    assert [(v.name, v.label, v.method) for v in videos] == [
        ("real/studio/y.webm", "real", "real"), ("real/x.mp4", "real", "real"), ("fake/gen/z.gif", "fake", "gen"),
    ]  # fmt: skip
    with pytest.raises(VideoSetError, match="needs real/ and fake/"):
        read_video_set(tmp_path / "real")


def test_prepare_reads_only_the_train_split_and_leaves_panels_out(tmp_path: Path) -> None:
    _manifest(tmp_path, ROWS)
    entries = read_layout("manifest", tmp_path)
    assert [(e.video_id, e.is_fake, e.split, e.group_id, e.source) for e in entries] == [
        ("fake/a/one.mp4", True, "train", "org/a", "GenA"),
        ("real/a/two.mp4", False, "train", "org/a", "real"),
    ]
    # asking for the val split keeps its name, so the trainer can only validate on it, never train
    assert {e.split for e in read_layout("manifest", tmp_path, split="val")} == {"val"}
    with pytest.raises(DatasetLayoutError, match="no videos in split"):
        read_layout("manifest", tmp_path, split="nope")
