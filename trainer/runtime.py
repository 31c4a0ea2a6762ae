"""Where a training process runs: device, DDP process group, autocast dtype, and the collectives.

CPU, one GPU with autocast (bf16, or fp16 with GradScaler), or `torchrun` with DDP (NCCL on CUDA,
gloo on CPU). Everything that differs between those lives here, so the Trainer calls the same
methods whatever the set-up: a single process makes the collectives no-ops.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import timedelta
from typing import ContextManager, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from ralf.core.device import DeviceUnavailable, resolve_device
from trainer.config import TrainConfig

T = TypeVar("T")


class TrainingError(RuntimeError):
    """The run cannot start or continue (bad device / precision request, incompatible resume)."""


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    rank: int
    world_size: int
    amp_dtype: torch.dtype | None  # None = full precision

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self) -> ContextManager[object]:
        dtype = self.amp_dtype
        return torch.autocast(self.device.type, dtype=dtype) if dtype is not None else nullcontext()

    def grad_scaler(self) -> torch.amp.GradScaler:
        """Loss scaling for fp16 autocast; a pass-through otherwise (bf16 and fp32 need none)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

    def wrap(self, module: nn.Module) -> nn.Module:
        """`module` under DDP when several processes train, else as it is."""
        if not self.distributed:
            return module
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids)

    def sum_over_ranks(self, tensors: Iterable[Tensor]) -> None:
        """In-place sum of each tensor over every rank (a collective: all ranks must call it)."""
        if self.distributed:
            for tensor in tensors:
                dist.all_reduce(tensor)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def from_main(self, value: T) -> T:
        """Rank 0's `value` on every rank (a collective)."""
        if not self.distributed:
            return value
        shared = [value]
        dist.broadcast_object_list(shared, src=0)
        return shared[0]

    def shutdown(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def setup_runtime(config: TrainConfig) -> Runtime:
    """Device, DDP process group (when launched by torchrun) and autocast dtype."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    try:
        want_cuda = resolve_device(config.device) != "cpu"
    except DeviceUnavailable:
        raise TrainingError("--device cuda requested but CUDA is not available") from None
    if want_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        # Rank 0 validates alone while the others wait: allow for a long validation set.
        dist.init_process_group(backend="nccl" if want_cuda else "gloo", timeout=timedelta(minutes=60))
    amp = config.amp
    if amp == "auto":
        amp = "bf16" if want_cuda and torch.cuda.is_bf16_supported() else "none"
    if amp != "none" and not want_cuda:
        raise TrainingError(f"mixed precision ({amp}) needs CUDA; use --amp none on CPU")
    dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    return Runtime(device=device, rank=rank, world_size=world_size, amp_dtype=dtype)
