"""Which engine and precision run, by rule (`pipeline.engine_choice.plan_engine`), and eager bf16.

Fast: sidecars are written by hand or by the eager export (no Inductor compile here; the real
AOTInductor artifacts are in tests/test_engine_compiled.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from pipeline.artifacts import EngineArtifact, read_sidecar
from pipeline.engine import EagerEngine
from pipeline.engine_choice import load_engine, plan_engine, preview_engine
from pipeline.export import export_engine
from pipeline.precision import PARITY_TOLERANCE, LowPrecisionForward, precision_supported
from ralf.config import RALFConfig
from ralf.core.options import ScanOptions
from ralf.model import RALF
from ralf.weights import save_weights

CPU = torch.device("cpu")
BF16_HERE, BF16_WHY = precision_supported("bf16", "cpu")


@pytest.fixture(scope="module")
def tiny_model() -> RALF:
    torch.manual_seed(0)
    return RALF(RALFConfig.tiny()).eval()


@pytest.fixture()
def weights(tiny_model: RALF, tmp_path: Path) -> Path:
    path = tmp_path / "tiny.safetensors"
    save_weights(path, tiny_model)
    return path


def _sidecar(weights: Path, engine: str, precision: str, *, speedup: float | None, parity: float = 1e-3,
             faces: int = 24, age_s: float = 0.0) -> Path:
    """A hand-written sidecar (no artifact file: the plan reads sidecars only)."""
    info = EngineArtifact(
        engine=engine, runtime={"compile": "aoti", "tensorrt": "tensorrt", "eager": "eager"}[engine],  # type: ignore[arg-type]
        artifact="" if engine == "eager" else f"{weights.stem}.{engine}-cpu-{precision}.pt2",
        precision=precision, max_batch=8, image_size=64, device="cpu", device_name="test", cpu_capability="AVX512",  # type: ignore[arg-type]
        torch_version=torch.__version__, weights_file=weights.name, model_version="ralf-tiny-x", weights_digest="0",
        parity_max_abs_diff=parity if precision != "fp32" else 0.0, parity_tolerance=PARITY_TOLERANCE[precision],
        parity_face_crops=faces, parity_data="test", ms_per_face=None if speedup is None else 10.0 / speedup,
        eager_fp32_ms_per_face=None if speedup is None else 10.0, speed_batch=None if speedup is None else 8,
        created="2026-01-01T00:00:00+00:00",
    )
    path = weights.with_name(f"{weights.stem}.{engine}-cpu-{precision}.json")
    path.write_text(info.model_dump_json())
    stamp = path.stat().st_mtime - age_s
    os.utime(path, (stamp, stamp))
    return path


def _plan_labels(weights: Path, **options: object) -> list[str]:
    plan = plan_engine(weights, ScanOptions(device="cpu", **options), CPU)
    return [c.info.label if c.info else f"eager-{c.precision}" for c in plan.candidates]


@pytest.mark.skipif(not BF16_HERE, reason=f"bf16 not native here: {BF16_WHY}")
def test_auto_takes_the_fastest_within_parity_not_the_newest(weights: Path) -> None:
    _sidecar(weights, "compile", "bf16", speedup=2.4, age_s=100)  # older
    _sidecar(weights, "compile", "fp32", speedup=1.3)  # newer
    assert _plan_labels(weights) == ["compile-cpu-bf16", "compile-cpu-fp32", "eager-fp32"]
    plan = plan_engine(weights, ScanOptions(device="cpu"), CPU)
    assert plan.candidates[0].why.startswith("auto: the fastest measured within parity; 2.40x eager fp32")
    # The precision asked for wins over speed; fp32 asked for never runs bf16.
    assert _plan_labels(weights, precision="fp32") == ["compile-cpu-fp32", "eager-fp32"]
    assert _plan_labels(weights, precision="bf16") == ["compile-cpu-bf16", "eager-bf16"]
    # Newer fp32 being faster flips the order: speed decides, not the file's age.
    _sidecar(weights, "compile", "fp32", speedup=3.0, age_s=200)
    assert _plan_labels(weights)[0] == "compile-cpu-fp32"


@pytest.mark.skipif(not BF16_HERE, reason=f"bf16 not native here: {BF16_WHY}")
@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"parity": 0.05}, "parity 5.0e-02 exceeds 0.02"),
        ({"faces": 0}, "parity not measured on face crops"),
        ({"speedup": None}, "parity not measured on face crops"),
        ({"speedup": 0.8}, "not faster than eager fp32 (0.80x)"),
    ],
)
def test_auto_passes_over_a_low_precision_without_measured_parity_and_speed(
    weights: Path, kwargs: dict[str, object], reason: str
) -> None:
    _sidecar(weights, "compile", "bf16", **{"speedup": 2.0, **kwargs})  # type: ignore[arg-type]
    plan = plan_engine(weights, ScanOptions(device="cpu"), CPU)
    assert [c.precision for c in plan.candidates] == ["fp32"]
    assert any(line.startswith("compile-cpu-bf16: ") and reason in line for line in plan.passed_over), plan.passed_over


def test_older_fp32_sidecars_without_speed_are_still_used(weights: Path) -> None:
    _sidecar(weights, "compile", "fp32", speedup=None, faces=0)
    plan = plan_engine(weights, ScanOptions(device="cpu"), CPU)
    assert [c.info.label if c.info else "eager" for c in plan.candidates] == ["compile-cpu-fp32", "eager"]
    assert "older sidecar" in plan.candidates[0].why


@pytest.mark.skipif(not BF16_HERE, reason=f"bf16 not native here: {BF16_WHY}")
def test_eager_bf16_export_measures_parity_on_faces_and_auto_uses_it(weights: Path, tiny_model: RALF) -> None:
    sidecar = export_engine(weights, "eager", "bf16", max_batch=4, device="cpu")
    info = read_sidecar(sidecar)
    assert sidecar.name == "tiny.eager-cpu-bf16.json" and info.artifact == ""
    assert info.parity_face_crops == 24 and "astronaut" in info.parity_data
    assert 0 <= info.parity_max_abs_diff <= PARITY_TOLERANCE["bf16"]
    assert info.ms_per_face and info.eager_fp32_ms_per_face and info.speed_batch == 4
    # Timing on a shared test machine decides nothing here: make this record 2x faster than fp32.
    sidecar.write_text(info.model_copy(update={"ms_per_face": info.eager_fp32_ms_per_face / 2}).model_dump_json())
    engine, warnings = load_engine(tiny_model, ScanOptions(device="cpu", batch_size=4), weights)
    assert isinstance(engine, EagerEngine) and engine.name == "eager-bf16" and warnings == []
    assert engine.choice.startswith("eager-bf16: auto: the fastest measured within parity; 2.00x eager fp32")
    crops = torch.rand(5, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    gap = (torch.sigmoid(engine.logits(crops)) - torch.sigmoid(tiny_model(crops))).abs().max().item()
    assert gap <= PARITY_TOLERANCE["bf16"]
    # fp32 asked for: the measured bf16 is passed over.
    engine, _ = load_engine(tiny_model, ScanOptions(device="cpu", precision="fp32"), weights)
    assert engine.name == "eager" and "precision fp32 asked for" in engine.choice
    # New weights make the measurement stale: fp32 with a warning.
    torch.manual_seed(5)
    other = RALF(RALFConfig.tiny()).eval()
    engine, warnings = load_engine(other, ScanOptions(device="cpu"), weights)
    assert engine.name == "eager" and "stale" in warnings[0] and warnings[-1] == "using the eager engine"


def test_bf16_asked_for_without_a_measurement(weights: Path, tiny_model: RALF) -> None:
    engine, warnings = load_engine(tiny_model, ScanOptions(device="cpu", precision="bf16"), weights)
    if BF16_HERE:
        assert engine.name == "eager-bf16" and warnings == []
        assert "precision bf16 asked for" in engine.choice and "parity not measured here" in engine.choice
    else:
        assert engine.name == "eager" and "precision bf16 unavailable" in warnings[0]


def test_without_weights_or_sidecars_the_choice_says_so(tiny_model: RALF, weights: Path) -> None:
    engine, warnings = load_engine(tiny_model, ScanOptions(device="cpu"), None)
    assert engine.name == "eager" and engine.choice == "eager: auto: no weights file, so no exported engine"
    engine, _ = load_engine(tiny_model, ScanOptions(device="cpu"), weights)
    assert engine.choice == "eager: auto: no exported engine beside tiny.safetensors"


def test_low_precision_forward_keeps_the_differences_in_float32(tiny_model: RALF) -> None:
    """The image differences the classifier reads are computed in float32 around bf16 convolutions:
    closer to fp32 than casting the whole model, and the caller's model stays float32."""
    crops = torch.rand(6, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    mixed = LowPrecisionForward(tiny_model, torch.bfloat16).eval()
    with torch.inference_mode():
        reference = torch.sigmoid(tiny_model(crops).double())
        got = torch.sigmoid(mixed(crops).double())
    assert got.dtype == torch.float64 and (got - reference).abs().max() <= PARITY_TOLERANCE["bf16"]
    assert next(tiny_model.parameters()).dtype == torch.float32
    assert next(mixed.classifier.parameters()).dtype == torch.bfloat16


def test_scanner_verdict_and_config_name_the_choice(weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from cli.main import app
    from pipeline.scan import Scanner

    scanner = Scanner(ScanOptions(device="cpu", engine="eager", precision="fp32"), weights)
    verdict = scanner.error_verdict("missing.mp4", "file not found: missing.mp4")
    assert verdict.engine == "eager" and verdict.engine_choice == "eager: precision fp32 asked for (float32 runs everywhere)"
    # Another precision is another engine; the same options share it.
    assert scanner.with_options(ScanOptions(device="cpu", engine="eager", precision="fp32")).engine is scanner.engine

    monkeypatch.setenv("RALF_WEIGHTS", str(weights))
    monkeypatch.setenv("RALF_DEVICE", "cpu")
    monkeypatch.delenv("RALF_RANDOM_WEIGHTS", raising=False)
    result = CliRunner().invoke(app, ["config", "--json"])
    assert result.exit_code == 0, result.output
    choice = json.loads(result.output)["engine_choice"]
    assert choice["engine"] == "eager" and choice["why"] == "auto: no exported engine beside tiny.safetensors"
    detector = json.loads(result.output)["detector_choice"]
    assert detector["detector"] == "mtcnn" and "do not record it" in detector["why"]
    monkeypatch.setenv("RALF_DETECTOR", "retinaface")
    detector = json.loads(CliRunner().invoke(app, ["config", "--json"]).output)["detector_choice"]
    assert detector["detector"] == "retinaface" and detector["why"] == "asked for (RALF_DETECTOR)"
    assert detector["precision"] == "fp32" and detector["precision_why"].startswith("auto: fp32 (bf16 is offered")
    monkeypatch.setenv("RALF_DETECTOR_PRECISION", "fp32")
    detector = json.loads(CliRunner().invoke(app, ["config", "--json"]).output)["detector_choice"]
    assert (detector["precision"], detector["precision_why"]) == ("fp32", "fp32 asked for")
    assert preview_engine(weights, ScanOptions(device="cpu"))["engine"] == "eager"
