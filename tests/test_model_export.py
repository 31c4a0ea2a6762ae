"""The inference graph (destructor + reconstructor + classifier) exports with a dynamic batch."""

from __future__ import annotations

import torch
from torch.export import Dim

from ralf.config import RALFConfig
from ralf.model import RALF


def test_torch_export_with_dynamic_batch_matches_eager() -> None:
    torch.manual_seed(0)
    model = RALF(RALFConfig.tiny()).eval()
    example = torch.rand(2, 3, 64, 64)
    batch = Dim("batch", min=1, max=64)
    exported = torch.export.export(model, (example,), dynamic_shapes={"x": {0: batch}})
    program = exported.module()
    for size in (1, 3):
        x = torch.rand(size, 3, 64, 64)
        with torch.no_grad():
            expected = model(x)
            got = program(x)
        assert got.shape == (size,)
        assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)
