"""`ralf-cli evaluate WEIGHTS --videos SET`: labelled videos scanned exactly as `ralf-cli scan` scans
them (same `Scanner`: detector, crops, engine, aggregation, decision), reported as a moderator meets
them: video AUC, AP, TPR and FPR at the shipped threshold, TPR at 1% / 5% FPR, each with a 95%
bootstrap interval, per kind and per method of fakes (each against all reals of the set), and the
false positives by file.

Verdicts are cached in a JSONL file (one line per video, keyed by the file's size and mtime, the model
version and the scan options), so an interrupted evaluation resumes and a report can be re-made
without scanning again.

Scores: a video without faces never gets flagged, so it counts with score 0 (`no_face`); a video that
cannot be read is left out and listed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from pipeline.verdict import Verdict
from trainer.video_metrics import DEFAULT_RESAMPLES, VideoSetMetrics, video_set_metrics
from trainer.video_sets import LabelledVideo

ScanFunction = Callable[[Path], Verdict]
NO_FACE_SCORE = 0.0


@dataclass(frozen=True)
class VideoOutcome:
    """One labelled video and what the scanner said about it."""

    video: LabelledVideo
    verdict: Verdict

    @property
    def usable(self) -> bool:
        return self.verdict.label != "error"

    @property
    def score(self) -> float:
        return NO_FACE_SCORE if self.verdict.score is None else float(self.verdict.score)

    @property
    def flagged(self) -> bool:
        return self.verdict.label == "fake"


@dataclass(frozen=True)
class GroupMetrics:
    """Metrics of one kind or method of fakes against all reals of the set."""

    by: str  # "kind" or "method"
    group: str
    metrics: VideoSetMetrics | None  # None: no reals to compare with
    flagged: int

    def as_dict(self) -> dict[str, Any]:
        return {"by": self.by, "group": self.group, "flagged": self.flagged,
                "metrics": self.metrics.as_dict() if self.metrics else None}  # fmt: skip


@dataclass
class VideoEvaluation:
    """The report: overall metrics, per kind and method, false positives and misses by file."""

    model_version: str
    source: str
    split: str
    threshold: float
    threshold_source: str
    outcomes: list[VideoOutcome]
    overall: VideoSetMetrics
    groups: list[GroupMetrics] = field(default_factory=list)

    @property
    def errors(self) -> list[VideoOutcome]:
        return [o for o in self.outcomes if not o.usable]

    @property
    def false_positives(self) -> list[VideoOutcome]:
        return sorted((o for o in self.outcomes if o.usable and not o.video.is_fake and o.flagged),
                      key=lambda o: -o.score)  # fmt: skip

    @property
    def missed(self) -> list[VideoOutcome]:
        return sorted((o for o in self.outcomes if o.usable and o.video.is_fake and not o.flagged),
                      key=lambda o: o.score)  # fmt: skip

    def as_dict(self) -> dict[str, Any]:
        def row(o: VideoOutcome) -> dict[str, Any]:
            return {"file": o.video.name, "label": o.video.label, "kind": o.video.kind, "method": o.video.method,
                    "verdict": o.verdict.label, "score": o.verdict.score, "why": o.verdict.explanation,
                    "error": o.verdict.error}  # fmt: skip

        return {
            "model_version": self.model_version,
            "source": self.source,
            "split": self.split,
            "threshold": self.threshold,
            "threshold_source": self.threshold_source,
            "overall": self.overall.as_dict(),
            "groups": [g.as_dict() for g in self.groups],
            "false_positives": [row(o) for o in self.false_positives],
            "missed": [row(o) for o in self.missed],
            "errors": [row(o) for o in self.errors],
            "videos": [row(o) for o in self.outcomes],
        }


def cache_key(video: Path, model_version: str, options: dict[str, Any]) -> str:
    """What a cached verdict depends on: the file (size, mtime), the model and the scan options."""
    stat = video.stat()
    text = json.dumps([str(video), stat.st_size, stat.st_mtime_ns, model_version, options], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def load_cache(path: Path | None) -> dict[str, Verdict]:
    """Cached verdicts by key; unreadable lines (an interrupted write) are ignored."""
    if path is None or not path.is_file():
        return {}
    cached: dict[str, Verdict] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
            cached[entry["key"]] = Verdict.model_validate(entry["verdict"])
        except (ValueError, KeyError, TypeError):
            continue
    return cached


def scan_videos(
    videos: Sequence[LabelledVideo],
    scan: ScanFunction,
    *,
    model_version: str,
    options: dict[str, Any],
    cache: Path | None = None,
    progress: bool = True,
) -> list[VideoOutcome]:
    """A verdict for every video (from `cache` when it has one for the same file, model and options;
    new verdicts are appended to it as they come)."""
    cached = load_cache(cache)
    outcomes = []
    handle = cache.open("a", encoding="utf-8") if cache is not None else None
    try:
        for video in tqdm(videos, desc="scanning videos", unit="video", disable=not progress):
            key = cache_key(video.path, model_version, options) if video.path.exists() else None
            verdict = cached.get(key) if key is not None else None
            if verdict is None:
                verdict = scan(video.path)
                if handle is not None and key is not None:
                    handle.write(json.dumps({"key": key, "verdict": verdict.model_dump(mode="json")}) + "\n")
                    handle.flush()
            outcomes.append(VideoOutcome(video, verdict))
    finally:
        if handle is not None:
            handle.close()
    return outcomes


def _group_metrics(
    outcomes: Sequence[VideoOutcome], by: str, threshold: float, resamples: int, seed: int
) -> list[GroupMetrics]:
    reals = [o for o in outcomes if not o.video.is_fake]
    fakes = [o for o in outcomes if o.video.is_fake]
    groups = sorted({getattr(o.video, by) for o in fakes})
    results = []
    for group in groups:
        members = [o for o in fakes if getattr(o.video, by) == group]
        chosen = reals + members
        metrics = None
        if reals:
            metrics = video_set_metrics([o.video.is_fake for o in chosen], [o.score for o in chosen], threshold,
                                        resamples, seed)  # fmt: skip
        results.append(GroupMetrics(by, group, metrics, sum(o.flagged for o in members)))
    return results


def evaluate_outcomes(
    outcomes: list[VideoOutcome],
    *,
    model_version: str,
    source: str,
    split: str,
    threshold: float,
    threshold_source: str,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> VideoEvaluation:
    """The report over scanned videos (errors left out of the metrics, listed)."""
    usable = [o for o in outcomes if o.usable]
    overall = video_set_metrics([o.video.is_fake for o in usable], [o.score for o in usable], threshold,
                                resamples, seed)  # fmt: skip
    groups = _group_metrics(usable, "kind", threshold, resamples, seed) + _group_metrics(
        usable, "method", threshold, resamples, seed
    )
    return VideoEvaluation(model_version, source, split, threshold, threshold_source, outcomes, overall, groups)
