"""`ralf-cli reviews export`: the reviewed videos as a labelled set, labelled by the moderators' final
decision (the latest one; videos whose latest decision is `unsure` are left out), with the model's
verdict and score beside it.

OUT/real/<job>.<ext> and OUT/fake/<job>.<ext>: symbolic links to the stored videos (what
`ralf-cli calibrate --data OUT` reads); OUT/manifest.csv: `file,label,split,method,kind` (the labelled-
video manifest columns) then job_id, model_label, model_score, threshold, decision, reviewer,
decided_at; OUT/crops/{real,fake}/<job>/: the face crops the model judged most suspicious (its evidence),
when the workers kept evidence, a folder layout of face crops (`ralf-cli evaluate OUT/crops`)."""

from __future__ import annotations

import csv
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from redis import Redis

from api.reviews import ReviewDecision, ReviewStore, job_source
from ralf.core.settings import Settings

MANIFEST = "manifest.csv"
COLUMNS = ("file", "label", "split", "method", "kind", "job_id", "model_label", "model_score", "threshold",
           "decision", "reviewer", "decided_at")  # fmt: skip


@dataclass
class ExportSummary:
    real: int = 0
    fake: int = 0
    crops: int = 0
    skipped: dict[str, str] = field(default_factory=dict)  # job id -> why


class ExportError(ValueError):
    """The export cannot be written (the message says why)."""


def _prepare(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        raise ExportError(f"{out} is not empty; export into a new folder")
    for label in ("real", "fake"):
        (out / label).mkdir(parents=True, exist_ok=True)


def _video(connection: Redis, job_id: str) -> Path | str:
    """The stored video of a job, or why there is none."""
    scan = job_source(connection, job_id)
    if scan is None:
        return "the job has expired"
    if scan.kind != "file":
        return "a URL job: the video was downloaded by a worker and not kept"
    path = Path(scan.source)
    return path if path.is_file() else "the video was deleted"


def _row(name: str, label: str, d: ReviewDecision) -> dict[str, str]:
    return {
        "file": name, "label": label, "split": "review", "method": "reviewed" if label == "fake" else "real",
        "kind": "reviewed", "job_id": d.job_id, "model_label": d.model_label,
        "model_score": "" if d.model_score is None else f"{d.model_score:.6f}", "threshold": f"{d.threshold:.6f}",
        "decision": d.outcome, "reviewer": d.reviewer_name, "decided_at": d.decided_at.isoformat(),
    }  # fmt: skip


def _copy_crops(settings: Settings, job_id: str, target: Path) -> int:
    if settings.evidence_dir is None or not (settings.evidence_dir / job_id).is_dir():
        return 0
    crops = sorted((settings.evidence_dir / job_id).glob("*-crop.png"))
    if crops:
        target.mkdir(parents=True, exist_ok=True)
        for crop in crops:
            shutil.copyfile(crop, target / crop.name)
    return len(crops)


def export_reviews(connection: Redis, settings: Settings, out: Path) -> ExportSummary:
    out = out.expanduser().absolute()
    _prepare(out)
    summary, rows = ExportSummary(), []
    for job_id, decision in sorted(ReviewStore(connection, settings).finals().items()):
        label = decision.label
        if label is None:
            summary.skipped[job_id] = "the latest decision is 'unsure'"
            continue
        video = _video(connection, job_id)
        if isinstance(video, str):
            summary.skipped[job_id] = video
            continue
        name = f"{label}/{job_id}{video.suffix}"
        (out / name).symlink_to(video.resolve())
        rows.append(_row(name, label, decision))
        setattr(summary, label, getattr(summary, label) + 1)
        summary.crops += _copy_crops(settings, job_id, out / "crops" / label / job_id)
    with (out / MANIFEST).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return summary
