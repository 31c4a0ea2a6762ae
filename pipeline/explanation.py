"""The verdict in plain words, for the verdict's `explanation`, the table output and the HTML report."""

from __future__ import annotations

from pipeline.verdict import Verdict


def fmt_time(seconds: float) -> str:
    minutes, rest = divmod(max(0.0, seconds), 60)
    return f"{int(minutes)}:{rest:04.1f}" if minutes else f"{rest:.1f} s"


def verdict_in_words(v: Verdict) -> str:
    """One or two plain sentences: the decision, the score against the threshold, and why."""
    threshold = f"{v.threshold:.2f}"
    deciding = [t for t in v.tracks if t.decides is not False]
    worst = max(deciding or v.tracks, key=lambda t: t.score, default=None)
    if v.label == "error":
        return f"Not judged: the video could not be scanned ({v.error or 'no reason recorded'})."
    if v.label == "no_face":
        return (
            f"No face was found in the {v.counts.frames_decoded} frames looked at, so nothing was judged; "
            "this says nothing about whether the video is manipulated."
        )
    assert v.score is not None and worst is not None
    who = f"person {worst.track_id}" if len(v.tracks) > 1 else "the one person found"
    when = f"seen {fmt_time(worst.first_time_s)}–{fmt_time(worst.last_time_s)}"
    people = len(deciding)  # tracks with too little evidence are listed apart
    among = f", the most suspicious of {people} people," if people > 1 else ""
    if v.label == "fake":
        return (
            f"Likely manipulated: {who} ({when}){among} scored P(fake) {v.score:.2f}, at or above the threshold "
            f"{threshold}. One manipulated face is enough to flag the video."
        )
    return f"No manipulation found: {who} ({when}){among} scored P(fake) {v.score:.2f}, below the threshold {threshold}."


def thin_tracks_in_words(v: Verdict, limit: int = 5) -> str:
    """The tracks that did not decide and why, or '' when every track decided."""
    thin = [t for t in v.tracks if t.decides is False]
    if not thin:
        return ""
    listed = "; ".join(
        f"person {t.track_id} ({t.thin_evidence or 'too little evidence'}, P(fake) {t.score:.2f})" for t in thin[:limit]
    )
    more = f" and {len(thin) - limit} more" if len(thin) > limit else ""
    return f"Too little evidence to decide: {listed}{more}."


def explanation(v: Verdict) -> str:
    """The verdict's `explanation`: the decision in words, the thin tracks, and whether the deciding
    track itself was thin (no track had enough evidence, so the best-evidenced one was judged alone)."""
    words = verdict_in_words(v)
    deciding = [t for t in v.tracks if t.decides]
    if len(deciding) == 1 and deciding[0].thin_evidence:
        words += (
            f" No person was seen long or large enough for a firm decision ({deciding[0].thin_evidence}): "
            "judged on this person alone."
        )
    thin = thin_tracks_in_words(v)
    return f"{words} {thin}" if thin else words
