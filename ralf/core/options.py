"""How a video is scanned: one pydantic model shared by `ralf-cli scan`, the workers, calibration and
the settings (`ralf.core.settings.Settings` inherits the worker-level part, so no field is written twice)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ralf.core.device import resolve_device

DeviceName = Literal["auto", "cpu", "cuda"]
DecoderName = Literal["auto", "dali", "pyav"]
DetectorName = Literal["mtcnn", "retinaface", "yolo"]
DetectorChoice = Literal["auto", "mtcnn", "retinaface", "yolo"]
EngineName = Literal["auto", "tensorrt", "compile", "eager"]
PrecisionRequest = Literal["auto", "fp32", "bf16", "fp16"]
DetectorPrecision = Literal["auto", "fp32", "bf16"]
AggregationName = Literal["mean", "topk", "median"]

# Face detection defaults, also `pipeline.faces.build_detector`'s and `ralf-cli prepare`'s, so that
# training crops and scans find the same faces.
MIN_FACE_SIZE = 40
MIN_FACE_SCORE = 0.9
# Weights learn the framing of the detector their crops were cut with, so scans use that detector
# (`detector="auto"`, pipeline.loading.resolve_detector). `prepare` cuts new training crops with
# RetinaFace: 2-3x less detection time than MTCNN and more faces found (benchmarks/pipeline.py
# --footage, benchmarks/detector_swap.py). Weights that do not record it were cut with MTCNN, which
# `prepare` used before.
PREPARE_DETECTOR: DetectorName = "retinaface"
UNRECORDED_DETECTOR: DetectorName = "mtcnn"
DETECT_MAX_SIDE = 640
DEFAULT_TARGET_FPS = 2.0
SAMPLING_FIELDS = ("every_n", "target_fps", "max_frames")

# Random weights (no trained file yet) are drawn from this seed, so every process builds the same model.
RANDOM_WEIGHTS_SEED = 0


def random_model_version(preset: str) -> str:
    """The model version of the seeded random model; torch-free, so enqueue can name it without a model."""
    return f"random-{preset}-seed{RANDOM_WEIGHTS_SEED}"


class Sampling(BaseModel):
    """Which decoded frames are scanned: at most one of the three modes; none set keeps every frame."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    every_n: int | None = Field(None, ge=1, description="Keep frames 0, n, 2n, ...")
    target_fps: float | None = Field(None, gt=0, description="Keep the first frame in each 1/fps slot")
    max_frames: int | None = Field(None, ge=1, description="At most K frames evenly over the whole video")

    @model_validator(mode="after")
    def _at_most_one_mode(self) -> Sampling:
        chosen = [name for name in SAMPLING_FIELDS if getattr(self, name) is not None]
        if len(chosen) > 1:
            raise ValueError(f"choose at most one frame sampling mode, got {chosen}")
        return self


# How much evidence a track needs to decide a video (pipeline/track_evidence.py; chosen on real videos,
# MODEL_CARD.md "Decisions per video").
MIN_TRACK_FACES = 5
MIN_TRACK_SECONDS = 2.0
MIN_TRACK_FACE_PX = 0.0


class WorkerOptions(BaseModel):
    """The scan options a deployment fixes per worker (RALF_* settings): hardware, detector, engine and
    limits. A job payload can never change them (a payload must not pick a file to load)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    device: DeviceName = Field("auto", description="auto | cpu | cuda")
    decoder: DecoderName = Field("auto", description="auto | dali | pyav")
    detector: DetectorChoice = Field(
        "auto",
        description="Face detector: auto (the one the weights' training crops were cut with; mtcnn when they do not "
        "say) | retinaface | mtcnn | yolo",
    )
    yolo_weights: Path | None = Field(None, description="Local YOLO face weights (.pt) for detector yolo")
    detector_precision: DetectorPrecision = Field(
        "auto",
        description="RetinaFace's network precision. auto: fp32; bf16 (CPUs with native bf16, GPUs): about 1.5x "
        "faster detection on such CPUs, but faces near the score cut can be lost; MTCNN and YOLO always run fp32",
    )
    engine: EngineName = Field("auto", description="auto | tensorrt | compile | eager")
    precision: PrecisionRequest = Field(
        "auto",
        description="Inference precision. auto: the fastest exported engine whose parity with fp32, measured on "
        "face crops at export, is within tolerance (else fp32); fp32/bf16/fp16: that one",
    )
    batch_size: int | None = Field(
        None, ge=1, description="Face crops per model forward; default: measured per device and model preset"
    )
    chunk_size: int = Field(32, ge=1, description="Sampled frames decoded and detected together")
    max_frame_pixels: int = Field(
        7680 * 4320, ge=1, description="Larger frames (8K UHD by default) get an error verdict; above 4K they are scaled down"
    )
    max_file_bytes: int = Field(
        4 * 1024**3, ge=1, description="Larger files get an error verdict (and are refused at enqueue, before hashing)"
    )

    def resolved_device(self) -> str:
        """`device` with auto resolved (`ralf.core.device.resolve_device`); DeviceUnavailable without CUDA."""
        return resolve_device(self.device)


class ScanOptions(WorkerOptions):
    """Everything one scan is run with: the worker's options plus the per-scan choices."""

    sampling: Sampling = Field(
        Sampling(target_fps=DEFAULT_TARGET_FPS), description="Frame sampling (default: 2 frames per second)"
    )
    decode_skip: bool = Field(
        True,
        description="PyAV leaves frames the sampling cannot keep undecoded (H.264/HEVC non-reference frames, "
        "GOPs without a sampled frame, unsampled MJPEG frames); the sampled frames are identical either way",
    )
    prefetch: int = Field(
        1, ge=0, le=4, description="Chunks decoded ahead in a background thread while one is scored; 0: none"
    )
    chunk_pixels: int = Field(
        32_000_000, ge=1, description="Cap on pixels per chunk: large frames get smaller chunks (at least 1 frame)"
    )
    margin: float | None = Field(
        None,
        ge=0.0,
        description="Square crop grown by this fraction of the face box's side; default: as the weights were trained",
    )
    min_face_size: int = Field(MIN_FACE_SIZE, ge=8, description="Smallest face side in pixels the detector looks for")
    min_face_score: float = Field(MIN_FACE_SCORE, ge=0.0, le=1.0)

    aggregation: AggregationName = "mean"
    top_k: int = Field(5, ge=1, description="Frames averaged by the 'topk' aggregation")
    detect_max_side: int = Field(
        DETECT_MAX_SIDE,
        ge=0,
        description="Faces are detected on a copy of each frame with at most this long side (never so small that "
        "a min_face_size face becomes undetectable), mapped back, and cropped from the full frame; 0: full resolution",
    )
    suspicious_frames: int = Field(3, ge=0, description="Most suspicious frame times reported per track")
    min_track_faces: int = Field(
        MIN_TRACK_FACES, ge=1, description="A track decides the video only with this many faces (or min_track_seconds)"
    )
    min_track_seconds: float = Field(
        MIN_TRACK_SECONDS, ge=0, description="... or this long between its first and last face"
    )
    min_track_face_px: float = Field(
        MIN_TRACK_FACE_PX, ge=0, description="... and a median face box side of at least this many frame pixels"
    )
    max_duration_s: float = Field(3 * 3600.0, gt=0, description="Longer videos get an error verdict")

    @model_validator(mode="before")
    @classmethod
    def _fold_flat_sampling(cls, data: Any) -> Any:
        """Job payloads, RALF_* settings and the CLI name the sampling mode flat (`every_n=5`): it becomes
        `sampling`. A flat key set to None means "not this mode"; only None everywhere keeps the default."""
        if not isinstance(data, dict) or not any(name in data for name in SAMPLING_FIELDS):
            return data
        data = dict(data)
        flat = {name: data.pop(name) for name in SAMPLING_FIELDS if name in data}
        if "sampling" in data:
            raise ValueError(f"give either sampling or {sorted(flat)}, not both")
        if "target_fps" in flat or any(value is not None for value in flat.values()):
            data["sampling"] = flat
        return data
