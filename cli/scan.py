"""In-process scanning: `scan` (videos → verdicts), `demo` (a generated clip, no weights needed), `schema`.

Exit codes of `scan`: 0 when every video is real or has no face, 1 when a fake was found,
2 when any video could not be scanned (or the scanner could not be set up). An error outranks a
fake: the run did not look at everything it was asked to.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cli.app import app
from cli.common import (
    EXIT_ERROR,
    AggregationFlag,
    BatchSizeFlag,
    DecoderFlag,
    DetectorFlag,
    DetectorPrecisionFlag,
    DeviceFlag,
    EveryNFlag,
    FpsFlag,
    MaxFramesFlag,
    PrecisionFlag,
    YoloWeightsFlag,
    load_settings,
    scan_options,
)
from pipeline.verdict import Verdict, verdict_json_schema
from ralf.core.options import DeviceName, ScanOptions
from ralf.core.settings import Settings
from ralf.shipped import resolve_weights

if TYPE_CHECKING:  # the pipeline (and torch) load when a command scans, not when `ralf-cli` starts
    from pipeline.scan import ProgressCallback, Scanner

out = Console()
err = Console(stderr=True)

EXIT_CLEAN, EXIT_FAKE = 0, 1  # and EXIT_ERROR (2): an error outranks a fake
_LABEL_STYLE = {"fake": "bold red", "real": "green", "no_face": "yellow", "error": "bold magenta"}
# Progress bars appear only for videos with at least this many sampled frames.
_PROGRESS_MIN_FRAMES = 64


def demo_dir() -> Path:
    """Where `demo` writes its clip: $XDG_CACHE_HOME/ralf/demo (~/.cache/ralf/demo), kept for re-scanning."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    directory = cache / "ralf" / "demo"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def exit_code(verdicts: Sequence[Verdict]) -> int:
    """0 all real / no face, 1 a fake found, 2 any error (errors outrank fakes)."""
    labels = {v.label for v in verdicts}
    if "error" in labels:
        return EXIT_ERROR
    return EXIT_FAKE if "fake" in labels else EXIT_CLEAN


def verdict_table(verdicts: Sequence[Verdict], title: str | None = None) -> Table:
    """One row per video, narrow enough for an 80-column terminal.

    The video is named by its file name (`--json` keeps the full path); the threshold, the same for
    every row, is the caption; suspicious moments are short times of the deciding track.
    """
    table = Table(
        title=title,
        caption=_threshold_caption(verdicts),
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
    )
    table.add_column("video", overflow="fold", ratio=2, min_width=14)
    table.add_column("verdict", no_wrap=True)
    table.add_column("P(fake)", justify="right", no_wrap=True)
    table.add_column("faces", justify="right", no_wrap=True)
    table.add_column("tracks", justify="right", no_wrap=True)
    table.add_column("time", justify="right", no_wrap=True)
    table.add_column("details", overflow="fold", ratio=3, min_width=20)
    for v in verdicts:
        style = _LABEL_STYLE[v.label]
        table.add_row(
            escape(_file_name(v.path)),
            f"[{style}]{v.label}[/{style}]",
            "-" if v.score is None else f"{v.score:.3f}",
            str(v.counts.faces),
            str(v.counts.tracks),
            short_time(v.timings.total_s),
            escape(_details(v)),
        )
    return table


def short_time(seconds: float) -> str:
    """'0s', '12.5s' under a minute, '1:02' under an hour, '1:02:03' beyond."""
    if seconds < 59.95:
        return f"{seconds:.1f}".removesuffix(".0") + "s"
    minutes, whole_seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{whole_seconds:02d}" if hours else f"{minutes}:{whole_seconds:02d}"


def _file_name(path: str) -> str:
    """The last part of a path or URL, or the whole text when it has none."""
    return path.rstrip("/").rsplit("/", 1)[-1] or path


def _threshold_caption(verdicts: Sequence[Verdict]) -> str:
    thresholds = dict.fromkeys((v.threshold, v.threshold_source) for v in verdicts)
    return "; ".join(f"fake when P(fake) >= {value:.3f}, {source}" for value, source in thresholds)


def _details(verdict: Verdict) -> str:
    if verdict.label == "error":
        return verdict.error or "unknown error"
    if verdict.label == "no_face":
        return "no face in sampled frames"
    worst = max((t for t in verdict.tracks if t.decides is not False), key=lambda t: t.score)
    if not worst.suspicious_times_s:
        return f"track {worst.track_id}"
    return f"track {worst.track_id} at " + " ".join(short_time(t) for t in worst.suspicious_times_s)


def _print_report(verdicts: Sequence[Verdict], title: str | None = None) -> None:
    out.print(verdict_table(verdicts, title))
    for warning in dict.fromkeys(w for v in verdicts for w in v.warnings):
        out.print(f"[bold yellow]warning:[/bold yellow] {escape(warning)}")


@contextmanager
def _progress_bars(enabled: bool) -> Iterator[Progress]:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True, disable=not enabled) as progress:
        yield progress


def _progress_for(progress: Progress, path: Path) -> ProgressCallback:
    task = None

    def update(done: int, total: int) -> None:
        nonlocal task
        if task is None:
            if total < _PROGRESS_MIN_FRAMES:
                return
            task = progress.add_task(f"scanning {escape(path.name)}", total=total)
        progress.update(task, completed=done, total=max(total, done))

    return update


URL_MESSAGE = (
    "URLs are not downloaded by `ralf-cli scan`: enqueue them (`ralf-cli enqueue URL`), and a worker downloads "
    "them with the size cap, deadline and address checks"
)


def evidence_dirs(root: Path, paths: Sequence[Path | str]) -> list[Path]:
    """One evidence folder per video under `root`, named after the file (`clip`, then `clip-2`, ... when
    two videos of the scan share a name); a name of dots only (`..mp4` has the stem `.`) becomes `video`:
    a folder must never be `root` itself or lie outside it."""
    taken: set[str] = set()
    folders = []
    for given in paths:
        stem = Path(str(given)).stem
        stem = stem if stem.strip(".") else "video"
        name, number = stem, 1
        while name in taken:
            number += 1
            name = f"{stem}-{number}"
        taken.add(name)
        folders.append(root / name)
    return folders


def scan_all(
    scanner: Scanner, paths: Sequence[Path | str], *, show_progress: bool, evidence_root: Path | None = None
) -> list[Verdict]:
    """One verdict per path; a failure of the scanner itself becomes an 'internal: ...' error verdict.
    With `evidence_root`, each video's evidence images go to its own folder under it."""
    from pipeline.scan import INTERNAL_ERROR_PREFIX
    from worker.sources import has_url_scheme, redact_url

    verdicts = []
    folders = evidence_dirs(evidence_root, paths) if evidence_root is not None else [None] * len(paths)
    with _progress_bars(show_progress) as progress:
        for given, folder in zip(paths, folders):
            if isinstance(given, str) and has_url_scheme(given):
                verdicts.append(scanner.error_verdict(redact_url(given), URL_MESSAGE))
                continue
            path = Path(given)
            try:
                evidence = {"evidence_dir": folder} if folder is not None else {}
                verdict = scanner.scan(path, progress=_progress_for(progress, path), **evidence)
            except Exception as exc:  # noqa: BLE001  (reported per video; the other videos still get scanned)
                verdict = scanner.internal_error_verdict(path, exc)
                err.print(f"[red]{escape(verdict.error or INTERNAL_ERROR_PREFIX)}[/red] while scanning {escape(str(path))}")
            verdicts.append(verdict)
    return verdicts


def _chosen_weights(weights: Path | None, random_weights: bool, settings: Settings) -> Path | None:
    """The weights named on the command line, a random model asked for there, else what the
    settings say (RALF_WEIGHTS, RALF_RANDOM_WEIGHTS, else the shipped model). Exit 2 if missing."""
    if weights is not None and random_weights:
        err.print("[red]--weights and --random-weights exclude each other[/red]")
        raise typer.Exit(EXIT_ERROR)
    try:
        if weights is not None or random_weights:
            return resolve_weights(weights, random_weights)
        return settings.model_weights()
    except (OSError, ValueError) as exc:
        err.print(f"[red]cannot choose the weights:[/red] {escape(str(exc))}")
        raise typer.Exit(EXIT_ERROR) from None


def _build_scanner(options: ScanOptions, weights: Path | None, preset: str) -> Scanner:
    """The scanner, or exit 2 with the reason (missing weights, detector weights, no GPU, ...)."""
    from pipeline.scan import Scanner

    try:
        return Scanner(options, weights, preset_if_random=preset)
    except ValueError as exc:
        err.print(f"[red]cannot set up the scanner:[/red] {escape(str(exc))}")
        raise typer.Exit(EXIT_ERROR) from None


@app.command()
def scan(
    paths: Annotated[
        list[str], typer.Argument(help="Video files to scan (URLs: use enqueue)", show_default=False)
    ],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON verdict per line instead of a table")] = False,
    weights: Annotated[
        Path | None, typer.Option(help="RALF weights (.safetensors); default $RALF_WEIGHTS, else the shipped model")
    ] = None,
    random_weights: Annotated[
        bool, typer.Option("--random-weights", help="A seeded random model instead (pipeline checks only)")
    ] = False,
    device: DeviceFlag = None,
    decoder: DecoderFlag = None,
    detector: DetectorFlag = None,
    detector_precision: DetectorPrecisionFlag = None,
    yolo_weights: YoloWeightsFlag = None,
    batch_size: BatchSizeFlag = None,
    precision: PrecisionFlag = None,
    fps: FpsFlag = None,
    every_n: EveryNFlag = None,
    max_frames: MaxFramesFlag = None,
    aggregation: AggregationFlag = None,
    preset: Annotated[
        str | None, typer.Option(help="Model preset of the random model (tiny | lite | paper), with --random-weights")
    ] = None,
    evidence: Annotated[
        Path | None,
        typer.Option(
            "--evidence",
            help="Write evidence PNGs (crop, |x - x~| heat map, attention, frame with box) of each track's most "
            "suspicious faces into DIR/<video name>/; the verdict lists them (see ralf-cli report)",
            metavar="DIR",
        ),
    ] = None,
) -> None:
    """Scan videos in this process and print a verdict per video (exit 0 clean, 1 fake found, 2 error)."""
    settings = load_settings()
    options = scan_options(
        settings, device=device, decoder=decoder, detector=detector, detector_precision=detector_precision,
        yolo_weights=yolo_weights, batch_size=batch_size, precision=precision, target_fps=fps, every_n=every_n,
        max_frames=max_frames, aggregation=aggregation,
    )  # fmt: skip
    chosen = _chosen_weights(weights, random_weights, settings)
    scanner = _build_scanner(options, chosen, preset or settings.random_preset)
    verdicts = scan_all(scanner, paths, show_progress=err.is_terminal, evidence_root=evidence)
    if as_json:
        for verdict in verdicts:
            sys.stdout.write(verdict.model_dump_json() + "\n")
    else:
        _print_report(verdicts)
    raise typer.Exit(exit_code(verdicts))


# The astronaut face's five MTCNN points (eyes, nose, mouth corners) in `astronaut_face()` pixels.
ASTRONAUT_LANDMARKS = ((63.0, 80.0), (106.0, 83.0), (84.0, 108.0), (61.0, 119.0), (105.0, 121.0))
# One strong self-blend (the whole blend ratio, colour and frequency changes on the source) makes
# the demo's fake; seed and settings are fixed so every run shows the same clip.
DEMO_FAKE_SEED = 7


def write_demo_clips(directory: Path) -> tuple[Path, Path]:
    """A camera panning over the astronaut's photograph, and the same pan over the photograph whose face
    was self-blended (SBI)."""
    import numpy as np

    from pipeline.synthetic import astronaut_face, astronaut_photo, astronaut_with_face, write_photo_pan_clip
    from trainer.sbi import SelfBlendConfig, self_blend

    blend = SelfBlendConfig(ratio_one_prob=1.0, source_augment_prob=1.0, hull_prob=1.0, jpeg_prob=0.0)
    rng = np.random.default_rng(DEMO_FAKE_SEED)
    fake_face = self_blend(astronaut_face(), np.asarray(ASTRONAUT_LANDMARKS), rng, blend).fake
    real = write_photo_pan_clip(directory / "astronaut_real.mp4", astronaut_photo())
    fake = write_photo_pan_clip(directory / "astronaut_self_blended.mp4", astronaut_with_face(fake_face))
    return real, fake


@app.command()
def demo(
    device: Annotated[DeviceName, typer.Option(help="auto | cpu | cuda")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print the verdicts as JSON lines instead of a table")] = False,
    weights: Annotated[Path | None, typer.Option(help="RALF weights [default: $RALF_WEIGHTS, else the shipped model]")] = None,
    random_weights: Annotated[
        bool, typer.Option("--random-weights", help="A seeded random tiny model instead (pipeline check only)")
    ] = False,
) -> None:
    """Generate a real clip of a face and a self-blended fake of it, and scan both end to end.

    Needs no GPU and no download: the clips are made from scikit-image's astronaut photo and scanned
    with the shipped model. Exit 0 when the real clip comes out real and the fake one fake.
    """
    settings = load_settings()
    real, fake = write_demo_clips(demo_dir())
    chosen = _chosen_weights(weights, random_weights, settings)
    scanner = _build_scanner(ScanOptions(device=device, every_n=1), chosen, "tiny")
    verdicts = scan_all(scanner, [real, fake], show_progress=False)
    scored = all(v.label in ("real", "fake") for v in verdicts)
    right = [v.label for v in verdicts] == ["real", "fake"]
    if as_json:
        for verdict in verdicts:
            sys.stdout.write(verdict.model_dump_json() + "\n")
    else:
        model = "random weights" if scanner.weights_random else scanner.model_version
        _print_report(verdicts, title=f"ralf-cli demo: a real clip and its self-blended fake ({model})")
        if not scored:
            err.print("[red]the demo clips show a face, but the pipeline did not score both (see above)[/red]")
        elif scanner.weights_random:
            out.print("Pipeline OK (random weights: the labels mean nothing). Drop --random-weights to use the shipped model.")
        elif right:
            out.print(
                "The real clip came out real and the self-blended one fake. Scan your own videos with "
                "[bold]ralf-cli scan VIDEO[/bold]."
            )
        else:
            err.print("[red]the shipped model labelled the demo clips wrongly (see above)[/red]")
    if not scored:
        raise typer.Exit(EXIT_ERROR)
    raise typer.Exit(EXIT_CLEAN if right or scanner.weights_random else EXIT_FAKE)


@app.command()
def schema() -> None:
    """Print the JSON schema of the verdict that `scan --json`, the workers and `result` return."""
    sys.stdout.write(json.dumps(verdict_json_schema(), indent=2) + "\n")
