"""Write a folder of real crops and their self-blended twins (`ralf-cli self-blend`), so that held-back
real faces can be used where labelled real/fake data is expected: `ralf-cli calibrate`, `evaluate`.

The twins are the ones the trainer's validation draws (same seed, draw 0): reproducible files.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from trainer.data import FaceCropDataset, load_crop_records, select_split, with_fake_source
from trainer.layouts import Split
from trainer.prepare import safe_relative
from trainer.sbi import SelfBlendConfig


@dataclass(frozen=True)
class PseudoFakeSummary:
    real: int
    fake: int
    out: Path


def write_pseudo_fakes(
    sources: Sequence[Path],
    out: Path,
    split: Split | None = "test",
    config: SelfBlendConfig | None = None,
    seed: int = 0,
    progress: bool = True,
) -> PseudoFakeSummary:
    """OUT/real/<video>/<frame>.png (links to the crops) and OUT/fake/<video>/<frame>.png (twins); <video>
    is one folder name (an id like `repo/clip.mp4` becomes `repo__clip.mp4`), as the folder layout wants."""
    records = [r for folder in sources for r in load_crop_records(Path(folder))]
    if split is not None:
        records = select_split(records, split)
    reals = [r for r in records if not r.is_fake]
    if not reals:
        raise ValueError(f"no real crops{f' in the {split} split' if split else ''} of {', '.join(map(str, sources))}")
    twins = [r for r in with_fake_source(reals, "sbi") if r.self_blend]
    dataset = FaceCropDataset(twins, image_size=0, self_blend=config or SelfBlendConfig(), seed=seed)
    out = Path(out)
    for position, (real, twin) in enumerate(tqdm(list(zip(reals, twins)), desc="self-blend", disable=not progress)):
        name = f"{real.frame_index:06d}{real.path.suffix}"
        folder = "__".join(safe_relative(real.video_id).parts)
        real_path = out / "real" / folder / name
        real_path.parent.mkdir(parents=True, exist_ok=True)
        if not real_path.exists():
            os.symlink(real.path.resolve(), real_path)
        fake_path = out / "fake" / folder / f"{real.frame_index:06d}.png"
        fake_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(dataset.blended_image(position)).save(fake_path)
    return PseudoFakeSummary(real=len(reals), fake=len(twins), out=out)
