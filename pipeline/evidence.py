"""Evidence from the model itself for the most suspicious faces of each track.

RALF needs no Grad-CAM to say why: its classifier judges the residual |x - x~| between a face and its
authentic-like reconstruction, and the destruction-guided spatial attention (computed from |x - x^|)
says where in the crop it looked. For the faces a verdict lists as most suspicious (per track, the
`suspicious_frames` highest P(fake), the same choice as `TrackVerdict.suspicious_times_s`), this
module keeps:

- the face crop the model judged,
- a heat map of |x - x~| (mean over colour channels, scaled to the crop's 99th percentile),
- the attention map over the crop (absolute scale: the gate is a sigmoid in (0, 1)),
- the frame with the face box (scaled down to at most `FRAME_LONG_SIDE` pixels).

Cost: during the scan, each frame with faces gets one strided (nearest-neighbour) copy at most
`FRAME_LONG_SIDE` long, carried with its faces until they are scored, and a face's crop is copied
only while it is among its track's `per_track` most suspicious so far. After aggregation ONE more
forward (`forward_all` + the attention branch) runs over the chosen crops only, on the eager model.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.verdict import EvidenceFrame, TrackVerdict

FRAME_LONG_SIDE = 480
RESIDUAL_PERCENTILE = 0.99

# Anchor colours of matplotlib's 'inferno' map (perceptually uniform, readable in grey), 0 -> 1.
_INFERNO = (
    (0, 0, 4),
    (40, 11, 84),
    (101, 21, 110),
    (159, 42, 99),
    (212, 72, 66),
    (245, 125, 21),
    (250, 193, 39),
    (252, 255, 164),
)


class FaceMetaLike(Protocol):
    """What the scanner knows of a pending face (pipeline.scan._FaceMeta)."""

    track_id: int
    frame_index: int
    timestamp_s: float
    view: FaceView | None


@dataclass(frozen=True)
class FaceView:
    """A face's frame context, kept while its crop waits for scoring: a scaled-down copy of the frame
    (shared by the faces of that frame) and the box in full-frame pixels."""

    frame: torch.Tensor  # uint8 (h, w, 3), every `stride`-th pixel of the frame
    stride: int
    box: tuple[float, float, float, float]


@dataclass
class _Candidate:
    key: tuple[float, float]  # (-P(fake), time): sorts the most suspicious first, earlier first on ties
    track_id: int
    frame_index: int
    time_s: float
    score: float
    crop: torch.Tensor  # float (3, S, S), the crop as scored
    view: FaceView | None


@dataclass
class EvidenceCollector:
    """Keeps, per track, the `per_track` most suspicious faces seen so far (crop + frame view)."""

    per_track: int
    frame_long_side: int = FRAME_LONG_SIDE
    _best: dict[int, list[_Candidate]] = field(default_factory=dict)

    def attach(self, frames: torch.Tensor, positions: Sequence[int], boxes: torch.Tensor, metas: Sequence[FaceMetaLike]) -> None:
        """Give each face of one chunk its `FaceView` (frames (N, H, W, 3) uint8; positions: each face's
        frame in `frames`; boxes (K, 4) xyxy in frame pixels)."""
        if self.per_track < 1 or not metas:
            return
        height, width = int(frames.shape[1]), int(frames.shape[2])
        stride = max(1, math.ceil(max(height, width) / self.frame_long_side))
        small: dict[int, torch.Tensor] = {}
        box_list = boxes.detach().to("cpu", torch.float64).tolist()
        for meta, position, box in zip(metas, positions, box_list, strict=True):
            if position not in small:
                small[position] = frames[position, ::stride, ::stride].clone()
            meta.view = FaceView(small[position], stride, (box[0], box[1], box[2], box[3]))

    def offer(self, metas: Sequence[FaceMetaLike], crops: torch.Tensor, probabilities: Sequence[float]) -> None:
        """Scored faces: keep those among their track's most suspicious (crops (K, 3, S, S) as scored)."""
        if self.per_track < 1:
            return
        for index, (meta, probability) in enumerate(zip(metas, probabilities, strict=True)):
            key = (-float(probability), float(meta.timestamp_s))
            kept = self._best.setdefault(meta.track_id, [])
            if len(kept) >= self.per_track and key >= kept[-1].key:
                continue
            kept.append(
                _Candidate(
                    key,
                    meta.track_id,
                    meta.frame_index,
                    float(meta.timestamp_s),
                    float(probability),
                    crops[index].detach().clone(),  # a slice would keep the whole batch alive
                    meta.view,
                )
            )
            kept.sort(key=lambda c: c.key)
            del kept[self.per_track :]

    def chosen(self, tracks: Sequence[TrackVerdict]) -> list[tuple[int, _Candidate]]:
        """(rank, candidate) of the faces behind each track's `suspicious_times_s`, tracks in order."""
        picked = []
        for track in tracks:
            for rank, candidate in enumerate(self._best.get(track.track_id, []), start=1):
                picked.append((rank, candidate))
        return picked

    def write(self, model: torch.nn.Module, tracks: Sequence[TrackVerdict], out_dir: Path, batch_size: int = 8) -> list[EvidenceFrame]:
        """Run the evidence pass over the chosen crops and write their PNGs into `out_dir` (replaced as a
        whole, so a re-run leaves no stale images); the listed files, relative to `out_dir`."""
        picked = self.chosen(tracks)
        if not picked:
            return []
        crops = torch.stack([candidate.crop for _, candidate in picked])
        residual, attention = explain(model, crops, batch_size)
        items: list[EvidenceFrame] = []
        with _replaced_dir(out_dir) as staging:
            for row, (rank, candidate) in enumerate(picked):
                stem = f"track{candidate.track_id:03d}-{rank}"
                names = {kind: f"{stem}-{kind}.png" for kind in ("crop", "residual", "attention", "frame")}
                crop_image = to_uint8_image(crops[row])
                save_png(crop_image, staging / names["crop"])
                save_png(colorize(residual[row] / percentile(residual[row], RESIDUAL_PERCENTILE)), staging / names["residual"])
                if attention is not None:
                    save_png(overlay(crop_image, colorize(attention[row])), staging / names["attention"])
                view = candidate.view
                if view is not None:
                    save_png(frame_with_box(view), staging / names["frame"])
                items.append(
                    EvidenceFrame(
                        track_id=candidate.track_id,
                        rank=rank,
                        time_s=candidate.time_s,
                        frame_index=candidate.frame_index,
                        score=candidate.score,
                        box=[round(v, 1) for v in view.box] if view is not None else [],
                        crop=names["crop"],
                        residual=names["residual"],
                        attention=names["attention"] if attention is not None else None,
                        frame=names["frame"] if view is not None else "",
                    )
                )
        return items


def explain(model: torch.nn.Module, crops: torch.Tensor, batch_size: int = 8) -> tuple[torch.Tensor, torch.Tensor | None]:
    """|x - x~| (mean over channels) and the destruction-guided attention upsampled to the crop,
    both (N, S, S) float on the CPU; attention None when the classifier has no guidance branch."""
    parameter = next(model.parameters())
    size = crops.shape[-1]
    residuals: list[torch.Tensor] = []
    attentions: list[torch.Tensor] = []
    guidance = getattr(getattr(model, "classifier", None), "guidance", None)
    with torch.inference_mode():
        for start in range(0, crops.shape[0], max(1, batch_size)):
            x = crops[start : start + batch_size].to(parameter.device, parameter.dtype)
            out = model.forward_all(x)
            residuals.append((x - out.reconstruction).abs().mean(dim=1).float().cpu())
            if guidance is not None:
                gate = guidance((x - out.destroyed).abs())
                gate = F.interpolate(gate.float(), size=(size, size), mode="bilinear", align_corners=False)
                attentions.append(gate[:, 0].cpu())
    return torch.cat(residuals), (torch.cat(attentions) if guidance is not None else None)


# --- images ------------------------------------------------------------------------------------
def percentile(values: torch.Tensor, q: float) -> float:
    """The q-quantile of `values`, never below a small floor (an all-zero map stays black)."""
    return max(float(torch.quantile(values.flatten().float(), q)), 1e-6)


def colorize(values: torch.Tensor) -> torch.Tensor:
    """(H, W) values in [0, 1] (clipped) -> (H, W, 3) uint8 through the inferno colour map."""
    stops = torch.tensor(_INFERNO, dtype=torch.float32)
    position = values.float().clamp(0, 1) * (len(_INFERNO) - 1)
    low = position.floor().long().clamp(max=len(_INFERNO) - 2)
    weight = (position - low).unsqueeze(-1)
    rgb = stops[low] * (1 - weight) + stops[low + 1] * weight
    return rgb.round().to(torch.uint8)


def to_uint8_image(crop: torch.Tensor) -> torch.Tensor:
    """(3, S, S) float in [0, 1] -> (S, S, 3) uint8 on the CPU."""
    return (crop.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous()


def overlay(image: torch.Tensor, heat: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """A heat map laid over an image, both (H, W, 3) uint8."""
    blended = image.float() * (1 - alpha) + heat.float() * alpha
    return blended.round().clamp(0, 255).to(torch.uint8)


def frame_with_box(view: FaceView) -> torch.Tensor:
    """The scaled-down frame with the face box drawn in red (3 px at 480 wide, at least 2)."""
    from PIL import Image, ImageDraw

    image = Image.fromarray(view.frame.cpu().numpy())
    x1, y1, x2, y2 = (v / view.stride for v in view.box)
    width = max(2, round(max(image.size) / 160))
    ImageDraw.Draw(image).rectangle((x1, y1, x2, y2), outline=(255, 40, 40), width=width)
    return torch.from_numpy(np.asarray(image).copy())


def save_png(image: torch.Tensor, path: Path) -> None:
    from PIL import Image

    Image.fromarray(image.cpu().numpy()).save(path, format="PNG")


class _replaced_dir:  # noqa: N801 - used as a context manager
    """Write into a fresh sibling folder; on success it replaces `target` as a whole."""

    def __init__(self, target: Path) -> None:
        self.target = Path(target)
        if self.target.name in ("", ".", ".."):  # it would replace (or escape) the folder it lies in
            raise ValueError(f"not an evidence folder name: {str(target)!r}")

    def __enter__(self) -> Path:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.staging = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.", dir=self.target.parent))
        return self.staging

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            return
        os.chmod(self.staging, 0o755)  # mkdtemp makes it 0700; readers of a shared volume need to list it
        old = None
        if self.target.exists():
            old = self.target.parent / f".{self.target.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(self.target, old)
        os.replace(self.staging, self.target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
