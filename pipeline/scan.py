"""`Scanner`: one video in, one `Verdict` out, streaming decode → faces → tracks → crops → RALF → verdict.

The scanner loads the model, face detector and inference engine once, so a worker process keeps
one and scans many videos with it.

Errors, two kinds:
- Bad input (missing, empty, not a video, truncated, audio-only, too large, too long) never raises:
  `scan` returns a verdict with `label="error"` and the reason in plain words.
- A failure of the scanner itself (a bug, a broken install) raises out of `scan`, so a worker
  records it as a failed job with its traceback instead of a result. Callers that must answer
  anyway turn it into `internal_error_verdict(path, exc)`, whose `error` starts with "internal: ".
  Running out of accelerator memory raises `InferenceOutOfMemory`: retry with a smaller batch size
  (`scanner.with_options(options.model_copy(update={"batch_size": n}))`, which reuses the model).

Memory stays bounded for any video length: frames live only for their chunk; what is kept is one
`FaceScore` (a few numbers) per face, plus at most one batch of pending crops.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from pipeline.aggregate import FaceScore, aggregate_tracks, video_label, video_score
from pipeline.crops import crop_faces
from pipeline.decode import FrameBatch, VideoDecodeError, VideoInfo, VideoStream, open_video, probe_video
from pipeline.decode.prefetch import prefetch
from pipeline.decode.sampling import expected_samples
from pipeline.engine import InferenceOutOfMemory, resolved_batch_size
from pipeline.evidence import EvidenceCollector
from pipeline.explanation import explanation
from pipeline.faces import FaceDetector
from pipeline.loading import LoadedEngine, LoadedModel, detector_settings, load_detector
from pipeline.scan_state import FaceMeta, ScanState
from pipeline.track_evidence import EvidenceRule
from pipeline.tracking import IouTracker
from pipeline.verdict import TrackVerdict, Verdict, VerdictLabel
from ralf.core.device import resolve_device
from ralf.core.metadata import CropGeometry
from ralf.core.options import ScanOptions

__all__ = [
    "INTERNAL_ERROR_PREFIX",
    "RANDOM_WEIGHTS_WARNING",
    "ProgressCallback",
    "ScanInputError",
    "Scanner",
]

RANDOM_WEIGHTS_WARNING = "weights are random: verdicts are meaningless until you train or import weights"
INTERNAL_ERROR_PREFIX = "internal: "
WARM_UP_FORWARDS = 2
WARM_UP_FRAME_HW = (240, 320)

# progress(sampled frames done, sampled frames expected); the total is an estimate from the
# container headers (0 when unknown) and may be exceeded slightly.
ProgressCallback = Callable[[int, int], None]


class ScanInputError(ValueError):
    """The input is refused before or while decoding (too large, too long)."""


class Scanner:
    """Loads weights, detector and engine once; `scan(path)` returns a `Verdict` for each video.

    Without `weights` a randomly initialised RALF of `preset_if_random` is used: every verdict
    then says `weights_random=True` and carries `RANDOM_WEIGHTS_WARNING`.
    Setup problems (weights file missing or invalid, detector weights missing, CUDA asked for but
    absent) raise ValueError subclasses from the constructor.
    `with_options` gives a scanner with other per-scan options that shares the loaded model.
    """

    def __init__(
        self, options: ScanOptions, weights: Path | None = None, *, preset_if_random: str = "paper"
    ) -> None:
        device = torch.device(resolve_device(options.device))
        loaded = LoadedModel.load(weights, preset_if_random, device)
        detector = load_detector(options, loaded.crop, device)
        self._assemble(options, device, loaded, detector, LoadedEngine.load(loaded, options))

    def _assemble(
        self,
        options: ScanOptions,
        device: torch.device,
        loaded: LoadedModel,
        detector: FaceDetector,
        engine: LoadedEngine,
    ) -> None:
        self.options = options
        self.device = device
        self._loaded = loaded
        self._engine = engine
        self.model = loaded.model
        self.weights_path = loaded.weights_path
        self.model_version = loaded.model_version
        self.weights_random = loaded.weights_random
        self.decision = loaded.decision
        self.image_size = loaded.model.config.image_size
        # Crops are cut as the weights were trained on, unless the options ask for a margin.
        self.crop = loaded.crop if options.margin is None else CropGeometry(margin=options.margin, square=True)
        self.detector = detector
        self.engine = engine.engine
        self.sampling = options.sampling
        self.warnings = ([RANDOM_WEIGHTS_WARNING] if self.weights_random else []) + engine.warnings
        trained_on = loaded.crop.trained_detector
        if not self.weights_random and trained_on != detector.name:
            self.warnings.append(
                f"the weights were trained on crops around {trained_on} face boxes; this scan detects with "
                f"{detector.name}, which frames faces slightly differently: scores shift (--detector auto follows the weights)"
            )

    def with_options(self, options: ScanOptions) -> Scanner:
        """A scanner for `options` that reuses what this one loaded, rebuilding only what must change.

        The model is always shared (never reloaded) on the same device. The detector is shared
        unless the detector, its weights, `min_face_size`, `detect_max_side` or `min_face_score` (YOLO)
        change; the engine is shared unless the engine kind changes or the batch size grows past
        what it was built for. Sampling, aggregation, margin, limits and smaller batch sizes
        (the out-of-memory retry) cost nothing. A different device needs its own copy of the
        weights: that alone loads a fresh Scanner.
        """
        device = torch.device(resolve_device(options.device))
        if device != self.device:
            return Scanner(options, self.weights_path, preset_if_random=self._loaded.preset_if_random)
        crop = self._loaded.crop
        same_detector = detector_settings(options, crop) == detector_settings(self.options, crop)
        detector = self.detector if same_detector else load_detector(options, crop, device)
        batch_size = resolved_batch_size(options, self._loaded.model.config, device)
        serves = self._engine.serves(options, batch_size)
        engine = self._engine if serves else LoadedEngine.load(self._loaded, options)
        derived = Scanner.__new__(Scanner)
        derived._assemble(options, device, self._loaded, detector, engine)
        return derived

    @property
    def evidence_rule(self) -> EvidenceRule:
        """What a track needs to decide the video (pipeline/track_evidence.py)."""
        options = self.options
        return EvidenceRule(options.min_track_faces, options.min_track_seconds, options.min_track_face_px)

    @property
    def threshold(self) -> float:
        return self.decision.threshold

    @property
    def batch_size(self) -> int:
        """Face crops per forward: the options' batch size (default: per device and preset, see
        `pipeline.engine.default_batch_size`), or fewer where the engine's limit is lower."""
        wanted = resolved_batch_size(self.options, self.model.config, self.device)
        return min(wanted, self.engine.max_batch)

    def warm_up(self) -> None:
        """Detect once on a blank frame and run `WARM_UP_FORWARDS` forwards at the batch size, so the
        first real video does not pay for lazy setup: on the CPU, oneDNN picks and caches its kernels
        over the first forwards of a shape (the first two or three are slow); on CUDA, kernel loading
        and cuDNN autotuning happen there too."""
        self.detector.detect(torch.zeros((1, *WARM_UP_FRAME_HW, 3), dtype=torch.uint8, device=self.device))
        crops = torch.zeros((self.batch_size, 3, self.image_size, self.image_size), device=self.device)
        for _ in range(WARM_UP_FORWARDS):
            self.engine.logits(crops)
        _synchronize(self.device)

    def scan(
        self, path: str | Path, progress: ProgressCallback | None = None, *, evidence_dir: Path | None = None
    ) -> Verdict:
        """The verdict for one video; bad input gives `label="error"`, never an exception.

        `evidence_dir`: write evidence images of each track's most suspicious faces there (the folder
        is replaced as a whole) and list them in the verdict (see pipeline/evidence.py)."""
        started = time.perf_counter()
        path = Path(path)
        state = ScanState()
        if evidence_dir is not None and self.options.suspicious_frames > 0:
            state.evidence = EvidenceCollector(self.options.suspicious_frames)
        try:
            self._check_size(path)
            info = probe_video(path, self.options.max_frame_pixels)
            self._check_duration(info)
            with open_video(
                path,
                backend=self.options.decoder,
                sampling=self.sampling,
                device=self.device,
                chunk_size=self.chunk_frames(info),
                max_frame_pixels=self.options.max_frame_pixels,
                skip_unneeded=self.options.decode_skip,
            ) as stream:
                self._score_stream(stream, state, progress)
                state.note_damage(stream.stats)
        except (VideoDecodeError, ScanInputError) as error:
            state.timings.total_s = time.perf_counter() - started
            return self._verdict(path, state, label="error", error=str(error))

        aggregate_started = time.perf_counter()
        rule = self.evidence_rule
        tracks = aggregate_tracks(
            state.faces, self.options.aggregation, self.options.top_k, self.options.suspicious_frames, rule
        )
        score = video_score(tracks)
        state.counts.tracks = len(tracks)
        state.timings.aggregate_s = time.perf_counter() - aggregate_started
        evidence = self._write_evidence(state, tracks, evidence_dir)
        state.timings.total_s = time.perf_counter() - started
        label = video_label(score, self.decision.threshold)
        verdict = self._verdict(path, state, label=label, score=score, tracks=tracks)
        verdict = verdict.model_copy(update={"explanation": explanation(verdict)})
        return verdict if evidence is None else verdict.model_copy(update=evidence)

    def _write_evidence(
        self, state: ScanState, tracks: list[TrackVerdict], evidence_dir: Path | None
    ) -> dict[str, object] | None:
        """The evidence pass over the chosen crops (pipeline/evidence.py); a failure to write is a warning."""
        if evidence_dir is None or state.evidence is None:
            return None
        started = time.perf_counter()
        try:
            items = state.evidence.write(self.model, tracks, Path(evidence_dir), self.batch_size)
        except OSError as error:
            state.warnings.append(f"evidence not written to {evidence_dir}: {error}")
            return None
        finally:
            state.evidence = None  # frees the kept crops and frames
            state.timings.evidence_s = time.perf_counter() - started
        return {"evidence_dir": str(evidence_dir), "evidence": items}

    def error_verdict(self, path: str | Path, reason: str) -> Verdict:
        """An `error` verdict for `path` (a file or URL, kept as given) that says `reason`, with this
        scanner's model, threshold, engine and warnings: for input refused before or outside `scan`."""
        return self._verdict(path, ScanState(), label="error", error=reason)

    def internal_error_verdict(self, path: str | Path, error: BaseException) -> Verdict:
        """An `error` verdict for a failure of the scanner itself (see the module docstring)."""
        return self.error_verdict(path, f"{INTERNAL_ERROR_PREFIX}{type(error).__name__}: {error}")

    def chunk_frames(self, info: VideoInfo) -> int:
        """Frames per chunk: `chunk_size`, fewer for large frames so a chunk stays within `chunk_pixels`."""
        return max(1, min(self.options.chunk_size, self.options.chunk_pixels // (info.width * info.height)))

    # -- stages -----------------------------------------------------------------------------------

    def _check_size(self, path: Path) -> None:
        if path.is_file() and path.stat().st_size > self.options.max_file_bytes:
            raise ScanInputError(
                f"file too large: {path.stat().st_size} bytes exceeds the limit of "
                f"{self.options.max_file_bytes} bytes"
            )

    def _check_duration(self, info: VideoInfo) -> None:
        if info.duration_s is not None and info.duration_s > self.options.max_duration_s:
            raise ScanInputError(
                f"video too long: {info.duration_s:.1f} s exceeds the limit of {self.options.max_duration_s:.0f} s"
            )

    def _score_stream(self, stream: VideoStream, state: ScanState, progress: ProgressCallback | None) -> None:
        tracker = IouTracker()
        total = expected_samples(stream.info, self.sampling)
        first_decoder = state.decoder = stream.backend
        # The next chunk decodes in a background thread while this one is detected and scored.
        batches = prefetch(iter(stream), self.options.prefetch)
        try:
            self._score_batches(stream, batches, tracker, total, state, progress)
        finally:
            batches.close()  # type: ignore[attr-defined]  (stops the decode thread before the stream closes)
        if state.decoder != first_decoder:
            state.warnings.append(f"{first_decoder} failed part-way; the rest was decoded by {state.decoder}")

    def _score_batches(
        self,
        stream: VideoStream,
        batches: Iterator[FrameBatch],
        tracker: IouTracker,
        total: int,
        state: ScanState,
        progress: ProgressCallback | None,
    ) -> None:
        for batch in self._timed_batches(batches, state):
            state.decoder = stream.backend
            if batch.timestamps_s[-1] > self.options.max_duration_s:
                # Headers can understate the length; the limit holds on what is actually decoded.
                raise ScanInputError(f"video too long: exceeds the limit of {self.options.max_duration_s:.0f} s")
            state.counts.frames_decoded += len(batch)
            crops, meta = self._faces_in(batch, tracker, state)
            state.pending_crops.append(crops)
            state.pending_meta.extend(meta)
            if state.pending >= self.batch_size:
                self._infer_pending(state, keep_remainder=True)
            if progress is not None:
                progress(state.counts.frames_decoded, total)
        self._infer_pending(state, keep_remainder=False)

    def _timed_batches(self, batches: Iterator[FrameBatch], state: ScanState) -> Iterator[FrameBatch]:
        """`batches`, adding the time spent waiting for each to `decode_s` (with prefetch: the decode
        time not hidden behind detection and scoring)."""
        while True:
            started = time.perf_counter()
            batch = next(batches, None)
            state.timings.decode_s += time.perf_counter() - started
            if batch is None:
                return
            yield batch

    def _faces_in(
        self, batch: FrameBatch, tracker: IouTracker, state: ScanState
    ) -> tuple[torch.Tensor, list[FaceMeta]]:
        """Detect, track and crop the faces of one chunk of frames."""
        started = time.perf_counter()
        detections = self.detector.detect(batch.frames)
        positions: list[int] = []
        boxes: list[torch.Tensor] = []
        meta: list[FaceMeta] = []
        for position, (found, index, timestamp) in enumerate(
            zip(detections, batch.indices, batch.timestamps_s, strict=True)
        ):
            found = found.filter(found.scores >= self.options.min_face_score)
            track_ids = tracker.update(index, timestamp, found.boxes)
            positions.extend([position] * len(track_ids))
            boxes.append(found.boxes.to(torch.float32))
            sides = (found.boxes[:, 2:] - found.boxes[:, :2]).amax(dim=1).tolist() if len(track_ids) else []
            meta.extend(FaceMeta(track_id, index, timestamp, face_px=side) for track_id, side in zip(track_ids, sides, strict=True))
        if state.evidence is not None and meta:
            state.evidence.attach(batch.frames, positions, torch.cat(boxes), meta)
        _synchronize(self.device)
        cropping = time.perf_counter()
        state.timings.detect_s += cropping - started

        crops = crop_faces(
            batch.frames,
            torch.tensor(positions, dtype=torch.int64),
            torch.cat(boxes).cpu() if boxes else torch.zeros((0, 4)),
            self.image_size,
            self.crop.margin,
            self.crop.square,
        )
        _synchronize(self.device)
        state.timings.crop_s += time.perf_counter() - cropping
        state.counts.faces += len(meta)
        return crops, meta

    def _infer_pending(self, state: ScanState, *, keep_remainder: bool) -> None:
        """Score pending crops in whole batches; the remainder waits for more faces unless flushing."""
        count = state.pending
        ready = count - count % self.batch_size if keep_remainder else count
        if ready == 0:
            return
        started = time.perf_counter()
        crops = torch.cat(state.pending_crops) if len(state.pending_crops) > 1 else state.pending_crops[0]
        batch = self.batch_size
        logits = torch.cat([self._logits(crops[start : min(start + batch, ready)]) for start in range(0, ready, batch)])
        probabilities = self.decision.probabilities(logits)  # copies to the CPU, so it also synchronises
        for meta, probability in zip(state.pending_meta[:ready], probabilities, strict=True):
            state.faces.append(
                FaceScore(meta.track_id, meta.frame_index, meta.timestamp_s, probability, meta.face_px)
            )
        if state.evidence is not None:
            state.evidence.offer(state.pending_meta[:ready], crops[:ready], probabilities)
        state.pending_crops = [crops[ready:]] if ready < count else []
        state.pending_meta = state.pending_meta[ready:]
        state.timings.infer_s += time.perf_counter() - started

    def _logits(self, batch: torch.Tensor) -> torch.Tensor:
        """One batch through the (possibly shared) engine; out of memory names this scanner's batch size."""
        try:
            return self.engine.logits(batch)
        except InferenceOutOfMemory as error:
            if error.batch_size <= self.batch_size:
                raise
            detail = str(error.__cause__ or error)
            raise InferenceOutOfMemory(self.batch_size, error.device, detail) from error

    def _verdict(
        self,
        path: str | Path,
        state: ScanState,
        *,
        label: VerdictLabel,
        score: float | None = None,
        tracks: list[TrackVerdict] | None = None,
        error: str | None = None,
    ) -> Verdict:
        return Verdict(
            path=str(path),
            label=label,
            score=score,
            threshold=self.decision.threshold,
            threshold_source=self.decision.source,
            model_version=self.model_version,
            engine=self.engine.name,
            engine_choice=getattr(self.engine, "choice", ""),
            decoder=state.decoder,
            detector=self.detector.name,
            detector_precision=getattr(self.detector, "precision", "fp32"),
            weights_random=self.weights_random,
            tracks=tracks or [],
            counts=state.counts,
            timings=state.timings,
            error=error,
            warnings=self.warnings + state.warnings,
        )


def _synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that stage timings measure the stage and not the launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
