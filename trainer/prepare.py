"""`ralf-cli prepare`: face crops for training from a dataset of videos (or of frame folders).

For every video: N frames evenly over its whole length (fewer when it has fewer), the scanner's face
detector at its working resolution (RetinaFace by default; the weights record which), the largest
face scoring >= min_score per frame, cut with the scanner's own crop function and geometry (square
box with margin, resized to the model size), saved as PNG. A still image is one frame; it is
reflect-padded first, so that tight face chips (UTKFace) get the scanner's framing around the face.
OUT gets `crops/`, `index.jsonl` (one row per crop: path, video id, group, frame index, label,
split, box, detector score, the 5 landmarks in crop pixels) and `videos.jsonl` (one row per video:
ok / no_face / error, counts).
A re-run skips videos already in videos.jsonl; crops of a video interrupted half-way are redone.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageFilter
from pydantic import BaseModel, ConfigDict, Field
from tqdm import tqdm

from pipeline.crops import crop_faces, landmarks_in_crops
from pipeline.decode import VideoDecodeError, open_video
from pipeline.faces import Detections, FaceDetector, build_detector
from ralf.core.options import DETECT_MAX_SIDE, MIN_FACE_SCORE, MIN_FACE_SIZE, PREPARE_DETECTOR, Sampling
from trainer.data import INDEX_FILE, CropRow, ImageReadError, read_rgb, write_index_rows
from trainer.layouts import IMAGE_SUFFIXES, VideoEntry, read_layout

VIDEOS_FILE = "videos.jsonl"
OPTIONS_FILE = "prepare.json"
CROPS_DIR = "crops"
VideoStatus = Literal["ok", "no_face", "error"]


class PrepareOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    frames: int = Field(32, ge=1, description="Frames sampled evenly over each video")
    margin: float = Field(0.3, ge=0, description="Crop enlargement around the face box, fraction of its side")
    square: bool = Field(True, description="Square crops around the longer box side (else the box, stretched)")
    still_padding: float = Field(
        0.25, ge=0, le=2, description="Reflect padding around a still image, fraction of its side per edge"
    )
    size: int = Field(256, ge=8, description="Side of the saved square crops")
    detector: Literal["retinaface", "mtcnn"] = Field(PREPARE_DETECTOR, description="Face detector; the weights record it")
    detect_max_side: int = Field(DETECT_MAX_SIDE, ge=0, description="Working resolution of detection (as scan)")
    min_face_size: int = Field(MIN_FACE_SIZE, ge=12, description="Smallest face side (pixels) looked for (as scan)")
    min_score: float = Field(MIN_FACE_SCORE, ge=0, le=1, description="Faces scoring lower are ignored (as scan)")
    device: str = "cpu"
    decoder: Literal["auto", "dali", "pyav"] = "auto"


class VideoRow(BaseModel):
    """One line of videos.jsonl."""

    video_id: str
    path: str
    label: Literal["real", "fake"]
    group_id: str
    split: str | None
    source: str
    status: VideoStatus
    frames: int = 0  # frames sampled and searched
    crops: int = 0
    error: str | None = None


@dataclass(frozen=True)
class PrepareSummary:
    videos: int
    skipped: int  # already done by an earlier run
    status: dict[str, int]
    crops: int
    index: Path


@dataclass(frozen=True)
class SampledFrames:
    frames: torch.Tensor  # uint8 (N, H, W, 3)
    indices: list[int]


def safe_relative(video_id: str) -> Path:
    """A path inside OUT for a video id: each component reduced to [A-Za-z0-9._-], no '..'."""
    parts = [re.sub(r"[^A-Za-z0-9._-]", "_", p) for p in video_id.replace("\\", "/").split("/") if p]
    parts = [p if p not in (".", "..") else p.replace(".", "_") for p in parts]
    return Path(*parts) if parts else Path("_")


def evenly_spaced(count: int, wanted: int) -> list[int]:
    """`wanted` indices spread over range(count) (all of them when count <= wanted)."""
    if count <= wanted:
        return list(range(count))
    return sorted({int(i) for i in np.linspace(0, count - 1, wanted).round()})


def padded_still(image: np.ndarray, padding: float) -> np.ndarray:
    """A still padded by `padding` of its longer side on each edge, so a tight face chip (UTKFace)
    gains the surroundings the detector and the scanner's crop margin expect. The border is the
    image mirrored, then blurred: colours and brightness continue, but no mirrored eyes or chins."""
    pad = int(round(padding * max(image.shape[:2])))
    pad = min(pad, image.shape[0] - 1, image.shape[1] - 1)  # reflect padding cannot exceed the image
    if pad <= 0:
        return image
    mirrored = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    blurred = np.asarray(Image.fromarray(mirrored).filter(ImageFilter.GaussianBlur(radius=max(pad / 3, 1))))
    canvas = blurred.copy()
    canvas[pad : pad + image.shape[0], pad : pad + image.shape[1]] = image
    return canvas


def frame_chunks(entry: VideoEntry, options: PrepareOptions) -> Iterator[SampledFrames]:
    """Sampled frames of a video file, a still image, or a folder of frame images, in bounded chunks."""
    if entry.path.is_file() and entry.path.suffix.lower() in IMAGE_SUFFIXES:
        image = padded_still(read_rgb(entry.path), options.still_padding)
        yield SampledFrames(torch.from_numpy(np.ascontiguousarray(image))[None], [0])
        return
    if entry.path.is_dir():
        images = sorted(p for p in entry.path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        chosen = evenly_spaced(len(images), options.frames)
        for index in chosen:
            # Frames of a folder may differ in size, so each is its own chunk.
            yield SampledFrames(torch.from_numpy(read_rgb(images[index]))[None], [index])
        return
    sampling = Sampling(max_frames=options.frames)
    with open_video(entry.path, backend=options.decoder, sampling=sampling, device=options.device) as stream:
        for batch in stream:
            yield SampledFrames(batch.frames, list(batch.indices))


def extract_video(
    entry: VideoEntry, detector: FaceDetector, options: PrepareOptions, out: Path
) -> tuple[VideoRow, list[CropRow]]:
    """Crops of one video written under OUT/crops; the rows describing them (not yet indexed)."""
    folder = Path(CROPS_DIR) / safe_relative(entry.video_id)
    (out / folder).mkdir(parents=True, exist_ok=True)
    rows: list[CropRow] = []
    searched = 0
    base = {
        "video_id": entry.video_id,
        "path": str(entry.path),
        "label": "fake" if entry.is_fake else "real",
        "group_id": entry.group_id,
        "split": entry.split,
        "source": entry.source,
    }
    try:
        for chunk in frame_chunks(entry, options):
            searched += len(chunk.indices)
            rows += _crop_chunk(chunk, detector, options, out, folder, entry)
    except (VideoDecodeError, ImageReadError, ValueError, OSError) as error:
        return VideoRow(**base, status="error", frames=searched, crops=len(rows), error=str(error)), []
    status: VideoStatus = "ok" if rows else "no_face"
    return VideoRow(**base, status=status, frames=searched, crops=len(rows)), rows


def main_face(detections: Detections, min_score: float) -> tuple[torch.Tensor, float, torch.Tensor | None] | None:
    """(box, score, landmarks (5, 2) or None) of the largest face scoring >= min_score, or None.

    One face per frame: a fake video's forged face is its main one, and other faces in the frame
    would carry the video's label without being forged.
    """
    keep = detections.scores >= min_score
    if not bool(keep.any()):
        return None
    boxes, scores = detections.boxes[keep].float().cpu(), detections.scores[keep].float().cpu()
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    largest = int(areas.argmax())
    landmarks = None if detections.landmarks is None else detections.landmarks[keep].float().cpu()[largest]
    return boxes[largest], float(scores[largest]), landmarks


def _crop_chunk(
    chunk: SampledFrames, detector: FaceDetector, options: PrepareOptions, out: Path, folder: Path, entry: VideoEntry
) -> list[CropRow]:
    detections = detector.detect(chunk.frames.to(detector.device))
    found = [(position, main) for position, d in enumerate(detections) if (main := main_face(d, options.min_score))]
    if not found:
        return []
    positions = torch.tensor([p for p, _ in found])
    boxes = torch.stack([main[0] for _, main in found])
    crops = crop_faces(chunk.frames.cpu(), positions, boxes, options.size, options.margin, options.square)
    pixels = (crops.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    rows = []
    for (position, (box, score, landmarks)), image in zip(found, pixels):
        in_crop = None
        if landmarks is not None:
            mapped = landmarks_in_crops(landmarks[None], box[None], options.size, options.margin, options.square)[0]
            in_crop = [(round(float(x), 2), round(float(y), 2)) for x, y in mapped.tolist()]
        frame_index = chunk.indices[position]
        relative = folder / f"f{frame_index:06d}.png"
        Image.fromarray(image).save(out / relative)
        rows.append(
            CropRow(
                path=relative.as_posix(),
                video_id=entry.video_id,
                group_id=entry.group_id,
                frame_index=frame_index,
                label="fake" if entry.is_fake else "real",
                split=entry.split,
                box=tuple(float(v) for v in box.tolist()),
                score=score,
                landmarks=in_crop,
                source=entry.source,
            )
        )
    return rows


def _record_options(out: Path, options: PrepareOptions) -> None:
    """OUT/prepare.json: how the crops were cut (the trainer copies the geometry into the weights).
    A re-run into the same folder must cut the same way, or the crops would mix two geometries."""
    path = out / OPTIONS_FILE
    if path.is_file():
        before = read_prepare_options(out)
        if before is not None and _geometry(before) != _geometry(options):
            raise ValueError(
                f"{out} holds crops cut with {_geometry(before)}; this run asks for {_geometry(options)}: "
                "use another output folder"
            )
    path.write_text(options.model_dump_json(indent=1), encoding="utf-8")


def _geometry(options: PrepareOptions) -> dict[str, object]:
    return {
        "margin": options.margin,
        "square": options.square,
        "size": options.size,
        "detector": options.detector,
        "detect_max_side": options.detect_max_side,
    }


def read_prepare_options(folder: Path) -> PrepareOptions | None:
    """The options a prepared folder was cut with (None for folders made otherwise)."""
    path = Path(folder) / OPTIONS_FILE
    if not path.is_file():
        return None
    recorded = json.loads(path.read_text(encoding="utf-8"))
    # Folders prepared before the detector was recorded were cut around full-resolution MTCNN boxes.
    recorded.setdefault("detector", "mtcnn")
    recorded.setdefault("detect_max_side", 0)
    return PrepareOptions.model_validate(recorded)


def finished_videos(out: Path) -> set[str]:
    """Videos a previous run completed; index rows of any other video (an interrupted one) are dropped."""
    videos_path, index_path = out / VIDEOS_FILE, out / INDEX_FILE
    done: set[str] = set()
    if videos_path.is_file():
        for line in videos_path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                done.add(VideoRow.model_validate_json(line).video_id)
    if index_path.is_file():
        lines = index_path.read_text(encoding="utf-8").splitlines()
        kept = [line for line in lines if line.strip() and json.loads(line)["video_id"] in done]
        if len(kept) != len(lines):
            partial = index_path.with_name(INDEX_FILE + ".partial")
            partial.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
            os.replace(partial, index_path)
    return done


def prepare(
    source: Path,
    out: Path,
    layout: str = "folder",
    options: PrepareOptions | None = None,
    layout_options: dict[str, object] | None = None,
    detector: FaceDetector | None = None,
    progress: bool = True,
) -> PrepareSummary:
    """Extract face crops of every video of the dataset at `source` into `out` (resumable)."""
    options = options or PrepareOptions()
    if detector is not None and detector.name != options.detector:
        # The folder records options.detector and the trained weights follow it when scanning.
        raise ValueError(f"the detector given is {detector.name} but the options say {options.detector}")
    entries = read_layout(layout, Path(source), **(layout_options or {}))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _record_options(out, options)
    (out / INDEX_FILE).touch()  # an all-no-face run still leaves an index that says so
    done = finished_videos(out)
    todo = [e for e in entries if e.video_id not in done]
    if todo and detector is None:
        detector = build_detector(
            options.detector, options.device, min_face_size=options.min_face_size, max_side=options.detect_max_side
        )
    status: Counter[str] = Counter()
    crops = 0
    for entry in tqdm(todo, desc="prepare", unit="video", disable=not progress, dynamic_ncols=True):
        assert detector is not None
        video, rows = extract_video(entry, detector, options, out)
        # Crop rows first, then the video row that marks them complete.
        write_index_rows(out / INDEX_FILE, rows)
        with (out / VIDEOS_FILE).open("a", encoding="utf-8") as handle:
            handle.write(video.model_dump_json() + "\n")
        status[video.status] += 1
        crops += len(rows)
    return PrepareSummary(
        videos=len(todo), skipped=len(entries) - len(todo), status=dict(status), crops=crops, index=out / INDEX_FILE
    )
