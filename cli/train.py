"""Training commands: `prepare` (face crops from videos), `train` (joint RALF training), `evaluate`.

Exit codes: 0 done, 2 bad input or a run that cannot start / continue (the message says why).
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from cli.app import app
from cli.common import fail
from ralf.core.options import DETECT_MAX_SIDE, MIN_FACE_SCORE, MIN_FACE_SIZE, PREPARE_DETECTOR
from trainer.layouts import FFPP_METHODS, LAYOUTS

# The trainer and the networks load inside the commands, so that other commands (enqueue, status)
# start without importing torch.

out = Console(soft_wrap=True)
# Errors a user can act on, printed as one message without a traceback: every error type of the
# trainer, the weights loaders and the face detector derives from ValueError.
USER_ERRORS = (ValueError, FileNotFoundError)


def validation_message(error: ValidationError) -> str:
    return "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in error.errors())


def _choice(value: str, allowed: tuple[str, ...], option: str) -> str:
    if value not in allowed:
        fail(f"{option} must be one of {', '.join(allowed)}; got {value!r}")
    return value


# ---------------------------------------------------------------- prepare
@app.command()
def prepare(
    source: Annotated[Path, typer.Argument(help="Dataset folder (see --layout)")],
    output: Annotated[Path, typer.Argument(help="Where crops, index.jsonl and videos.jsonl go")],
    frames: Annotated[int, typer.Option(help="Frames sampled evenly over each video")] = 32,
    margin: Annotated[float, typer.Option(help="Crop enlargement around the face box (fraction of its side)")] = 0.3,
    size: Annotated[int, typer.Option(help="Side of the saved square crops (the model's input size)")] = 256,
    layout: Annotated[str, typer.Option(help="folder | ffpp | celebdf | dfdc | reals | manifest")] = "folder",
    holdout: Annotated[float, typer.Option(help="reals layout: share of people held back as the test split")] = 0.15,
    subset: Annotated[int | None, typer.Option(help="reals layout: keep N items (smallest sha256 of the path)")] = None,
    still_padding: Annotated[float, typer.Option(help="Reflect padding around still images (fraction of side)")] = 0.25,
    stretch: Annotated[bool, typer.Option("--stretch", help="Cut the box stretched to a square, not a square box")] = False,
    compression: Annotated[str, typer.Option(help="FF++ quality folder: raw | c23 | c40")] = "c23",
    methods: Annotated[str, typer.Option(help="FF++ manipulations, comma separated")] = ",".join(FFPP_METHODS),
    splits_dir: Annotated[Path | None, typer.Option(help="FF++ train/val/test.json folder (default SRC/splits or SRC)")] = None,
    detector: Annotated[str, typer.Option(help="retinaface | mtcnn (the weights record it; scans use it)")] = PREPARE_DETECTOR,
    detect_max_side: Annotated[int, typer.Option(help="Long side faces are detected at (as scan; 0: full)")] = DETECT_MAX_SIDE,
    min_face_size: Annotated[int, typer.Option(help="Smallest face side in pixels (as scan)")] = MIN_FACE_SIZE,
    min_score: Annotated[float, typer.Option(help="Ignore faces the detector scores lower (as scan)")] = MIN_FACE_SCORE,
    device: Annotated[str, typer.Option(help="cpu | cuda (face detection)")] = "cpu",
    decoder: Annotated[str, typer.Option(help="auto | dali | pyav")] = "auto",
    manifest_split: Annotated[
        str, typer.Option(help="manifest layout: the split to prepare (a devset's val split is never trained on)")
    ] = "train",
) -> None:
    """Extract face crops for training: the scanner's detector on N evenly spaced frames per video; resumable."""
    from trainer.prepare import PrepareOptions
    from trainer.prepare import prepare as run_prepare

    layout = _choice(layout, LAYOUTS, "--layout")
    detector = _choice(detector, ("retinaface", "mtcnn"), "--detector")
    layout_options: dict[str, object] = {}
    if layout == "ffpp":
        layout_options = {"compression": compression, "methods": tuple(m for m in methods.split(",") if m)}
        if splits_dir is not None:
            layout_options["splits_dir"] = splits_dir
    if layout == "reals":
        layout_options = {"holdout": holdout, "subset": subset}
    if layout == "manifest":
        layout_options = {"split": manifest_split}
    try:
        options = PrepareOptions(
            frames=frames, margin=margin, square=not stretch, still_padding=still_padding, size=size,
            detector=detector, detect_max_side=detect_max_side, min_face_size=min_face_size, min_score=min_score,
            device=device, decoder=decoder,
        )
        summary = run_prepare(source, output, layout, options, layout_options)
    except ValidationError as error:
        fail(validation_message(error))
    except USER_ERRORS as error:
        fail(str(error))
    status = ", ".join(f"{count} {name}" for name, count in sorted(summary.status.items())) or "nothing new"
    out.print(
        f"{summary.videos} videos processed ({status}), {summary.skipped} already done, "
        f"{summary.crops} crops; index: {summary.index}"
    )
    if summary.videos and summary.status.get("error", 0) == summary.videos:
        fail(f"no video could be read; see {output / 'videos.jsonl'}")


# ------------------------------------------------------------------ train
@app.command()
def train(
    ctx: typer.Context,
    data: Annotated[Path, typer.Argument(help="Prepared crops (index.jsonl) or a folder layout of crop folders")],
    output: Annotated[Path, typer.Argument(help="Run folder: checkpoints/, train_log.jsonl, best/last.safetensors")],
    more_data: Annotated[
        list[Path] | None, typer.Option("--more-data", help="Further prepared crop folders to train on (repeatable)")
    ] = None,
    preset: Annotated[str, typer.Option(help="paper | lite | tiny")] = "paper",
    backbone: Annotated[
        str | None, typer.Option(help="xception | resnet18 | resnet50 | mobilenet_v2 (default: the preset's)")
    ] = None,
    fakes: Annotated[
        str, typer.Option(help="Fake class: data (the dataset's fakes) | sbi (self-blended from its reals) | data+sbi")
    ] = "data",
    patience: Annotated[int | None, typer.Option(help="Stop after this many validations without improvement")] = None,
    max_minutes: Annotated[float | None, typer.Option(help="Wall-clock budget; then validate, save and stop")] = None,
    pool: Annotated[str, typer.Option(help="Classifier global pooling: max | avg")] = "max",
    image_size: Annotated[int | None, typer.Option(help="Override the preset's input size")] = None,
    batch_size: Annotated[int, typer.Option(help="Per process, half real half fake")] = 16,
    steps: Annotated[int | None, typer.Option(help="Optimizer steps (instead of --epochs)")] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs over the larger class (default 100)")] = None,
    lr: Annotated[float, typer.Option(help="Adam rate, destructor + reconstructor + classifier")] = 1e-4,
    disc_lr: Annotated[float, typer.Option(help="Adam rate, discriminator")] = 2e-4,
    no_emb: Annotated[bool, typer.Option("--no-emb", help="Switch off L_emb")] = False,
    no_con: Annotated[bool, typer.Option("--no-con", help="Switch off L_con")] = False,
    no_adv: Annotated[bool, typer.Option("--no-adv", help="Switch off L_adv and the discriminator")] = False,
    freq_loss: Annotated[str, typer.Option(help="weighted | unweighted | none")] = "weighted",
    lambda_rec: Annotated[float, typer.Option(help="λ_R")] = 0.1,
    lambda_freq: Annotated[float, typer.Option(help="λ_freq")] = 1.0,
    lambda_adv: Annotated[float, typer.Option(help="λ_adv")] = 0.1,
    lambda_emb: Annotated[float, typer.Option(help="λ_emb")] = 0.1,
    lambda_con: Annotated[float, typer.Option(help="λ_con")] = 0.1,
    lambda_shift: Annotated[
        float, typer.Option(help="λ_shift: P(fake) agreeing under a one-pixel move (not in the paper; 0 = off)")
    ] = 0.0,
    alpha_ramp_steps: Annotated[int | None, typer.Option(help="Steps for α to reach 1 (default: the whole run)")] = None,
    center_every: Annotated[int | None, typer.Option(help="Steps between L_emb center updates (default: each epoch)")] = None,
    val_every: Annotated[int, typer.Option(help="Steps between validations")] = 1000,
    val_fraction: Annotated[float, typer.Option(help="Held-out share of groups when the data has no split")] = 0.1,
    log_every: Annotated[int, typer.Option(help="Steps between log lines")] = 50,
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints")] = 1000,
    keep_checkpoints: Annotated[int, typer.Option(help="Step checkpoints kept")] = 2,
    seed: Annotated[int, typer.Option()] = 0,
    num_workers: Annotated[int, typer.Option(help="Data loader processes")] = 2,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    amp: Annotated[str, typer.Option(help="auto | none | bf16 | fp16 (CUDA only)")] = "auto",
    vgg19_weights: Annotated[Path | None, typer.Option(help="Local VGG19 ImageNet file for L_con")] = None,
    allow_random_vgg: Annotated[bool, typer.Option("--allow-random-vgg", help="Accept a random frozen VGG19")] = False,
    con_network: Annotated[str, typer.Option(help="L_con features: vgg19 (paper) | mobilenet_v2 (no VGG19 at hand)")] = "vgg19",
    con_weights: Annotated[Path | None, typer.Option(help="ImageNet mobilenet_v2 .pth for --con-network mobilenet_v2")] = None,
    backbone_weights: Annotated[
        Path | None,
        typer.Option(
            "--backbone-weights", "--xception-weights",
            help="Local ImageNet file of the backbone (Xception .pth/.keras/.h5, torchvision mobilenet_v2/resnet .pth)",
        ),
    ] = None,
    allow_random_init: Annotated[bool, typer.Option("--allow-random-init", help="Train the backbone from random init")] = False,
    init_weights: Annotated[
        Path | None, typer.Option(help="Fine-tune: start from these deployable weights (e.g. the shipped model)")
    ] = None,
    degrade: Annotated[
        bool, typer.Option("--degrade", help="Real-footage degradations on both classes (shift, resize, H.264, blur, noise)")
    ] = False,
    keep_step_weights: Annotated[
        bool, typer.Option("--keep-step-weights", help="Keep weights/step-N.safetensors at every checkpoint")
    ] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in OUTPUT from its latest checkpoint")] = False,
    stop_at: Annotated[int | None, typer.Option(help="Stop at this step with a checkpoint (continue with --resume)")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar")] = True,
) -> None:
    """Train RALF jointly (paper eq. 11-12) and write deployable best/last weights next to the checkpoints."""
    from trainer.config import TrainConfig
    from trainer.loop import TrainingError
    from trainer.loop import train as run_training

    values: dict[str, Any] = {
        "preset": preset, "backbone": backbone, "pool": pool, "image_size": image_size, "batch_size": batch_size,
        "steps": steps, "epochs": epochs, "lr": lr, "disc_lr": disc_lr, "center_update_every": center_every,
        "val_every": val_every, "val_fraction": val_fraction, "log_every": log_every,
        "checkpoint_every": checkpoint_every, "keep_checkpoints": keep_checkpoints, "seed": seed,
        "num_workers": num_workers, "device": device, "amp": amp, "vgg19_weights": vgg19_weights,
        "allow_random_vgg": allow_random_vgg, "backbone_weights": backbone_weights,
        "allow_random_init": allow_random_init, "fakes": fakes, "patience": patience,
        "con_network": con_network, "con_weights": con_weights, "max_minutes": max_minutes,
        "init_weights": init_weights, "keep_step_weights": keep_step_weights,
        "degrade": {} if degrade else None,
    }  # fmt: skip
    loss: dict[str, Any] = {
        "use_emb": not no_emb, "use_con": not no_con, "use_adv": not no_adv, "freq_weighting": freq_loss,
        "lambda_rec": lambda_rec, "lambda_freq": lambda_freq, "lambda_adv": lambda_adv,
        "lambda_emb": lambda_emb, "lambda_con": lambda_con, "lambda_shift": lambda_shift,
        "alpha_ramp_steps": alpha_ramp_steps,
    }  # fmt: skip
    try:
        if resume:
            config = _resumed_config(ctx, output, values)
        else:
            config = TrainConfig(**values, loss=loss)
        command = shlex.join(["ralf-cli", *sys.argv[1:]])
        result = run_training(
            config, [data, *(more_data or [])], output, resume=resume, progress=progress, stop_at=stop_at, command=command
        )
    except ValidationError as error:
        fail(validation_message(error))
    except (TrainingError, *USER_ERRORS) as error:
        fail(str(error))
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun only rank 0 reports
    best = f"best validation AUC {result.best_auc:.4f} at step {result.best_step}" if result.best_auc is not None else "no validation"
    why = {"patience": " (early stop: no better validation AUC)", "time": " (time budget reached)"}.get(result.stopped, "")
    out.print(f"trained {result.steps} steps in {result.seconds:.0f} s{why}; {best}")
    out.print(f"weights: {result.best_weights or '-'} (best), {result.last_weights} (last); log: {result.log_path}")


def _resumed_config(ctx: typer.Context, output: Path, values: dict[str, Any]) -> Any:
    """The checkpoint's config; options given on the command line override the resume-mutable fields
    (and any other one given differently makes the resume refuse, naming it)."""
    from trainer.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint
    from trainer.config import RESUME_MUTABLE_FIELDS, TrainConfig

    stored = load_checkpoint(latest_checkpoint(output / "checkpoints")).info.get("config")
    if not isinstance(stored, dict):
        raise CheckpointError(f"the latest checkpoint in {output} holds no training config")
    explicit = {name for name in values if _from_command_line(ctx, _PARAMETER_NAMES.get(name, name))}
    merged = {**stored, **{name: values[name] for name in explicit}}
    changed = sorted(n for n in explicit if n not in RESUME_MUTABLE_FIELDS and json.dumps(stored.get(n), default=str) != json.dumps(values[n], default=str))
    if changed:
        raise CheckpointError(f"cannot change {changed} when resuming; the run keeps its original settings")
    return TrainConfig.model_validate(merged)


def _from_command_line(ctx: typer.Context, parameter: str) -> bool:
    # Compared by name: typer may ship its own copy of click's ParameterSource enum.
    source = ctx.get_parameter_source(parameter)
    return source is not None and source.name == "COMMANDLINE"


# CLI parameter names that differ from TrainConfig field names.
_PARAMETER_NAMES = {"center_update_every": "center_every"}


# ---------------------------------------------------------------- convert
@app.command()
def convert(
    weights: Annotated[Path, typer.Argument(help="RALF weights (.safetensors)")],
    output: Annotated[Path, typer.Argument(help="Where to write the converted file")],
    half: Annotated[bool, typer.Option("--half", help="Store the tensors as float16 (half the size)")] = False,
    tolerance: Annotated[float, typer.Option(help="Largest |P(fake) change| allowed on the check faces")] = 1e-3,
) -> None:
    """Copy weights with their metadata, optionally in float16; checks that scores stay within `tolerance`
    on generated face crops (the astronaut, jittered), and refuses to write otherwise."""
    import torch

    from pipeline.synthetic import astronaut_face
    from ralf.weights import load_weights, save_weights

    try:
        model, metadata = load_weights(weights)
    except USER_ERRORS as error:
        fail(str(error))
    size = model.config.image_size
    face = torch.from_numpy(astronaut_face()).permute(2, 0, 1)[None].float() / 255
    generator = torch.Generator().manual_seed(0)
    crops = torch.nn.functional.interpolate(face, size=(size, size), mode="bilinear", antialias=True)
    crops = (crops + 0.03 * torch.randn((16, 3, size, size), generator=generator)).clamp(0, 1)
    keep = metadata.model_copy(update={"model_version": "", "tensors_sha256": None})
    partial = output.with_name(output.name + ".check")
    written = save_weights(partial, model, keep, dtype=torch.float16 if half else None)
    converted, _ = load_weights(partial)
    with torch.no_grad():
        change = float((torch.sigmoid(converted(crops)) - torch.sigmoid(model(crops))).abs().max())
    if change > tolerance:
        partial.unlink()
        fail(f"scores changed by up to {change:.2e} (> {tolerance:g}); nothing written")
    partial.replace(output)
    out.print(f"{output}: {written.model_version}, {output.stat().st_size / 2**20:.1f} MiB, max |ΔP(fake)| {change:.2e}")


# ------------------------------------------------------------- self-blend
@app.command("self-blend")
def self_blend_command(
    data: Annotated[list[Path], typer.Argument(help="Prepared crop folders (index.jsonl)")],
    output: Annotated[Path, typer.Option("--out", help="Folder to write real/ and fake/ into")],
    split: Annotated[str, typer.Option(help="train | val | test | all")] = "test",
    seed: Annotated[int, typer.Option(help="Seed of the twins (the trainer's validation uses its run seed)")] = 0,
    progress: Annotated[bool, typer.Option(help="Show a progress bar")] = True,
) -> None:
    """Write real crops (linked) and their self-blended twins as OUT/real and OUT/fake, for
    `ralf-cli calibrate --data OUT` and `evaluate` on held-back real faces."""
    from trainer.pseudo_fakes import write_pseudo_fakes

    _choice(split, ("train", "val", "test", "all"), "--split")
    try:
        summary = write_pseudo_fakes(data, output, None if split == "all" else split, seed=seed, progress=progress)  # type: ignore[arg-type]
    except USER_ERRORS as error:
        fail(str(error))
    out.print(f"{summary.real} real crops and {summary.fake} self-blended twins in {summary.out}")


# --------------------------------------------------------------- evaluate
@app.command()
def evaluate(
    weights: Annotated[Path, typer.Argument(help="Deployable weights (.safetensors with RALF metadata)")],
    data: Annotated[
        Path | None, typer.Argument(help="Prepared crops (index.jsonl) or a folder layout of crop folders")
    ] = None,
    videos: Annotated[
        Path | None,
        typer.Option(
            help="Labelled videos (a manifest CSV with file,label[,split,kind,method] or a folder with real/ and "
            "fake/), scanned exactly as `ralf-cli scan` does; instead of DATA"
        ),
    ] = None,
    cache: Annotated[
        Path | None, typer.Option(help="--videos: JSONL of verdicts kept between runs (resumes, re-reports)")
    ] = None,
    resamples: Annotated[int, typer.Option(min=0, help="--videos: bootstrap resamples for the 95% intervals")] = 1000,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON")] = False,
    roc: Annotated[Path | None, typer.Option(help="Write the ROC curves to this PNG")] = None,
    distortion: Annotated[str | None, typer.Option(help="contrast | blur | jpeg | pixelation (DeeperForensics level 2)")] = None,
    aggregation: Annotated[str, typer.Option(help="Frame scores -> video score: mean | topk | median")] = "mean",
    top_k: Annotated[int, typer.Option(help="Frames averaged by 'topk'")] = 5,
    split: Annotated[str, typer.Option(help="auto (test when present, else all) | train | val | test | all")] = "auto",
    threshold: Annotated[float | None, typer.Option(help="P(fake) threshold for accuracy (default: calibrated or 0.5)")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    batch_size: Annotated[int, typer.Option()] = 32,
    num_workers: Annotated[int, typer.Option()] = 2,
    progress: Annotated[bool, typer.Option(help="Show progress bars")] = True,
    fakes: Annotated[str, typer.Option(help="data | sbi (a self-blended twin of every real crop) | data+sbi")] = "data",
    groups: Annotated[
        str | None, typer.Option(help="Error rates per group of people: 'utkface' (from file names) or a CSV file")
    ] = None,
) -> None:
    """Acc, AUC, EER and AP at frame and video level; optional distortion with its AUC drop; ROC PNG;
    false-positive rates per group of people. With --videos: real-world videos scanned as `scan` does,
    video AUC/AP/TPR/FPR with bootstrap intervals per kind and method, and the false positives by file."""
    if (data is None) == (videos is None):
        fail("give either DATA (prepared crops) or --videos MANIFEST_OR_DIR")
    if videos is not None:
        from cli.video_evaluation import evaluate_videos

        split_name = None if split in ("auto", "all") else split
        evaluate_videos(weights, videos, split=split_name, cache=cache, resamples=resamples, as_json=as_json,
                        threshold=threshold, progress=progress, device=device)  # fmt: skip
        return
    assert data is not None
    from trainer.distortions import DISTORTIONS
    from trainer.evaluate import evaluate as run_evaluation
    from trainer.roc_plot import plot_roc

    if distortion is not None:
        _choice(distortion, DISTORTIONS, "--distortion")
    _choice(aggregation, ("mean", "topk", "median"), "--aggregation")
    _choice(split, ("auto", "train", "val", "test", "all"), "--split")
    _choice(fakes, ("data", "sbi", "data+sbi"), "--fakes")
    try:
        report = run_evaluation(
            weights, data, split=split, distortion=distortion, aggregation=aggregation, top_k=top_k,  # type: ignore[arg-type]
            device=device, batch_size=batch_size, num_workers=num_workers, threshold=threshold,
            progress=progress and not as_json, fakes=fakes, groups=groups,
        )  # fmt: skip
        if roc is not None:
            plot_roc(report.roc(), roc)
    except USER_ERRORS as error:
        fail(str(error))
    if as_json:
        print(json.dumps(report.as_dict(), indent=1))
        return
    out.print(_report_table(report))
    if report.groups is not None:
        out.print(_groups_table(report))
    if roc is not None:
        out.print(f"ROC curves: {roc}")


def _groups_table(report: Any) -> Table:
    table = Table(title=f"per group at P(fake) >= {report.threshold:.4f} (frames)")
    for column in ("attribute", "group", "real", "FP", "FPR", "fake", "TPR"):
        table.add_column(column, justify="left" if column in ("attribute", "group") else "right")
    for g in report.groups:
        fpr = "-" if g.fpr is None else f"{g.fpr:.4f}"
        tpr = "-" if g.tpr is None else f"{g.tpr:.4f}"
        table.add_row(g.attribute, g.group, str(g.num_real), str(g.false_positives), fpr, str(g.num_fake), tpr)
    return table


def _report_table(report: Any) -> Table:
    table = Table(title=f"{report.model_version} on {report.data} ({report.split}, video = {report.aggregation})")
    for column in ("run", "level", "Acc", "AUC", "EER", "AP", "real", "fake"):
        table.add_column(column, justify="left" if column in ("run", "level") else "right")
    for run in (report.clean, report.distorted):
        if run is None:
            continue
        for level in ("frame", "video"):
            metrics = getattr(run, level).metrics
            if metrics is None:
                table.add_row(run.distortion or "clean", level, "-", "-", "-", "-", "-", "-")
                continue
            table.add_row(
                run.distortion or "clean", level, f"{metrics.accuracy:.4f}", f"{metrics.auc:.4f}",
                f"{metrics.eer:.4f}", f"{metrics.average_precision:.4f}", str(metrics.num_real), str(metrics.num_fake),
            )  # fmt: skip
    drop = report.auc_drop()
    if drop is not None:
        for level, value in drop.items():
            table.add_row("AUC drop", level, "", "-" if value is None else f"{value:+.4f}", "", "", "", "")
    return table
