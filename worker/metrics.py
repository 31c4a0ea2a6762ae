"""Prometheus metrics of a worker (`ralf-cli worker --metrics-port N`, RALF_METRICS_PORT).

Forked work horses die after each job, so nothing is counted inside them: the worker's main process
reads each job's outcome back from Redis once the job is over (the stored verdict, or the job's
status: failed for good, or scheduled/queued again = retried) and records it. The same path serves
in-process (CUDA) workers. Queue depths are read from Redis when Prometheus scrapes.

Metric names (all prefixed `ralf_`):
  jobs_total{outcome}            real | fake | no_face | error (the verdict label), failed, retried
  scan_seconds                   histogram of Verdict.timings.total_s per finished job
  faces_per_job                  histogram of faces scored per finished job
  stage_seconds{stage}           histogram per job of decode, detect, crop, infer, evidence seconds
  faces_total, faces_per_second  faces scored; faces/s of scan time of the last job with faces
  model_info{...}                loaded model version, engine, device, detector, decoder, mode
  queue_depth{priority,queue}    jobs waiting in each priority queue
  retries_waiting{priority}      jobs waiting for their retry back-off
  webhook_deliveries_total{outcome}  delivered | retried | failed
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from redis import Redis
from redis.exceptions import RedisError

from pipeline.verdict import Verdict
from ralf.core.settings import PRIORITIES, Settings

log = logging.getLogger(__name__)

OUTCOMES = ("real", "fake", "no_face", "error", "failed", "retried")
STAGES = ("decode", "detect", "crop", "infer", "evidence")
SCAN_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 3600)
FACE_BUCKETS = (0, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
STAGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800)
WEBHOOK_OUTCOMES = ("delivered", "retried", "failed")


class QueueCollector(Collector):
    """Queue depth and retries waiting per priority, read from Redis at scrape time."""

    def __init__(self, connection: Redis, settings: Settings) -> None:
        self.connection = connection
        self.settings = settings

    def describe(self) -> list[Metric]:
        return []  # registration must not call Redis

    def collect(self) -> Iterator[Metric]:
        from rq.queue import Queue
        from rq.registry import ScheduledJobRegistry

        depth = GaugeMetricFamily("ralf_queue_depth", "Jobs waiting in each priority queue", labels=["priority", "queue"])
        waiting = GaugeMetricFamily("ralf_retries_waiting", "Jobs waiting for their retry back-off", labels=["priority"])
        try:
            with self.connection.pipeline(transaction=False) as pipe:
                for priority in PRIORITIES:
                    queue = Queue(self.settings.queue_name(priority), connection=self.connection)
                    pipe.llen(queue.key)
                    pipe.zcard(ScheduledJobRegistry(queue=queue).key)
                counts = pipe.execute()
        except RedisError as exc:
            log.warning("queue depth not scraped: %s", exc)
            return
        for index, priority in enumerate(PRIORITIES):
            depth.add_metric([priority, self.settings.queue_name(priority)], counts[2 * index])
            waiting.add_metric([priority], counts[2 * index + 1])
        yield depth
        yield waiting


class WorkerMetrics:
    """The worker's metrics in their own registry (tests make several)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.jobs = Counter("ralf_jobs", "Scan jobs by outcome: verdict label, failed (for good) or retried", ["outcome"], registry=r)
        for outcome in OUTCOMES:
            self.jobs.labels(outcome)
        self.scan_seconds = Histogram("ralf_scan_seconds", "Scan seconds per finished job", buckets=SCAN_BUCKETS, registry=r)
        self.faces_per_job = Histogram("ralf_faces_per_job", "Faces scored per finished job", buckets=FACE_BUCKETS, registry=r)
        self.stage_seconds = Histogram(
            "ralf_stage_seconds", "Seconds per stage per finished job", ["stage"], buckets=STAGE_BUCKETS, registry=r
        )
        for stage in STAGES:
            self.stage_seconds.labels(stage)
        self.faces = Counter("ralf_faces", "Faces scored", registry=r)
        self.faces_per_second = Gauge(
            "ralf_faces_per_second", "Faces scored per second of scan time, last finished job with faces", registry=r
        )
        self.model = Info("ralf_model", "Loaded model and inference engine", registry=r)
        self.webhooks = Counter("ralf_webhook_deliveries", "Webhook delivery attempts by outcome", ["outcome"], registry=r)
        for outcome in WEBHOOK_OUTCOMES:
            self.webhooks.labels(outcome)
        self._server: Any = None
        self._lock = threading.Lock()

    def watch_queues(self, connection: Redis, settings: Settings) -> None:
        self.registry.register(QueueCollector(connection, settings))

    def set_model(self, **values: object) -> None:
        self.model.info({name: str(value) for name, value in values.items()})

    def record_verdict(self, verdict: Verdict) -> None:
        with self._lock:
            self.jobs.labels(verdict.label).inc()
            timings = verdict.timings
            self.scan_seconds.observe(timings.total_s)
            self.faces_per_job.observe(verdict.counts.faces)
            for stage in STAGES:
                self.stage_seconds.labels(stage).observe(getattr(timings, f"{stage}_s", 0.0))
            self.faces.inc(verdict.counts.faces)
            if verdict.counts.faces and timings.total_s > 0:
                self.faces_per_second.set(verdict.counts.faces / timings.total_s)

    def record_outcome(self, outcome: str) -> None:
        """A job that ended without a verdict: 'failed' (for good) or 'retried'."""
        with self._lock:
            self.jobs.labels(outcome).inc()

    def record_webhook(self, outcome: str) -> None:
        if outcome in WEBHOOK_OUTCOMES:
            self.webhooks.labels(outcome).inc()

    def serve(self, port: int, host: str = "0.0.0.0") -> int:
        """Start the HTTP endpoint (a daemon thread); returns the port (useful with port 0)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._server = server
        return int(server.server_address[1])

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
