"""The weights that ship with the package: found without options, intact, calibrated, and they tell
a generated real clip from its self-blended twin (no ../shared/data needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cli.main import app
from cli.scan import write_demo_clips
from pipeline.scan import Scanner
from ralf.core.metadata import read_metadata
from ralf.core.options import ScanOptions
from ralf.core.settings import Settings
from ralf.shipped import SHIPPED_WEIGHTS, resolve_weights, shipped_weights
from ralf.weights import load_weights, tensors_digest

runner = CliRunner()


def test_the_shipped_file_is_intact_small_and_calibrated() -> None:
    from safetensors import safe_open

    metadata = read_metadata(shipped_weights())
    assert SHIPPED_WEIGHTS.stat().st_size < 30 * 1024 * 1024
    with safe_open(str(SHIPPED_WEIGHTS), framework="pt") as handle:
        stored = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    # float32: float16 storage moved P(fake) by up to 0.018 on held-back real crops (limit 1e-3).
    assert {t.dtype for t in stored.values() if t.is_floating_point()} == {torch.float32}
    assert metadata.tensors_sha256 == tensors_digest(stored)
    model, loaded = load_weights(SHIPPED_WEIGHTS)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # served in fp32
    assert loaded.config.preset == "lite" and loaded.model_version.startswith("ralf-lite-")
    calibration = loaded.calibration
    assert calibration is not None and calibration.method == "target_fpr" and calibration.target_fpr == 0.01
    assert loaded.crop.square and loaded.crop.margin == 0.3
    assert "command" in loaded.training and "data_fingerprint" in loaded.training


def test_no_weights_named_means_the_shipped_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RALF_RANDOM_WEIGHTS", raising=False)
    monkeypatch.delenv("RALF_WEIGHTS", raising=False)
    assert Settings().model_weights() == SHIPPED_WEIGHTS
    assert resolve_weights(None, random_weights=True) is None
    assert resolve_weights(Path("x.safetensors"), random_weights=False) == Path("x.safetensors")
    assert resolve_weights(Path("x.safetensors"), random_weights=True) == Path("x.safetensors")  # a named file wins


def test_shipped_model_tells_a_real_clip_from_its_self_blended_twin(tmp_path: Path) -> None:
    real, fake = write_demo_clips(tmp_path)
    scanner = Scanner(ScanOptions(device="cpu", every_n=1), shipped_weights())
    real_verdict, fake_verdict = scanner.scan(real), scanner.scan(fake)
    assert not scanner.weights_random and real_verdict.model_version.startswith("ralf-lite-")
    assert fake_verdict.score > real_verdict.score
    assert (real_verdict.label, fake_verdict.label) == ("real", "fake")
    assert real_verdict.threshold_source.startswith("calibrated (target_fpr, target FPR 0.01")


def test_demo_uses_the_shipped_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RALF_RANDOM_WEIGHTS", raising=False)
    monkeypatch.delenv("RALF_WEIGHTS", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    result = runner.invoke(app, ["demo", "--device", "cpu", "--json"])
    verdicts = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    assert result.exit_code == 0, result.output
    assert [v["label"] for v in verdicts] == ["real", "fake"]
    assert all(not v["weights_random"] for v in verdicts)
