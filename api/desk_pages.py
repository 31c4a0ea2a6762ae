"""The review desk's HTML, rendered on the server: no script, one stylesheet from this server, every
value escaped. The pages are served with DESK_CSP, which forbids anything but this server's CSS and
forms posting back to it."""

from __future__ import annotations

import html
from collections.abc import Sequence
from datetime import datetime

from api.reviews import Candidate, QueueFilter, ReviewDecision

DESK_CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
OUTCOME_TEXT = {"confirm_fake": "confirm fake", "overturn_real": "overturn to real", "unsure": "unsure"}

CSS = """
body{font:15px/1.45 system-ui,sans-serif;margin:0;background:#f4f5f7;color:#1d2330}
header{background:#1d2330;color:#fff;padding:10px 24px;display:flex;gap:16px;align-items:center}
header a{color:#fff}header form{margin-left:auto}main{max-width:1100px;margin:0 auto;padding:20px}
h1{font-size:22px;word-break:break-all}
table{border-collapse:collapse;width:100%;background:#fff}th,td{text-align:left;padding:6px 8px;border-bottom:1px solid #e3e6ea}
.fake{color:#c62828;font-weight:700}.real{color:#2e7d32;font-weight:700}
form.filters{display:flex;flex-wrap:wrap;gap:10px;align-items:end;margin-bottom:14px}
form.filters label{display:flex;flex-direction:column;font-size:13px}
fieldset{background:#fff;border:1px solid #d6dae0;border-radius:8px;margin:16px 0}
textarea{width:100%;min-height:70px}.error{background:#fdecea;border:1px solid #f5c2c0;padding:8px;border-radius:6px}
.muted{color:#5b6472;font-size:13px}
"""


def e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value else "-"


def page(title: str, body: str, *, reviewer: str | None = None, csrf: str | None = None) -> str:
    bar = ""
    if reviewer is not None:
        bar = (
            f'<header><b>RALF review desk</b><a href="/review/queue">queue</a><span>signed in: {e(reviewer)}</span>'
            f'<form method="post" action="/review/logout"><input type="hidden" name="csrf" value="{e(csrf)}">'
            '<button type="submit">sign out</button></form></header>'
        )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta name="referrer" content="same-origin">'
        f'<title>{e(title)}</title><link rel="stylesheet" href="/review/static/desk.css"></head>'
        f"<body>{bar}<main>{body}</main></body></html>"
    )


def login_page(csrf: str, error: str | None = None) -> str:
    problem = f'<p class="error" id="error">{e(error)}</p>' if error else ""
    body = (
        f"<h1>Review desk</h1>{problem}"
        '<form method="post" action="/review/login" id="login">'
        f'<input type="hidden" name="csrf" value="{e(csrf)}">'
        '<label>Review key <input type="password" name="key" id="key" autocomplete="off" required></label> '
        '<button type="submit" id="signin">sign in</button></form>'
        '<p class="muted">A key with the review (or admin) scope: <code>ralf-cli keys create --scope review</code>.</p>'
    )
    return page("Review desk: sign in", body)


def _option(value: str, shown: str, chosen: str) -> str:
    return f'<option value="{e(value)}"{" selected" if value == chosen else ""}>{e(shown)}</option>'


def _filters(f: QueueFilter) -> str:
    label = f.label or ""
    reviewed = "" if f.reviewed is None else ("yes" if f.reviewed else "no")
    return (
        '<form class="filters" method="get" action="/review/queue">'
        f'<label>label<select name="label">{_option("", "any", label)}{_option("fake", "fake", label)}'
        f"{_option('real', 'real (uncertain)', label)}</select></label>"
        f'<label>score from<input name="min_score" size="5" value="{e(f.min_score if f.min_score is not None else "")}"></label>'
        f'<label>score to<input name="max_score" size="5" value="{e(f.max_score if f.max_score is not None else "")}"></label>'
        f'<label>ended since<input type="date" name="since" value="{e(f.since.date() if f.since else "")}"></label>'
        f'<label>ended until<input type="date" name="until" value="{e(f.until.date() if f.until else "")}"></label>'
        f'<label>reviewed<select name="reviewed">{_option("", "any", reviewed)}{_option("no", "not yet", reviewed)}'
        f"{_option('yes', 'reviewed', reviewed)}</select></label>"
        '<button type="submit">filter</button></form>'
    )


def _row(c: Candidate) -> str:
    score = "-" if c.verdict.score is None else f"{c.verdict.score:.3f}"
    decided = OUTCOME_TEXT[c.final.outcome] if c.final else "not reviewed"
    return (
        f'<tr data-job="{e(c.job_id)}"><td><a href="/review/jobs/{e(c.job_id)}">{e(c.job_id)}</a></td>'
        f'<td class="{e(c.verdict.label)}">{e(c.verdict.label)}</td><td>{score}</td><td>{c.verdict.threshold:.3f}</td>'
        f"<td>{e(c.reason)}</td><td>{e(_when(c.ended_at))}</td><td>{e(decided)}</td></tr>"
    )


def queue_page(items: Sequence[Candidate], f: QueueFilter, reviewer: str, csrf: str, total: int) -> str:
    rows = "".join(_row(c) for c in items)
    table = (
        '<table id="queue"><tr><th>job</th><th>model</th><th>P(fake)</th><th>threshold</th><th>why</th>'
        f"<th>ended</th><th>decision</th></tr>{rows}</table>"
        if items
        else '<p id="empty">Nothing to review with these filters.</p>'
    )
    body = f'<h1>Review queue</h1>{_filters(f)}<p class="muted">{len(items)} of {total} flagged or uncertain videos</p>{table}'
    return page("Review queue", body, reviewer=reviewer, csrf=csrf)


def _trail(history: Sequence[ReviewDecision]) -> str:
    if not history:
        return '<p id="no-decisions">No decision yet.</p>'
    rows = "".join(
        f'<tr class="decision"><td>{e(_when(d.decided_at))}</td><td>{e(d.reviewer_name)} ({e(d.reviewer_key_id)})</td>'
        f'<td class="outcome">{e(OUTCOME_TEXT[d.outcome])}</td><td class="note">{e(d.note)}</td></tr>'
        for d in history
    )
    return f'<table id="trail"><tr><th>when</th><th>who</th><th>decision</th><th>note</th></tr>{rows}</table>'


def job_page(
    c: Candidate, history: Sequence[ReviewDecision], reviewer: str, csrf: str, error: str | None = None
) -> str:
    v = c.verdict
    score = "-" if v.score is None else f"{v.score:.3f}"
    choices = "".join(
        f'<label><input type="radio" name="outcome" value="{o}" id="outcome-{o}" required> {e(OUTCOME_TEXT[o])}</label> '
        for o in ("confirm_fake", "overturn_real", "unsure")
    )
    problem = f'<p class="error" id="error">{e(error)}</p>' if error else ""
    body = (
        f"<h1>Job {e(c.job_id)}</h1>{problem}"
        f'<p>Model: <span class="{e(v.label)}">{e(v.label)}</span>, P(fake) {score} (threshold {v.threshold:.3f}, '
        f"{e(v.threshold_source)}); {e(c.reason)}; input {e(c.content)}; model {e(v.model_version)}.</p>"
        f'<p><a href="/review/jobs/{e(c.job_id)}/report" id="report">open the report</a></p>'
        f'<form method="post" action="/review/jobs/{e(c.job_id)}/decisions" id="decide"><fieldset><legend>Your decision</legend>'
        f'<input type="hidden" name="csrf" value="{e(csrf)}">{choices}'
        '<p><label>Note (optional)<textarea name="note" id="note" maxlength="2000"></textarea></label></p>'
        '<button type="submit" id="record">record decision</button></fieldset></form>'
        f"<h2>Decisions (append-only)</h2>{_trail(history)}"
    )
    return page(f"Review {c.job_id}", body, reviewer=reviewer, csrf=csrf)
