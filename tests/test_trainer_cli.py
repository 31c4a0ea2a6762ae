"""`ralf-cli train / evaluate / prepare` through typer's CliRunner: a tiny end-to-end run, and bad
input (empty dataset, one class only, corrupt image, unreadable checkpoint or weights) giving one
clear message and a non-zero exit."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from pipeline.synthetic import write_noise_crops

runner = CliRunner()
TINY = [
    "--preset", "tiny", "--image-size", "32", "--batch-size", "4", "--no-con", "--allow-random-init",
    "--num-workers", "0", "--val-fraction", "0.25", "--no-progress", "--log-every", "1",
]  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread")


def _crops(root: Path, real: int = 4, fake: int = 4) -> Path:
    return write_noise_crops(root, size=32, real=real, fake=fake, frames=2)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cli")
    data = _crops(root / "data")
    run = root / "run"
    result = runner.invoke(app, ["train", str(data), str(run), *TINY, "--steps", "3", "--val-every", "3", "--stop-at", "2"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["train", str(data), str(run), "--resume", "--no-progress", "--num-workers", "0"])
    assert result.exit_code == 0, result.output
    assert "trained 3 steps" in result.output
    return data, run


def test_train_writes_weights_log_and_checkpoints(trained: tuple[Path, Path]) -> None:
    _, run = trained
    assert (run / "best.safetensors").is_file() and (run / "last.safetensors").is_file()
    from ralf.core.metadata import read_metadata

    metadata = read_metadata(run / "last.safetensors")
    assert metadata.pretrained == {"classifier": "random-init", "vgg19": "unused"}
    assert metadata.training["step"] == 3 and metadata.config.image_size == 32
    steps = [json.loads(line)["step"] for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 3]  # three train windows, one validation


def test_resume_refuses_changed_options(trained: tuple[Path, Path], tmp_path: Path) -> None:
    data, run = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    result = runner.invoke(app, ["train", str(data), str(copy), "--resume", "--lr", "0.01", "--no-progress"])
    assert result.exit_code == 2 and "cannot change ['lr'] when resuming" in result.output


def test_evaluate_json_roc_and_distortion(trained: tuple[Path, Path], tmp_path: Path) -> None:
    data, run = trained
    roc = tmp_path / "roc.png"
    args = ["evaluate", str(run / "best.safetensors"), str(data), "--json", "--roc", str(roc), "--distortion", "blur"]
    result = runner.invoke(app, [*args, "--num-workers", "0"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["split"] == "all" and report["clean"]["frame"]["num_real"] == 8
    assert report["clean"]["video"]["num_fake"] == 4
    assert 0.0 <= report["clean"]["frame"]["auc"] <= 1.0
    assert report["auc_drop"]["frame"] == pytest.approx(
        report["distorted"]["frame"]["auc"] - report["clean"]["frame"]["auc"]
    )
    assert roc.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = runner.invoke(app, ["evaluate", str(run / "last.safetensors"), str(data), "--no-progress", "--num-workers", "0"])
    assert table.exit_code == 0 and "video" in table.output and "AUC" in table.output


@pytest.mark.parametrize(
    "case,message",
    [
        ("empty", "neither a real/ nor a fake/"),
        ("one_class", "only real crops"),
        ("corrupt", "cannot read face crop"),
        ("unreadable_checkpoint", "cannot read"),
        ("no_checkpoint", "no checkpoint to resume from"),
        ("missing_vgg", "--vgg19-weights"),
    ],
)
def test_train_bad_input_clear_error(tmp_path: Path, case: str, message: str) -> None:
    data = tmp_path / "data"
    args = [*TINY, "--steps", "2"]
    if case == "empty":
        data.mkdir()
    elif case == "one_class":
        _crops(data, real=4, fake=0)
    else:
        _crops(data)
    if case == "corrupt":
        for video in range(4):  # one corrupt frame per fake video: the first batches must meet one
            (data / "fake" / f"v{video}" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
        args = [*args, "--val-every", "100"]
    run = tmp_path / "run"
    if case == "unreadable_checkpoint":
        assert runner.invoke(app, ["train", str(data), str(run), *args]).exit_code == 0
        state = next((run / "checkpoints").glob("step_*/state.safetensors"))
        state.write_bytes(state.read_bytes()[:100])
        args = ["--resume", "--no-progress"]
    if case == "no_checkpoint":
        args = ["--resume"]
    if case == "missing_vgg":
        args = [a for a in args if a != "--no-con"]
    result = runner.invoke(app, ["train", str(data), str(run), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_evaluate_bad_weights_and_one_class(trained: tuple[Path, Path], tmp_path: Path) -> None:
    data, run = trained
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00" * 4)
    result = runner.invoke(app, ["evaluate", str(broken), str(data)])
    assert result.exit_code == 2 and "broken.safetensors" in result.output
    reals = _crops(tmp_path / "reals", real=2, fake=0)
    result = runner.invoke(app, ["evaluate", str(run / "last.safetensors"), str(reals), "--num-workers", "0"])
    assert result.exit_code == 2 and "only real crops" in result.output
    result = runner.invoke(app, ["evaluate", str(run / "last.safetensors"), str(data), "--distortion", "noise"])
    assert result.exit_code == 2 and "--distortion must be one of" in result.output


def test_prepare_bad_layout(tmp_path: Path) -> None:
    result = runner.invoke(app, ["prepare", str(tmp_path), str(tmp_path / "out"), "--layout", "ffpp"])
    assert result.exit_code == 2 and "original_sequences" in result.output
    result = runner.invoke(app, ["prepare", str(tmp_path / "nowhere"), str(tmp_path / "out")])
    assert result.exit_code == 2 and "dataset folder not found" in result.output


def test_evaluate_val_split_reproduces_training_validation(trained: tuple[Path, Path]) -> None:
    data, run = trained
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    validation = [r for r in log if r["event"] == "val"][-1]
    args = ["evaluate", str(run / "best.safetensors"), str(data), "--json", "--split", "val", "--num-workers", "0"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["split"] == "val"
    assert report["clean"]["frame"]["num_real"] == validation["frame"]["num_real"]
    assert report["clean"]["frame"]["auc"] == pytest.approx(validation["frame"]["auc"], abs=1e-9)


def test_fine_tune_starts_from_weights_and_keeps_step_weights(trained: tuple[Path, Path], tmp_path: Path) -> None:
    """--init-weights: the run starts from deployable weights (recorded in the metadata), with degradations
    on both classes, and --keep-step-weights leaves deployable weights of every checkpoint for choosing later."""
    from ralf.core.metadata import read_metadata
    from ralf.weights import load_weights

    data, run = trained
    start = run / "last.safetensors"
    args = [a for a in TINY if a != "--allow-random-init"]
    tuned = tmp_path / "tuned"
    result = runner.invoke(app, [
        "train", str(data), str(tuned), *args, "--init-weights", str(start), "--degrade", "--keep-step-weights",
        "--lambda-shift", "0.5", "--steps", "2", "--val-every", "2", "--checkpoint-every", "1", "--lr", "1e-12", "--disc-lr", "1e-12",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tuned / "weights").iterdir()) == ["step-000001.safetensors", "step-000002.safetensors"]
    metadata = read_metadata(tuned / "last.safetensors")
    assert metadata.pretrained["init"].startswith(f"weights:{read_metadata(start).model_version}:")
    assert metadata.training["train_config"]["degrade"]["h264_prob"] > 0
    assert metadata.training["train_config"]["loss"]["lambda_shift"] == 0.5
    before, _ = load_weights(start)
    after, _ = load_weights(tuned / "last.safetensors")
    # a vanishing learning rate: the classifier's weights are still those it started from
    for name, tensor in before.classifier.state_dict().items():
        if tensor.is_floating_point() and "running" not in name:
            assert (after.classifier.state_dict()[name] - tensor).abs().max() < 1e-6, name

    other = runner.invoke(app, ["train", str(data), str(tmp_path / "x"), *args, "--image-size", "48", "--init-weights", str(start)])
    assert other.exit_code == 2 and "different network" in other.output
    both = runner.invoke(app, ["train", str(data), str(tmp_path / "y"), *args, "--init-weights", str(start),
                               "--backbone-weights", str(start)])  # fmt: skip
    assert both.exit_code == 2 and "exclude each other" in both.output
