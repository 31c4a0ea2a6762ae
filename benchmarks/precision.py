"""bf16 against fp32 on trained weights: score parity over real face crops and speed, same run.

    nice -n 19 .venv/bin/python benchmarks/precision.py WEIGHTS \\
        --crops /work/data/talking_heads --crops /work/data/utkface --count 300 [--batch 16] [--rounds 5]

Crops: `count` PNGs spread over the `--crops` folders (each a `prepare` output with index.jsonl, or any
folder of PNG crops), chosen without a seed (smallest sha256 of the path), resized to the model's input
size; each also gets a self-blended twin (trainer.sbi, seeded), so the scores cover both ends of P(fake).
Parity: max and 99th percentile |ΔP(fake)| against eager fp32 and how many decisions change at the
weights' threshold (calibrated, else 0.5) and at 0.5, per form: `pipeline.precision.forms` (mixed = the
one the engine uses, cast = the whole model in bf16, autocast) and two splits of mixed that say where the
error comes from (only the reconstructor in bf16, only the classifier in bf16).
Speed: ms per face at `--batch`, eager fp32 and every form in interleaved rounds, best round each.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse
import hashlib
import json
import time

import numpy as np
import torch
from PIL import Image
from torch import nn

from pipeline.precision import PARITY_TOLERANCE, LowPrecisionForward, forms, precision_supported
from ralf.weights import load_weights


def pick_crops(folders: list[Path], count: int) -> list[Path]:
    """`count` PNGs in all, as evenly over the folders as they allow, smallest sha256 of the path first."""
    per_folder = []
    for folder in folders:
        found = sorted(folder.rglob("*.png"), key=lambda p: hashlib.sha256(str(p).encode()).hexdigest())
        per_folder.append(found)
    chosen: list[Path] = []
    position = 0
    while len(chosen) < count and any(position < len(found) for found in per_folder):
        for found in per_folder:
            if position < len(found) and len(chosen) < count:
                chosen.append(found[position])
        position += 1
    return chosen


def load_crops(paths: list[Path], size: int, twins: bool) -> torch.Tensor:
    """(N, 3, S, S) float in [0, 1]; with `twins`, N doubles: each crop's self-blended fake follows it."""
    from trainer.sbi import self_blend

    images = []
    rng = np.random.default_rng(0)
    for path in paths:
        image = np.asarray(Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR))
        images.append(image)
        if twins:
            images.append(self_blend(image, None, rng).fake)
    stacked = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return stacked.float() / 255.0


class SplitForward(nn.Module):
    """`LowPrecisionForward` with only one half in bf16 (the other runs the float32 model's own weights)."""

    def __init__(self, model: nn.Module, reconstructor_bf16: bool, classifier_bf16: bool) -> None:
        super().__init__()
        self.model = model
        self.low = LowPrecisionForward(model, torch.bfloat16)
        self.reconstructor_bf16, self.classifier_bf16 = reconstructor_bf16, classifier_bf16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        destroyed = self.model.destructor(x)
        if self.reconstructor_bf16:
            low = destroyed.bfloat16()
            output, _ = self.low.reconstructor(low)
            reconstruction = output.float() - low.float() + destroyed
        else:
            reconstruction, _ = self.model.reconstructor(destroyed)
        diff_recon, diff_destroyed = (x - reconstruction).abs(), (x - destroyed).abs()
        if self.classifier_bf16:
            return self.low.classifier(diff_recon.bfloat16(), diff_destroyed.bfloat16()).float()
        return self.model.classifier(diff_recon, diff_destroyed)


def scores(run: torch.nn.Module, crops: torch.Tensor, batch: int) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([torch.sigmoid(run(crops[i : i + batch]).double()) for i in range(0, len(crops), batch)])


def ms_per_face(run: torch.nn.Module, crops: torch.Tensor) -> float:
    with torch.inference_mode():
        start = time.perf_counter()
        run(crops)
        return 1000.0 * (time.perf_counter() - start) / len(crops)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights", type=Path)
    parser.add_argument("--crops", type=Path, action="append", required=True)
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--no-twins", action="store_true", help="only the real crops, no self-blended twins")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, metadata = load_weights(args.weights)
    model.eval()
    size = model.config.image_size
    # The calibrated threshold is stored on the logit; verdicts compare sigmoid(logit / T) with its P.
    calibration = metadata.calibration
    temperature = (calibration.temperature or 1.0) if calibration else 1.0
    threshold = float(torch.sigmoid(torch.tensor(calibration.threshold / temperature))) if calibration else 0.5
    paths = pick_crops(args.crops, args.count)
    crops = load_crops(paths, size, twins=not args.no_twins)
    usable, why = precision_supported("bf16", "cpu")
    print(f"weights {args.weights.name} ({metadata.model_version}, preset {model.config.preset}, {size}px); "
          f"{len(paths)} crops{'' if args.no_twins else ' + self-blended twins'} = {len(crops)}; bf16: {why}")

    candidates = {
        **forms(model, torch.bfloat16),
        "recon-only": SplitForward(model, reconstructor_bf16=True, classifier_bf16=False).eval(),
        "cls-only": SplitForward(model, reconstructor_bf16=False, classifier_bf16=True).eval(),
    }
    reference = scores(model, crops, args.batch)
    calibrated_reference = torch.sigmoid(torch.logit(reference) / temperature)
    print(f"fp32 P(fake): min {reference.min():.3f} median {reference.median():.3f} max {reference.max():.3f}; "
          f"decision threshold P(fake) >= {threshold:.4f} ({'calibrated' if calibration else 'default'})")
    results: dict[str, dict[str, float]] = {}
    for name, run in candidates.items():
        got = scores(run, crops, args.batch)
        gap = (got - reference).abs()
        calibrated = torch.sigmoid(torch.logit(got) / temperature)
        flips = int(((calibrated >= threshold) != (calibrated_reference >= threshold)).sum())
        results[name] = {
            "max_abs_dp": float(gap.max()),
            "p99_abs_dp": float(gap.quantile(0.99)),
            "mean_abs_dp": float(gap.mean()),
            "decision_flips": flips,
            "decision_flips_at_0.5": int(((got >= 0.5) != (reference >= 0.5)).sum()),
            "scores": [round(float(v), 6) for v in got],
        }

    timed = {"fp32": model, **candidates}
    batch = crops[: args.batch].contiguous()
    for run in timed.values():
        ms_per_face(run, batch)  # warm-up (oneDNN primitive cache)
    best = {name: float("inf") for name in timed}
    for _ in range(args.rounds):
        for name, run in timed.items():
            best[name] = min(best[name], ms_per_face(run, batch))
    tolerance = PARITY_TOLERANCE["bf16"]
    print(f"\nform        max|ΔP|   p99|ΔP|   mean|ΔP|  flips@thr flips@0.5  ms/face@b{args.batch}  speed-up  within {tolerance:g}")
    print(f"fp32        -         -         -         -         -          {best['fp32']:8.2f}      1.00x")
    for name, result in results.items():
        results[name]["ms_per_face"] = best[name]
        results[name]["speedup"] = best["fp32"] / best[name]
        print(
            f"{name:11} {result['max_abs_dp']:.2e}  {result['p99_abs_dp']:.2e}  {result['mean_abs_dp']:.2e}  "
            f"{result['decision_flips']:9d} {result['decision_flips_at_0.5']:9d}  {best[name]:8.2f}      "
            f"{best['fp32'] / best[name]:.2f}x     {'yes' if result['max_abs_dp'] <= tolerance else 'NO'}"
        )
    if args.json:
        summary = {
            "weights": str(args.weights), "model_version": metadata.model_version, "crops": len(crops),
            "batch": args.batch, "threshold": threshold, "fp32_ms_per_face": best["fp32"],
            "fp32_scores": [round(float(v), 6) for v in reference], "forms": results,
        }
        args.json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
