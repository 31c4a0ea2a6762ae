"""Recipe pilot: short training runs of each variant on the same data and budget, then AUCs.

    .venv/bin/python benchmarks/pilot.py --data crops_a/ --data crops_b/ \
        --mobilenet mobilenet_v2-b0353104.pth --steps 150 \
        --variants ralf-imagenet ralf-random ralf-imagenet-con plain-imagenet

Every variant trains the same number of steps of the same batches (a fair budget on a shared
machine, where wall time is not), all with self-blended pseudo-fakes from the data's reals and JPEG
on both classes:
- ralf-imagenet: the `lite` RALF, MobileNetV2 classifier from ImageNet, L_con off;
- ralf-random: the same from random initialisation;
- ralf-imagenet-con: ralf-imagenet plus L_con on frozen ImageNet MobileNetV2 features;
- plain-imagenet: no RALF at all, an ImageNet MobileNetV2 with a 1-logit head on the face crop
  (BCE only), the baseline that shows what RALF adds.
Each prints the pseudo-fake validation AUC (frame and video) and, when `--real-fakes` points at a
folder with real/ and fake/ crops (e.g. ../shared/data/crops), the frame AUC there: indicative only.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this folder comes first on sys.path, where benchmarks/queue.py and
# benchmarks/pipeline.py would shadow the stdlib `queue` module and the `pipeline` package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from trainer.config import TrainConfig  # noqa: E402
from trainer.data import (  # noqa: E402
    BalancedBatchPlan,
    CropRecord,
    FaceCropDataset,
    collate_crops,
    ensure_validation,
    load_crop_records,
    select_split,
    unwrap_batch,
    with_fake_source,
)
from trainer.metrics import auc  # noqa: E402
from trainer.evaluate import video_level  # noqa: E402
from trainer.loop import train  # noqa: E402
from ralf.weights import load_weights  # noqa: E402

IMAGE_SIZE = 128
SUFFIXES = {".png", ".jpg", ".jpeg"}


def real_fake_records(folder: Path) -> list[CropRecord]:
    """Crops lying directly in FOLDER/real and FOLDER/fake, each file its own video."""
    records = []
    for label in ("real", "fake"):
        for path in sorted((folder / label).iterdir()):
            if path.suffix.lower() in SUFFIXES:
                records.append(CropRecord(path, f"{label}/{path.stem}", path.stem, 0, label == "fake", "test"))
    return records


def scores(model: nn.Module, records: list[CropRecord], config: TrainConfig) -> np.ndarray:
    dataset = FaceCropDataset(records, IMAGE_SIZE, self_blend=config.sbi if any(r.self_blend for r in records) else None,
                              seed=config.seed)  # fmt: skip
    loader = DataLoader(dataset, batch_size=32, collate_fn=collate_crops)
    out = np.empty(len(records))
    model.eval()
    with torch.no_grad():
        for raw in loader:
            batch = unwrap_batch(raw)
            out[batch.indices.numpy()] = torch.sigmoid(model(batch.images)).numpy()
    return out


class PlainMobileNet(nn.Module):
    """ImageNet MobileNetV2 on the face crop itself, one logit: no destructor, no reconstruction."""

    def __init__(self, weights: Path | None) -> None:
        super().__init__()
        net = torchvision.models.mobilenet_v2(weights=None)
        if weights is not None:
            net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        self.features = net.features
        self.fc = nn.Linear(net.last_channel, 1)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features((x - self.mean) / self.std)
        return self.fc(h.mean(dim=(2, 3))).squeeze(1)


def train_plain(config: TrainConfig, data: list[Path], weights: Path, steps: int) -> tuple[nn.Module, int]:
    records = ensure_validation([r for d in data for r in load_crop_records(d)], config.val_fraction, config.seed)
    train_records = with_fake_source(select_split(records, "train"), "sbi")
    plan = BalancedBatchPlan([r.is_fake for r in train_records], config.batch_size, config.seed)
    dataset = FaceCropDataset(train_records, IMAGE_SIZE, self_blend=config.sbi, seed=config.seed)
    loader = iter(DataLoader(dataset, batch_sampler=plan.steps(0, 10**7), num_workers=config.num_workers,
                             collate_fn=collate_crops))  # fmt: skip
    model = PlainMobileNet(weights).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    for _ in range(steps):
        batch = unwrap_batch(next(loader))
        loss = nn.functional.binary_cross_entropy_with_logits(model(batch.images), batch.is_fake)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model, steps


def validation_aucs(model: nn.Module, data: list[Path], config: TrainConfig) -> tuple[float, float]:
    """Frame and video AUC on the trainer's validation people and their twins (draw 0)."""
    records = ensure_validation([r for d in data for r in load_crop_records(d)], config.val_fraction, config.seed)
    val = with_fake_source(select_split(records, "val"), "sbi")
    val_scores = scores(model, val, config)
    video_labels, video_scores = video_level(val, val_scores)
    return auc(np.array([r.is_fake for r in val]), val_scores), auc(video_labels, video_scores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, action="append", required=True, help="prepared real crops (repeat)")
    parser.add_argument("--mobilenet", type=Path, required=True, help="torchvision mobilenet_v2 ImageNet .pth")
    parser.add_argument("--real-fakes", type=Path, default=None, help="folder with real/ and fake/ crops")
    parser.add_argument("--steps", type=int, default=150, help="optimizer steps per variant")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--variants", nargs="+", default=["ralf-imagenet", "ralf-random", "ralf-imagenet-con", "plain-imagenet"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    external = real_fake_records(args.real_fakes) if args.real_fakes else []
    rows = []
    for variant in args.variants:
        base = dict(
            preset="lite", fakes="sbi", batch_size=args.batch_size, seed=args.seed, num_workers=1, steps=args.steps,
            val_every=10**6, log_every=25, checkpoint_every=10**6,
        )  # fmt: skip
        imagenet = "random" not in variant
        config = TrainConfig(
            **base,
            backbone_weights=args.mobilenet if imagenet else None,
            allow_random_init=not imagenet,
            con_network="mobilenet_v2",
            con_weights=args.mobilenet,
            loss={"use_con": variant.endswith("-con"), "alpha_ramp_steps": args.steps},
        )
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as run:
            if variant.startswith("plain"):
                model, steps = train_plain(config, args.data, args.mobilenet, args.steps)
                frame_auc, video_auc = validation_aucs(model, args.data, config)
            else:
                result = train(config, args.data, Path(run), progress=False)
                model, _ = load_weights(result.best_weights or result.last_weights)
                steps = result.steps
                # The run validated once, at its last step, on the same split and twins: reuse it.
                (final,) = [json.loads(line) for line in result.log_path.read_text().splitlines() if '"val"' in line]
                frame_auc, video_auc = final["frame"]["auc"], final["video"]["auc"]
        row = {
            "variant": variant,
            "steps": steps,
            "minutes": round((time.perf_counter() - started) / 60, 1),
            "sbi_val_frame_auc": round(frame_auc, 4),
            "sbi_val_video_auc": round(video_auc, 4),
        }
        if external:
            ext = scores(model, external, config)
            row["external_frame_auc"] = round(auc(np.array([r.is_fake for r in external]), ext), 4)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\n{'variant':<20}{'steps':>7}{'min':>6}{'SBI val frame':>15}{'SBI val video':>15}{'ext. frame':>12}")
    for r in rows:
        ext = f"{r['external_frame_auc']:.3f}" if "external_frame_auc" in r else "-"
        print(f"{r['variant']:<20}{r['steps']:>7}{r['minutes']:>6}{r['sbi_val_frame_auc']:>15.3f}{r['sbi_val_video_auc']:>15.3f}{ext:>12}")


if __name__ == "__main__":
    main()
