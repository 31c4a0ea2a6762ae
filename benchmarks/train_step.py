"""Seconds per joint training step and peak memory, `tiny` and `paper` presets, batch 2, CPU by default.

    .venv/bin/python benchmarks/train_step.py                       # both presets, CPU
    .venv/bin/python benchmarks/train_step.py --presets tiny --steps 10
    .venv/bin/python benchmarks/train_step.py --device cuda --amp bf16   # on a GPU node

A step is exactly what `ralf-cli train` runs (trainer.loop.Trainer._train_step): the generator step
(forward, eq. 12 with every term, backward, Adam) and the discriminator step. Each preset runs in its
own process so peak RSS belongs to it alone. The baseline measured in the same process is one
inference forward of the same batch: the ratio says what training costs on top of it.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# `python benchmarks/train_step.py` puts benchmarks/ first on sys.path, where benchmarks/queue.py
# would shadow the standard library's queue module (imported by torch's data loader and redis).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402


def measure(
    preset: str, batch_size: int, steps: int, device: str, amp: str, use_con: bool, con_weights: str | None
) -> dict[str, object]:
    from pipeline.synthetic import write_noise_crops
    from trainer.config import TrainConfig
    from trainer.data import unwrap_batch
    from trainer.loop import Trainer

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with tempfile.TemporaryDirectory() as tmp:
        config = TrainConfig(
            preset=preset,  # type: ignore[arg-type]
            batch_size=batch_size,
            steps=steps + 1,
            num_workers=0,
            val_fraction=0.5,
            device=device,  # type: ignore[arg-type]
            amp=amp,  # type: ignore[arg-type]
            allow_random_init=True,
            allow_random_vgg=use_con and con_weights is None,
            con_network="mobilenet_v2" if con_weights else "vgg19",
            con_weights=con_weights,
            loss={"use_con": use_con},
        )
        size = config.network_config().image_size
        trainer = Trainer(config, write_noise_crops(Path(tmp) / "data", size=size, real=2, fake=2, frames=2), Path(tmp) / "run", progress=False)
        batches = iter(trainer._loader(0, steps + 1))
        cuda = trainer.runtime.device.type == "cuda"

        def sync() -> None:
            if cuda:
                torch.cuda.synchronize()

        step_times = []
        for index in range(steps + 1):  # the first step warms up allocators and kernels
            batch = unwrap_batch(next(batches))
            sync()
            start = time.perf_counter()
            trainer._train_step(batch)
            sync()
            if index:
                step_times.append(time.perf_counter() - start)
        trainer.parts.model.eval()
        x = batch.images.to(trainer.runtime.device)
        forward_times = []
        with torch.no_grad():
            for index in range(steps + 1):
                sync()
                start = time.perf_counter()
                with trainer.runtime.autocast():
                    trainer.parts.model(x)
                sync()
                if index:
                    forward_times.append(time.perf_counter() - start)
    step = statistics.median(step_times)
    forward = statistics.median(forward_times)
    return {
        "preset": preset,
        "image_size": size,
        "batch": batch_size,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "step_s": step,
        "image_s": step / batch_size,
        "forward_s": forward,
        "ratio": step / forward,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_mb": rss_before,
        "peak_cuda_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "paper"], choices=["tiny", "lite", "paper"])
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--no-con", action="store_true", help="without L_con (no VGG19 passes)")
    parser.add_argument(
        "--con-weights", default=None, help="L_con on frozen ImageNet MobileNetV2 features from this torchvision file"
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        result = measure(
            args.worker, args.batch_size, args.steps, args.device, args.amp, not args.no_con, args.con_weights
        )
        print(json.dumps(result))
        return
    rows = []
    for preset in args.presets:
        command = [sys.executable, __file__, "--worker", preset, *sys.argv[1:]]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(f"{preset}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    terms = "all terms" if not args.no_con else "without L_con"
    if args.con_weights and not args.no_con:
        terms += ", L_con on MobileNetV2 features"
    print(f"joint training step ({terms}), batch {args.batch_size}, {args.device}, amp {args.amp}")
    print(f"{'preset':<7}{'size':>6}{'threads':>8}{'s/step':>10}{'s/image':>9}{'fwd s':>9}{'step/fwd':>10}{'peak RSS MB':>13}{'peak CUDA MB':>14}")
    for r in rows:
        cuda = "-" if r["peak_cuda_mb"] is None else f"{r['peak_cuda_mb']:.0f}"
        print(
            f"{r['preset']:<7}{r['image_size']:>6}{r['threads']:>8}{r['step_s']:>10.3f}{r['image_s']:>9.3f}{r['forward_s']:>9.3f}"
            f"{r['ratio']:>10.1f}{r['peak_rss_mb']:>13.0f}{cuda:>14}"
        )


if __name__ == "__main__":
    main()
