"""One-shot check of the GPU paths on a CUDA machine; prints PASS / FAIL / SKIP per step and throughput.

    bash benchmarks/gpu_check.sh                   # installs carried wheels from .whl/ first, then runs this
    python3 -m benchmarks.gpu_check --preset paper --skip-compile

Steps (each independent: a missing package or a failure in one does not stop the others):
1. environment: torch, CUDA, GPU, DALI, torch_tensorrt versions
2. DALI mixed (NVDEC) decode of a generated H.264 clip: frames on the GPU, same pixels as PyAV, frames/s
3. MTCNN on CUDA: faces found in the decoded frames, boxes agree with MTCNN on the CPU, frames/s
4. TensorRT export (fp16, dynamic batch) and parity with eager fp32 on random and on real face crops
5. AOTInductor export on CUDA (fp16) and parity (skipped with --skip-compile)
6. Scanner on CUDA end to end (DALI, MTCNN, engine auto: must pick the exported artifact)
7. faces/s of eager / channels_last / each exported artifact at batch 1, 8, --max-batch

Exit status: 0 when no step failed (skips are fine), 1 otherwise. Nothing is downloaded.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this folder comes first on sys.path, where benchmarks/queue.py and
# benchmarks/pipeline.py would shadow the stdlib `queue` module and the `pipeline` package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse
import importlib.util
import tempfile
import time
import traceback
from collections.abc import Callable

RESULTS: list[tuple[str, str, str]] = []
# "cpu" only for --cpu-dry-run: the same steps on the CPU, to check the script itself without a GPU.
DEVICE = "cuda"


class Skip(Exception):
    """The step cannot run on this machine (no GPU, package missing); not a failure."""


def step(name: str, run: Callable[[], str]) -> None:
    print(f"\n== {name}", flush=True)
    started = time.perf_counter()
    try:
        detail = run()
        status = "PASS"
    except Skip as reason:
        status, detail = "SKIP", str(reason)
    except Exception as error:  # noqa: BLE001  (every step reports; the next one still runs)
        traceback.print_exc()
        status, detail = "FAIL", f"{type(error).__name__}: {error}"
    detail = f"{detail} [{time.perf_counter() - started:.1f} s]"
    RESULTS.append((status, name, detail))
    print(f"-> {status}: {detail}", flush=True)


def require(module: str, hint: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise Skip(f"{module} is not installed ({hint})")


def require_cuda() -> None:
    import torch

    if DEVICE == "cuda" and not torch.cuda.is_available():
        raise Skip("no CUDA GPU")


def sync() -> None:
    import torch

    if DEVICE == "cuda":
        sync()


def environment() -> str:
    import torch

    parts = [f"torch {torch.__version__}", f"python {sys.version.split()[0]}"]
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        parts.append(f"{torch.cuda.get_device_name()} (sm_{major}{minor}), CUDA {torch.version.cuda}")
    else:
        parts.append("no CUDA")
    for module in ("nvidia.dali", "torch_tensorrt", "tensorrt", "av", "pydantic"):
        found = importlib.util.find_spec(module) is not None if "." not in module else _has(module)
        parts.append(f"{module}: {_version(module) if found else 'missing'}")
    return "; ".join(parts)


def _has(dotted: str) -> bool:
    try:
        return importlib.util.find_spec(dotted) is not None
    except ModuleNotFoundError:
        return False


def _version(module: str) -> str:
    try:
        return str(getattr(__import__(module, fromlist=["__version__"]), "__version__", "?"))
    except Exception as error:  # noqa: BLE001
        return f"import fails: {error}"


class Clip:
    """A generated H.264 clip (the astronaut's face moving) written once for the decode and detect steps."""

    def __init__(self, folder: Path, frames: int, size: tuple[int, int]) -> None:
        self.folder, self.frames, self.size = folder, frames, size
        self._path: Path | None = None

    @property
    def path(self) -> Path:
        if self._path is None:
            from pipeline.synthetic import write_face_clip

            self._path = write_face_clip(
                self.folder / "face.mp4", codec="h264", num_frames=self.frames, fps=25.0, size=self.size
            )
        return self._path


def decode_all(path: Path, backend: str, device: str):  # type: ignore[no-untyped-def]
    import torch

    from pipeline.decode import open_video
    from ralf.core.options import Sampling

    with open_video(path, backend=backend, sampling=Sampling(every_n=1), device=device, chunk_size=32) as stream:
        used = stream.backend
        frames = torch.cat([batch.frames for batch in stream])
    return used, frames


def dali_decode(clip: Clip, state: dict) -> str:
    require_cuda()
    if DEVICE == "cpu":
        raise Skip("NVDEC decoding needs a GPU (--cpu-dry-run)")
    if not _has("nvidia.dali"):
        raise Skip("nvidia.dali is not installed (carry the nvidia-dali-cuda130 wheel)")
    import torch

    decode_all(clip.path, "dali", "cuda")  # warm-up: DALI pipeline build
    sync()
    started = time.perf_counter()
    backend, frames = decode_all(clip.path, "dali", "cuda")
    sync()
    elapsed = time.perf_counter() - started
    if backend != "dali":
        raise RuntimeError(f"asked for DALI, decoded with {backend}")
    if frames.device.type != "cuda" or frames.dtype != torch.uint8:
        raise RuntimeError(f"frames on {frames.device} as {frames.dtype}, expected uint8 on cuda")
    _, reference = decode_all(clip.path, "pyav", "cpu")
    if frames.shape != reference.shape:
        raise RuntimeError(f"DALI gave {tuple(frames.shape)}, PyAV {tuple(reference.shape)}")
    diff = (frames.cpu().float() - reference.float()).abs().mean().item()
    if diff > 3.0:
        raise RuntimeError(f"DALI and PyAV pixels differ by {diff:.2f} on average (> 3 levels)")
    state["frames"] = frames
    return f"{frames.shape[0]} frames {frames.shape[2]}x{frames.shape[1]} on GPU, {frames.shape[0] / elapsed:.0f} frames/s, mean |DALI - PyAV| {diff:.2f}"


def mtcnn_cuda(clip: Clip, state: dict) -> str:
    require_cuda()
    import torch

    from pipeline.faces import build_detector

    frames = state.get("frames")
    if frames is None:
        frames = decode_all(clip.path, "pyav", DEVICE)[1]
    detector = build_detector("mtcnn", DEVICE, min_face_size=40)
    detector.detect(frames[:4])  # warm-up
    sync()
    started = time.perf_counter()
    found = []
    for start in range(0, frames.shape[0], 32):
        found += detector.detect(frames[start : start + 32])
    sync()
    elapsed = time.perf_counter() - started
    with_face = sum(len(d.scores) > 0 for d in found)
    if with_face < 0.9 * len(found):
        raise RuntimeError(f"a face in only {with_face} of {len(found)} frames")
    cpu = build_detector("mtcnn", "cpu", min_face_size=40).detect(frames[:8].cpu())
    ious = [_iou(g.boxes[0].cpu(), c.boxes[0]) for g, c in zip(found[:8], cpu) if len(g.scores) and len(c.scores)]
    if not ious or min(ious) < 0.9:
        raise RuntimeError(f"CUDA and CPU boxes disagree (IoU {ious})")
    state["detections"] = found
    return f"faces in {with_face}/{len(found)} frames, {len(found) / elapsed:.0f} frames/s, min IoU vs CPU {min(ious):.3f}"


def _iou(a, b) -> float:  # type: ignore[no-untyped-def]
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, float(x2 - x1)) * max(0.0, float(y2 - y1))
    area = lambda box: float((box[2] - box[0]) * (box[3] - box[1]))  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def scanner_cuda(clip: Clip, weights: Path) -> str:
    require_cuda()
    from pipeline.scan import Scanner
    from ralf.core.options import ScanOptions

    scanner = Scanner(ScanOptions(device=DEVICE, every_n=1), weights)  # type: ignore[arg-type]
    scanner.warm_up()
    verdict = scanner.scan(clip.path)
    if verdict.label not in ("real", "fake"):
        raise RuntimeError(f"verdict {verdict.label}: {verdict.error}")
    t = verdict.timings
    return (
        f"{verdict.label} {verdict.score:.3f} with {verdict.decoder}/{verdict.detector}/{verdict.engine}; "
        f"{verdict.counts.frames_decoded} frames in {t.total_s:.2f} s (decode {t.decode_s:.2f}, detect {t.detect_s:.2f}, "
        f"crop {t.crop_s:.2f}, infer {t.infer_s:.2f}); warnings {verdict.warnings}"
    )


def face_crops(state: dict, size: int):  # type: ignore[no-untyped-def]
    """Real face crops from the decoded clip (random crops when the detect step did not run)."""
    import torch

    from pipeline.crops import crop_faces

    frames, found = state.get("frames"), state.get("detections")
    if frames is None or not found:
        return torch.rand(32, 3, size, size, device=DEVICE)
    index = [i for i, d in enumerate(found) if len(d.scores)][:32]
    boxes = torch.stack([found[i].boxes[0].float().cpu() for i in index])
    return crop_faces(frames, torch.tensor(index), boxes, size, 0.3)


def export_and_compare(engine_name: str, weights: Path, state: dict, max_batch: int, precision: str) -> str:
    import torch

    from pipeline.artifacts import read_sidecar
    from pipeline.engine_choice import load_engine
    from pipeline.export import export_engine
    from ralf.core.options import ScanOptions
    from ralf.weights import load_weights

    started = time.perf_counter()
    sidecar = export_engine(weights, engine_name, precision, max_batch=max_batch, device=DEVICE)  # type: ignore[arg-type]
    build_s = time.perf_counter() - started
    info = read_sidecar(sidecar)
    model, _ = load_weights(weights, DEVICE)
    engine, warnings = load_engine(model, ScanOptions(device=DEVICE, engine=engine_name), weights)  # type: ignore[arg-type]
    if not engine.name.startswith(engine_name):
        raise RuntimeError(f"the pipeline loaded {engine.name}: {warnings}")
    crops = face_crops(state, model.config.image_size)
    with torch.inference_mode():
        reference = torch.sigmoid(model(crops).double())
    got = torch.sigmoid(engine.logits(crops).double())
    gap = (got - reference).abs().max().item()
    if gap > info.parity_tolerance:
        raise RuntimeError(f"|ΔP(fake)| {gap:.3g} on face crops > tolerance {info.parity_tolerance:g}")
    return (
        f"{engine.name}: built in {build_s:.0f} s, {sidecar.with_suffix('.pt2').stat().st_size / 1e6:.1f} MB; "
        f"max |ΔP(fake)| vs eager fp32: random crops {info.parity_max_abs_diff:.2e}, "
        f"{crops.shape[0]} face crops {gap:.2e} (tolerance {info.parity_tolerance:g})"
    )


def tensorrt_check(weights: Path, state: dict, max_batch: int) -> str:
    require_cuda()
    if DEVICE == "cpu":
        raise Skip("TensorRT needs a GPU (--cpu-dry-run)")
    require("torch_tensorrt", "carry torch-tensorrt and tensorrt wheels matching this torch")
    return export_and_compare("tensorrt", weights, state, max_batch, "fp16")


def aoti_check(weights: Path, state: dict, max_batch: int) -> str:
    require_cuda()
    return export_and_compare("compile", weights, state, max_batch, "fp16" if DEVICE == "cuda" else "fp32")


def throughput(weights: Path, batches: list[int]) -> str:
    """faces/s of eager, channels_last and every artifact exported above, loaded as the pipeline loads them."""
    require_cuda()
    import torch

    from benchmarks.engine import interleaved_faces_per_second
    from pipeline.engine import EagerEngine
    from pipeline.engine_choice import load_engine
    from ralf.core.options import ScanOptions
    from ralf.weights import load_weights

    model, _ = load_weights(weights, DEVICE)
    runners = {"eager": EagerEngine(model, DEVICE, max(batches)).logits}
    nhwc, _ = load_weights(weights, DEVICE)
    nhwc = nhwc.to(memory_format=torch.channels_last)
    runners["channels_last"] = lambda x: nhwc(x.contiguous(memory_format=torch.channels_last))
    for kind in ("compile", "tensorrt"):
        engine, _ = load_engine(model, ScanOptions(device=DEVICE, engine=kind, batch_size=max(batches)), weights)  # type: ignore[arg-type]
        if engine.name.startswith(kind):
            runners[engine.name] = engine.logits
    size = model.config.image_size
    table: dict[str, list[float]] = {name: [] for name in runners}
    for b in batches:
        speeds = interleaved_faces_per_second(runners, torch.rand(b, 3, size, size, device=DEVICE), 3, 10)
        for name, speed in speeds.items():
            table[name].append(speed)
    eager = table["eager"]
    print(f"{'form':60} " + " ".join(f"{'faces/s @' + str(b):>14}" for b in batches) + "  x eager")
    for name, speeds in table.items():
        ratios = " ".join(f"{s / e:.2f}" for s, e in zip(speeds, eager))
        print(f"{name:60} " + " ".join(f"{s:14.1f}" for s in speeds) + f"  {ratios}")
    best = max(table, key=lambda n: table[n][-1])
    return f"fastest at batch {batches[-1]}: {best} ({table[best][-1]:.0f} faces/s, x{table[best][-1] / eager[-1]:.2f} eager)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="paper", choices=["paper", "tiny"], help="model for export and throughput")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--frames", type=int, default=100, help="frames of the generated 720p clip")
    parser.add_argument("--skip-compile", action="store_true", help="skip the AOTInductor export (minutes)")
    parser.add_argument("--cpu-dry-run", action="store_true", help="run the steps on the CPU (checks this script)")
    args = parser.parse_args()
    global DEVICE
    DEVICE = "cpu" if args.cpu_dry_run else "cuda"

    step("environment", environment)
    with tempfile.TemporaryDirectory() as folder:
        clip = Clip(Path(folder), args.frames, (1280, 720))
        state: dict = {}
        weights = Path(folder) / f"{args.preset}.safetensors"

        def make_weights() -> str:
            import torch

            from ralf.config import RALFConfig
            from ralf.model import RALF
            from ralf.weights import save_weights

            torch.manual_seed(0)
            save_weights(weights, RALF(RALFConfig.from_preset(args.preset)).eval())
            return f"random {args.preset} weights (speed and parity do not depend on the values)"

        step("weights", make_weights)
        step("DALI mixed decode (H.264, NVDEC)", lambda: dali_decode(clip, state))
        step("MTCNN on CUDA", lambda: mtcnn_cuda(clip, state))
        step("TensorRT fp16 export + parity", lambda: tensorrt_check(weights, state, args.max_batch))
        if args.skip_compile:
            RESULTS.append(("SKIP", "AOTInductor CUDA export + parity", "--skip-compile"))
        else:
            step("AOTInductor CUDA export + parity", lambda: aoti_check(weights, state, args.max_batch))
        # After the exports, so 'auto' must pick up the best artifact and say which one it uses.
        step("Scanner on CUDA (engine auto)", lambda: scanner_cuda(clip, weights))
        step("throughput", lambda: throughput(weights, sorted({1, 8, args.max_batch})))

    print("\nsummary")
    for status, name, detail in RESULTS:
        print(f"  {status:4}  {name}: {detail}")
    sys.exit(1 if any(status == "FAIL" for status, _, _ in RESULTS) else 0)


if __name__ == "__main__":
    main()
