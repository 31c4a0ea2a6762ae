"""Model cost of RALF: parameters, GFLOPs and CPU latency per face, per component.

    .venv/bin/python benchmarks/model_cost.py                 # paper preset, CPU
    .venv/bin/python benchmarks/model_cost.py --cpu-forms     # + eager vs channels_last / torch.compile

GFLOPs come from torch.utils.flop_counter.FlopCounterMode (convolutions and matrix products,
counted as 2 FLOPs per multiply-add; element-wise ops are not counted). Latency is the median of
a few timed runs after one warm-up, divided by the batch size.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this folder comes first on sys.path, where benchmarks/queue.py and
# benchmarks/pipeline.py would shadow the stdlib `queue` module and the `pipeline` package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from ralf.config import RALFConfig
from ralf.discriminator import Discriminator
from ralf.model import RALF


def millions(module: nn.Module) -> str:
    return f"{sum(p.numel() for p in module.parameters()) / 1e6:.2f}M"


def gflops(fn: Callable[[], object]) -> float:
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        fn()
    return counter.get_total_flops() / 1e9


def ms_per_face(fn: Callable[[], object], batch: int, repeats: int) -> float:
    with torch.inference_mode():
        fn()  # warm-up: allocator, oneDNN primitive cache
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times) / batch


def component_table(model: RALF, discriminator: Discriminator, batches: list[int], repeats: int) -> list[list[str]]:
    size = model.config.image_size
    with torch.inference_mode():
        x = torch.rand(1, 3, size, size)
        destroyed = model.destructor(x)
        reconstruction, _ = model.reconstructor(destroyed)
    # Each component on its real input: (name, module, inputs of one face).
    components: list[tuple[str, nn.Module, tuple[Tensor, ...]]] = [
        ("destructor", model.destructor, (x,)),
        ("reconstructor", model.reconstructor, (destroyed,)),
        ("classifier", model.classifier, ((x - reconstruction).abs(), (x - destroyed).abs())),
        ("discriminator (training only)", discriminator, (x,)),
        ("inference total (D+R+C)", model, (x,)),
    ]
    rows = []
    for name, module, inputs in components:
        row = [name, millions(module), f"{gflops(lambda: module(*inputs)):.2f}"]
        for batch in batches:
            batched = tuple(t.expand(batch, *t.shape[1:]).contiguous() for t in inputs)
            row.append(f"{ms_per_face(lambda: module(*batched), batch, repeats):.1f}")
        rows.append(row)
    return rows


def compare_cpu_forms(model: RALF, batch: int, repeats: int) -> list[list[str]]:
    """Issue 7: eager vs the fastest CPU form of the inference graph, as ms/face and ratio to eager."""
    size = model.config.image_size
    x = torch.rand(batch, 3, size, size)
    rows = []
    eager = ms_per_face(lambda: model(x), batch, repeats)
    rows.append(["eager (NCHW)", f"{eager:.1f}", "1.00"])
    channels_last = model.to(memory_format=torch.channels_last)
    x_cl = x.to(memory_format=torch.channels_last)
    cl = ms_per_face(lambda: channels_last(x_cl), batch, repeats)
    rows.append(["eager channels_last", f"{cl:.1f}", f"{eager / cl:.2f}"])
    model.to(memory_format=torch.contiguous_format)
    start = time.perf_counter()
    compiled = torch.compile(model, dynamic=False)
    with torch.inference_mode():
        compiled(x)
    compile_s = time.perf_counter() - start
    compiled_ms = ms_per_face(lambda: compiled(x), batch, repeats)
    rows.append([f"torch.compile inductor (compile {compile_s:.0f}s)", f"{compiled_ms:.1f}", f"{eager / compiled_ms:.2f}"])
    return rows


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    print(f"\n{title}\n{line}")
    print("  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths))))
    print(line)
    for row in rows:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="paper", choices=["paper", "lite", "tiny"])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (median)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--cpu-forms", action="store_true", help="also time channels_last and torch.compile")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = RALFConfig.from_preset(args.preset)
    model = RALF(config).eval()
    discriminator = Discriminator(config.discriminator, config.image_size).eval()
    print(
        f"RALF model cost, preset {config.preset!r}, {config.image_size}x{config.image_size} faces, "
        f"CPU, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    header = ["component", "params", "GFLOPs/face", *[f"ms/face @ batch {b}" for b in args.batches]]
    print_table("Per component", header, component_table(model, discriminator, args.batches, args.repeats))
    if args.cpu_forms:
        # Issue 7 asks for the ratio per face at every batch size (1 and 8 by default).
        for batch in args.batches:
            rows = compare_cpu_forms(model, batch, args.repeats)
            print_table(f"Inference graph on CPU, batch {batch}", ["form", "ms/face", "speed-up vs eager"], rows)


if __name__ == "__main__":
    main()
