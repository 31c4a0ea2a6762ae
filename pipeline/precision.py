"""Inference precision: which number format the model runs in, and whether this machine has it.

RALF's classifier looks at *differences* of images (`|x - x~|`, `|x - x^|`), values around 1e-2 that
bfloat16's 8-bit mantissa would round away if they were computed in it. `LowPrecisionForward`
therefore runs the heavy convolutions (reconstructor and classifier) in the low type and keeps the
cheap, precision-critical parts in float32: the DCT destructor (two small matrix products), the
global residual `net(x^) + x^` and the two differences. (`forms()` lists the other ways tried;
`benchmarks/precision.py` measures them all on trained weights.)

Who decides: an explicit `ScanOptions.precision` is obeyed (bf16 where the device has it). `auto`
takes a lower precision only where a measurement on trained weights over real face crops says its
scores stay within `PARITY_TOLERANCE` of float32 *and* it was faster: that measurement is a sidecar
written by `ralf-cli export --precision bf16` (engine `eager` or `compile`; `pipeline.export`),
never an assumption.
"""

from __future__ import annotations

import contextlib
import copy
import functools
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

PrecisionName = Literal["fp32", "fp16", "bf16"]
PRECISION_DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Largest |P(fake) candidate - P(fake) eager fp32| accepted, per precision (export, load and `auto`).
PARITY_TOLERANCE: dict[str, float] = {"fp32": 1e-4, "fp16": 1e-2, "bf16": 2e-2}


@functools.cache
def _cpu_flags() -> frozenset[str]:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def precision_supported(precision: str, device: torch.device | str) -> tuple[bool, str]:
    """(usable, why): whether `device` runs `precision` natively (emulated bf16 is slower than fp32)."""
    device = torch.device(device)
    if precision == "fp32":
        return True, "float32 runs everywhere"
    if device.type == "cuda":
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            return False, "this GPU has no bfloat16 support"
        return True, f"{precision} on CUDA"
    if precision == "fp16":
        return False, "fp16 is not offered on CPUs (slow or missing kernels); use bf16"
    flags = _cpu_flags()
    native = sorted(flags & {"avx512_bf16", "amx_bf16"})
    if native:
        return True, "CPU has " + " and ".join(native)
    if not flags and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return True, "oneDNN reports bfloat16 support"
    return False, "this CPU has neither avx512_bf16 nor amx_bf16 (bfloat16 would be emulated, slower than fp32)"


class LowPrecisionForward(nn.Module):
    """RALF's forward with the convolutions in `dtype`, float32 in and out.

    Destructor, global residual and the two differences run in float32 (see the module docstring);
    the reconstructor's network and the classifier run on a `dtype` copy of their weights (the
    caller's model is never changed). Plain modules only (no hooks, no state): it exports with
    `torch.export` like the model itself.
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        self.dtype = dtype
        self.destructor = model.destructor
        self.reconstructor = copy.deepcopy(model.reconstructor).to(dtype)
        # MIMO-UNet ends with `head(...) + x^`. In bf16 that sum would round x~ to 8 bits of mantissa
        # (steps of 2^-8 near 1, as large as the differences the classifier reads): the head's output
        # is made float32, so the sum is float32 and the low-precision x^ can be swapped for the exact one.
        self.residual_in_float32 = isinstance(getattr(self.reconstructor, "head", None), nn.Module)
        if self.residual_in_float32:
            self.reconstructor.head = _Float32Output(self.reconstructor.head)
        self.classifier = copy.deepcopy(model.classifier).to(dtype)
        self.config = model.config

    def forward(self, x: Tensor) -> Tensor:
        x = x.float()
        destroyed = self.destructor(x)
        low = destroyed.to(self.dtype)
        output, _ = self.reconstructor(low)
        # output = net(x^) + low exactly in float32, so output - low + x^ = net(x^) + x^.
        reconstruction = output.float() - low.float() + destroyed if self.residual_in_float32 else output.float()
        diff_recon = (x - reconstruction).abs().to(self.dtype)
        diff_destroyed = (x - destroyed).abs().to(self.dtype)
        return self.classifier(diff_recon, diff_destroyed).float()


class _Float32Output(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor) -> Tensor:
        return self.inner(x).float()


class CastForward(nn.Module):
    """The whole model on a `dtype` copy (the simplest form; loses the small differences)."""

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).to(dtype)
        self.dtype = dtype

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x.to(self.dtype)).float()


class AutocastForward(nn.Module):
    """`torch.autocast` over the float32 model (weights cast per call)."""

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        self.model = model
        self.dtype = dtype

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(x.device.type, dtype=self.dtype):
            return self.model(x).float()


def forms(model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> dict[str, nn.Module]:
    """Every low-precision form measured by benchmarks/precision.py; `mixed` is the one used."""
    return {
        "mixed": LowPrecisionForward(model, dtype).eval(),
        "cast": CastForward(model, dtype).eval(),
        "autocast": AutocastForward(model, dtype).eval(),
    }


def low_precision_forward(model: nn.Module, precision: str) -> nn.Module:
    """The module that runs `model` at `precision` (the model itself for fp32)."""
    if precision == "fp32":
        return model
    return LowPrecisionForward(model, PRECISION_DTYPES[precision]).eval()


__all__ = [
    "PARITY_TOLERANCE",
    "PRECISION_DTYPES",
    "AutocastForward",
    "CastForward",
    "LowPrecisionForward",
    "PrecisionName",
    "forms",
    "low_precision_forward",
    "precision_supported",
]
