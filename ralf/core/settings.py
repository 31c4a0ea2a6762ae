"""The one settings model: every knob is an environment variable prefixed `RALF_`.

Workers, `ralf-cli enqueue`, the in-process `scan` and `calibrate` and `compose.yaml` all read this
model; `ralf-cli config` prints it. The scan knobs are not written here: `Settings` inherits them from
`WorkerOptions` (device, decoder, detector, engine, precision, sizes, limits) and `Sampling` (the
default frame sampling of jobs that choose none; unset: `ScanOptions`' own default, 2 frames per second).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from ralf.core.addresses import AddressPolicy
from ralf.core.options import SAMPLING_FIELDS, Sampling, ScanOptions, WorkerOptions
from ralf.shipped import resolve_weights

Priority = Literal["high", "default", "low"]
WorkerMode = Literal["auto", "fork", "in-process"]
PRIORITIES: tuple[Priority, ...] = ("high", "default", "low")


def _split_list(value: object) -> object:
    """Env lists: a JSON array, or items separated by commas or the OS path separator (':')."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if not text:
        return []
    if text.startswith("["):
        return json.loads(text)
    return [item.strip() for item in text.replace(os.pathsep, ",").split(",") if item.strip()]


class Settings(BaseSettings, WorkerOptions, Sampling):
    """Deployment settings; the scan fields come from `WorkerOptions` and `Sampling` (module docstring)."""

    model_config = SettingsConfigDict(env_prefix="RALF_", extra="ignore", frozen=True)

    # --- Redis and rq -------------------------------------------------------------------
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis holding the queues and results")
    queue_high: str = Field("ralf-high", description="Queue for --priority high")
    queue_default: str = Field("ralf-default", description="Queue for --priority default")
    queue_low: str = Field("ralf-low", description="Queue for --priority low")
    key_prefix: str = Field(
        "ralf",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$",
        description="Prefix of job ids and of every key stored besides rq's own",
    )
    redis_retries: int = Field(
        3, ge=0, description="Retries (exponential back-off) of a Redis command on a connection error"
    )

    # --- inputs -------------------------------------------------------------------------
    media_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="Directories local inputs must lie in (JSON list or ','/':' separated)",
    )
    download_max_bytes: int = Field(2 * 1024**3, ge=1, description="Larger http(s) downloads give an error verdict")
    download_timeout_s: float = Field(300.0, gt=0, description="Whole-download deadline for http(s) inputs")
    download_dir: Path | None = Field(None, description="Where workers put downloads (system temp dir if unset)")
    url_allow: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Hosts or networks URLs may reach although not public (loopback, private, link-local, ...): "
        "names, addresses or CIDR networks, JSON list or ',' separated",
    )

    # --- model and scan -----------------------------------------------------------------
    weights: Path | None = Field(None, description="RALF safetensors weights; unset = the shipped lite model")
    random_weights: bool = Field(
        False, description="Scan with a seeded random model instead (pipeline checks and tests only)"
    )
    random_preset: str = Field("paper", description="Model preset of the random model (random_weights)")

    # --- results and failures -----------------------------------------------------------
    result_ttl_s: int = Field(7 * 24 * 3600, ge=1, description="How long verdicts are kept")
    failure_ttl_s: int = Field(30 * 24 * 3600, ge=1, description="How long failed jobs are kept")
    job_timeout_base_s: int = Field(120, ge=1, description="Job timeout = base + per_video_s * duration")
    job_timeout_per_video_s: float = Field(2.0, ge=0, description="Seconds of work allowed per second of video")
    job_timeout_default_s: int = Field(3600, ge=1, description="Timeout when the duration is unknown (URLs)")
    retry_max: int = Field(3, ge=0, description="Retries of transient failures (download, OOM, lost worker)")
    retry_intervals_s: Annotated[list[int], NoDecode] = Field(
        default_factory=lambda: [10, 60, 300], description="Back-off between retries, seconds"
    )
    burst_retry_wait_s: float = Field(
        60.0,
        ge=0,
        description="A --burst worker waits for retries due within this many seconds before it leaves "
        "(and names the later ones)",
    )
    worker_mode: WorkerMode = Field(
        "auto",
        description="fork: a work horse per job (CPU); in-process: jobs run in the worker (CUDA); auto: by device",
    )
    torch_threads: int = Field(0, ge=0, description="CPU threads per scan; 0 = PyTorch's default (all cores)")
    worker_liveness_ttl_s: int = Field(
        15, ge=3, description="A worker silent this long is dead and its job is re-queued"
    )

    # --- evidence, metrics and webhooks ---------------------------------------------------
    evidence_dir: Path | None = Field(
        None, description="Workers write each job's evidence images into <dir>/<job id>/ (unset: no evidence)"
    )
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="Workers serve Prometheus metrics on this port (0: any free one; unset: none)"
    )
    metrics_host: str = Field("0.0.0.0", description="Address the metrics server listens on")
    callback_url: str | None = Field(
        None, description="Webhook for jobs enqueued without --callback (http(s); the URL address rules apply)"
    )
    webhook_secret: SecretStr | None = Field(
        None, description="Shared secret of the webhooks' HMAC-SHA256 signature (required for callbacks)"
    )
    webhook_retry_intervals_s: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: [10, 30, 120, 600, 1800, 3600],
        description="Back-off between webhook attempts, seconds (attempts = entries + 1)",
    )
    webhook_timeout_s: float = Field(10.0, gt=0, description="Deadline of one webhook POST, seconds")

    # --- the HTTP API and the review desk (`ralf-cli serve`) ------------------------------------
    api_host: str = Field("127.0.0.1", description="Address `ralf-cli serve` listens on")
    api_port: int = Field(8000, ge=1, le=65535, description="Port `ralf-cli serve` listens on")
    api_upload_dir: Path | None = Field(
        None,
        description="Where uploads are stored (must lie under a media root; unset: <first media root>/uploads)",
    )
    api_max_upload_bytes: int | None = Field(
        None, ge=1, description="Uploads larger than this are refused while streaming (unset: max_file_bytes)"
    )
    api_rate_per_minute: int = Field(600, ge=1, description="Requests per minute per API key (default of new keys)")
    api_daily_quota: int = Field(10000, ge=1, description="Submissions per UTC day per API key (default of new keys)")
    api_idempotency_ttl_s: int = Field(24 * 3600, ge=1, description="How long Idempotency-Key records are kept")
    api_session_ttl_s: int = Field(8 * 3600, ge=60, description="Lifetime of a review desk session")
    review_uncertain_margin: float = Field(
        0.15, ge=0.0, le=1.0, description="'real' verdicts within this distance below the threshold go to the review queue"
    )

    @field_validator("media_roots", "retry_intervals_s", "url_allow", "webhook_retry_intervals_s", mode="before")
    @classmethod
    def _env_list(cls, value: object) -> object:
        return _split_list(value)

    @field_validator("retry_intervals_s", "webhook_retry_intervals_s")
    @classmethod
    def _non_negative(cls, value: list[float]) -> list[float]:
        if any(v < 0 for v in value):
            raise ValueError("retry intervals must be >= 0 seconds")
        return value

    @field_validator("callback_url")
    @classmethod
    def _http_callback(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            return None
        if value is not None and not value.lower().startswith(("http://", "https://")):
            raise ValueError("the callback URL must be an http(s) URL")
        return value

    @field_validator("media_roots")
    @classmethod
    def _absolute_roots(cls, value: list[Path]) -> list[Path]:
        # Resolved once here so every containment check compares real paths.
        return [p.expanduser().resolve() for p in value]

    @field_validator("url_allow")
    @classmethod
    def _allow_entries(cls, value: list[str]) -> list[str]:
        AddressPolicy.from_entries(value)  # raises on an entry that is neither a network nor a name
        return value

    def model_weights(self) -> Path | None:
        """The weights workers and scans load: RALF_WEIGHTS, else the shipped model; None (a seeded
        random model) only with RALF_RANDOM_WEIGHTS."""
        return resolve_weights(self.weights, self.random_weights)

    def url_policy(self) -> AddressPolicy:
        """Which addresses URL inputs may reach (public ones, plus RALF_URL_ALLOW)."""
        return AddressPolicy.from_entries(self.url_allow)

    def queue_name(self, priority: Priority) -> str:
        return {"high": self.queue_high, "default": self.queue_default, "low": self.queue_low}[priority]

    @property
    def queue_names(self) -> list[str]:
        """Queues in the order workers drain them: high first."""
        return [self.queue_name(p) for p in PRIORITIES]

    def scan_options(self, **overrides: Any) -> ScanOptions:
        """The worker's ScanOptions, with a job's or the command line's `overrides` (flat sampling keys
        allowed). A sampling mode in the overrides replaces the worker's, never combines with it."""
        values: dict[str, Any] = {name: getattr(self, name) for name in WorkerOptions.model_fields}
        chosen = {name: getattr(self, name) for name in SAMPLING_FIELDS if getattr(self, name) is not None}
        if chosen and not any(name in overrides for name in (*SAMPLING_FIELDS, "sampling")):
            values["sampling"] = Sampling(**chosen)
        return ScanOptions(**{**values, **overrides})

    def key(self, *parts: str) -> str:
        """A Redis key of ours: `<prefix>:<part>:<part>`."""
        return ":".join((self.key_prefix, *parts))


def settings_env_names() -> set[str]:
    """Every environment variable the settings read (for compose checks and docs)."""
    prefix = Settings.model_config.get("env_prefix", "")
    return {f"{prefix}{name}".upper() for name in Settings.model_fields}
