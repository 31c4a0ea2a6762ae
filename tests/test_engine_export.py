"""Graph capture of the inference graph (torch.export, torch.compile) and engine dispatch without artifacts.

Fast tests: no Inductor code generation here (tests/test_engine_compiled.py builds a real package).
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch

from pipeline.artifacts import parity_gap
from pipeline.engine_choice import load_compiled_engine, load_engine
from pipeline.export import EngineUnavailable, InferenceGraph, _build_tensorrt, export_engine, export_program
from pipeline.precision import PARITY_TOLERANCE
from ralf.config import RALFConfig
from ralf.core.options import ScanOptions
from ralf.model import RALF
from ralf.weights import save_weights

SIZE = 64


@pytest.fixture(scope="module")
def tiny_model() -> RALF:
    torch.manual_seed(0)
    return RALF(RALFConfig.tiny()).eval()


@pytest.fixture(scope="module")
def weights(tiny_model: RALF, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    save_weights(path, tiny_model)
    return path


def test_exported_graph_has_a_dynamic_batch_and_a_matmul_dct(tiny_model: RALF) -> None:
    program = export_program(InferenceGraph(tiny_model), SIZE, max_batch=8, device="cpu")
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert "aten.matmul.default" in targets
    assert not any("fft" in target for target in targets)
    module = program.module()
    for batch in (1, 3, 8):
        assert parity_gap(tiny_model, module, batch, SIZE, "cpu") <= 1e-6


def test_bf16_graph_stays_within_its_tolerance(tiny_model: RALF) -> None:
    graph = InferenceGraph(tiny_model, torch.bfloat16)
    program = export_program(graph, SIZE, max_batch=4, device="cpu").module()
    gap = parity_gap(tiny_model, program, 4, SIZE, "cpu")
    assert 0 < gap <= PARITY_TOLERANCE["bf16"]
    # The caller's model keeps float32 weights.
    assert next(tiny_model.parameters()).dtype == torch.float32


def test_torch_compile_captures_the_whole_graph(tiny_model: RALF) -> None:
    torch._dynamo.reset()
    # fullgraph=True fails on any graph break, e.g. a DCT that could not be traced.
    compiled = torch.compile(tiny_model, fullgraph=True, backend="aot_eager")
    assert parity_gap(tiny_model, compiled, 3, SIZE, "cpu") <= 1e-6


class _FakeTensorRT:
    """Records what the TensorRT build path asks of torch_tensorrt (the real one needs CUDA)."""

    def __init__(self) -> None:
        self.calls: dict[str, tuple[tuple, dict]] = {}

    def Input(self, **kwargs: object) -> dict:  # noqa: N802  (torch_tensorrt's name)
        return kwargs

    def compile(self, module: torch.nn.Module, **kwargs: object) -> torch.nn.Module:
        self.calls["compile"] = ((module,), kwargs)
        return module

    def save(self, module: torch.nn.Module, path: str, **kwargs: object) -> None:
        self.calls["save"] = ((module, path), kwargs)
        Path(path).write_bytes(b"engine")


def test_tensorrt_build_asks_for_dynamic_batch_and_half_precision(
    tiny_model: RALF, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = _FakeTensorRT()
    monkeypatch.setitem(sys.modules, "torch_tensorrt", types.SimpleNamespace(**{
        name: getattr(fake, name) for name in ("Input", "compile", "save")
    }))
    graph = InferenceGraph(tiny_model, torch.float16)
    _build_tensorrt(graph, SIZE, 16, torch.float16, tmp_path / "engine.pt2")
    (module,), compile_args = fake.calls["compile"]
    assert module is graph and compile_args["ir"] == "dynamo"
    (spec,) = compile_args["inputs"]
    assert spec["min_shape"] == (1, 3, SIZE, SIZE)
    assert spec["opt_shape"] == spec["max_shape"] == (16, 3, SIZE, SIZE)
    assert spec["dtype"] == torch.float32  # the graph casts to fp16 inside, so callers pass float32
    assert torch.float16 in compile_args["enabled_precisions"]
    (_, path), save_args = fake.calls["save"]
    assert save_args["output_format"] == "exported_program"
    assert 1 <= save_args["arg_inputs"][0].shape[0] <= 16
    assert Path(path).read_bytes() == b"engine"


def test_tensorrt_export_without_cuda_is_refused(weights: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(EngineUnavailable, match="CUDA GPU"):
        export_engine(weights, "tensorrt")
    with pytest.raises(ValueError, match="fp16 is not supported on the CPU"):
        export_engine(weights, "compile", precision="fp16", device="cpu")


def test_eager_export_records_the_weights(weights: Path) -> None:
    sidecar = export_engine(weights, "eager", max_batch=2, device="cpu")
    text = sidecar.read_text()
    assert '"runtime": "eager"' in text and '"parity_max_abs_diff": 0.0' in text
    # An eager record is never mistaken for an artifact.
    engine, warnings = load_engine(RALF(RALFConfig.tiny()), ScanOptions(device="cpu"), weights)
    assert engine.name == "eager" and warnings == []


def test_requested_engines_without_artifacts_fall_back_with_warnings(tiny_model: RALF, weights: Path) -> None:
    device = torch.device("cpu")
    engine, warnings = load_compiled_engine(tiny_model, ScanOptions(device="cpu"), weights, device)
    assert engine is None and warnings == []  # auto: no artifact is no surprise
    engine, warnings = load_compiled_engine(tiny_model, ScanOptions(device="cpu", engine="compile"), weights, device)
    assert engine is None
    assert "no compile artifact for cpu" in warnings[0] and "ralf-cli export" in warnings[0]
    assert warnings[-1] == "using the eager engine"
    engine, warnings = load_engine(tiny_model, ScanOptions(device="cpu", engine="tensorrt"), weights)
    assert engine.name == "eager"
    if not torch.cuda.is_available():
        assert warnings[0] == "TensorRT engine unavailable (no CUDA GPU)"


def test_unreadable_sidecar_is_a_warning_not_a_crash(tiny_model: RALF, tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_weights(path, tiny_model)
    (tmp_path / "w.compile-cpu-fp32.json").write_text("{not json")
    engine, warnings = load_engine(tiny_model, ScanOptions(device="cpu"), path)
    assert engine.name == "eager"
    assert any("w.compile-cpu-fp32.json not used" in w and "not a RALF engine sidecar" in w for w in warnings)


def test_export_cli(weights: Path) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    runner = CliRunner()
    result = runner.invoke(app, ["export", str(weights), "--engine", "eager", "--device", "cpu", "--max-batch", "2"])
    assert result.exit_code == 0, result.output
    assert weights.with_name("tiny.eager-cpu-fp32.json").is_file() and "parity" in result.output
    result = runner.invoke(app, ["export", str(weights), "--engine", "compile", "--precision", "fp16", "--device", "cpu"])
    assert result.exit_code == 2 and "fp16 is not supported on the CPU" in result.output
    result = runner.invoke(app, ["export", str(weights.with_name("missing.safetensors")), "--engine", "eager"])
    assert result.exit_code == 2 and "not found" in result.output
    if not torch.cuda.is_available():
        result = runner.invoke(app, ["export", str(weights), "--engine", "tensorrt"])
        assert result.exit_code == 2 and "CUDA" in result.output


def test_a_build_that_disagrees_with_eager_writes_nothing(
    weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipeline.export as export

    monkeypatch.setattr(export, "_build_aoti", lambda graph, size, batch, device, path: path.write_bytes(b"x"))
    monkeypatch.setattr(export, "open_artifact", lambda info, path: lambda x: torch.full((x.shape[0],), 9.0))
    with pytest.raises(RuntimeError, match="disagrees with eager"):
        export_engine(weights, "compile", out_dir=tmp_path, device="cpu")
    assert list(tmp_path.iterdir()) == []
