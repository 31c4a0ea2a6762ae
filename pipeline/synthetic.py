"""Generated video clips for tests, demos and benchmarks.

A real face (the astronaut from ``skimage.data``) moves smoothly over a textured,
face-free background. Clips are small and encode in well under a second, so tests
can generate them instead of shipping binary fixtures. Helpers for bad inputs
(truncated, audio-only, text renamed as video, zero-byte) and a folder of noise face
crops for training runs live here too.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Literal

import av
import numpy as np
from PIL import Image

ClipCodec = Literal["h264", "vp9", "vp8", "mjpeg"]

# (encoder name, pixel format, encoder options) per codec; fast presets keep generation < 1 s.
_ENCODERS: dict[str, tuple[str, str, dict[str, str]]] = {
    "h264": ("libx264", "yuv420p", {"preset": "ultrafast", "crf": "18", "tune": "zerolatency"}),
    "vp9": ("libvpx-vp9", "yuv420p", {"deadline": "realtime", "cpu-used": "8", "crf": "20", "b": "0"}),
    "vp8": ("libvpx", "yuv420p", {"deadline": "realtime", "cpu-used": "8", "crf": "10", "b": "2M"}),
    "mjpeg": ("mjpeg", "yuvj420p", {"q:v": "3"}),
}
_CONTAINER_SUFFIX: dict[str, str] = {"h264": ".mp4", "vp9": ".webm", "vp8": ".webm", "mjpeg": ".avi"}

# Astronaut face crop (rows, cols) in the 512x512 skimage image: hair to chin, upright.
_FACE_ROWS = slice(20, 220)
_FACE_COLS = slice(140, 330)


def container_suffix(codec: ClipCodec) -> str:
    """File suffix matching the container used for ``codec`` ('.mp4', '.webm' or '.avi')."""
    return _CONTAINER_SUFFIX[codec]


@lru_cache(maxsize=1)
def astronaut_face() -> np.ndarray:
    """The astronaut's face region, uint8 RGB (200, 190, 3)."""
    return np.ascontiguousarray(astronaut_photo()[_FACE_ROWS, _FACE_COLS])


@lru_cache(maxsize=1)
def astronaut_photo() -> np.ndarray:
    """scikit-image's whole astronaut photograph, uint8 RGB (512, 512, 3)."""
    from skimage import data  # deferred: skimage import is slow and only needed here

    return np.ascontiguousarray(data.astronaut())


def astronaut_with_face(face: np.ndarray) -> np.ndarray:
    """The astronaut photograph with its face region (`astronaut_face()`'s pixels) replaced by `face`."""
    photo = astronaut_photo().copy()
    photo[_FACE_ROWS, _FACE_COLS] = face
    return photo


def write_photo_pan_clip(
    path: str | Path, photo: np.ndarray, *, codec: ClipCodec = "h264", num_frames: int = 24, fps: float = 12.0,
    window: int = 440,
) -> Path:
    """A camera panning slowly over `photo`: a `window`-pixel square moving a few pixels per frame, at 1:1
    (the face keeps the photo's own detail, as a camera would record it)."""
    height, width = photo.shape[:2]
    if window > min(height, width) - 72 or window % 2:
        raise ValueError(f"window must be even and leave room to pan in a {width}x{height} photo, got {window}")

    def frames() -> Iterator[np.ndarray]:
        for i in range(num_frames):
            x, y = 40 + round(30 * math.sin(i / 4)), 10 + round(10 * math.cos(i / 5))
            yield np.ascontiguousarray(photo[y : y + window, x : x + window])

    return write_frames(path, frames(), codec=codec, fps=fps)


def textured_background(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A smooth, colourful, face-free texture (uint8 RGB (H, W, 3)), deterministic per seed."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = []
    for _ in range(3):
        fx, fy = rng.uniform(0.01, 0.06, size=2)
        phase = rng.uniform(0, 2 * math.pi)
        wave = np.sin(xs * fx + phase) * np.cos(ys * fy - phase)
        ramp = (xs / max(width - 1, 1)) * rng.uniform(-0.5, 0.5)
        channels.append(0.5 + 0.3 * wave + ramp)
    base = np.stack(channels, axis=-1)
    # Mild checker texture so the background has edges for the encoder and detectors to see.
    checker = (((xs // 16) + (ys // 16)) % 2)[..., None] * 0.08
    return (np.clip(base + checker, 0.0, 1.0) * 255).astype(np.uint8)


def _face_sprite(face_height: int, face: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Resized face (the astronaut's unless given) and a soft elliptical alpha mask (float32 (h, w, 1))."""
    face = astronaut_face() if face is None else face
    scale = face_height / face.shape[0]
    size = (max(2, round(face.shape[1] * scale)), face_height)
    sprite = np.asarray(Image.fromarray(face).resize(size, Image.Resampling.BILINEAR))
    h, w = sprite.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    radius = ((xs - (w - 1) / 2) / (w / 2)) ** 2 + ((ys - (h - 1) / 2) / (h / 2)) ** 2
    alpha = np.clip((1.0 - radius) / 0.15, 0.0, 1.0)[..., None]
    return sprite.astype(np.float32), alpha


def iter_frames(
    num_frames: int, size: tuple[int, int], *, face: bool = True, seed: int = 0, face_image: np.ndarray | None = None
) -> Iterator[np.ndarray]:
    """Upright RGB frames (uint8 (H, W, 3)), one at a time; ``size`` is (width, height).
    ``face_image`` replaces the astronaut's face (e.g. a manipulated copy of it)."""
    width, height = size
    background = textured_background(width, height, seed)
    if not face:
        # Slow horizontal pan keeps a no-face clip from being a still image.
        for i in range(num_frames):
            yield np.roll(background, shift=i * 2, axis=1)
        return
    sprite, alpha = _face_sprite(max(16, int(height * 0.55)), face_image)
    sh, sw = sprite.shape[:2]
    span_x, span_y = max(width - sw, 0), max(height - sh, 0)
    for i in range(num_frames):
        t = 2 * math.pi * i / max(num_frames, 1)
        # Lissajous path around the centre: smooth, stays fully inside the frame.
        x0 = int(round(span_x * (0.5 + 0.35 * math.sin(t + seed))))
        y0 = int(round(span_y * (0.5 + 0.30 * math.sin(2 * t + seed))))
        frame = background.copy()
        region = frame[y0 : y0 + sh, x0 : x0 + sw].astype(np.float32)
        frame[y0 : y0 + sh, x0 : x0 + sw] = (alpha * sprite + (1.0 - alpha) * region).astype(np.uint8)
        yield frame


def render_frames(
    num_frames: int, size: tuple[int, int], *, face: bool = True, seed: int = 0
) -> list[np.ndarray]:
    """All frames of :func:`iter_frames` as a list (reference pixels for short clips)."""
    return list(iter_frames(num_frames, size, face=face, seed=seed))


def write_frames(
    path: str | Path,
    frames: Iterable[np.ndarray],
    *,
    codec: ClipCodec,
    fps: float = 12.0,
    rotation: int = 0,
    encoder_options: dict[str, str] | None = None,
) -> Path:
    """Encode upright RGB frames; with ``rotation`` the stored pixels are counter-rotated and the
    stream carries display-matrix metadata, so a decoder that honours it shows them upright.
    ``encoder_options`` replace the codec's defaults (e.g. libx264 B-frames and a short GOP:
    ``{"preset": "veryfast", "x264-params": "keyint=15:bframes=3"}``)."""
    if rotation % 90 != 0:
        raise ValueError(f"rotation must be a multiple of 90 degrees, got {rotation}")
    path = Path(path)
    encoder, pix_fmt, options = _ENCODERS[codec]
    # The display matrix rotates stored pixels counter-clockwise by `rotation` for display.
    quarter_turns = (rotation // 90) % 4
    stored = (np.ascontiguousarray(np.rot90(f, k=-quarter_turns)) for f in frames)
    first = next(stored, None)
    if first is None:
        raise ValueError("no frames to write")
    height, width = first.shape[:2]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(encoder, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.options = dict(options if encoder_options is None else encoder_options)
        if quarter_turns:
            stream.set_display_rotation(float(rotation))
        for array in itertools.chain([first], stored):
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_face_clip(
    path: str | Path,
    *,
    codec: ClipCodec,
    num_frames: int = 24,
    fps: float = 12.0,
    size: tuple[int, int] = (320, 240),
    face: bool = True,
    seed: int = 0,
    rotation: int = 0,
    face_image: np.ndarray | None = None,
    encoder_options: dict[str, str] | None = None,
) -> Path:
    """Write a clip of the astronaut's face (or ``face_image``) moving over a textured background.

    ``size`` is (width, height) as displayed, both even. ``face=False`` writes only the
    (slowly panning) background. ``rotation`` (a multiple of 90) stores the frames rotated
    with matching display-rotation metadata (kept by MP4 only: use a '.mp4' path,
    with h264 or vp9).
    The container follows the path's suffix; :func:`container_suffix` gives the usual one.
    """
    width, height = size
    if width % 2 or height % 2:
        raise ValueError(f"width and height must be even for 4:2:0 video, got {size}")
    frames = iter_frames(num_frames, size, face=face, seed=seed, face_image=face_image)
    return write_frames(path, frames, codec=codec, fps=fps, rotation=rotation, encoder_options=encoder_options)


def write_vfr_clip(
    path: str | Path, timestamps_s: list[float], *, size: tuple[int, int] = (160, 120)
) -> Path:
    """An H.264 MP4 whose frames are shown at the given (increasing) times: variable frame rate."""
    path = Path(path)
    frames = render_frames(len(timestamps_s), size, face=True)
    time_base = Fraction(1, 1000)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.codec_context.time_base = time_base
        stream.options = {"preset": "ultrafast", "bf": "0"}
        for array, t in zip(frames, timestamps_s, strict=True):
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            frame.pts = round(t / time_base)
            frame.time_base = time_base
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_truncated_copy(src: str | Path, dst: str | Path, fraction: float) -> Path:
    """Copy the first ``fraction`` (0..1) of ``src``'s bytes to ``dst``: a cut-off download."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    data = Path(src).read_bytes()
    dst = Path(dst)
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def write_latin1_metadata_copy(src: str | Path, dst: str | Path, title: str = "Caf\xe9") -> Path:
    """Remux ``src``'s video stream (no re-encoding) with a Latin-1 encoded title and handler name: what
    `ffmpeg -i in.mp4 -c copy -metadata title="$(printf 'Caf\\xe9')" out.mp4` makes, metadata that is
    not UTF-8."""
    dst = Path(dst)
    with av.open(str(src)) as source, av.open(str(dst), mode="w", metadata_encoding="latin-1") as target:
        target.metadata["title"] = title
        video_in = source.streams.video[0]
        video_out = target.add_stream_from_template(video_in)
        video_out.metadata["handler_name"] = f"{title} handler"
        for packet in source.demux(video_in):
            if packet.dts is None:
                continue
            packet.stream = video_out
            target.mux(packet)
    if title.encode("latin-1") not in dst.read_bytes():
        raise RuntimeError("the remuxed file does not carry the Latin-1 title")
    return dst


def write_still_image(path: str | Path, size: tuple[int, int] = (320, 240)) -> Path:
    """One PNG image of the generated scene (a face on a background), under any name (e.g. '.mp4')."""
    from PIL import Image

    width, height = size
    frame = next(iter_frames(1, (width, height)))
    path = Path(path)
    Image.fromarray(frame).save(path, format="PNG")
    return path


def write_animated_webp(path: str | Path, *, num_frames: int = 8, size: tuple[int, int] = (320, 240), fps: float = 8.0) -> Path:
    """An animated WebP of the moving-face scene (Pillow writes it; many FFmpeg builds cannot decode it)."""
    from PIL import Image

    width, height = size
    images = [Image.fromarray(frame) for frame in iter_frames(num_frames, (width, height))]
    path = Path(path)
    images[0].save(
        path, format="WEBP", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0, quality=90
    )
    return path


def write_audio_only(path: str | Path, *, seconds: float = 1.0, sample_rate: int = 16000) -> Path:
    """A file with a single audio stream (a sine tone) and no video; '.m4a'/'.mp4' gives AAC, '.wav' PCM."""
    path = Path(path)
    codec = "pcm_s16le" if path.suffix == ".wav" else "aac"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=sample_rate, layout="mono")
        total = int(seconds * sample_rate)
        chunk = 1024
        for start in range(0, total, chunk):
            n = min(chunk, total - start)
            t = (np.arange(start, start + n) / sample_rate).astype(np.float32)
            samples = (0.3 * np.sin(2 * math.pi * 440.0 * t) * 32767).astype(np.int16)
            frame = av.AudioFrame.from_ndarray(samples[None, :], format="s16", layout="mono")
            frame.sample_rate = sample_rate
            frame.pts = start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_text_as_video(path: str | Path) -> Path:
    """A plain-text file under a video name (e.g. 'notes.mp4')."""
    path = Path(path)
    path.write_text("This is not a video, just text with a video file name.\n" * 20)
    return path


def write_empty_file(path: str | Path) -> Path:
    """A zero-byte file."""
    path = Path(path)
    path.write_bytes(b"")
    return path


def write_corrupted_copy(src: str | Path, dst: str | Path, *, seed: int = 0, fraction: float = 0.2) -> Path:
    """Copy ``src`` with a block of random bytes (``fraction`` of the file) overwritten mid-file."""
    data = bytearray(Path(src).read_bytes())
    rng = np.random.default_rng(seed)
    length = max(1, int(len(data) * fraction))
    start = len(data) // 2 - length // 2
    data[start : start + length] = rng.integers(0, 256, size=length, dtype=np.uint8).tobytes()
    dst = Path(dst)
    dst.write_bytes(bytes(data))
    return dst


def write_noise_crops(
    root: str | Path, *, size: int, real: int = 4, fake: int = 4, frames: int = 3, seed: int = 0
) -> Path:
    """A crop dataset in the layout `ralf-cli train` reads (``root/real|fake/v<video>/<frame>.png``):
    ``real`` and ``fake`` videos of ``frames`` uniform-noise ``size``x``size`` RGB crops each.
    Enough to run training end to end; there is nothing to learn in it."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for label, videos in (("real", real), ("fake", fake)):
        for video in range(videos):
            for frame in range(frames):
                path = root / label / f"v{video}" / f"{frame}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return root
