"""How much P(fake) moves when a face crop moves by one pixel: the scanner's crops shift by a pixel or two
between frames and detectors, so a trustworthy model barely notices.

For every real crop of the given prepared folders (their `test` split: people never trained on), the
crop and its copies shifted by one pixel right and down (edge pixels repeated) are scored; reported per
weights file: median, 90th percentile and max of |ΔP(fake)|, and how many decisions change at the
weights' threshold. Several weights files are measured in the same run on the same crops.

    python benchmarks/pixel_shift.py --weights v2.safetensors ralf/assets/ralf-lite-v3.1.safetensors \
        --data data/talking_heads data/utkface --limit 600
"""

from __future__ import annotations

import sys
from pathlib import Path

# benchmarks/queue.py must not shadow the standard library's queue (redis imports it).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import hashlib  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ralf.core.decision import Decision  # noqa: E402
from ralf.weights import load_weights  # noqa: E402
from trainer.data import load_crop_records, read_rgb, to_model_input  # noqa: E402


def shifted(image: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """`image` moved by (dx, dy) pixels, the uncovered edge filled by repeating the border."""
    height, width = image.shape[:2]
    padded = np.pad(image, ((abs(dy), abs(dy)), (abs(dx), abs(dx)), (0, 0)), mode="edge")
    top, left = abs(dy) - dy, abs(dx) - dx
    return padded[top : top + height, left : left + width]


def probabilities(weights: Path, images: list[np.ndarray], batch: int = 32) -> tuple[np.ndarray, float]:
    model, metadata = load_weights(weights)
    model.eval()
    decision = Decision.from_calibration(metadata.calibration)
    size = model.config.image_size
    scores = []
    with torch.no_grad():
        for start in range(0, len(images), batch):
            crops = torch.stack([to_model_input(i, size) for i in images[start : start + batch]])
            scores.append(decision.probabilities(model(crops)))
    return np.concatenate(scores), decision.threshold


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, nargs="+", required=True)
    parser.add_argument("--data", type=Path, nargs="+", required=True, help="prepared crop folders (index.jsonl)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=600, help="real crops used (fixed sample: smallest sha256 of the path)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    records = [r for folder in args.data for r in load_crop_records(folder) if not r.is_fake and r.split == args.split]
    records = sorted(records, key=lambda r: hashlib.sha256(str(r.path).encode()).hexdigest())[: args.limit]
    originals = [read_rgb(r.path) for r in records]
    print(f"{len(records)} real crops ({args.split} split of {', '.join(str(d) for d in args.data)})")
    for weights in args.weights:
        base, threshold = probabilities(weights, originals)
        deltas, changed = [], 0
        for dx, dy in ((1, 0), (0, 1)):
            moved, _ = probabilities(weights, [shifted(i, dx, dy) for i in originals])
            deltas.append(np.abs(moved - base))
            changed += int(((moved >= threshold) != (base >= threshold)).sum())
        delta = np.concatenate(deltas)
        print(
            f"{weights}: |ΔP(fake)| under a one-pixel shift median {np.median(delta):.4f}, "
            f"90th pct {np.percentile(delta, 90):.4f}, max {delta.max():.4f}; "
            f"{changed} of {delta.size} decisions change at P(fake) >= {threshold:.4f}"
        )


if __name__ == "__main__":
    main()
