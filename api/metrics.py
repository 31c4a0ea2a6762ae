"""Prometheus metrics of the review desk, read from Redis at scrape time (so every API replica
reports the same numbers): decisions by outcome, overturn rate, backlog, oldest unreviewed flag."""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis import Redis

from api.reviews import OUTCOMES, ReviewStore, candidates
from ralf.core.settings import Settings


class ReviewCollector(Collector):
    def __init__(self, connection: Redis, settings: Settings) -> None:
        self.connection = connection
        self.settings = settings

    def collect(self) -> Iterator[Metric]:
        store = ReviewStore(self.connection, self.settings)
        decisions = CounterMetricFamily("ralf_review_decisions", "Moderator decisions recorded", labels=["outcome"])
        counts = store.counts()
        for outcome in OUTCOMES:
            decisions.add_metric([outcome], counts[outcome])
        yield decisions
        finals = store.finals()
        decided = [d for d in finals.values() if d.label is not None]
        overturned = sum(d.overturns for d in decided)
        yield GaugeMetricFamily(
            "ralf_review_overturn_ratio",
            "Share of reviewed videos (final decision fake or real) whose decision differs from the model's label",
            value=overturned / len(decided) if decided else 0.0,
        )
        backlog = [c for c in candidates(self.connection, self.settings, finals) if c.final is None]
        yield GaugeMetricFamily(
            "ralf_review_backlog", "Flagged or uncertain verdicts not reviewed yet", value=len(backlog)
        )
        ended = [c.ended_at.timestamp() for c in backlog if c.ended_at is not None]
        yield GaugeMetricFamily(
            "ralf_review_oldest_unreviewed_seconds",
            "Age of the oldest flagged or uncertain verdict not reviewed yet (0 when none)",
            value=max(0.0, time.time() - min(ended)) if ended else 0.0,
        )


def review_registry(connection: Redis, settings: Settings) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ReviewCollector(connection, settings))
    return registry
