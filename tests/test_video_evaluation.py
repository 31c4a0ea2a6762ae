"""`ralf-cli evaluate WEIGHTS --videos SET` on generated clips: the scanner's verdicts, video metrics per
kind and method, false positives by file, errors left out, and the cache that resumes a run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from cli.scan import write_demo_clips
from pipeline.synthetic import write_face_clip, write_text_as_video
from pipeline.verdict import Verdict
from ralf.shipped import SHIPPED_WEIGHTS
from trainer.video_evaluation import evaluate_outcomes, scan_videos
from trainer.video_sets import LabelledVideo

runner = CliRunner()


@pytest.fixture(scope="module")
def video_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("videoset")
    real, fake = write_demo_clips(root)
    write_face_clip(root / "empty room.mp4", codec="h264", num_frames=12, face=False)
    write_text_as_video(root / "broken.mp4")
    (root / "manifest.csv").write_text(
        "file,label,split,method,kind\n"
        f"{real.name},real,val,camera,real\n"
        "empty room.mp4,real,val,camera,real\n"
        f"{fake.name},fake,val,SBI,blend\n"
        "broken.mp4,fake,val,Broken,blend\n"
        f"{fake.name},fake,train,SBI,blend\n",
        encoding="utf-8",
    )
    return root


def test_evaluate_videos_reports_what_scan_would_say(video_set: Path, tmp_path: Path) -> None:
    cache = tmp_path / "verdicts.jsonl"
    args = ["evaluate", str(SHIPPED_WEIGHTS), "--videos", str(video_set / "manifest.csv"), "--split", "val",
            "--cache", str(cache), "--resamples", "50", "--json", "--device", "cpu"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    overall = report["overall"]
    # the unreadable file is left out and listed; the face-less clip counts as a real that was not flagged
    assert (overall["num_real"], overall["num_fake"]) == (2, 1)
    assert [e["file"] for e in report["errors"]] == ["broken.mp4"]
    by_file = {v["file"]: v for v in report["videos"]}
    assert by_file["empty room.mp4"]["verdict"] == "no_face"
    assert by_file["astronaut_real.mp4"]["verdict"] == "real"  # the demo's verdicts (MODEL_CARD)
    assert by_file["astronaut_self_blended.mp4"]["verdict"] == "fake"
    assert by_file["astronaut_self_blended.mp4"]["why"].startswith("Likely manipulated")
    assert overall["auc"]["value"] == 1.0 and overall["tpr"]["value"] == 1.0 and overall["fpr"]["value"] == 0.0
    assert report["false_positives"] == [] and report["missed"] == []
    groups = {(g["by"], g["group"]): g for g in report["groups"]}
    assert set(groups) == {("kind", "blend"), ("method", "SBI")}  # the errored method has no usable video
    assert report["threshold"] == pytest.approx(Verdict.model_validate(json.loads(cache.read_text().splitlines()[0])["verdict"]).threshold)
    assert len(cache.read_text().splitlines()) == 4  # every scanned video, the broken one too

    table = runner.invoke(app, args[:-3] + ["--device", "cpu"])  # from the cache: nothing scanned again
    assert table.exit_code == 0, table.output
    assert "false positives" in table.output and "not scanned" in table.output and "broken.mp4" in table.output


def test_evaluate_needs_data_or_videos_and_both_classes(video_set: Path) -> None:
    assert runner.invoke(app, ["evaluate", str(SHIPPED_WEIGHTS)]).exit_code == 2
    result = runner.invoke(app, ["evaluate", str(SHIPPED_WEIGHTS), "--videos", str(video_set), "--split", "train"])
    assert result.exit_code == 2 and "0 real and 1 fake" in result.output


def test_cached_verdicts_are_reused_for_the_same_file_model_and_options(tmp_path: Path) -> None:
    clip = tmp_path / "a.mp4"
    clip.write_bytes(b"x")
    videos = [LabelledVideo(clip, "a.mp4", False), LabelledVideo(clip, "a.mp4", True)]
    calls: list[Path] = []

    def scan(path: Path) -> Verdict:
        calls.append(path)
        return Verdict(path=str(path), label="real", score=0.25, threshold=0.5, threshold_source="t", model_version="m")

    cache = tmp_path / "cache.jsonl"
    first = scan_videos(videos[:1], scan, model_version="m", options={"fps": 2}, cache=cache, progress=False)
    again = scan_videos(videos, scan, model_version="m", options={"fps": 2}, cache=cache, progress=False)
    assert len(calls) == 1 and [o.score for o in again] == [0.25, 0.25] and first[0].verdict == again[0].verdict
    scan_videos(videos[:1], scan, model_version="other", options={"fps": 2}, cache=cache, progress=False)
    scan_videos(videos[:1], scan, model_version="m", options={"fps": 1}, cache=cache, progress=False)
    assert len(calls) == 3  # another model or other options scan again
    with cache.open("a") as handle:
        handle.write('{"key": "half a line')  # an interrupted write is ignored
    report = evaluate_outcomes(again, model_version="m", source="s", split="all", threshold=0.5,
                               threshold_source="t", resamples=0)  # fmt: skip
    assert report.overall.auc.value == 0.5 and report.false_positives == []
