"""The job payload, idempotent ids and `scan_job` (the worker side without Redis), on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError

from pipeline import synthetic
from pipeline.engine import InferenceOutOfMemory
from pipeline.scan import Scanner
from ralf.config import RALFConfig
from ralf.core.files import file_sha256
from ralf.core.settings import Settings
from ralf.model import RALF
from ralf.weights import save_weights
from worker import jobs
from worker.jobs import ScanJob, ScanOverrides, TransientScanError, job_id_for, scan_job
from worker.queue import model_version


def payload(**changes: Any) -> ScanJob:
    base: dict[str, Any] = {
        "source": "/media/a.mp4",
        "kind": "file",
        "content_hash": "ab" * 32,
        "model_version": "ralf-tiny-123",
    }
    return ScanJob(**{**base, **changes})


def test_payload_is_plain_json() -> None:
    job = payload(options=ScanOverrides(max_frames=4))
    data = job.model_dump(mode="json")
    assert ScanJob.model_validate(json.loads(json.dumps(data))) == job


@pytest.mark.parametrize("field", ["device", "yolo_weights", "engine", "batch_size", "bogus"])
def test_overrides_cannot_choose_worker_level_options(field: str) -> None:
    with pytest.raises(ValidationError):
        ScanOverrides.model_validate({field: "x"})


def test_job_id_is_deterministic_and_rq_safe() -> None:
    first, second = job_id_for(payload(), "ralf"), job_id_for(payload(), "ralf")
    assert first == second and first.startswith("ralf-") and first.replace("-", "").isalnum()
    # enqueue time and priority do not make a different job; content, model and options do
    assert job_id_for(payload(priority="high"), "ralf") == first
    assert job_id_for(payload(content_hash="cd" * 32), "ralf") != first
    assert job_id_for(payload(model_version="ralf-tiny-456"), "ralf") != first
    assert job_id_for(payload(options=ScanOverrides(every_n=2)), "ralf") != first
    assert job_id_for(payload(source="/media/b.mp4"), "ralf") == first  # same content elsewhere
    url = payload(kind="url", source="https://example.com/v.mp4", content_hash=None)
    assert job_id_for(url, "ralf") != job_id_for(url.model_copy(update={"source": "https://example.com/w.mp4"}), "ralf")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, Path, Path]:
    root = tmp_path_factory.mktemp("jobs")
    media = root / "media"
    media.mkdir()
    torch.manual_seed(0)
    weights = root / "tiny.safetensors"
    save_weights(weights, RALF(RALFConfig.tiny()).eval())
    clip = synthetic.write_face_clip(media / "face.mp4", codec="h264", num_frames=6, size=(160, 120), fps=6.0)
    outside = synthetic.write_face_clip(root / "outside.mp4", codec="h264", num_frames=2, size=(160, 120))
    settings = Settings(media_roots=[media], weights=weights, device="cpu", decoder="pyav")
    return settings, clip, outside


def file_job(settings: Settings, path: Path) -> ScanJob:
    return payload(source=str(path), content_hash=file_sha256(path), model_version=model_version(settings))


def test_scan_job_equals_scan(setup: tuple[Settings, Path, Path]) -> None:
    settings, clip, _ = setup
    verdict = scan_job(file_job(settings, clip), settings)
    direct = Scanner(settings.scan_options(), settings.weights).scan(clip)
    assert verdict.label == direct.label and verdict.score == pytest.approx(direct.score)
    assert verdict.warnings == direct.warnings  # model versions agree
    # the job is shared by everyone who enqueues this content: the verdict names the content, not a path
    assert verdict.path == f"sha256:{file_sha256(clip)}" and str(clip.parent) not in verdict.model_dump_json()


def test_random_weights_version_agrees_between_enqueue_and_worker(setup: tuple[Settings, Path, Path]) -> None:
    """Without a weights file, the version named at enqueue is the one the worker's Scanner reports."""
    settings, clip, _ = setup
    random_settings = settings.model_copy(update={"weights": None, "random_preset": "tiny"})
    verdict = scan_job(file_job(random_settings, clip), random_settings)
    assert verdict.model_version == model_version(random_settings)
    assert not any("enqueued for model" in w for w in verdict.warnings)


def test_worker_rechecks_media_roots(setup: tuple[Settings, Path, Path]) -> None:
    settings, _, outside = setup
    verdict = scan_job(file_job(settings, outside), settings)
    assert verdict.label == "error" and "outside the media roots" in (verdict.error or "")


def test_changed_file_is_noted(setup: tuple[Settings, Path, Path]) -> None:
    settings, clip, _ = setup
    job = file_job(settings, clip).model_copy(update={"content_hash": "0" * 64})
    assert any("changed after it was enqueued" in w for w in scan_job(job, settings).warnings)


class FakeRqJob:
    """Only what scan_job touches on an rq job: meta and save_meta."""

    def __init__(self) -> None:
        self.id = "fake"
        self.meta: dict[str, Any] = {}
        self.saved: list[dict[str, Any]] = []

    def save_meta(self) -> None:
        self.saved.append(json.loads(json.dumps(self.meta)))


def test_out_of_memory_retries_at_half_batch(
    setup: tuple[Settings, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, clip, _ = setup
    settings = settings.model_copy(update={"batch_size": 32})  # unset, it follows the device and preset
    seen_batches: list[int] = []

    class OomScanner:
        def scan(self, path: Path, progress: Any = None) -> None:
            raise InferenceOutOfMemory(seen_batches[-1], torch.device("cuda"), "CUDA out of memory")

    def fake_scanner_for(settings: Settings, options: Any) -> OomScanner:
        seen_batches.append(options.batch_size)
        return OomScanner()

    monkeypatch.setattr(jobs, "scanner_for", fake_scanner_for)
    rq_job = FakeRqJob()
    job = file_job(settings, clip)
    for _ in range(3):
        with pytest.raises(TransientScanError, match="retry uses batch size"):
            scan_job(job, settings, rq_job)  # type: ignore[arg-type]
    assert seen_batches == [settings.batch_size, settings.batch_size // 2, settings.batch_size // 4]
    assert rq_job.meta["batch_size"] == settings.batch_size // 8


def test_job_overrides_and_smaller_batch_reuse_the_loaded_model(
    setup: tuple[Settings, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, clip, _ = setup
    base = jobs.base_scanner(settings)

    def no_reload(settings: Settings, options: Any) -> None:
        raise AssertionError("the worker loaded a second Scanner")

    monkeypatch.setattr(jobs, "build_scanner", no_reload)
    rq_job = FakeRqJob()
    rq_job.meta["batch_size"] = 2  # as left by an out-of-memory attempt
    job = file_job(settings, clip).model_copy(update={"options": ScanOverrides(max_frames=3, aggregation="median")})
    options = jobs.job_options(settings, job, rq_job)  # type: ignore[arg-type]
    derived = jobs.scanner_for(settings, options)
    assert derived is not base and derived.model is base.model and derived.engine is base.engine
    assert derived.batch_size == 2
    verdict = scan_job(job, settings, rq_job)  # type: ignore[arg-type]
    monkeypatch.undo()
    fresh = Scanner(settings.scan_options(max_frames=3, aggregation="median", batch_size=2), settings.weights)
    direct = fresh.scan(clip)
    assert verdict.counts == direct.counts and verdict.counts.faces == 3
    assert verdict.label == direct.label and verdict.score == pytest.approx(direct.score)


def test_refused_source_gets_the_scanner_error_verdict(setup: tuple[Settings, Path, Path]) -> None:
    settings, _, _ = setup
    job = payload(kind="url", source="ftp://example.com/v.mp4", content_hash=None)
    verdict = scan_job(job, settings)
    assert verdict.label == "error" and verdict.path == "ftp://example.com/v.mp4"
    assert verdict.error and "ftp" in verdict.error
    base = jobs.base_scanner(settings)
    assert (verdict.model_version, verdict.engine, verdict.detector) == (
        base.model_version,
        base.engine.name,
        base.detector.name,
    )


def test_progress_is_written_to_job_meta(setup: tuple[Settings, Path, Path]) -> None:
    settings, clip, _ = setup
    rq_job = FakeRqJob()
    scan_job(file_job(settings, clip), settings, rq_job)  # type: ignore[arg-type]
    stages = [m["progress"]["stage"] for m in rq_job.saved]
    assert stages[0] == "scanning" and stages[-1] == "done"
    assert rq_job.saved[-1]["progress"]["fraction"] == 1.0


def test_attempt_after_a_crash_decodes_with_pyav(setup: tuple[Settings, Path, Path]) -> None:
    """A work horse that died without an answer (a decoder segfault on damaged input, say) is noted in the
    job's meta; the retry decodes with PyAV and says so."""
    settings, clip, _ = setup
    auto = settings.model_copy(update={"decoder": "auto"})
    rq_job = FakeRqJob()
    assert jobs.job_options(auto, file_job(auto, clip), rq_job).decoder == "auto"  # type: ignore[arg-type]
    jobs.note_crashed_attempt(rq_job)  # type: ignore[arg-type]
    assert jobs.job_options(auto, file_job(auto, clip), rq_job).decoder == "pyav"  # type: ignore[arg-type]
    verdict = scan_job(file_job(settings, clip), settings, rq_job)  # type: ignore[arg-type]
    assert verdict.decoder == "pyav" and any("1 earlier attempt(s) died" in w for w in verdict.warnings)


def test_worker_start_names_an_unreadable_weights_file(
    setup: tuple[Settings, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Weights written 0600 by another user (the host, for a worker running as uid 10001 in the image):
    the start-up error names the file, the reason, its mode and owner and the worker's ids."""
    import os
    import shutil

    settings, _, _ = setup
    weights = tmp_path / "written-on-the-host.safetensors"
    shutil.copy(settings.weights, weights)
    os.chmod(weights, 0o600)
    owner = os.stat(weights).st_uid

    def denied(settings: Settings, options: Any) -> None:  # what open() answers a process of another uid
        raise PermissionError(13, "Permission denied", str(weights))

    monkeypatch.setattr(jobs, "build_scanner", denied)
    with pytest.raises(jobs.WorkerSetupError) as info:
        jobs.preload_scanner(settings.model_copy(update={"weights": weights}))
    message = str(info.value)
    assert message.startswith(f"cannot read the weights file (RALF_WEIGHTS) {weights}: Permission denied")
    assert f"-rw------- , owner uid {owner}".replace(" ,", ",") in message and "chmod 644" in message


def test_a_failure_stored_for_every_submitter_names_no_path() -> None:
    """rq stores a failed attempt's text, shown to everyone who enqueued the same content: the path and
    file name of whoever enqueued first are replaced; short names and other text are left alone."""
    from worker.jobs import TransientScanError, _shareable

    job = ScanJob(source="/media/alice/alice-private.mp4", kind="file", content_hash="ab" * 32, model_version="v")
    shown = _shareable(OSError("cannot map /media/alice/alice-private.mp4 (alice-private.mp4 is busy)"), job)
    assert isinstance(shown, TransientScanError) and "alice" not in str(shown)
    assert f"sha256:{'ab' * 32}" in str(shown) and "(the file is busy)" in str(shown)
    plain = RuntimeError("CUDA out of memory")
    assert _shareable(plain, job) is plain
    short = ScanJob(source="/media/a", kind="file", content_hash="ab" * 32, model_version="v")
    assert _shareable(RuntimeError("a retry of a job"), short).args == ("a retry of a job",)
