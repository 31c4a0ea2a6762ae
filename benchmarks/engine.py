"""Inference engines: faces/s of eager PyTorch vs compiled forms of the RALF inference graph.

    .venv/bin/python -m benchmarks.engine --preset tiny --repeats 3      # CPU, a few minutes
    .venv/bin/python -m benchmarks.engine --preset paper --device cuda   # GPU, + TensorRT fp16

Forms (each timed at every batch size, as faces/s and as a ratio to eager measured in the same run):
- eager: the pipeline's `EagerEngine`
- channels_last: eager with NHWC weights and inputs
- torch.export: the exported program run as a graph module (no compiler; shows capture costs nothing)
- torch.compile: Inductor JIT, dynamic batch, compiled once at the first call (compile time shown)
- aoti: the deployable `ralf-cli export --engine compile` artifact (AOTInductor package), loaded by
  `load_engine` exactly as the pipeline does
- tensorrt-fp16: the `ralf-cli export --engine tensorrt` artifact; only with CUDA and torch_tensorrt

Random weights: speed does not depend on what the weights are. Each time is the median of `--repeats`
runs after `--warmup` runs, the forms taking turns run by run (so load from other processes hits all
of them alike); GPU work is synchronised before the clock stops.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this folder comes first on sys.path, where benchmarks/queue.py and
# benchmarks/pipeline.py would shadow the stdlib `queue` module and the `pipeline` package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable

import torch

from pipeline.artifacts import tensorrt_available
from pipeline.engine import EagerEngine
from pipeline.engine_choice import load_engine
from pipeline.export import InferenceGraph, export_engine, export_program
from ralf.config import RALFConfig
from ralf.core.device import resolve_device
from ralf.core.options import ScanOptions
from ralf.model import RALF
from ralf.weights import save_weights

Runner = Callable[[torch.Tensor], torch.Tensor]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_faces_per_second(
    runners: dict[str, Runner], crops: torch.Tensor, warmup: int, repeats: int
) -> dict[str, float]:
    """Median faces/s per runner; the runners take turns, so a busy machine slows them all alike."""
    times: dict[str, list[float]] = {name: [] for name in runners}
    with torch.inference_mode():
        for i in range(warmup + repeats):
            for name, run in runners.items():
                _sync(crops.device)
                start = time.perf_counter()
                run(crops)
                _sync(crops.device)
                if i >= warmup:
                    times[name].append(time.perf_counter() - start)
    return {name: crops.shape[0] / statistics.median(values) for name, values in times.items()}


def build_forms(
    model: RALF, weights: Path, device: torch.device, max_batch: int, forms: list[str]
) -> list[tuple[str, Runner, float]]:
    """(name, runner, build seconds) for every requested form this machine can run."""
    built: list[tuple[str, Runner, float]] = []

    def add(name: str, make: Callable[[], Runner]) -> None:
        started = time.perf_counter()
        try:
            run = make()
        except Exception as error:  # noqa: BLE001  (a form that cannot build here is reported, not fatal)
            print(f"  {name}: not available ({type(error).__name__}: {str(error).splitlines()[0][:160]})")
            return
        built.append((name, run, time.perf_counter() - started))
        print(f"  {name}: ready in {built[-1][2]:.1f} s")

    size = model.config.image_size
    if "eager" in forms:
        add("eager", lambda: EagerEngine(model, device, max_batch).logits)
    if "channels_last" in forms:

        def channels_last() -> Runner:
            nhwc = RALF(model.config).to(device).eval()
            nhwc.load_state_dict(model.state_dict())
            nhwc = nhwc.to(memory_format=torch.channels_last)
            return lambda x: nhwc(x.contiguous(memory_format=torch.channels_last))

        add("channels_last", channels_last)
    if "export" in forms:
        add("torch.export", lambda: export_program(InferenceGraph(model), size, max_batch, device.type).module())
    if "compile" in forms:

        def jit() -> Runner:
            compiled = torch.compile(model, dynamic=True)
            with torch.inference_mode():
                compiled(torch.rand(2, 3, size, size, device=device))  # compile now, not inside the timing
            return compiled

        add("torch.compile", jit)
    if "aoti" in forms:

        def aoti() -> Runner:
            export_engine(weights, "compile", max_batch=max_batch, device=device.type)
            engine, warnings = load_engine(model, ScanOptions(device=device.type, engine="compile"), weights)
            if warnings:
                raise RuntimeError("; ".join(warnings))
            return engine.logits

        add("aoti (ralf-cli export --engine compile)", aoti)
    if "tensorrt" in forms:
        if device.type == "cuda" and tensorrt_available():

            def tensorrt() -> Runner:
                export_engine(weights, "tensorrt", "fp16", max_batch=max_batch)
                engine, warnings = load_engine(model, ScanOptions(device="cuda", engine="tensorrt"), weights)
                if warnings or not engine.name.startswith("tensorrt"):
                    raise RuntimeError("; ".join(warnings) or f"loaded {engine.name}")
                return engine.logits

            add("tensorrt-fp16 (ralf-cli export --engine tensorrt)", tensorrt)
        else:
            print("  tensorrt-fp16: skipped (needs CUDA and torch_tensorrt)")
    return built


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="paper", choices=["paper", "tiny"])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument(
        "--forms",
        nargs="+",
        default=["eager", "channels_last", "export", "compile", "aoti", "tensorrt"],
        choices=["eager", "channels_last", "export", "compile", "aoti", "tensorrt"],
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(resolve_device(args.device))
    forms = args.forms if "eager" in args.forms else ["eager", *args.forms]
    torch.manual_seed(0)
    config = RALFConfig.from_preset(args.preset)
    model = RALF(config).to(device).eval()
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"RALF engines, preset {config.preset!r} ({config.image_size}px faces), {where}, torch {torch.__version__}")

    with tempfile.TemporaryDirectory() as folder:
        weights = Path(folder) / f"{config.preset}.safetensors"
        save_weights(weights, model)
        built = build_forms(model, weights, device, max(args.batches), forms)
        size = config.image_size
        results: dict[str, list[float]] = {name: [] for name, _, _ in built}
        for batch in args.batches:
            crops = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(batch)).to(device)
            speeds = interleaved_faces_per_second({n: r for n, r, _ in built}, crops, args.warmup, args.repeats)
            for name, speed in speeds.items():
                results[name].append(speed)

    eager = results["eager"]
    header = ["form", "build s", *[f"faces/s @{b}" for b in args.batches], *[f"x eager @{b}" for b in args.batches]]
    rows = []
    for name, _, build_s in built:
        speeds = results[name]
        rows.append(
            [name, f"{build_s:.1f}", *[f"{s:.1f}" for s in speeds], *[f"{s / e:.2f}" for s, e in zip(speeds, eager)]]
        )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    print(line)
    for row in [header, *rows]:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if row is header:
            print(line)
    print(line)


if __name__ == "__main__":
    main()
