"""File names as an attacker or a careless operator picks them: names FFmpeg would read as a protocol
(`concat:`, `http:`), names that are not UTF-8, names of dots only. Local inputs reach the decoders
as files (absolute paths), every output mode answers every name, and evidence folders stay inside
their root. Network traffic: a local HTTP server on 127.0.0.1 that must get no request.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from typer.testing import CliRunner
from worker_testing import local_http_server

from cli.main import app
from pipeline import synthetic
from pipeline.decode import open_video
from pipeline.decode.probe import probe_video
from pipeline.decode.types import VideoDecodeError
from pipeline.verdict import Verdict

runner = CliRunner()
FAST = ["--random-weights", "--preset", "tiny", "--device", "cpu", "--max-frames", "2"]
HITS: list[str] = []


class Recorder(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - FFmpeg's http protocol would land here
        HITS.append(self.path)
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture()
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A working directory holding `real.mp4` (a face clip); names are given relative to it."""
    synthetic.write_face_clip(tmp_path / "real.mp4", codec="h264", num_frames=4, size=(160, 120), fps=6.0)
    monkeypatch.chdir(tmp_path)
    HITS.clear()
    yield tmp_path


def _scan(*args: str) -> tuple[int, list[Verdict], str]:
    result = runner.invoke(app, ["scan", *args, *FAST])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("{")]
    return result.exit_code, [Verdict.model_validate_json(line) for line in lines], result.output


def test_protocol_like_names_are_read_as_the_files_they_name(folder: Path) -> None:
    """`concat:real.mp4` holding garbage must not get real.mp4's verdict, and `http:127.0.0.1:PORT`
    must not make FFmpeg send a request (scan, and the probe enqueue and prepare use)."""
    with local_http_server(Recorder) as url:
        port = url.rsplit(":", 1)[1]
        names = ["concat:real.mp4", f"http:127.0.0.1:{port}", "file:real.mp4", "subfile,,start,0,end,0,,:real.mp4"]
        for name in names:
            (folder / name).write_bytes(b"this is not a video, whatever its name says\n" * 50)
        code, verdicts, output = _scan(*names, "real.mp4", "--json")
        for name in names:  # the two doors every command decodes through (prepare, evaluate, calibrate too)
            with pytest.raises(VideoDecodeError):
                probe_video(name)
            with pytest.raises(VideoDecodeError, match="not a readable video"):
                with open_video(name, backend="pyav") as stream:
                    list(stream)
    assert [v.label for v in verdicts[:4]] == ["error"] * 4, output
    assert all("not a readable video" in (v.error or "") for v in verdicts[:4]), output
    assert verdicts[4].label in ("real", "fake", "no_face") and code == 2
    assert HITS == []


def test_json_output_answers_a_name_that_is_not_utf8(folder: Path) -> None:
    name = os.fsdecode(b"caf\xe9-\xff.mp4")  # Latin-1 bytes: not UTF-8
    shutil.copy(folder / "real.mp4", folder / name)
    code, verdicts, output = _scan(name, "missing-\udcff.mp4", "--json")
    assert len(verdicts) == 2, output
    assert verdicts[0].path == "caf\\xe9-\\xff.mp4" and verdicts[0].label in ("real", "fake", "no_face")
    assert verdicts[1].label == "error" and "\\xff" in (verdicts[1].error or "") and code == 2
    table = runner.invoke(app, ["scan", name, *FAST])
    assert table.exit_code in (0, 1) and "caf" in table.output


def test_evidence_of_dot_named_videos_stays_inside_its_folder(folder: Path) -> None:
    """`..mp4` has the stem `.` and `...mp4` the stem `..`: their folders must neither replace the
    evidence root (deleting other videos' evidence) nor lie outside it."""
    for name in ("..mp4", "...mp4"):
        shutil.copy(folder / "real.mp4", folder / name)
    root = folder / "evidence"
    code, verdicts, output = _scan("real.mp4", "--json", "--evidence", str(root))
    first = Path(verdicts[0].evidence_dir or "")
    kept = sorted(p.name for p in first.iterdir())
    assert kept, output
    code, verdicts, output = _scan("..mp4", "...mp4", "--json", "--evidence", str(root))
    folders = [Path(v.evidence_dir or "") for v in verdicts]
    assert all(f.parent == root and f.name not in (".", "..") for f in folders), folders
    assert len(set(folders)) == 2 and first not in folders
    assert sorted(p.name for p in first.iterdir()) == kept  # the first video's evidence is still there
    assert not list(folder.glob("*.png")) and sorted(p.name for p in root.iterdir()) == ["real", "video", "video-2"]


def test_prepare_reads_a_protocol_like_name_as_its_file(folder: Path) -> None:
    """`prepare .` lists `concat:real.mp4` relative to the working directory: the garbage it holds is an
    error, not a second copy of real.mp4's crops (evaluate and calibrate scan through the Scanner, above)."""
    from pipeline.faces import build_detector
    from trainer.prepare import PrepareOptions, prepare

    (folder / "concat:real.mp4").write_bytes(b"this is not a video, whatever its name says\n" * 50)
    options = PrepareOptions(frames=2, size=64, detector="mtcnn")
    summary = prepare(Path("."), folder.parent / f"{folder.name}-prepared", "reals", options,
                      detector=build_detector("mtcnn", "cpu"), progress=False)
    assert summary.videos == 2 and summary.status == {"ok": 1, "error": 1}
