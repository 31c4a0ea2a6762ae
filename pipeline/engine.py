"""Inference engines: face crops in, fake logits out, in batches no larger than the engine allows.

The scanner only talks to the `InferenceEngine` protocol, so an optimised engine (an exported
artifact, `pipeline.artifacts`) can replace the eager one without touching the rest of the pipeline;
`pipeline.engine_choice.load_engine` picks one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from ralf.core.options import ScanOptions


class InferenceOutOfMemory(RuntimeError):
    """The accelerator ran out of memory for one batch; retrying with a smaller batch size may work."""

    def __init__(self, batch_size: int, device: torch.device, detail: str) -> None:
        super().__init__(f"out of memory on {device} at batch size {batch_size}: {detail}")
        self.batch_size = batch_size
        self.device = device


@runtime_checkable
class InferenceEngine(Protocol):
    """Scores face crops.

    `logits(crops)`: crops are float32 `(K, 3, S, S)` RGB in [0, 1] on any device; the result is
    float32 `(K,)` log-odds of FAKE on `device`, in the same order. Any K works: the engine splits
    it into batches of at most `max_batch`.
    """

    name: str
    device: torch.device
    max_batch: int

    def logits(self, crops: torch.Tensor) -> torch.Tensor: ...


def check_crops(crops: torch.Tensor) -> None:
    """Raise ValueError unless `crops` is a float (K, 3, S, S) tensor."""
    if not crops.is_floating_point() or crops.ndim != 4 or crops.shape[1] != 3:
        raise ValueError(f"crops must be float (K, 3, S, S), got {crops.dtype} {tuple(crops.shape)}")


def batched_logits(
    run: Callable[[torch.Tensor], torch.Tensor], crops: torch.Tensor, device: torch.device, max_batch: int
) -> torch.Tensor:
    """`run` over `crops` in batches of at most `max_batch`, moved to `device` as contiguous float32 (what
    compiled artifacts require); float32 logits (K,) on `device`. Running out of memory raises
    InferenceOutOfMemory naming the batch size, so the caller can retry smaller."""
    check_crops(crops)
    outputs = []
    with torch.inference_mode():
        for start in range(0, crops.shape[0], max_batch):
            batch = crops[start : start + max_batch].to(device, torch.float32, non_blocking=True).contiguous()
            try:
                outputs.append(run(batch).reshape(-1).float())
            except torch.OutOfMemoryError as error:
                raise InferenceOutOfMemory(max_batch, device, str(error)) from error
    if not outputs:
        return torch.zeros((0,), dtype=torch.float32, device=device)
    return torch.cat(outputs)


class EagerEngine:
    """Plain PyTorch forward passes under `torch.inference_mode`.

    `precision` 'bf16'/'fp16' runs `pipeline.precision.LowPrecisionForward` (convolutions in the low
    type, destructor and image differences in float32); the name then says so ('eager-bf16').
    `choice` says why this engine was chosen (set by `load_engine`).
    """

    def __init__(
        self, model: nn.Module, device: torch.device | str, batch_size: int, precision: str = "fp32"
    ) -> None:
        from pipeline.precision import low_precision_forward

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.max_batch = batch_size
        self.model = model.to(self.device).eval()
        self.precision = precision
        self.name = "eager" if precision == "fp32" else f"eager-{precision}"
        self.choice = ""
        self._run = low_precision_forward(self.model, precision)

    def logits(self, crops: torch.Tensor) -> torch.Tensor:
        return batched_logits(self._run, crops, self.device, self.max_batch)


# Face crops per forward when ScanOptions.batch_size is unset. A GPU wants large batches. On a CPU it
# depends on the model: the paper preset costs more per face as the batch grows (0.96 s at batch 1,
# 1.54 at 8, 1.83 at 32, eager, 2-core development CPU), while the small presets pay a fixed cost per
# forward that batches amortise (CPU_BATCH_SIZE_MEASURED: RALF(preset) forwards at batches 1..32, best of 4 interleaved
# rounds).
GPU_BATCH_SIZE = 32
CPU_BATCH_SIZE: dict[str, int] = {"tiny": 8, "lite": 16, "paper": 1}
CPU_BATCH_SIZE_MEASURED = (
    "ms per face, eager fp32, 2 cores shared with a training run (load average 8): "
    "tiny b1 86 / b4 40 / b8 23 / b16 33 / b32 24; lite b1 307 / b4 227 / b8 204 / b16 92 / b32 142; "
    "paper (issue 15, same CPU) b1 960 / b8 1540 / b32 1830"
)


def default_batch_size(config: object, device: torch.device | str) -> int:
    """The batch size for a model `config` (a RALFConfig) on `device`: `GPU_BATCH_SIZE` on CUDA, else the
    measured CPU size of its preset (presets not measured: by input size, 64 -> tiny, 128 -> lite, larger -> paper)."""
    if torch.device(device).type == "cuda":
        return GPU_BATCH_SIZE
    preset = getattr(config, "preset", "")
    if preset in CPU_BATCH_SIZE:
        return CPU_BATCH_SIZE[preset]
    size = int(getattr(config, "image_size", 256))
    return CPU_BATCH_SIZE["tiny" if size <= 64 else "lite" if size <= 128 else "paper"]


def resolved_batch_size(options: ScanOptions, config: object, device: torch.device | str) -> int:
    """`options.batch_size` when set, else `default_batch_size`."""
    return options.batch_size if options.batch_size is not None else default_batch_size(config, device)
