"""`ralf-cli evaluate WEIGHTS --videos SET`: the real-world validation loop's report (trainer/video_evaluation.py)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from cli.common import err, fail, load_settings, scan_options

if TYPE_CHECKING:
    from trainer.video_evaluation import VideoEvaluation, VideoOutcome
    from trainer.video_metrics import VideoSetMetrics

out = Console(soft_wrap=True)


def evaluate_videos(
    weights: Path,
    source: Path,
    *,
    split: str | None,
    cache: Path | None,
    resamples: int,
    as_json: bool,
    threshold: float | None,
    progress: bool,
    device: str,
) -> None:
    """Scan the labelled videos with the scanner `ralf-cli scan` would build and print the report."""
    from pipeline.scan import Scanner
    from trainer.video_evaluation import evaluate_outcomes, scan_videos
    from trainer.video_sets import VideoSetError, count_by_label, read_video_set

    try:
        videos = read_video_set(source, split)
    except VideoSetError as error:
        fail(str(error))
    real, fake = count_by_label(videos)
    if not real or not fake:
        fail(f"{source} ({split or 'all'}) has {real} real and {fake} fake videos; the report needs both")
    options = scan_options(load_settings(), device=None if device == "auto" else device)
    try:
        scanner = Scanner(options, weights)
    except ValueError as error:
        fail(f"cannot set up the scanner: {error}")
    if threshold is not None:
        scanner.decision = dataclasses.replace(scanner.decision, threshold=threshold, source="--threshold")
    outcomes = scan_videos(
        videos, scanner.scan, model_version=scanner.model_version,
        options={**options.model_dump(mode="json"), "threshold": scanner.decision.threshold},
        cache=cache, progress=progress and not as_json and err.is_terminal,
    )  # fmt: skip
    usable = [o for o in outcomes if o.usable]
    if len({o.video.is_fake for o in usable}) < 2:
        fail("after leaving out the videos that could not be read, one class is empty; see the errors with --json")
    report = evaluate_outcomes(
        outcomes, model_version=scanner.model_version, source=str(source), split=split or "all",
        threshold=scanner.decision.threshold, threshold_source=scanner.decision.source, resamples=resamples,
    )  # fmt: skip
    if as_json:
        print(json.dumps(report.as_dict(), indent=1))
        return
    out.print(_metrics_table(report))
    out.print(_files_table("false positives (real videos flagged)", report.false_positives))
    out.print(_files_table("missed fakes", report.missed))
    if report.errors:
        out.print(_files_table("not scanned (left out of the metrics)", report.errors))


def _metrics_table(report: VideoEvaluation) -> Table:
    table = Table(
        title=f"{report.model_version} on {report.source} ({report.split}); flagged at P(fake) >= "
        f"{report.threshold:.4f} ({report.threshold_source}); 95% bootstrap intervals"
    )
    for column in ("group", "real", "fake", "flagged", "AUC", "AP", "TPR", "FPR", "TPR@1%FPR", "TPR@5%FPR"):
        table.add_column(column, justify="left" if column == "group" else "right")

    def add(name: str, metrics: VideoSetMetrics, flagged: str) -> None:
        table.add_row(
            name, str(metrics.num_real), str(metrics.num_fake), flagged, metrics.auc.text(),
            metrics.average_precision.text(), metrics.tpr.text(), metrics.fpr.text(),
            metrics.tpr_at_1pct_fpr.text(), metrics.tpr_at_5pct_fpr.text(),
        )  # fmt: skip

    usable = [o for o in report.outcomes if o.usable]
    add("all", report.overall, f"{sum(o.flagged and o.video.is_fake for o in usable)} fake / "
        f"{sum(o.flagged and not o.video.is_fake for o in usable)} real")  # fmt: skip
    for group in report.groups:
        if group.metrics is not None:
            add(f"{group.by}: {group.group}", group.metrics, str(group.flagged))
    return table


def _files_table(title: str, outcomes: Sequence[VideoOutcome]) -> Table:
    table = Table(title=title)
    for column in ("file", "kind", "verdict", "score", "why"):
        table.add_column(column)
    for o in outcomes:
        score = "-" if o.verdict.score is None else f"{o.verdict.score:.3f}"
        why = o.verdict.error or o.verdict.explanation
        table.add_row(o.video.name, o.video.kind, o.verdict.label, score, why)
    return table
