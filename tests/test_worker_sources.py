"""What may be enqueued: files under the media roots (symlinks resolved) and http(s) URLs only."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from worker.sources import SourceRefused, check_source, sha256_file


@pytest.fixture()
def layout(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "media"
    outside = tmp_path / "private"
    root.mkdir()
    outside.mkdir()
    (root / "clip.mp4").write_bytes(b"video")
    (root / "sub").mkdir()
    (root / "sub" / "deep.mp4").write_bytes(b"video 2")
    (outside / "secret.mp4").write_bytes(b"secret")
    return root, outside


def test_file_under_root(layout: tuple[Path, Path]) -> None:
    root, _ = layout
    source = check_source(str(root / "sub" / "deep.mp4"), [root])
    assert source.kind == "file" and source.location == str((root / "sub" / "deep.mp4").resolve())


def test_relative_path_inside_root(layout: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    root, _ = layout
    monkeypatch.chdir(root / "sub")
    assert check_source("../clip.mp4", [root]).location == str(root / "clip.mp4")


def test_relative_path_escaping_root(layout: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    root, _ = layout
    monkeypatch.chdir(root)
    with pytest.raises(SourceRefused, match="outside the media roots"):
        check_source("../private/secret.mp4", [root])


def test_symlink_out_of_root_is_refused(layout: tuple[Path, Path]) -> None:
    root, outside = layout
    (root / "innocent.mp4").symlink_to(outside / "secret.mp4")
    with pytest.raises(SourceRefused, match="outside the media roots"):
        check_source(str(root / "innocent.mp4"), [root])


def test_symlink_within_root_is_accepted(layout: tuple[Path, Path]) -> None:
    root, _ = layout
    (root / "alias.mp4").symlink_to(root / "sub" / "deep.mp4")
    assert check_source(str(root / "alias.mp4"), [root]).location == str(root / "sub" / "deep.mp4")


def test_prefix_sibling_is_not_inside(tmp_path: Path) -> None:
    (tmp_path / "media").mkdir()
    (tmp_path / "media-private").mkdir()
    (tmp_path / "media-private" / "x.mp4").write_bytes(b"x")
    with pytest.raises(SourceRefused, match="outside"):
        check_source(str(tmp_path / "media-private" / "x.mp4"), [tmp_path / "media"])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ftp://example.com/a.mp4", "unsupported URL scheme 'ftp://'"),
        ("file:///etc/passwd", "unsupported URL scheme 'file://'"),
        ("s3://bucket/a.mp4", "unsupported URL scheme"),
        ("http:///nohost.mp4", "without a host"),
        ("", "empty input"),
    ],
)
def test_refused_urls(layout: tuple[Path, Path], text: str, message: str) -> None:
    with pytest.raises(SourceRefused, match=message):
        check_source(text, [layout[0]])


@pytest.mark.parametrize("url", ["http://example.com/a.mp4", "HTTPS://example.com/a.mp4?x=1"])
def test_http_urls_are_accepted_as_given(layout: tuple[Path, Path], url: str) -> None:
    source = check_source(url, [layout[0]])
    assert source.kind == "url" and source.location == url


def test_missing_file_and_directory(layout: tuple[Path, Path]) -> None:
    root, _ = layout
    with pytest.raises(SourceRefused, match="no such file"):
        check_source(str(root / "missing.mp4"), [root])
    with pytest.raises(SourceRefused, match="not a regular file"):
        check_source(str(root / "sub"), [root])


def test_no_media_roots_configured(layout: tuple[Path, Path]) -> None:
    with pytest.raises(SourceRefused, match="RALF_MEDIA_ROOTS"):
        check_source(str(layout[0] / "clip.mp4"), [])


def test_sha256_streams_whole_file(tmp_path: Path) -> None:
    data = bytes(range(256)) * 9000  # > 1 MiB chunk
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()


# Probing a file's duration is all enqueueing needs from the pipeline; it must not load torch.
PROBE_WITHOUT_TORCH = """
import json, sys
import pipeline.decode.probe
from worker.queue import probe_duration
info = pipeline.decode.probe.probe_video(sys.argv[1])
print(json.dumps({"duration": probe_duration(sys.argv[1]), "frames": info.num_frames,
                  "torch": "torch" in sys.modules}))
"""


def test_probing_at_enqueue_does_not_import_torch(face_clip_h264: Path) -> None:
    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-c", PROBE_WITHOUT_TORCH, str(face_clip_h264)],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    probed = json.loads(result.stdout)
    assert probed["duration"] == pytest.approx(2.0, abs=0.1) and probed["frames"] == 24
    assert probed["torch"] is False
