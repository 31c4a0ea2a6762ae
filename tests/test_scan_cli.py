"""`ralf-cli scan`, `demo` and `schema`: bad inputs give clear verdicts and exit codes, never tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from cli.main import app
from cli.scan import short_time, verdict_table
from pipeline.scan import RANDOM_WEIGHTS_WARNING, Scanner
from pipeline.verdict import Counts, StageTimings, TrackVerdict, Verdict, verdict_json_schema
from ralf.config import RALFConfig
from ralf.core.metadata import Calibration, WeightsMetadata
from ralf.core.options import ScanOptions
from ralf.model import RALF
from ralf.weights import save_weights

runner = CliRunner()
# Sample few frames: these tests are about outcomes and exit codes, not about accuracy.
FAST = ["--device", "cpu", "--preset", "tiny", "--max-frames", "3"]

BAD_INPUTS = {
    "empty_file": "empty file (0 bytes)",
    "truncated_clip": "truncated or corrupt video",
    "truncated_mp4": "not a readable video file",
    "text_as_video": "not a readable video file",
    "audio_only_file": "no video stream",
    "missing_path": "file not found",
}


def _invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    assert "Traceback" not in result.output
    # Typer exits through SystemExit; anything else escaped the command as an exception.
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.exit_code, result.output


def _json_verdicts(output: str) -> list[Verdict]:
    return [Verdict.model_validate_json(line) for line in output.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def scanner() -> Scanner:
    return Scanner(ScanOptions(device="cpu", max_frames=3), preset_if_random="tiny")


@pytest.mark.parametrize(("fixture", "reason"), sorted(BAD_INPUTS.items()))
def test_bad_input_gives_an_error_verdict(
    scanner: Scanner, fixture: str, reason: str, request: pytest.FixtureRequest
) -> None:
    path = request.getfixturevalue(fixture)
    verdict = scanner.scan(path)
    assert verdict.label == "error"
    assert verdict.error is not None and reason in verdict.error
    assert not verdict.error.startswith("internal")
    assert verdict.score is None and verdict.tracks == []


@pytest.mark.parametrize("fixture", sorted(BAD_INPUTS))
def test_bad_input_exits_2_without_traceback(fixture: str, request: pytest.FixtureRequest) -> None:
    path = request.getfixturevalue(fixture)
    code, output = _invoke("scan", str(path), "--json", *FAST)
    assert code == 2
    (verdict,) = _json_verdicts(output)
    assert verdict.label == "error" and BAD_INPUTS[fixture] in (verdict.error or "")


def test_faceless_video_exits_0_with_no_face(faceless_clip: Path) -> None:
    code, output = _invoke("scan", str(faceless_clip), *FAST)
    assert code == 0
    assert "no_face" in output
    assert RANDOM_WEIGHTS_WARNING.split(":")[0] in output


def test_several_paths_one_json_line_each_and_error_wins(
    face_clip_h264: Path, faceless_clip: Path, missing_path: Path
) -> None:
    code, output = _invoke("scan", str(face_clip_h264), str(faceless_clip), str(missing_path), "--json", *FAST)
    verdicts = _json_verdicts(output)
    assert [v.label for v in verdicts][1:] == ["no_face", "error"]
    assert verdicts[0].label in ("real", "fake") and verdicts[0].counts.faces >= 1
    assert all(v.weights_random for v in verdicts)
    assert code == 2


def test_fake_found_exits_1(tmp_path: Path, face_clip_h264: Path) -> None:
    torch.manual_seed(0)
    model = RALF(RALFConfig.tiny())
    calibration = Calibration(
        threshold=-20.0,  # every face scores above this logit: fake
        method="eer",
        achieved_tpr=0.5,
        achieved_fpr=0.5,
        level="frame",
        dataset_fingerprint="test",
        date="2025-01-01",
        num_real=1,
        num_fake=1,
    )
    weights = tmp_path / "everything-is-fake.safetensors"
    save_weights(weights, model, WeightsMetadata(config=model.config, calibration=calibration))
    code, output = _invoke("scan", str(face_clip_h264), "--weights", str(weights), "--device", "cpu", "--max-frames", "2")
    assert code == 1
    assert "fake" in output and "weights are random" not in output


def test_setup_problems_exit_2_with_a_reason(tmp_path: Path, face_clip_h264: Path) -> None:
    code, output = _invoke("scan", str(face_clip_h264), "--weights", str(tmp_path / "nope.safetensors"), *FAST)
    assert code == 2 and "weights file not found" in output
    code, output = _invoke("scan", str(face_clip_h264), "--detector", "yolo", *FAST)
    assert code == 2 and "yolo" in output


def test_conflicting_sampling_is_a_usage_error(face_clip_h264: Path) -> None:
    code, output = _invoke("scan", str(face_clip_h264), "--fps", "2", "--every-n", "3", "--device", "cpu")
    assert code == 2 and "at most one" in output


def test_internal_failure_is_marked_internal(face_clip_h264: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: Scanner, path: Path, progress: object = None) -> Verdict:
        raise RuntimeError("something inside broke")

    monkeypatch.setattr(Scanner, "scan", broken)
    code, output = _invoke("scan", str(face_clip_h264), "--json", *FAST)
    assert code == 2
    (verdict,) = _json_verdicts(output)
    assert verdict.error == "internal: RuntimeError: something inside broke"


def test_settings_supply_defaults(face_clip_h264: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RALF_RANDOM_PRESET", "tiny")
    monkeypatch.setenv("RALF_DEVICE", "cpu")
    monkeypatch.setenv("RALF_MAX_FRAMES", "2")
    code, output = _invoke("scan", str(face_clip_h264), "--json")
    (verdict,) = _json_verdicts(output)
    assert verdict.model_version == "random-tiny-seed0"
    assert verdict.counts.frames_decoded == 2
    assert code in (0, 1)


def test_demo_runs_with_random_weights_on_request(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    code, output = _invoke("demo", "--device", "cpu", "--random-weights")
    assert code == 0
    assert "weights are random" in output and "Pipeline OK" in output
    assert (tmp_path / "ralf" / "demo" / "astronaut_real.mp4").is_file()
    assert (tmp_path / "ralf" / "demo" / "astronaut_self_blended.mp4").is_file()


def test_schema_prints_the_verdict_schema() -> None:
    code, output = _invoke("schema")
    assert code == 0
    assert json.loads(output) == verdict_json_schema()


def test_scan_and_queue_commands_load_torch_only_when_they_scan() -> None:
    # `ralf-cli enqueue` hashes and probes files; registering the scan commands must not load torch.
    code = "import sys, cli.scan, cli.queue; print('torch' in sys.modules)"
    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "False"


def _typical_verdict(path: str, label: str = "real", tracks: int = 1) -> Verdict:
    scored = label in ("real", "fake")
    return Verdict(
        path=path,
        label=label,  # type: ignore[arg-type]
        score=0.912 if label == "fake" else 0.231 if scored else None,
        threshold=0.5,
        threshold_source="uncalibrated default (0.5)",
        model_version="ralf-paper-1a2b3c4d",
        tracks=[
            TrackVerdict(
                track_id=i, score=0.2, num_faces=48, first_time_s=0.0, last_time_s=23.5,
                suspicious_times_s=[12.5, 3.0, 21.5],
            )
            for i in range(tracks if scored else 0)
        ],
        counts=Counts(frames_decoded=48, faces=48 if scored else 0, tracks=tracks if scored else 0),
        timings=StageTimings(total_s=3.41),
    )


@pytest.mark.parametrize(
    "verdict",
    [
        _typical_verdict("/srv/media/uploads/2024/06/interview_final_cut.mp4"),
        _typical_verdict("/srv/media/uploads/2024/06/press_conference.webm", "fake", tracks=3),
        _typical_verdict("/srv/media/uploads/2024/06/holiday_beach.mov", "no_face"),
    ],
)
def test_table_fits_80_columns(verdict: Verdict) -> None:
    console = Console(width=80, record=True, color_system=None)
    console.print(verdict_table([verdict]))
    lines = console.export_text().splitlines()
    assert all(len(line) <= 80 for line in lines)
    header = next(i for i, line in enumerate(lines) if line.startswith("─"))
    body = [line for line in lines[header + 1 :] if line.strip() and "fake when P(fake)" not in line]
    assert 1 <= len(body) <= 2, "\n".join(lines)  # no cell wraps into more than 2 lines
    text = " ".join(lines)
    assert "/srv/media" not in text and Path(verdict.path).name[:12] in text  # file name, not the path
    assert "fake when P(fake) >= 0.500" in text  # the threshold, once, as the caption


def test_table_shows_suspicious_times_short() -> None:
    console = Console(width=80, record=True, color_system=None)
    console.print(verdict_table([_typical_verdict("/v/a.mp4")]))
    assert "track 0 at 12.5s 3s 21.5s" in console.export_text()


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.0, "0s"), (3.0, "3s"), (12.46, "12.5s"), (59.97, "1:00"), (62.4, "1:02"), (3723.0, "1:02:03")],
)
def test_short_time(seconds: float, text: str) -> None:
    assert short_time(seconds) == text


def test_urls_are_pointed_to_enqueue(face_clip_h264: Path) -> None:
    code, output = _invoke("scan", "http://user:pw@example.org/v.mp4", str(face_clip_h264), "--json", *FAST)
    first, second = _json_verdicts(output)
    assert code == 2 and first.label == "error" and "ralf-cli enqueue URL" in (first.error or "")
    assert first.path == "http://***@example.org/v.mp4" and "file not found" not in output
    assert second.label in ("real", "fake")


def test_invalid_settings_read_without_pydantic_links(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RALF_BATCH_SIZE", "zero")
    code, output = _invoke("scan", "x.mp4")
    assert code == 2 and "batch_size" in output and "errors.pydantic.dev" not in output
