"""End-to-end scan throughput next to a naive loop and the model's own forward time, in one process.

    .venv/bin/python benchmarks/pipeline.py                        # tiny preset, 48 frames, CPU/GPU auto
    .venv/bin/python benchmarks/pipeline.py --preset paper --frames 96 --device cuda

Three measurements over the same generated clip (every frame sampled, so all three see the
same frames and faces):
- scan:  `Scanner.scan` (chunked decode, batched detection, crops batched up to --batch-size);
- naive: decode every frame one at a time, detect per frame, classify each crop at batch 1;
- model: the model's forward alone over the same crops, at --batch-size.
Each runs once untimed, then --repeats timed runs; the fastest is reported. Random weights:
throughput does not depend on their values.

Real-footage mode (`--footage`): 720p and 1080p clips (generated with a moving face: without B-frames,
and a 1080p one encoded camera-like; plus the shared real clips in ../shared/data/videos when present) scanned at the default sampling (2 frames/s) by the
old behaviour and the new one in the same run, so the baseline is measured, not remembered:

    .venv/bin/python benchmarks/pipeline.py --footage [--seconds 10] [--preset tiny]

- before: MTCNN on full-resolution frames, no prefetch, PyAV, batch 32, no decode skipping (the old defaults);
- mtcnn-640: MTCNN at the working resolution (long side 640, never below 24 px for a min_face_size
  face), prefetch, the other defaults: how weights trained on MTCNN crops scan (`--detector auto`);
- retinaface-640: RetinaFace the same way: how weights trained on RetinaFace crops scan;
- retinaface-bf16: RetinaFace with its network in bfloat16 (`detector_precision="bf16"`, not the
  default: it loses marginal faces), where the device has bf16.
Reported per clip and configuration: seconds per minute of video, each stage's seconds and share,
frames and faces, and the speed-up against `before`.

Decode mode (`--decode`): decoding alone at the default sampling (2 frames/s, or --fps / --max-frames),
every frame decoded vs only what the sampling needs (`ScanOptions.decode_skip`, pipeline/decode/skipping.py),
interleaved in the same run, on the shared real clips and a generated 1080p clip encoded the way cameras
and streaming encoders do (x264 veryfast: B-frames, keyframe every 2 s). Reports wall and CPU seconds
(CPU: all decoder threads of the process, the fairer figure on a loaded machine), frames left undecoded,
and whether the sampled frames were bit-identical:

    .venv/bin/python benchmarks/pipeline.py --decode [--seconds 10] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# This script shares its name with the `pipeline` package: drop its own folder from the import
# path, or `import pipeline.…` would find this file instead of the package.
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402

from pipeline.crops import crop_faces  # noqa: E402
from pipeline.decode import open_video  # noqa: E402
from pipeline.engine import EagerEngine  # noqa: E402
from pipeline.scan import Scanner  # noqa: E402
from pipeline.synthetic import write_face_clip  # noqa: E402
from pipeline.verdict import Verdict  # noqa: E402
from ralf.core.options import ScanOptions  # noqa: E402


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fastest(run: Callable[[], object], repeats: int, device: torch.device) -> tuple[float, object]:
    """(best wall seconds, result of that run) over `repeats` timed runs after one untimed run.

    The untimed run pays one-off costs (oneDNN / cuDNN setup for each new batch shape, allocator
    growth) that would otherwise land on whichever path happens to run first.
    """
    run()
    best, result = float("inf"), None
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        outcome = run()
        synchronize(device)
        elapsed = time.perf_counter() - started
        if elapsed < best:
            best, result = elapsed, outcome
    return best, result


def naive_scan(scanner: Scanner, clip: Path) -> tuple[int, list[torch.Tensor]]:
    """Every frame decoded alone, detected alone, each crop classified alone. Returns (frames, crops)."""
    single = EagerEngine(scanner.engine.model, scanner.device, batch_size=1)  # type: ignore[attr-defined]
    options = scanner.options
    frames, crops = 0, []
    with open_video(clip, backend="pyav", device=scanner.device, chunk_size=1) as stream:
        for batch in stream:
            frames += 1
            (found,) = scanner.detector.detect(batch.frames)
            found = found.filter(found.scores >= options.min_face_score)
            for box in found.boxes:
                crop = crop_faces(
                    batch.frames,
                    torch.zeros(1, dtype=torch.int64),
                    box[None].cpu(),
                    scanner.image_size,
                    scanner.crop.margin,
                    scanner.crop.square,
                )
                single.logits(crop)
                crops.append(crop)
    return frames, crops


FOOTAGE_CONFIGS: dict[str, dict[str, object]] = {
    "before": {
        "detector": "mtcnn", "detect_max_side": 0, "prefetch": 0, "decoder": "pyav", "batch_size": 32, "decode_skip": False,
    },
    "mtcnn-640": {"detector": "mtcnn"},
    "retinaface-640": {"detector": "retinaface"},
    "retinaface-bf16": {"detector": "retinaface", "detector_precision": "bf16"},
}
SHARED_VIDEOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "videos"


# How cameras and streaming services encode: B-frames (x264's default 3, pyramid) and a keyframe
# every 2 s; write_face_clip's default is ultrafast/zerolatency (no B-frames), where skipping finds nothing.
CAMERA_LIKE_X264 = {"preset": "veryfast", "crf": "20", "x264-params": "keyint=60:min-keyint=60:bframes=3:b-pyramid=normal"}


def footage_clips(workdir: Path, seconds: float) -> list[Path]:
    """Generated H.264 clips (a face moving over a textured background, 30 frames/s): 720p and 1080p
    without B-frames (every frame must be decoded), 1080p encoded camera-like; then the shared real
    clips when present."""
    frames = round(seconds * 30)
    clips = [
        write_face_clip(workdir / f"face_{height}p.mp4", codec="h264", num_frames=frames, fps=30.0, size=(width, height))
        for width, height in ((1280, 720), (1920, 1080))
    ]
    clips.append(
        write_face_clip(
            workdir / "camera_like_1080p.mp4", codec="h264", num_frames=frames, fps=30.0, size=(1920, 1080),
            encoder_options=CAMERA_LIKE_X264,
        )
    )
    if SHARED_VIDEOS.is_dir():
        clips += sorted(SHARED_VIDEOS.glob("*/*.mp4"))
    return clips


def footage_benchmark(args: argparse.Namespace) -> None:
    from pipeline.decode import probe_video

    scanners = {
        name: Scanner(ScanOptions(device=args.device, **overrides), preset_if_random=args.preset)  # type: ignore[arg-type]
        for name, overrides in FOOTAGE_CONFIGS.items()
    }
    for scanner in scanners.values():
        scanner.warm_up()
    some = next(iter(scanners.values()))
    print(
        f"real-footage mode | preset {args.preset} | device {some.device} | torch threads {torch.get_num_threads()} | "
        f"default sampling (2 frames/s) | best of {args.repeats} after a warm-up run"
    )
    for name, scanner in scanners.items():
        options = scanner.options
        print(
            f"  {name:<15} detector {options.detector} ({getattr(scanner.detector, 'precision', 'fp32')}) at "
            f"{options.detect_max_side or 'full'} px, prefetch "
            f"{options.prefetch}, decoder {options.decoder}, batch {scanner.batch_size}, engine {scanner.engine.name}"
        )
    with tempfile.TemporaryDirectory(prefix="ralf-footage-") as workdir:
        for clip in footage_clips(Path(workdir), args.seconds):
            info = probe_video(clip)
            minutes = (info.duration_s or 0.0) / 60.0
            print(f"\n{clip.name}: {info.width}x{info.height} {info.codec}, {info.duration_s:.1f} s")
            print(
                f"  {'config':<15}{'s/min':>8}{'total':>7}{'decode':>8}{'detect':>8}{'crop':>7}{'infer':>7}"
                f"{'det%':>6}{'frames':>7}{'faces':>6}{'tracks':>7}{'speed-up':>9}"
            )
            baseline = None
            for name, scanner in scanners.items():
                seconds, verdict = fastest(lambda s=scanner: s.scan(clip), args.repeats, scanner.device)
                assert isinstance(verdict, Verdict)
                if verdict.label == "error":
                    print(f"  {name:<15} error: {verdict.error}")
                    continue
                t = verdict.timings
                baseline = baseline or seconds
                print(
                    f"  {name:<15}{seconds / minutes:>8.1f}{seconds:>7.2f}{t.decode_s:>8.2f}{t.detect_s:>8.2f}"
                    f"{t.crop_s:>7.2f}{t.infer_s:>7.2f}{t.detect_s / t.total_s:>6.0%}{verdict.counts.frames_decoded:>7}"
                    f"{verdict.counts.faces:>6}{verdict.counts.tracks:>7}{baseline / seconds:>8.2f}x"
                )


def decode_benchmark(args: argparse.Namespace) -> None:
    from pipeline.decode import probe_video
    from ralf.core.options import Sampling

    if args.max_frames:
        sampling = Sampling(max_frames=args.max_frames)
    else:
        sampling = Sampling(target_fps=args.fps)
    with tempfile.TemporaryDirectory(prefix="ralf-decode-") as workdir:
        clips = sorted(SHARED_VIDEOS.glob("*/*.mp4")) if SHARED_VIDEOS.is_dir() else []
        clips.append(
            write_face_clip(
                Path(workdir) / "camera_like_1080p.mp4", codec="h264", num_frames=round(args.seconds * 30), fps=30.0,
                size=(1920, 1080), encoder_options=CAMERA_LIKE_X264,
            )
        )
        print(
            f"decode mode | sampling {sampling.model_dump(exclude_none=True)} | PyAV, frame threads | "
            f"best of {args.repeats} interleaved rounds after a warm-up"
        )
        print(f"{'clip':<42}{'frames':>7}{'kept':>5}{'skipped':>8}{'wall all':>9}{'wall need':>10}{'ratio':>7}"
              f"{'cpu all':>9}{'cpu need':>9}{'ratio':>7}  identical")
        for clip in clips:
            info = probe_video(clip)

            def run(skip: bool, clip: Path = clip) -> tuple[float, float, list, int]:
                wall, cpu = time.perf_counter(), time.process_time()
                with open_video(clip, backend="pyav", sampling=sampling, skip_unneeded=skip) as stream:
                    batches = list(stream)
                    skipped = stream.stats.skipped_frames
                return time.perf_counter() - wall, time.process_time() - cpu, batches, skipped

            run(False)
            run(True)
            best = {False: [float("inf"), float("inf")], True: [float("inf"), float("inf")]}
            outputs: dict[bool, tuple[list, int]] = {}
            for _ in range(args.repeats):
                for skip in (False, True):
                    wall, cpu, batches, skipped = run(skip)
                    best[skip] = [min(best[skip][0], wall), min(best[skip][1], cpu)]
                    outputs[skip] = (batches, skipped)
            full, need = outputs[False][0], outputs[True][0]
            identical = (
                [i for b in full for i in b.indices] == [i for b in need for i in b.indices]
                and [t for b in full for t in b.timestamps_s] == [t for b in need for t in b.timestamps_s]
                and all(torch.equal(a.frames, b.frames) for a, b in zip(full, need, strict=True))
            )
            kept = sum(len(b) for b in need)
            name = f"{clip.name} ({info.width}x{info.height} {info.codec})"
            print(
                f"{name:<42}{info.num_frames or 0:>7}{kept:>5}{outputs[True][1]:>8}{best[False][0]:>9.2f}{best[True][0]:>10.2f}"
                f"{best[False][0] / best[True][0]:>6.2f}x{best[False][1]:>9.2f}{best[True][1]:>9.2f}"
                f"{best[False][1] / best[True][1]:>6.2f}x  {'yes' if identical else 'NO'}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--footage", action="store_true", help="Real-footage mode: 720p/1080p, before vs after")
    parser.add_argument("--seconds", type=float, default=10.0, help="Length of the generated footage clips")
    parser.add_argument("--preset", choices=["tiny", "paper"], default="tiny")
    parser.add_argument("--frames", type=int, default=48, help="Frames in the generated clip (all are sampled)")
    parser.add_argument("--size", default="320x240", help="Clip size WxH")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=1, help="Timed runs per path (after one untimed run)")
    parser.add_argument("--decode", action="store_true", help="Decode mode: every frame vs only what sampling needs")
    parser.add_argument("--fps", type=float, default=2.0, help="Sampling rate in decode mode")
    parser.add_argument("--max-frames", type=int, default=None, help="Decode mode: sample this many frames instead")
    args = parser.parse_args()
    if args.decode:
        decode_benchmark(args)
        return
    if args.footage:
        footage_benchmark(args)
        return

    width, height = (int(v) for v in args.size.lower().split("x"))
    options = ScanOptions(device=args.device, every_n=1, batch_size=args.batch_size)
    scanner = Scanner(options, preset_if_random=args.preset)
    device = scanner.device
    scanner.warm_up()

    with tempfile.TemporaryDirectory(prefix="ralf-bench-") as workdir:
        clip = write_face_clip(
            Path(workdir) / "clip.mp4", codec="h264", num_frames=args.frames, fps=24.0, size=(width, height)
        )
        print(
            f"clip: {args.frames} frames {width}x{height} H.264, every frame sampled | preset {args.preset} | "
            f"device {device} | batch {args.batch_size} | torch threads {torch.get_num_threads()} | "
            f"best of {args.repeats} after a warm-up run"
        )
        scan_s, verdict = fastest(lambda: scanner.scan(clip), args.repeats, device)
        naive_s, (naive_frames, crops) = fastest(lambda: naive_scan(scanner, clip), args.repeats, device)

    assert isinstance(verdict, Verdict)
    if verdict.label == "error":
        raise SystemExit(f"scan failed: {verdict.error}")
    all_crops = torch.cat(crops) if crops else torch.zeros((0, 3, scanner.image_size, scanner.image_size))
    model_s, _ = fastest(lambda: scanner.engine.logits(all_crops), args.repeats, device)

    frames, faces = verdict.counts.frames_decoded, verdict.counts.faces
    print(f"{'path':<34}{'seconds':>9}{'frames/s':>10}{'faces/s':>10}")
    print(f"{'scan (pipeline)':<34}{scan_s:>9.2f}{frames / scan_s:>10.1f}{faces / scan_s:>10.1f}")
    print(
        f"{'naive (per frame, crops at b=1)':<34}{naive_s:>9.2f}{naive_frames / naive_s:>10.1f}"
        f"{len(crops) / naive_s:>10.1f}"
    )
    print(f"{'model forward only':<34}{model_s:>9.2f}{'':>10}{len(crops) / model_s:>10.1f}")
    if len(crops) != faces:
        print(f"note: the naive loop found {len(crops)} faces, the scan {faces}")

    t = verdict.timings
    stages = {"decode": t.decode_s, "detect+track": t.detect_s, "crop": t.crop_s, "infer": t.infer_s}
    shares = ", ".join(f"{name} {seconds / t.total_s:.0%}" for name, seconds in stages.items())
    print(f"scan stage shares: {shares}")
    print(
        f"ratios: scan / naive throughput = {naive_s / scan_s:.2f}x | "
        f"model forward / scan time = {model_s / scan_s:.0%} "
        f"(pipeline overhead {1 - model_s / scan_s:.0%}: decode, detection, crops, bookkeeping)"
    )


if __name__ == "__main__":
    main()
