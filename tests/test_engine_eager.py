"""Eager inference engine: batching, parity with per-crop inference, OOM signalling, engine choice."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.engine import EagerEngine, InferenceEngine, InferenceOutOfMemory
from pipeline.engine_choice import load_engine
from ralf.config import RALFConfig
from ralf.core.options import ScanOptions
from ralf.model import RALF


class _RecordingModel(nn.Module):
    """Mean pixel minus 0.5 as the logit; remembers the batch sizes it saw."""

    def __init__(self) -> None:
        super().__init__()
        self.batch_sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batch_sizes.append(x.shape[0])
        return x.mean(dim=(1, 2, 3)) - 0.5


class _OutOfMemoryModel(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


@pytest.fixture(scope="module")
def tiny_model() -> RALF:
    torch.manual_seed(0)
    return RALF(RALFConfig.tiny()).eval()


def test_engine_splits_into_batches_and_keeps_order() -> None:
    model = _RecordingModel()
    engine = EagerEngine(model, "cpu", batch_size=4)
    assert isinstance(engine, InferenceEngine)
    crops = torch.linspace(0, 1, 10).reshape(10, 1, 1, 1).expand(10, 3, 8, 8).contiguous()
    logits = engine.logits(crops)
    assert model.batch_sizes == [4, 4, 2]
    assert logits.shape == (10,) and logits.dtype == torch.float32
    torch.testing.assert_close(logits, torch.linspace(0, 1, 10) - 0.5)
    assert not torch.is_inference(crops)


def test_engine_accepts_no_crops_and_rejects_wrong_layout() -> None:
    engine = EagerEngine(_RecordingModel(), "cpu", batch_size=4)
    assert engine.logits(torch.zeros((0, 3, 8, 8))).shape == (0,)
    with pytest.raises(ValueError, match="crops"):
        engine.logits(torch.zeros((2, 8, 8, 3), dtype=torch.uint8))
    with pytest.raises(ValueError, match="batch_size"):
        EagerEngine(_RecordingModel(), "cpu", batch_size=0)


def test_batched_scores_equal_per_crop_scores(tiny_model: RALF) -> None:
    generator = torch.Generator().manual_seed(1)
    crops = torch.rand((7, 3, 64, 64), generator=generator)
    batched = EagerEngine(tiny_model, "cpu", batch_size=32).logits(crops)
    one_by_one = EagerEngine(tiny_model, "cpu", batch_size=1).logits(crops)
    torch.testing.assert_close(batched, one_by_one, rtol=1e-4, atol=1e-5)
    with torch.inference_mode():
        direct = tiny_model(crops[2:3])
    torch.testing.assert_close(batched[2:3], direct, rtol=1e-4, atol=1e-5)


def test_out_of_memory_is_reported_with_batch_size() -> None:
    engine = EagerEngine(_OutOfMemoryModel(), "cpu", batch_size=16)
    with pytest.raises(InferenceOutOfMemory) as caught:
        engine.logits(torch.zeros((3, 3, 8, 8)))
    assert caught.value.batch_size == 16
    assert "batch size 16" in str(caught.value)


def test_load_engine_falls_back_to_eager_with_a_warning(tiny_model: RALF) -> None:
    engine, warnings = load_engine(tiny_model, ScanOptions(device="cpu", batch_size=8))
    assert engine.name == "eager" and engine.max_batch == 8 and warnings == []
    engine, warnings = load_engine(tiny_model, ScanOptions(device="cpu", engine="eager"))
    assert engine.name == "eager" and warnings == []
    engine, warnings = load_engine(tiny_model, ScanOptions(device="cpu", engine="tensorrt"))
    assert engine.name == "eager"
    assert len(warnings) == 1 and "tensorrt" in warnings[0]


def test_default_batch_size_follows_device_and_preset() -> None:
    from pipeline.engine import CPU_BATCH_SIZE, GPU_BATCH_SIZE, default_batch_size
    from pipeline.engine_choice import load_engine
    from ralf.config import RALFConfig
    from ralf.core.options import ScanOptions
    from ralf.model import RALF

    assert default_batch_size(RALFConfig.paper(), "cuda") == GPU_BATCH_SIZE == 32
    assert default_batch_size(RALFConfig.paper(), "cpu") == CPU_BATCH_SIZE["paper"] == 1
    assert default_batch_size(RALFConfig.lite(), "cpu") == CPU_BATCH_SIZE["lite"]
    assert default_batch_size(RALFConfig.tiny(), "cpu") == CPU_BATCH_SIZE["tiny"]
    assert default_batch_size(RALFConfig.tiny(preset="custom", image_size=128), "cpu") == CPU_BATCH_SIZE["lite"]
    model = RALF(RALFConfig.tiny()).eval()
    engine, _ = load_engine(model, ScanOptions(device="cpu", engine="eager"))
    assert engine.max_batch == CPU_BATCH_SIZE["tiny"]
    engine, _ = load_engine(model, ScanOptions(device="cpu", engine="eager", batch_size=3))
    assert engine.max_batch == 3
