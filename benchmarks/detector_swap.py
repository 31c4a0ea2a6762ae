"""What changing the face detector does to trained weights: MTCNN crops vs RetinaFace crops, same faces.

Weights learn the framing of their training crops, and detectors frame faces slightly differently.
This scores held-back real faces and their self-blended twins through crops cut around each
detector's boxes, in one run, with the same weights:

    .venv/bin/python benchmarks/detector_swap.py [--weights FILE] [--items 600] [--utkface DIR]
    .venv/bin/python benchmarks/detector_swap.py --detectors retinaface:fp32 retinaface:bf16

`--detectors A B` names the two configurations compared (default: mtcnn retinaface): `mtcnn` at full
resolution as `prepare` ran it for v1, `retinaface[:auto|fp32|bf16]` at the scan's working resolution
with that network precision (plain `retinaface`: fp32, as `prepare` cut v2's crops).

Data: UTKFace stills of the people `ralf-cli prepare --layout reals --holdout 0.2` holds back (the
shipped weights never saw them), reflect-padded as `prepare` pads stills. Each fake is one
self-blended image of the padded still (`trainer.sbi`, landmarks from MTCNN, seeded); both
detectors then look at the same real and the same fake image. Reports faces found, the overlap of
the crop regions, frame AUC per detector with a paired bootstrap interval of the difference, the
spread of |ΔP(fake)| between the two crops of one face, the rates at the weights' threshold, and
detection time per image.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torchvision.ops import box_iou  # noqa: E402

from pipeline.crops import crop_faces, crop_regions  # noqa: E402
from pipeline.faces import FaceDetector, build_detector  # noqa: E402
from pipeline.scan import Scanner  # noqa: E402
from ralf.core.options import MIN_FACE_SCORE, MIN_FACE_SIZE, ScanOptions  # noqa: E402
from ralf.shipped import shipped_weights  # noqa: E402
from trainer.data import read_rgb  # noqa: E402
from trainer.layouts import read_reals  # noqa: E402
from trainer.metrics import auc  # noqa: E402
from trainer.prepare import main_face, padded_still  # noqa: E402
from trainer.sbi import self_blend  # noqa: E402

UTKFACE = Path(__file__).resolve().parents[2] / "shared" / "data" / "utkface" / "crop_part1"


def detector_from_spec(spec: str) -> FaceDetector:
    """`mtcnn` (full resolution) or `retinaface[:precision]` (working resolution, fp32 unless given)."""
    name, _, precision = spec.partition(":")
    if name == "mtcnn" and not precision:
        return build_detector("mtcnn", "cpu", min_face_size=MIN_FACE_SIZE, max_side=None)
    if name == "retinaface":
        return build_detector("retinaface", "cpu", min_face_size=MIN_FACE_SIZE, max_side=640, precision=precision or "fp32")  # type: ignore[arg-type]
    raise SystemExit(f"unknown detector spec {spec!r}: mtcnn or retinaface[:auto|fp32|bf16]")


def main_box(
    name: str, detector: FaceDetector, image: np.ndarray, clock: dict[str, float]
) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    frame = torch.from_numpy(np.ascontiguousarray(image))[None]
    started = time.perf_counter()
    found = main_face(detector.detect(frame)[0], MIN_FACE_SCORE)
    clock[name] += time.perf_counter() - started
    return None if found is None else (found[0], found[2])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=None, help="Weights file (default: the shipped weights)")
    parser.add_argument("--utkface", type=Path, default=UTKFACE, help="UTKFace crop_part1 folder")
    parser.add_argument("--items", type=int, default=600, help="Held-back stills to use")
    parser.add_argument("--bootstrap", type=int, default=2000)
    parser.add_argument("--detectors", nargs=2, default=["mtcnn", "retinaface"], metavar="SPEC",
                        help="The two detector configurations: mtcnn, retinaface[:auto|fp32|bf16]")
    args = parser.parse_args()
    first, second = args.detectors
    if first == second:
        raise SystemExit("--detectors: name two different configurations")
    torch.set_num_threads(min(2, torch.get_num_threads()))
    weights = args.weights or shipped_weights()
    scanner = Scanner(ScanOptions(device="cpu"), weights)
    threshold, temperature = scanner.decision.threshold, scanner.decision.temperature
    detectors = {spec: detector_from_spec(spec) for spec in args.detectors}
    held_back = [e for e in read_reals(args.utkface, holdout=0.2) if e.split == "test"]
    np.random.default_rng(0).shuffle(held_back)  # type: ignore[arg-type]

    clock = dict.fromkeys(detectors, 0.0)
    found = dict.fromkeys(detectors, 0)
    logits: dict[str, list[float]] = {name: [] for name in detectors}
    labels: list[int] = []
    region_iou: list[float] = []
    for index, entry in enumerate(held_back[: args.items]):
        real = padded_still(read_rgb(entry.path), 0.25)
        real_boxes = {name: main_box(name, d, real, clock) for name, d in detectors.items()}
        for name, box in real_boxes.items():
            found[name] += box is not None
        first_real = real_boxes[first]
        if first_real is None or first_real[1] is None:
            continue
        fake = self_blend(real, first_real[1].numpy(), np.random.default_rng(index)).fake
        fake_boxes = {name: main_box(name, d, fake, clock) for name, d in detectors.items()}
        if any(b is None for b in (*real_boxes.values(), *fake_boxes.values())):
            continue  # only faces every detector found, so both columns score the same faces
        geometry = (scanner.crop.margin, scanner.crop.square)
        regions = [crop_regions(real_boxes[name][0][None], *geometry) for name in detectors]
        region_iou.append(float(box_iou(regions[0], regions[1])[0, 0]))
        for image, boxes, label in ((real, real_boxes, 0), (fake, fake_boxes, 1)):
            frame = torch.from_numpy(np.ascontiguousarray(image))[None]
            for name in detectors:
                crop = crop_faces(
                    frame,
                    torch.zeros(1, dtype=torch.int64),
                    boxes[name][0][None],
                    scanner.image_size,
                    scanner.crop.margin,
                    scanner.crop.square,
                )
                logits[name].append(float(scanner.engine.logits(crop)[0]))
            labels.append(label)

    y = np.array(labels)
    scores = {name: np.array(values) for name, values in logits.items()}
    pairs = len(y) // 2
    seen = min(args.items, len(held_back))
    print(f"weights {scanner.model_version} | {seen} held-back UTKFace stills | {pairs} real/fake pairs found by both")
    for name in detectors:
        print(f"  {name:<15} faces found {found[name]}/{seen} reals, detection {1000 * clock[name] / (2 * seen):.1f} ms/image")
    print(
        f"  crop-region IoU {first} vs {second}: median {np.median(region_iou):.3f}, 5th pct {np.percentile(region_iou, 5):.3f}"
    )
    rng = np.random.default_rng(0)
    reals, fakes = np.flatnonzero(y == 0), np.flatnonzero(y == 1)
    differences = []
    for _ in range(args.bootstrap):
        pick = rng.integers(0, pairs, pairs)
        chosen = np.concatenate([reals[pick], fakes[pick]])
        differences.append(auc(y[chosen], scores[first][chosen]) - auc(y[chosen], scores[second][chosen]))
    cut = temperature * float(np.log(threshold / (1 - threshold)))  # the threshold on the logit scale
    for name in detectors:
        s = scores[name]
        print(
            f"  {name:<15} frame AUC {auc(y, s):.4f} | at the threshold P>={threshold:.4f}: "
            f"FPR {np.mean(s[y == 0] >= cut):.4f} TPR {np.mean(s[y == 1] >= cut):.4f}"
        )
    low, high = np.percentile(differences, [2.5, 97.5])
    difference = auc(y, scores[first]) - auc(y, scores[second])
    print(f"  AUC {first} - {second} {difference:+.4f} (95% CI {low:+.4f} .. {high:+.4f})")
    probabilities = {name: 1 / (1 + np.exp(-s / temperature)) for name, s in scores.items()}
    shift = np.abs(probabilities[first] - probabilities[second])
    decisions = int(np.sum((scores[first] >= cut) != (scores[second] >= cut)))
    print(
        f"  |P({first} crop) - P({second} crop)| median {np.median(shift):.3f}, "
        f"90th pct {np.percentile(shift, 90):.3f}, max {shift.max():.3f}; "
        f"{decisions} of {len(y)} decisions differ at the threshold"
    )


if __name__ == "__main__":
    main()
