"""One self-contained HTML page per report: what a moderator reads to decide about a video.

For each verdict: the verdict and the threshold in words, a plot of each track's face scores over the
video's time with the threshold line and the evidence thumbnails at their times, the evidence images
(frame with the box, crop, |x - x~| heat map, attention map), the tracks, the model, and what was not
looked at (errors, warnings, tracks that did not decide, damage, frames not sampled).

Self-contained: CSS inline, images as data: URIs, and a Content-Security-Policy that forbids every
network request, so the page opens offline and cannot call anywhere. Text from the verdict (paths,
errors, warnings) is escaped. No torch import: reports are made where no model is loaded.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from pipeline.explanation import fmt_time, verdict_in_words
from pipeline.verdict import EvidenceFrame, TrackVerdict, Verdict

TRACK_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
PLOT_W, PLOT_H = 860, 240
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 48, 16, 14, 34
THUMB = 56  # px of a thumbnail in the plot's evidence band
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

_CSS = """
body{font:15px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;background:#f4f5f7;color:#1d2330}
main{max-width:940px;margin:0 auto;padding:24px}
section.verdict{background:#fff;border-radius:10px;box-shadow:0 1px 3px #0002;padding:20px 24px;margin-bottom:28px}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:22px 0 8px;border-bottom:1px solid #e3e6ea;padding-bottom:4px}
.path{color:#5b6472;font-family:ui-monospace,monospace;font-size:13px;word-break:break-all}
.label{display:inline-block;font-weight:700;letter-spacing:.04em;padding:3px 10px;border-radius:6px;color:#fff;margin-right:8px}
.fake{background:#c62828}.real{background:#2e7d32}.no_face{background:#8d6e00}.error{background:#6a1b9a}
.banner{background:#fff3cd;border:1px solid #e0c36a;border-radius:6px;padding:8px 12px;margin:10px 0}
.words{font-size:16px;margin:10px 0}
table{border-collapse:collapse;width:100%;font-size:14px}th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #eceef1}
th{color:#5b6472;font-weight:600}
.swatch{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:6px}
.evidence{display:grid;grid-template-columns:1fr;gap:14px}
figure{margin:0;background:#fafbfc;border:1px solid #e3e6ea;border-radius:8px;padding:10px}
figure .imgs{display:flex;gap:8px;align-items:flex-start;flex-wrap:wrap}
figure .imgs div{text-align:center;font-size:11px;color:#5b6472}
figure img{display:block;border-radius:4px;image-rendering:auto}
figure img.frame{height:150px}figure img.sq{width:150px;height:150px}
figcaption{font-size:13px;margin-bottom:6px}
ul.missed li{margin:2px 0}
.muted{color:#5b6472;font-size:13px}
svg text{font:11px system-ui,sans-serif;fill:#5b6472}
"""


@dataclass(frozen=True)
class ReportItem:
    """A verdict and where its evidence images are (None: none to show)."""

    verdict: Verdict
    evidence_dir: Path | None = None
    name: str | None = None  # what the reader calls it (a job id, the user's own path)


def e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _image_uri(path: Path, jpeg: bool = False, max_side: int | None = None) -> str | None:
    """A data: URI of an image file (re-encoded as JPEG for photos), or None when it cannot be read."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if not jpeg and max_side is None:
        return "data:image/png;base64," + base64.b64encode(data).decode()
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as image:
            image = image.convert("RGB")
            if max_side is not None and max(image.size) > max_side:
                image.thumbnail((max_side, max_side))
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG" if jpeg else "PNG", quality=85)
    except Exception:  # noqa: BLE001 - a damaged image is shown as missing, not a failed report
        return None
    return f"data:image/{'jpeg' if jpeg else 'png'};base64," + base64.b64encode(buffer.getvalue()).decode()


class _Images:
    """Evidence images of one verdict as data: URIs (each file read once), and what could not be read."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self.missing: list[str] = []
        self._cache: dict[tuple[str, bool, int | None], str | None] = {}

    def uri(self, name: str | None, *, jpeg: bool = False, max_side: int | None = None) -> str | None:
        if not name or self.folder is None:
            return None
        key = (name, jpeg, max_side)
        if key not in self._cache:
            self._cache[key] = _image_uri(self.folder / name, jpeg, max_side)
            if self._cache[key] is None and name not in self.missing:
                self.missing.append(name)
        return self._cache[key]


def _points(track: TrackVerdict) -> list[tuple[float, float]]:
    if track.frame_scores:
        return [(p.time_s, p.score) for p in track.frame_scores]
    # Verdicts stored before frame scores were recorded: the track's score over its time span.
    return [(track.first_time_s, track.score), (track.last_time_s, track.score)]


def score_plot(v: Verdict, images: _Images) -> str:
    """Inline SVG: each track's P(fake) over time, the threshold line, and the evidence crops as
    thumbnails in a band under the axis, each joined to its point."""
    end = max([t.last_time_s for t in v.tracks] + [e.time_s for e in v.evidence] + [0.0])
    span = end if end > 0 else 1.0
    evidence = sorted(v.evidence, key=lambda item: item.time_s)
    lanes: list[float] = []  # right edge of the last thumbnail in each lane
    placed: list[tuple[EvidenceFrame, float, int]] = []
    inner_w = PLOT_W - MARGIN_L - MARGIN_R

    def x_of(t: float) -> float:
        return MARGIN_L + inner_w * (t / span)

    for item in evidence:
        left = min(max(x_of(item.time_s) - THUMB / 2, MARGIN_L - 8), PLOT_W - THUMB)
        lane = next((i for i, right in enumerate(lanes) if left >= right + 4), None)
        if lane is None:
            lanes.append(0.0)
            lane = len(lanes) - 1
        lanes[lane] = left + THUMB
        placed.append((item, left, lane))
    band = (len(lanes) * (THUMB + 18) + 8) if lanes else 0
    height = PLOT_H + band
    inner_h = PLOT_H - MARGIN_T - MARGIN_B

    def y_of(p: float) -> float:
        return MARGIN_T + inner_h * (1 - p)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{PLOT_W}" height="{height}" viewBox="0 0 {PLOT_W} {height}" '
        f'role="img" aria-label="P(fake) of each face track over time">',
        f'<rect x="{MARGIN_L}" y="{MARGIN_T}" width="{inner_w}" height="{inner_h}" fill="#fff" stroke="#d5d9df"/>',
    ]
    for p in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = y_of(p)
        parts.append(f'<line x1="{MARGIN_L}" x2="{PLOT_W - MARGIN_R}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eef0f3"/>')
        parts.append(f'<text x="{MARGIN_L - 6}" y="{y + 4:.1f}" text-anchor="end">{p:.2f}</text>')
    step = _nice_step(span)
    tick = 0.0
    while tick <= span + 1e-9:
        x = x_of(tick)
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{MARGIN_T + inner_h}" y2="{MARGIN_T + inner_h + 4}" stroke="#9aa3ae"/>')
        parts.append(f'<text x="{x:.1f}" y="{MARGIN_T + inner_h + 16}" text-anchor="middle">{e(fmt_time(tick))}</text>')
        tick += step
    parts.append(
        f'<text x="{MARGIN_L + inner_w / 2:.1f}" y="{PLOT_H - 4}" text-anchor="middle">time in the video</text>'
        f'<text x="12" y="{MARGIN_T + inner_h / 2:.1f}" transform="rotate(-90 12 {MARGIN_T + inner_h / 2:.1f})" '
        'text-anchor="middle">P(fake)</text>'
    )
    ty = y_of(v.threshold)
    parts.append(
        f'<line x1="{MARGIN_L}" x2="{PLOT_W - MARGIN_R}" y1="{ty:.1f}" y2="{ty:.1f}" stroke="#c62828" '
        f'stroke-width="1.5" stroke-dasharray="6 4"/>'
        f'<text x="{PLOT_W - MARGIN_R - 4}" y="{ty - 5:.1f}" text-anchor="end" style="fill:#c62828">'
        f"threshold {v.threshold:.2f}</text>"
    )
    for index, track in enumerate(v.tracks):
        colour = TRACK_COLOURS[index % len(TRACK_COLOURS)]
        points = _points(track)
        dash = "" if track.decides is not False else ' stroke-dasharray="2 3"'
        path = " ".join(f"{x_of(t):.1f},{y_of(p):.1f}" for t, p in points)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.8"{dash}/>')
        if len(points) <= 120:
            radius = 2.2 if len(points) > 1 else 4.0  # a track seen once is a point, not a line
            for t, p in points:
                parts.append(f'<circle cx="{x_of(t):.1f}" cy="{y_of(p):.1f}" r="{radius}" fill="{colour}"/>')
    colours = {t.track_id: TRACK_COLOURS[i % len(TRACK_COLOURS)] for i, t in enumerate(v.tracks)}
    for item, left, lane in placed:
        colour = colours.get(item.track_id, "#555")
        px, py = x_of(item.time_s), y_of(item.score)
        top = PLOT_H + 6 + lane * (THUMB + 18)
        parts.append(
            f'<line x1="{px:.1f}" y1="{py:.1f}" x2="{left + THUMB / 2:.1f}" y2="{top:.1f}" stroke="{colour}" '
            'stroke-opacity=".45"/>'
            f'<circle cx="{px:.1f}" cy="{py:.1f}" r="4.5" fill="none" stroke="{colour}" stroke-width="2"/>'
        )
        uri = images.uri(item.crop, max_side=THUMB * 2)
        if uri:
            parts.append(f'<image href="{uri}" x="{left:.1f}" y="{top:.1f}" width="{THUMB}" height="{THUMB}"/>')
        else:
            parts.append(f'<rect x="{left:.1f}" y="{top:.1f}" width="{THUMB}" height="{THUMB}" fill="#eee" stroke="#ccc"/>')
        parts.append(
            f'<rect x="{left:.1f}" y="{top:.1f}" width="{THUMB}" height="{THUMB}" fill="none" stroke="{colour}" stroke-width="2"/>'
            f'<text x="{left + THUMB / 2:.1f}" y="{top + THUMB + 12:.1f}" text-anchor="middle">'
            f"{e(fmt_time(item.time_s))} · {item.score:.2f}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _nice_step(span: float) -> float:
    raw = span / 8
    for step in (0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600):
        if step >= raw:
            return float(step)
    return float(3600 * (int(raw // 3600) + 1))


def not_looked_at(v: Verdict, images: _Images) -> list[str]:
    """What the verdict does not cover, in plain words."""
    notes: list[str] = []
    if v.error:
        notes.append(f"The scan stopped: {v.error}")
    for track in v.tracks:
        if track.decides is False:
            notes.append(
                f"Person {track.track_id} had too little evidence to decide ({track.thin_evidence or 'seen briefly'}): "
                f"reported (P(fake) {track.score:.2f}) but not allowed to decide the video."
            )
    if v.counts.frames_decoded and v.label != "error":
        notes.append(
            f"Only sampled frames were looked at: {v.counts.frames_decoded} frames; faces appearing only between "
            "them, and faces too small or too turned away for the detector, were not judged."
        )
    damage = {
        "packets the decoder rejected": v.counts.rejected_packets,
        "frames decoded with concealed errors": v.counts.corrupt_frames,
        "frames announced but missing": v.counts.missing_frames,
        "frames with repeated timestamps (times estimated)": v.counts.repeated_timestamps,
    }
    for what, count in damage.items():
        if count:
            notes.append(f"The file is damaged: {count} {what}.")
    for warning in v.warnings:
        notes.append(f"Warning: {warning}")
    if v.label in ("fake", "real") and not v.evidence:
        notes.append("No evidence images: the scan was made without --evidence (or RALF_EVIDENCE_DIR on the workers).")
    if images.missing:
        notes.append(
            f"{len(images.missing)} evidence image(s) could not be read from {images.folder} "
            f"(moved, expired or not shared with this machine): {', '.join(images.missing[:6])}"
            + (" ..." if len(images.missing) > 6 else "")
        )
    return notes


def _evidence_figures(v: Verdict, images: _Images, colours: dict[int, str]) -> str:
    figures = []
    for item in sorted(v.evidence, key=lambda x: (x.track_id, x.rank)):
        cells = []
        for kind, name, css, jpeg, label in (
            ("frame", item.frame, "frame", True, "frame"),
            ("crop", item.crop, "sq", False, "face crop"),
            ("residual", item.residual, "sq", False, "|x − x̃|"),
            ("attention", item.attention, "sq", False, "attention"),
        ):
            uri = images.uri(name, jpeg=jpeg, max_side=480 if kind == "frame" else 256)
            if uri:
                cells.append(f'<div><img class="{css}" src="{uri}" alt="{e(label)}">{e(label)}</div>')
        colour = colours.get(item.track_id, "#555")
        figures.append(
            f'<figure><figcaption><span class="swatch" style="background:{colour}"></span>'
            f"<b>Person {item.track_id}</b>, #{item.rank} most suspicious: P(fake) {item.score:.2f} "
            f"at {e(fmt_time(item.time_s))} (frame {item.frame_index})</figcaption>"
            f'<div class="imgs">{"".join(cells)}</div></figure>'
        )
    if not figures:
        return ""
    return (
        "<h2>Evidence from the model</h2>"
        '<p class="muted">For each person\'s most suspicious faces: the frame with the face box, the crop the model '
        "judged, the heat map of |x − x̃| (the face minus the model's authentic-looking reconstruction of it: what "
        "the classifier examines; brighter = larger difference, scaled per crop) and the destruction-guided "
        "attention (where the classifier looked; brighter = more weight).</p>"
        f'<div class="evidence">{"".join(figures)}</div>'
    )


def render_verdict(item: ReportItem) -> str:
    v = item.verdict
    images = _Images(item.evidence_dir)
    colours = {t.track_id: TRACK_COLOURS[i % len(TRACK_COLOURS)] for i, t in enumerate(v.tracks)}
    label = {"fake": "FAKE", "real": "REAL", "no_face": "NO FACE", "error": "ERROR"}[v.label]
    parts = [
        '<section class="verdict">',
        f'<h1><span class="label {v.label}">{label}</span>{e(item.name or Path(v.path).name or v.path)}</h1>',
        f'<div class="path">{e(v.path)}</div>',
    ]
    if v.weights_random:
        parts.append('<div class="banner"><b>Random weights:</b> this verdict was made by an untrained model and means nothing.</div>')
    parts.append(f'<p class="words">{e(verdict_in_words(v))}</p>')
    parts.append(
        f'<p class="muted">Threshold {v.threshold:.3f} on P(fake): {e(v.threshold_source)}. '
        "A video is flagged when its most suspicious deciding person reaches it.</p>"
    )
    plot = score_plot(v, images) if v.tracks else ""
    if plot:
        parts.append("<h2>Scores over time</h2>")
        parts.append(
            '<p class="muted">Each line is one person (face track): P(fake) of each sampled face over the video. '
            "Dashed red: the threshold. Dotted lines: tracks that do not decide. "
            "Thumbnails: the evidence crops, at their times.</p>"
        )
        parts.append(plot)
    if v.tracks:
        rows = "".join(
            f'<tr><td><span class="swatch" style="background:{colours[t.track_id]}"></span>{t.track_id}</td>'
            f"<td>{t.score:.3f}</td><td>{t.num_faces}</td><td>{e(fmt_time(t.first_time_s))} – {e(fmt_time(t.last_time_s))}</td>"
            f"<td>{'yes' if t.decides is not False else e('no (' + (t.thin_evidence or 'too little evidence') + ')')}</td>"
            f"<td>{e(', '.join(fmt_time(s) for s in t.suspicious_times_s))}</td></tr>"
            for t in v.tracks
        )
        parts.append(
            "<h2>People (face tracks)</h2><table><tr><th>track</th><th>P(fake)</th><th>faces</th><th>seen</th>"
            f"<th>decides</th><th>most suspicious at</th></tr>{rows}</table>"
        )
    parts.append(_evidence_figures(v, images, colours))
    missed = not_looked_at(v, images)
    parts.append("<h2>What was not looked at</h2>")
    parts.append(
        '<ul class="missed">' + "".join(f"<li>{e(note)}</li>" for note in missed) + "</ul>"
        if missed
        else '<p class="muted">Nothing to note: every sampled frame was read and every track decided.</p>'
    )
    timings = v.timings
    parts.append(
        "<h2>Model and scan</h2><table>"
        f"<tr><th>model version</th><td>{e(v.model_version)}{' (random weights)' if v.weights_random else ''}</td></tr>"
        f"<tr><th>engine / decoder / detector</th><td>{e(v.engine or '-')} / {e(v.decoder or '-')} / {e(v.detector or '-')}</td></tr>"
        f"<tr><th>frames / faces / tracks</th><td>{v.counts.frames_decoded} / {v.counts.faces} / {v.counts.tracks}</td></tr>"
        f"<tr><th>scan time</th><td>{timings.total_s:.2f} s (decode {timings.decode_s:.2f}, detect {timings.detect_s:.2f}, "
        f"infer {timings.infer_s:.2f}, evidence {timings.evidence_s:.2f})</td></tr>"
        "</table>"
    )
    parts.append("</section>")
    return "".join(parts)


def render_report(items: Sequence[ReportItem], *, generated_at: datetime | None = None) -> str:
    """The whole page for one or more verdicts."""
    when = (generated_at or datetime.now(timezone.utc)).strftime("%Y-%m-%d %H:%M UTC")
    title = "RALF report" if len(items) != 1 else f"RALF report: {Path(items[0].verdict.path).name or items[0].verdict.path}"
    body = "".join(render_verdict(item) for item in items)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{e(title)}</title><style>{_CSS}</style></head><body><main>"
        f'<p class="muted">Deepfake moderation report · generated {e(when)} · scores are P(fake) from the RALF model</p>'
        f"{body}</main></body></html>\n"
    )
