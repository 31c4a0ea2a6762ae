"""Apply display-rotation metadata so faces come out upright."""

from __future__ import annotations

import numpy as np
import torch


def to_upright(frames: torch.Tensor, rotation: int) -> torch.Tensor:
    """Rotate (N, H, W, C) frames counter-clockwise by ``rotation`` degrees (0/90/180/270).

    FFmpeg's display matrix angle is the counter-clockwise turn that shows stored pixels
    as intended; phone videos shot upright commonly carry 90 or 270. Works on any device.
    """
    quarter_turns = (rotation // 90) % 4
    if quarter_turns == 0:
        return frames
    if frames.device.type == "cpu":
        # NumPy copy: single-threaded, unaffected by torch thread contention on busy CPUs.
        return torch.from_numpy(np.ascontiguousarray(np.rot90(frames.numpy(), k=quarter_turns, axes=(1, 2))))
    # Turning from the H axis toward the W axis is counter-clockwise on screen (like np.rot90).
    return torch.rot90(frames, k=quarter_turns, dims=(1, 2)).contiguous()
