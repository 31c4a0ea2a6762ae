"""How a video is scanned: one pydantic model shared by `ralf-cli scan`, the workers and calibration."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

DeviceName = Literal["auto", "cpu", "cuda"]
DecoderName = Literal["auto", "dali", "pyav"]
DetectorName = Literal["mtcnn", "retinaface", "yolo"]
EngineName = Literal["auto", "tensorrt", "compile", "eager"]
PrecisionRequest = Literal["auto", "fp32", "bf16", "fp16"]
AggregationName = Literal["mean", "topk", "median"]


# Random weights (no trained file yet) are drawn from this seed, so every process builds the same model.
RANDOM_WEIGHTS_SEED = 0


def random_model_version(preset: str) -> str:
    """The model version of the seeded random model; torch-free, so enqueue can name it without a model."""
    return f"random-{preset}-seed{RANDOM_WEIGHTS_SEED}"


class ScanOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    device: DeviceName = "auto"
    decoder: DecoderName = "auto"
    detector: DetectorName = "mtcnn"
    yolo_weights: Path | None = None
    engine: EngineName = "auto"
    precision: PrecisionRequest = Field(
        "auto",
        description="Inference precision. auto: the fastest exported engine whose parity with fp32, measured on "
        "face crops at export, is within tolerance (else fp32); fp32/bf16/fp16: that one",
    )

    # Frame sampling: at most one of the three; none = every frame.
    every_n: int | None = Field(None, ge=1)
    target_fps: float | None = Field(2.0, gt=0)
    max_frames: int | None = Field(None, ge=1)

    chunk_size: int = Field(32, ge=1, description="Sampled frames decoded and detected together")
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
    batch_size: int | None = Field(
        None, ge=1, description="Face crops per model forward; default: measured per device and model preset"
    )
    margin: float | None = Field(
        None,
        ge=0.0,
        description="Square crop grown by this fraction of the face box's side; default: as the weights were trained",
    )
    min_face_size: int = Field(40, ge=8, description="Smallest face side in pixels the detector looks for")
    min_face_score: float = Field(0.9, ge=0.0, le=1.0)

    aggregation: AggregationName = "mean"
    top_k: int = Field(5, ge=1, description="Frames averaged by the 'topk' aggregation")
    detect_max_side: int = Field(
        640,
        ge=0,
        description="Faces are detected on a copy of each frame with at most this long side (never so small that "
        "a min_face_size face becomes undetectable), mapped back, and cropped from the full frame; 0: full resolution",
    )
    suspicious_frames: int = Field(3, ge=0, description="Most suspicious frame times reported per track")

    max_file_bytes: int = Field(4 * 1024**3, ge=1, description="Larger files get an error verdict")
    max_duration_s: float = Field(3 * 3600.0, gt=0, description="Longer videos get an error verdict")
    max_frame_pixels: int = Field(
        7680 * 4320, ge=1, description="Larger frames (8K UHD by default) get an error verdict; above 4K they are scaled down"
    )

    @model_validator(mode="before")
    @classmethod
    def _default_fps_yields(cls, data: object) -> object:
        # target_fps=2 is only the default: choosing every_n or max_frames replaces it.
        if isinstance(data, dict) and "target_fps" not in data:
            if data.get("every_n") is not None or data.get("max_frames") is not None:
                data = {**data, "target_fps": None}
        return data

    @model_validator(mode="after")
    def _one_sampling_mode(self) -> "ScanOptions":
        chosen = [n for n in ("every_n", "target_fps", "max_frames") if getattr(self, n) is not None]
        if len(chosen) > 1:
            raise ValueError(f"choose at most one frame sampling mode, got {chosen}")
        return self

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
