"""Settings: one RALF_* model; env lists; scan options derived from it."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from ralf.core.settings import Settings, settings_env_names


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in settings_env_names():
        monkeypatch.delenv(name, raising=False)


def test_defaults() -> None:
    settings = Settings()
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.queue_names == ["ralf-high", "ralf-default", "ralf-low"]
    assert settings.media_roots == []
    assert settings.key("alive", "w1") == "ralf:alive:w1"


@pytest.mark.parametrize(
    "value", ['["/srv/a", "/srv/b"]', "/srv/a,/srv/b", "/srv/a:/srv/b", " /srv/a , /srv/b "]
)
def test_media_roots_from_env(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("RALF_MEDIA_ROOTS", value)
    assert Settings().media_roots == [Path("/srv/a"), Path("/srv/b")]


def test_media_roots_are_resolved(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    monkeypatch.setenv("RALF_MEDIA_ROOTS", str(tmp_path / "link"))
    assert Settings().media_roots == [real]


def test_retry_intervals(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RALF_RETRY_INTERVALS_S", "5,30")
    assert Settings().retry_intervals_s == [5, 30]
    monkeypatch.setenv("RALF_RETRY_INTERVALS_S", "5,-1")
    with pytest.raises(ValidationError):
        Settings()


@pytest.mark.parametrize("prefix", ["", "a:b", "a b", "-x"])
def test_key_prefix_must_fit_rq_job_ids(monkeypatch: pytest.MonkeyPatch, prefix: str) -> None:
    monkeypatch.setenv("RALF_KEY_PREFIX", prefix)
    with pytest.raises(ValidationError):
        Settings()


def test_scan_options_follow_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RALF_DEVICE", "cpu")
    monkeypatch.setenv("RALF_BATCH_SIZE", "8")
    monkeypatch.setenv("RALF_EVERY_N", "5")
    options = Settings().scan_options()
    assert options.device == "cpu" and options.batch_size == 8
    assert options.sampling.every_n == 5 and options.sampling.target_fps is None  # choosing every_n replaces the fps default


def test_job_sampling_replaces_worker_sampling(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RALF_EVERY_N", "5")
    options = Settings().scan_options(max_frames=3)
    assert (options.sampling.every_n, options.sampling.target_fps, options.sampling.max_frames) == (None, None, 3)


def test_default_sampling_is_scan_options_default() -> None:
    assert Settings().scan_options().sampling.target_fps == 2.0


def test_invalid_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RALF_DEVICE", "tpu")
    with pytest.raises(ValidationError):
        Settings()


def test_env_names_cover_every_field() -> None:
    names = settings_env_names()
    assert {"RALF_REDIS_URL", "RALF_MEDIA_ROOTS", "RALF_WEIGHTS", "RALF_RESULT_TTL_S"} <= names
    assert len(names) == len(Settings.model_fields)
