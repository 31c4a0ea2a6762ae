"""A real AOTInductor package of the tiny model: parity with eager, sidecar, pickup by the pipeline, staleness.

Compiling the package is the expensive step (about a minute on 2 cores), so it happens once per module.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from pipeline.artifacts import CompiledEngine, read_sidecar
from pipeline.engine_choice import load_engine
from pipeline.export import export_engine
from pipeline.precision import PARITY_TOLERANCE, precision_supported
from pipeline.scan import Scanner
from ralf.config import RALFConfig
from ralf.core.files import file_sha256
from ralf.core.metadata import Calibration
from ralf.core.options import ScanOptions
from ralf.model import RALF
from ralf.weights import load_weights, save_weights, tensors_digest
from trainer.calibrate import save_calibration

pytestmark = pytest.mark.slow
MAX_BATCH = 4


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(weights, sidecar) of a tiny model exported with engine 'compile' on the CPU."""
    folder = tmp_path_factory.mktemp("exported")
    torch.manual_seed(0)
    weights = folder / "tiny.safetensors"
    save_weights(weights, RALF(RALFConfig.tiny()).eval())
    return weights, export_engine(weights, "compile", max_batch=MAX_BATCH, device="cpu")


def _copy(exported: tuple[Path, Path], folder: Path) -> Path:
    weights, sidecar = exported
    folder.mkdir(parents=True, exist_ok=True)
    for path in (weights, sidecar, sidecar.with_suffix(".pt2")):
        shutil.copy2(path, folder / path.name)
    return folder / weights.name


def test_sidecar_describes_the_artifact(exported: tuple[Path, Path]) -> None:
    weights, sidecar = exported
    info = read_sidecar(sidecar)
    model, metadata = load_weights(weights)
    assert sidecar.name == "tiny.compile-cpu-fp32.json" and info.artifact == "tiny.compile-cpu-fp32.pt2"
    assert (info.engine, info.runtime, info.precision, info.device) == ("compile", "aoti", "fp32", "cpu")
    assert info.max_batch == MAX_BATCH and info.image_size == 64
    assert info.torch_version == torch.__version__
    assert info.model_version == metadata.model_version
    assert info.weights_digest == tensors_digest(model.state_dict())
    assert info.artifact_sha256 == file_sha256(sidecar.parent / info.artifact)
    assert info.parity_max_abs_diff <= info.parity_tolerance == PARITY_TOLERANCE["fp32"]


def test_compiled_scores_match_eager_on_the_same_crops(exported: tuple[Path, Path]) -> None:
    weights, _ = exported
    model, _ = load_weights(weights)
    engine, warnings = load_engine(model, ScanOptions(device="cpu", engine="compile", batch_size=32), weights)
    assert isinstance(engine, CompiledEngine) and warnings == []
    assert engine.name == "compile-cpu-fp32 (tiny.compile-cpu-fp32.pt2)"
    assert engine.max_batch == MAX_BATCH
    crops = torch.rand(7, 3, 64, 64, generator=torch.Generator().manual_seed(5))  # 7 > max batch: split
    with torch.inference_mode():
        expected = model(crops)
    got = engine.logits(crops)
    assert got.shape == (7,) and got.dtype == torch.float32
    gap = (torch.sigmoid(got.double()) - torch.sigmoid(expected.double())).abs().max().item()
    assert gap <= PARITY_TOLERANCE["fp32"]
    assert engine.logits(torch.zeros((0, 3, 64, 64))).shape == (0,)


def test_the_scanner_uses_the_artifact_and_says_so(exported: tuple[Path, Path]) -> None:
    weights, _ = exported
    scanner = Scanner(ScanOptions(device="cpu"), weights)  # engine 'auto'
    assert scanner.engine.name.startswith("compile-cpu-fp32") and scanner.warnings == []
    scanner = Scanner(ScanOptions(device="cpu", engine="eager"), weights)
    assert scanner.engine.name == "eager"


def test_tensorrt_request_on_the_cpu_falls_back_to_the_compiled_artifact(exported: tuple[Path, Path]) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    weights, _ = exported
    model, _ = load_weights(weights)
    engine, warnings = load_engine(model, ScanOptions(device="cpu", engine="tensorrt"), weights)
    assert engine.name.startswith("compile-cpu")
    assert warnings == ["TensorRT engine unavailable (no CUDA GPU)"]


def test_calibration_keeps_the_artifact_valid(exported: tuple[Path, Path], tmp_path: Path) -> None:
    weights = _copy(exported, tmp_path)
    calibration = Calibration(
        threshold=0.3, method="eer", achieved_tpr=0.9, achieved_fpr=0.1, level="video",
        dataset_fingerprint="f", date="2026-01-01", num_real=10, num_fake=10,
    )
    save_calibration(weights, calibration)
    model, _ = load_weights(weights)
    engine, warnings = load_engine(model, ScanOptions(device="cpu", engine="compile"), weights)
    assert isinstance(engine, CompiledEngine) and warnings == []


def test_new_weights_make_the_artifact_stale(exported: tuple[Path, Path], tmp_path: Path) -> None:
    weights = _copy(exported, tmp_path)
    torch.manual_seed(1)
    retrained = RALF(RALFConfig.tiny()).eval()
    save_weights(weights, retrained)  # same file name, new tensors
    engine, warnings = load_engine(retrained, ScanOptions(device="cpu", engine="compile"), weights)
    assert engine.name == "eager"
    assert "stale" in warnings[0] and warnings[-1] == "using the eager engine"


def test_a_modified_artifact_is_refused(exported: tuple[Path, Path], tmp_path: Path) -> None:
    weights = _copy(exported, tmp_path)
    artifact = weights.with_name("tiny.compile-cpu-fp32.pt2")
    artifact.write_bytes(artifact.read_bytes() + b"\0")
    model, _ = load_weights(weights)
    engine, warnings = load_engine(model, ScanOptions(device="cpu"), weights)  # auto warns too
    assert engine.name == "eager"
    assert "changed since export" in warnings[0]


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("cpu_capability", "NO_AVX", "built for CPUs with NO_AVX"),
        ("torch_version", "2.0.0", "built with torch 2.0.0"),
        ("image_size", 128, "built for 128px crops"),
    ],
)
def test_an_artifact_from_another_machine_is_refused(
    exported: tuple[Path, Path], tmp_path: Path, field: str, value: object, reason: str
) -> None:
    weights = _copy(exported, tmp_path)
    sidecar = weights.with_name("tiny.compile-cpu-fp32.json")
    info = read_sidecar(sidecar).model_copy(update={field: value})
    sidecar.write_text(info.model_dump_json())
    model, _ = load_weights(weights)
    engine, warnings = load_engine(model, ScanOptions(device="cpu", engine="compile"), weights)
    assert engine.name == "eager"
    assert reason in warnings[0]


def test_with_fp32_and_bf16_artifacts_the_rule_chooses_not_the_file_age(
    exported: tuple[Path, Path], tmp_path: Path
) -> None:
    """Beside the weights: the real fp32 package and a bf16 sidecar (sharing that package, so no second
    compile), the bf16 one written last. `precision` asked for wins; `auto` takes the faster one only
    while its recorded parity, measured on face crops, is within tolerance."""
    weights = _copy(exported, tmp_path)
    fp32 = read_sidecar(weights.with_name("tiny.compile-cpu-fp32.json"))
    fp32_sidecar = weights.with_name("tiny.compile-cpu-fp32.json")
    fp32_sidecar.write_text(
        fp32.model_copy(update={"ms_per_face": 10.0, "eager_fp32_ms_per_face": 12.0, "speed_batch": 4}).model_dump_json()
    )
    bf16_sidecar = weights.with_name("tiny.compile-cpu-bf16.json")
    bf16 = fp32.model_copy(update={
        "precision": "bf16", "parity_tolerance": PARITY_TOLERANCE["bf16"], "parity_max_abs_diff": 5e-3,
        "parity_face_crops": 24, "ms_per_face": 5.0, "eager_fp32_ms_per_face": 12.0, "speed_batch": 4,
    })
    bf16_sidecar.write_text(bf16.model_dump_json())  # newest file
    model, _ = load_weights(weights)
    if not precision_supported("bf16", "cpu")[0]:
        pytest.skip("bf16 is not native on this CPU")

    engine, warnings = load_engine(model, ScanOptions(device="cpu"), weights)
    assert isinstance(engine, CompiledEngine) and engine.info.precision == "bf16" and warnings == []
    assert engine.choice.startswith("compile-cpu-bf16 (tiny.compile-cpu-fp32.pt2): auto: the fastest measured")

    engine, warnings = load_engine(model, ScanOptions(device="cpu", precision="fp32"), weights)
    assert isinstance(engine, CompiledEngine) and engine.info.precision == "fp32" and warnings == []
    assert "precision fp32 asked for" in engine.choice

    # Parity beyond tolerance: auto passes it over, the verdict says why.
    bf16_sidecar.write_text(bf16.model_copy(update={"parity_max_abs_diff": 0.05}).model_dump_json())
    scanner = Scanner(ScanOptions(device="cpu"), weights)
    verdict = scanner.error_verdict("x.mp4", "test")
    assert verdict.engine.startswith("compile-cpu-fp32")
    assert "compile-cpu-bf16: parity 5.0e-02 exceeds 0.02" in verdict.engine_choice
