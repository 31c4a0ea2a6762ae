"""Evidence images from the model (`scan --evidence`) and the HTML report (`ralf-cli report`).

One tiny-model CLI scan of the shared face clip (module fixture) feeds every test; the render test
runs headless Chromium where it is installed (Debian's `chromium`) and is skipped elsewhere.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from cli.main import app
from pipeline.aggregate import FaceScore, aggregate_tracks
from pipeline.evidence import EvidenceCollector
from pipeline.report import CSP, ReportItem, render_report, verdict_in_words
from pipeline.verdict import Verdict, verdict_json_schema

runner = CliRunner()


@pytest.fixture(scope="module")
def scanned(face_clip_h264: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Verdict, Path, str]:
    """(verdict, evidence root, the JSON line) of `ralf-cli scan CLIP --evidence ROOT --json`."""
    root = tmp_path_factory.mktemp("evidence")
    args = ["scan", str(face_clip_h264), "--json", "--evidence", str(root), "--random-weights", "--preset", "tiny"]
    args += ["--device", "cpu", "--decoder", "pyav", "--max-frames", "5"]
    result = runner.invoke(app, args)
    assert result.exit_code in (0, 1), result.output
    line = result.stdout.strip().splitlines()[-1]
    return Verdict.model_validate_json(line), root, line


def test_evidence_lists_each_tracks_most_suspicious_faces(scanned: tuple[Verdict, Path, str], face_clip_h264: Path) -> None:
    verdict, root, _ = scanned
    assert verdict.evidence_dir == str(root / face_clip_h264.stem)
    folder = Path(verdict.evidence_dir)
    assert verdict.tracks and verdict.evidence
    assert sum(bool(t.decides) for t in verdict.tracks) >= 1  # a video with faces is always judged
    for track in verdict.tracks:
        items = sorted((e for e in verdict.evidence if e.track_id == track.track_id), key=lambda e: e.rank)
        # exactly the frames the verdict already names, most suspicious first, with their scores
        assert [e.time_s for e in items] == track.suspicious_times_s
        by_time = {p.time_s: p.score for p in track.frame_scores}
        assert [round(e.score, 4) for e in items] == [by_time[round(e.time_s, 4)] for e in items]
        # an established track always decides; a thin one only when no track is established
        assert track.decides or track.thin_evidence is not None
        assert len(track.frame_scores) == track.num_faces
    size = 64  # the tiny preset's crop size
    for item in verdict.evidence:
        for name in (item.crop, item.residual, item.attention):
            assert name is not None
            with Image.open(folder / name) as image:
                assert image.format == "PNG" and image.size == (size, size)
        with Image.open(folder / item.frame) as frame:
            assert frame.size == (320, 240)  # the clip's frames are below the 480 px cap: not scaled
        x1, y1, x2, y2 = item.box
        assert 0 <= x1 < x2 <= 320 and 0 <= y1 < y2 <= 240
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        n for e in verdict.evidence for n in (e.crop, e.residual, e.attention, e.frame) if n
    )
    assert verdict.timings.evidence_s > 0


def test_collector_keeps_exactly_the_frames_aggregation_names() -> None:
    """The running top-k per track equals suspicious_times_s (ties broken by time) for any order."""
    import torch

    rng = random.Random(3)
    faces = [
        FaceScore(track, index, index / 10, rng.choice([0.2, 0.5, 0.5, 0.9, rng.random()]))
        for index in range(60)
        for track in (0, 1)
        if rng.random() < 0.7
    ]
    rng.shuffle(faces)

    class Meta:
        def __init__(self, face: FaceScore) -> None:
            self.track_id, self.frame_index, self.timestamp_s, self.view = face.track_id, face.frame_index, face.timestamp_s, None

    collector = EvidenceCollector(per_track=3)
    for start in range(0, len(faces), 7):  # in batches, as the scanner scores them
        batch = faces[start : start + 7]
        collector.offer([Meta(f) for f in batch], torch.zeros((len(batch), 3, 4, 4)), [f.probability for f in batch])
    tracks = aggregate_tracks(faces, suspicious_count=3)
    chosen = collector.chosen(tracks)
    for track in tracks:
        assert [c.time_s for rank, c in chosen if c.track_id == track.track_id] == track.suspicious_times_s


def test_old_verdicts_still_load() -> None:
    old = {
        "path": "sha256:ab",
        "label": "real",
        "score": 0.2,
        "threshold": 0.5,
        "threshold_source": "uncalibrated default (0.5)",
        "model_version": "m1",
        "tracks": [{"track_id": 0, "score": 0.2, "num_faces": 3, "first_time_s": 0.0, "last_time_s": 1.0}],
        "timings": {"decode_s": 0.1, "total_s": 1.0},
    }
    verdict = Verdict.model_validate(old)
    assert verdict.evidence == [] and verdict.evidence_dir is None and verdict.tracks[0].decides is None
    schema = verdict_json_schema()
    assert "evidence" in schema["properties"] and "EvidenceFrame" in schema["$defs"]
    html = render_report([ReportItem(verdict)])  # the report copes without frame scores or evidence
    assert "No evidence images" in html and "<svg" in html


def test_report_is_self_contained_and_says_what_was_not_looked_at(scanned: tuple[Verdict, Path, str], tmp_path: Path) -> None:
    verdict, _, _ = scanned
    hostile = verdict.model_copy(
        update={
            "path": '<script>alert("x")</script>.mp4',
            "warnings": [*verdict.warnings, "<img src=http://evil.example/x>"],
            "tracks": [
                    *verdict.tracks,
                    verdict.tracks[0].model_copy(
                        update={"track_id": 9, "num_faces": 1, "decides": False, "thin_evidence": "1 face over 0.0 s"}
                    ),
                ],
        }
    )
    html = render_report([ReportItem(hostile, Path(verdict.evidence_dir or ""))])
    assert "<script>" not in html and "&lt;script&gt;" in html and "<img src=http://evil" not in html
    assert f'content="{CSP}"' in html
    # every image is inline; no attribute points anywhere (the only URL is the SVG namespace)
    plain = render_report([ReportItem(verdict, Path(verdict.evidence_dir or ""))])
    assert 'src="data:image/' in plain and 'href="data:image/png' in plain
    for attribute in ("src=", "href="):
        for chunk in plain.split(attribute)[1:]:
            assert chunk.startswith('"data:image/'), chunk[:60]
    assert plain.count("http://") == plain.count('xmlns="http://www.w3.org/2000/svg"') == 1
    # the verdict in words, the threshold, the model, what was not looked at
    assert verdict_in_words(verdict) in html.replace("&#x27;", "'")
    assert f"threshold {verdict.threshold:.2f}" in html and verdict.model_version in html
    assert "Person 9 had too little evidence to decide (1 face over 0.0 s)" in html and "Random weights" in html
    assert "Only sampled frames were looked at: 5 frames" in html
    # images that are gone are named, not fatal
    missing = render_report([ReportItem(verdict, tmp_path / "nowhere")])
    assert "could not be read from" in missing


def test_report_command_reads_json_lines_files_stdin_and_refuses_junk(scanned: tuple[Verdict, Path, str], tmp_path: Path) -> None:
    verdict, _, line = scanned
    lines = tmp_path / "verdicts.jsonl"
    lines.write_text(line + "\n" + line + "\n")
    out = tmp_path / "two.html"
    result = runner.invoke(app, ["report", str(lines), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_text().count('<section class="verdict">') == 2
    result = runner.invoke(app, ["report", line, "-o", str(tmp_path / "inline.html")])
    assert result.exit_code == 0 and (tmp_path / "inline.html").stat().st_size > 10_000
    waited = json.dumps({"jobs": [{"job_id": "j1", "status": "finished", "verdict": json.loads(line)}], "refused": []})
    result = runner.invoke(app, ["report", "-", "-o", str(tmp_path / "stdin.html")], input=waited)
    assert result.exit_code == 0, result.output
    for junk in ("{not json", '{"label": "fake"}'):
        result = runner.invoke(app, ["report", junk, "-o", str(tmp_path / "x.html")])
        assert result.exit_code == 2 and ("not JSON" in result.output or "not a verdict" in result.output)
    assert runner.invoke(app, ["report", str(tmp_path / "missing.json")]).exit_code == 2


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(scanned: tuple[Verdict, Path, str], tmp_path: Path) -> None:
    verdict, _, _ = scanned
    page = tmp_path / "report.html"
    page.write_text(render_report([ReportItem(verdict, Path(verdict.evidence_dir or ""))]))
    shot = tmp_path / "report.png"
    result = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
         "--disable-background-networking", "--window-size=1000,1800", f"--screenshot={shot}", page.as_uri()],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Content Security Policy" not in result.stderr  # nothing the page tried to load was blocked
    with Image.open(shot) as image:
        assert image.size == (1000, 1800)
        colours = image.convert("RGB").resize((100, 180)).getcolors(maxcolors=100_000)
        assert colours is not None and len(colours) > 50  # text, plot and pictures, not a blank page
